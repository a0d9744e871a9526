//! `openai-miner`: a Prompting miner answering through an OpenAI-compatible chat-completions
//! API. Flags: the shared miner flags (`prompting_service::CommonArgs`) and `--openai.*`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use prompting_openai_backend::{OpenAiArgs, OpenAiBackend};
use prompting_service::{CommonArgs, MinerCli, Service};

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

fn run(cli: Cli) -> anyhow::Result<()> {
    let backend = OpenAiBackend::new(cli.openai).context("cannot set up the OpenAI backend")?;
    let runtime = prompting_service::runtime(&cli.common).context("cannot start the runtime")?;
    runtime.block_on(async {
        let service = Service::prepare(cli.common).await?;
        service.run(Arc::new(backend)).await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

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
}
