//! Shared pieces of the benchmarks: an echo miner, key sets, and latency statistics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prompting_keys::Keypair;
use prompting_miner::{Metagraph, Miner, MinerError, NeuronInfo, PromptRequest, SharedMetagraph};
use prompting_synapse::{Prompting, Synapse};
use prompting_transport::dendrite::{AxonTarget, Dendrite};

/// Answers `"echo: " + last message` at once: measures everything but a model.
pub struct EchoMiner;

#[async_trait]
impl Miner for EchoMiner {
    fn name(&self) -> &str {
        "echo"
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        let last = request
            .messages
            .last()
            .ok_or_else(|| MinerError::BadRequest("no messages".into()))?;
        Ok(format!("echo: {last}"))
    }
}

/// The legacy `POST /Prompting` request `dendrite` signs for `target`, with the benches' fixed
/// two-turn prompt, as an in-process axon router takes it.
pub fn legacy_prompt_request(
    dendrite: &Dendrite,
    target: &AxonTarget,
) -> Result<http::Request<axum::body::Body>, http::Error> {
    let mut synapse = Synapse::new(Prompting::new(
        vec!["system".into(), "user".into()],
        vec![
            "You are helpful.".into(),
            "What is the capital of France?".into(),
        ],
    ));
    let prepared = dendrite.prepare(target, &mut synapse, Duration::from_secs(12));
    let mut request = http::Request::post("/Prompting");
    for (name, value) in &prepared.headers {
        request = request.header(name, value);
    }
    request.body(axum::body::Body::from(prepared.body))
}

/// `count` deterministic hotkeys (mini secrets `[i+1; 32]`, with `i` spread over two bytes).
pub fn hotkeys(count: usize) -> Vec<Keypair> {
    (0..count)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[0] = (i % 251) as u8 + 1;
            seed[1] = (i / 251) as u8;
            seed[31] = 0xbe;
            Keypair::from_mini_secret(&seed)
        })
        .collect()
}

/// A metagraph registering `keys` as validators; stake of key `i` is `stakes(i)` τ.
pub fn metagraph_of(keys: &[Keypair], stakes: impl Fn(usize) -> f64) -> Arc<SharedMetagraph> {
    let neurons = keys
        .iter()
        .enumerate()
        .map(|(i, k)| NeuronInfo {
            uid: i as u16,
            hotkey: k.ss58_address(),
            coldkey: String::new(),
            stake: stakes(i),
            validator_permit: true,
            axon: None,
            ..NeuronInfo::default()
        })
        .collect();
    Arc::new(SharedMetagraph::new(Metagraph::new(1, 1, neurons)))
}

/// Latency percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of `samples` (nearest rank); `None` when empty.
    pub fn of(samples: &mut [Duration]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1000.0
        };
        Some(Percentiles {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut samples).expect("non-empty");
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert!(Percentiles::of(&mut []).is_none());
    }

    #[test]
    fn hotkeys_are_distinct() {
        let keys = hotkeys(600);
        let mut addresses: Vec<String> = keys.iter().map(Keypair::ss58_address).collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), 600);
    }
}
