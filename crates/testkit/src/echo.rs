//! A miner for tests that need a backend but not a model.

use async_trait::async_trait;
use prompting_miner::{Miner, MinerError, PromptRequest};

/// Answers `echo: ` and the request's messages joined by ` | ` (so a test sees every message
/// arrived, in order); its name is `echo`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

#[async_trait]
impl Miner for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        Ok(format!("echo: {}", request.messages.join(" | ")))
    }
}
