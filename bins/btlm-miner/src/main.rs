//! `btlm-miner`: a Prompting miner running Cerebras BTLM-3B-8K natively. Flags: the shared
//! miner flags (`prompting_service::CommonArgs`) and `--btlm.*`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use prompting_btlm_backend::{BtlmArgs, BtlmMiner};
use prompting_service::{CommonArgs, MinerCli, Service};

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
    fn common_mut(&mut self) -> &mut CommonArgs {
        &mut self.common
    }
}

fn main() -> ExitCode {
    prompting_service::cli_main("btlm-miner", run)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    cli.btlm.validate().context("invalid BTLM settings")?;
    let runtime = prompting_service::runtime(&cli.common).context("cannot start the runtime")?;
    runtime.block_on(async {
        // Wallet, port and chain first: they fail fast, loading the model takes minutes.
        let service = Service::prepare(cli.common).await?;
        let args = cli.btlm;
        let miner = tokio::task::spawn_blocking(move || BtlmMiner::from_args(&args))
            .await
            .context("the model loader panicked")?
            .context("cannot load the model")?;
        service.run(Arc::new(miner)).await?;
        anyhow::Ok(())
    })
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
}
