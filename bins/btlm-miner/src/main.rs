//! `btlm-miner`: a Prompting miner running Cerebras BTLM-3B-8K natively. Flags: the shared
//! miner flags (`prompting_service::CommonArgs`) and `--btlm.*`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use prompting_btlm_backend::{BtlmArgs, BtlmError, BtlmMiner};
use prompting_service::python_compat::{Arity, IgnoredFlag};
use prompting_service::{CommonArgs, Failure, MinerCli, Service};

/// A Prompting miner running Cerebras BTLM-3B-8K natively.
#[derive(Debug, Parser)]
#[command(name = "btlm-miner", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    btlm: BtlmArgs,
}

impl MinerCli for Cli {
    const PYTHON_IGNORED: &'static [IgnoredFlag] = &[IgnoredFlag {
        name: "btlm.use_deepspeed",
        arity: Arity::Switch,
        python_default: None,
        reason: "BTLM runs natively with candle (DeepSpeed is a PyTorch library)",
    }];

    fn common_mut(&mut self) -> &mut CommonArgs {
        &mut self.common
    }
}

fn main() -> ExitCode {
    prompting_service::cli_main("btlm-miner", run)
}

fn run(cli: Cli) -> Result<(), Failure> {
    cli.btlm.validate().map_err(|e| match e {
        // A well-typed device this machine cannot open is the environment (exit 1), like
        // missing model files; everything else is a settings mistake (exit 2).
        BtlmError::Device(_) => Failure::runtime(e),
        e => Failure::usage(anyhow::Error::new(e).context("invalid BTLM settings")),
    })?;
    let runtime = prompting_service::runtime(&cli.common)
        .context("cannot start the runtime")
        .map_err(Failure::runtime)?;
    runtime.block_on(async {
        // Wallet, port and chain first: they fail fast, loading the model takes minutes. The
        // port is bound but listens only from `run` on, once the model is loaded.
        let service = Service::prepare(cli.common).await?;
        if !service.starts_axon() {
            return Ok(service.run_without_axon().await?);
        }
        let args = cli.btlm;
        let miner = tokio::task::spawn_blocking(move || BtlmMiner::from_args(&args))
            .await
            .context("the model loader panicked")
            .and_then(|loaded| loaded.context("cannot load the model"))
            .map_err(Failure::runtime)?;
        Ok(service.run(Arc::new(miner)).await?)
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
    fn every_python_flag_of_the_btlm_miner_is_accepted_as_the_fixture_says() {
        python_flags::check_parser::<Cli>("btlm");
    }

    #[test]
    fn the_yaml_bittensor_prints_for_the_python_btlm_miner_is_read() {
        let (cli, lines) = python_flags::read_python_yaml::<Cli>("btlm");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ignored --btlm.use_deepspeed")),
            "{lines:?}"
        );
        assert_eq!(cli.btlm.max_length, 32);
        assert_eq!(cli.btlm.device, "cuda");
    }

    #[test]
    fn flags_do_not_clash() {
        Cli::command().debug_assert();
    }

    #[test]
    fn btlm_settings_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("miner.toml");
        std::fs::write(
            &config,
            "[btlm]\nmax_length = 12\nstop = []\nquantize = \"q8_0\"\n[axon]\nport = 9999\n",
        )
        .expect("write config");
        let config = config.display().to_string();
        let cli: Cli = prompting_service::parse_args([
            "btlm-miner",
            "--config",
            &config,
            "--btlm.max_length",
            "20",
        ])
        .expect("parse");
        assert_eq!(cli.btlm.max_length, 20);
        assert_eq!(cli.btlm.stop, vec![String::new()]);
        assert!(cli.btlm.generation().stop.is_empty());
        assert_eq!(
            cli.btlm.quantize,
            prompting_btlm_backend::options::Quantization::Q8_0
        );
        assert_eq!(cli.common.axon.port, 9999);
    }

    #[test]
    fn the_readme_yaml_config_example_is_this_binarys() {
        let examples = crate::readme::blocks("yaml");
        assert_eq!(examples.len(), 1, "README.md shows one yaml config example");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("miner.yaml");
        std::fs::write(&config, &examples[0]).expect("write config");
        let config = config.display().to_string();
        let cli: Cli = prompting_service::parse_args(["btlm-miner", "--config", &config])
            .expect("README's example parses");
        assert_eq!(cli.common.subtensor.netuid, 1);
        assert_eq!(cli.common.axon.port, 8091);
        assert!(cli.common.miner.blacklist.force_validator_permit);
        assert_eq!(cli.btlm.device, "cpu");
        assert_eq!(cli.btlm.max_length, 64);
        assert!(cli.common.ignored.is_empty(), "{:?}", cli.common.ignored);
    }
}
