//! An echo miner driven through the [`Pipeline`] with a [`DevMetagraph`].
//!
//! Run with `cargo run -p prompting-miner --example echo` (set `RUST_LOG=debug` for more).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use prompting_miner::{
    DevMetagraph, Miner, MinerConfig, MinerError, Pipeline, PromptRequest, Protocol,
};

/// Answers with the last message it was sent.
struct Echo;

#[async_trait]
impl Miner for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        let last = request.messages.last();
        last.map(|m| format!("echo: {m}"))
            .ok_or_else(|| MinerError::BadRequest("no messages".into()))
    }
}

fn ask(message: &str) -> PromptRequest {
    PromptRequest::new(
        vec!["system".into(), "user".into()],
        vec!["You are an echo.".into(), message.into()],
        "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
        Protocol::Legacy,
        Duration::from_secs(12),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let metagraph = Arc::new(DevMetagraph::new());
    let pipeline = Pipeline::new(MinerConfig::default(), metagraph, Arc::new(Echo))?;

    println!("{}", pipeline.prompt(ask("Hello, subnet!")).await?);

    let mut stream = pipeline
        .prompt_stream(ask("Hello again, streaming"))
        .await?;
    while let Some(chunk) = stream.next().await {
        println!("{}", chunk?);
    }

    let stats = pipeline.stats();
    for (outcome, count) in &stats.outcomes {
        println!("{:>14}: {count}", outcome.as_str());
    }
    Ok(())
}
