//! An axon with an echo backend, for load tests on loopback.
//!
//! Key 0 of [`prompting_benches::hotkeys`] is the axon; keys 1..=clients are registered
//! callers: key 1 with `--validator-stake`, the others with `--client-stake`. Prints
//! `listening <addr> <hotkey>` once serving.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::Parser;
use prompting_benches::{EchoMiner, hotkeys, metagraph_of};
use prompting_miner::{BlacklistConfig, Miner, MinerConfig, MinerError, Pipeline, PromptRequest};
use prompting_transport::axon::{self, AxonArgs, AxonState};

#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Registered client hotkeys.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Stake of client key 1, τ.
    #[arg(long, default_value_t = 10_000.0)]
    validator_stake: f64,
    /// Stake of the other clients, τ.
    #[arg(long, default_value_t = 1.0)]
    client_stake: f64,
    /// Simulated backend time per request, milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Backend calls at once.
    #[arg(long, default_value_t = 64)]
    max_concurrent: usize,
    /// Priority queue size.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

struct SlowEcho(Duration);

#[async_trait]
impl Miner for SlowEcho {
    fn name(&self) -> &str {
        "slow-echo"
    }
    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        tokio::time::sleep(self.0).await;
        EchoMiner.prompt(request).await
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let keys = hotkeys(args.clients + 1);
    let miner_key = keys[0].clone();
    let (validator_stake, client_stake) = (args.validator_stake, args.client_stake);
    let metagraph = metagraph_of(&keys, |i| {
        if i == 1 {
            validator_stake
        } else {
            client_stake
        }
    });
    let config = MinerConfig {
        max_concurrent: args.max_concurrent,
        max_queue: args.max_queue,
        blacklist: BlacklistConfig {
            // Load tests send far more than Python's 50 requests per 5 minutes.
            min_request_period: 0,
            ..BlacklistConfig::default()
        },
        ..MinerConfig::default()
    };
    let backend: Arc<dyn Miner> = if args.delay_ms == 0 {
        Arc::new(EchoMiner)
    } else {
        Arc::new(SlowEcho(Duration::from_millis(args.delay_ms)))
    };
    let pipeline = Pipeline::new(config, metagraph, backend).context("pipeline")?;
    let axon_args = AxonArgs {
        ip: [127, 0, 0, 1].into(),
        port: args.port,
        ..AxonArgs::default()
    };
    let listener = tokio::net::TcpListener::bind((axon_args.ip, args.port))
        .await
        .with_context(|| format!("bind 127.0.0.1:{}", args.port))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(
        AxonState::new(Arc::new(miner_key.clone()), pipeline, &axon_args).context("axon args")?,
    );
    println!("listening {addr} {}", miner_key.ss58_address());
    let limits = state.server_limits();
    axon::run(
        listener,
        axon::router(state),
        limits,
        prompting_transport::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}
