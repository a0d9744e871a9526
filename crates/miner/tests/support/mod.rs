//! What the pipeline's integration tests share: a metagraph of validators and requests whose
//! one message tells the scripted backend how long to work.

use std::sync::Arc;
use std::time::Duration;

use prompting_miner::{Metagraph, NeuronInfo, PromptRequest, Protocol, SharedMetagraph};

/// A metagraph of `(hotkey, stake)` validators, uids in order.
pub fn validators(neurons: &[(&str, f64)]) -> Arc<SharedMetagraph> {
    let neurons = neurons
        .iter()
        .enumerate()
        .map(|(uid, &(hotkey, stake))| NeuronInfo {
            uid: uid as u16,
            hotkey: hotkey.into(),
            stake,
            validator_permit: true,
            ..NeuronInfo::default()
        })
        .collect();
    Arc::new(SharedMetagraph::new(Metagraph::new(1, 100, neurons)))
}

/// A request by `caller` whose answer takes `work` (its message, in ms), with `timeout`.
pub fn request(caller: &str, work: Duration, timeout: Duration) -> PromptRequest {
    PromptRequest::new(
        vec!["user".into()],
        vec![work.as_millis().to_string()],
        caller,
        Protocol::Legacy,
        timeout,
    )
}
