//! `openai-miner`: a Prompting miner answering through an OpenAI-compatible chat-completions
//! API. Flags: the shared miner flags (`prompting_service::CommonArgs`) and `--openai.*`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use prompting_openai_backend::{OpenAiArgs, OpenAiBackend};
use prompting_service::{CommonArgs, Failure, MinerCli, Service};

/// A Prompting miner answering through an OpenAI-compatible chat-completions API.
#[derive(Debug, Parser)]
#[command(name = "openai-miner", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    openai: OpenAiArgs,
}

impl MinerCli for Cli {
    fn common_mut(&mut self) -> &mut CommonArgs {
        &mut self.common
    }
}

fn main() -> ExitCode {
    prompting_service::cli_main("openai-miner", run)
}

fn run(cli: Cli) -> Result<(), Failure> {
    cli.openai
        .validate()
        .context("cannot set up the OpenAI backend")
        .map_err(Failure::usage)?;
    let backend = OpenAiBackend::new(cli.openai)
        .context("cannot set up the OpenAI backend")
        .map_err(Failure::runtime)?;
    let runtime = prompting_service::runtime(&cli.common)
        .context("cannot start the runtime")
        .map_err(Failure::runtime)?;
    runtime.block_on(async {
        let service = Service::prepare(cli.common).await?;
        if !service.starts_axon() {
            return Ok(service.run_without_axon().await?);
        }
        Ok(service.run(Arc::new(backend)).await?)
    })
}

#[cfg(test)]
#[path = "../../../crates/service/tests/support/python_flags.rs"]
mod python_flags;

#[cfg(test)]
#[path = "../../../crates/service/tests/support/readme.rs"]
mod readme;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    use crate::python_flags;

    #[test]
    fn every_python_flag_of_the_openai_miner_is_accepted_as_the_fixture_says() {
        python_flags::check_parser::<Cli>("openai");
    }

    #[test]
    fn the_yaml_bittensor_prints_for_the_python_openai_miner_is_read() {
        let (cli, _) = python_flags::read_python_yaml::<Cli>("openai");
        assert_eq!(cli.openai.model_name, "my-model");
        assert_eq!(cli.openai.max_tokens, 64);
    }

    #[test]
    fn flags_do_not_clash() {
        Cli::command().debug_assert();
    }

    #[test]
    fn openai_settings_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("miner.toml");
        std::fs::write(
            &config,
            "[openai]\nmodel_name = \"llama\"\nbase_url = [\"http://127.0.0.1:1/v1\", \"http://127.0.0.1:2/v1\"]\npresence_penalty = -0.5\n",
        )
        .expect("write config");
        let config = config.display().to_string();
        let cli: Cli = prompting_service::parse_args([
            "openai-miner",
            "--config",
            &config,
            "--openai.model_name",
            "flag-model",
        ])
        .expect("parse");
        assert_eq!(cli.openai.model_name, "flag-model");
        assert_eq!(
            cli.openai.base_url,
            vec!["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
        );
        assert_eq!(cli.openai.presence_penalty, -0.5);
    }

    #[test]
    fn the_readme_toml_config_example_is_this_binarys() {
        let examples = crate::readme::blocks("toml");
        assert_eq!(examples.len(), 1, "README.md shows one toml config example");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("miner.toml");
        std::fs::write(&config, &examples[0]).expect("write config");
        let config = config.display().to_string();
        let cli: Cli = prompting_service::parse_args(["openai-miner", "--config", &config])
            .expect("README's example parses");
        assert_eq!(cli.common.subtensor.netuid, 1);
        assert_eq!(cli.common.axon.port, 8091);
        assert_eq!(cli.openai.model_name, "my-model");
        assert_eq!(cli.openai.base_url.len(), 2);
        assert!(cli.common.miner.blacklist.force_validator_permit);
    }
}
