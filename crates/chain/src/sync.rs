//! The background task keeping the metagraph fresh (and setting weights each epoch).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prompting_metagraph::SharedMetagraph;
use tokio::task::JoinHandle;

use crate::args::{BLOCK_TIME, SubtensorArgs};
use crate::client::{Subtensor, WEIGHTS_VERSION_KEY};
use crate::signer::ExtrinsicSigner;
use crate::weights::self_weights;

/// How the sync task behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncOptions {
    /// The subnet.
    pub netuid: u16,
    /// Time between two successful refreshes.
    pub epoch: Duration,
    /// First retry delay after a failed refresh; doubled at each further failure.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Whether to set weights (all on the miner's own uid) after each refresh.
    pub set_weights: bool,
    /// The `version_key` passed to `set_weights`.
    pub version_key: u64,
}

impl SyncOptions {
    /// Options from the command line: one epoch is `--miner.blocks_per_epoch` blocks.
    pub fn from_args(args: &SubtensorArgs) -> Self {
        let epoch = args.epoch();
        SyncOptions {
            netuid: args.netuid,
            epoch,
            retry_min: BLOCK_TIME,
            retry_max: epoch.max(BLOCK_TIME),
            set_weights: !args.no_set_weights,
            version_key: WEIGHTS_VERSION_KEY,
        }
    }

    /// The delay before retrying after `failures` consecutive failures (at least 1).
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.retry_min
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max.max(self.retry_min))
    }
}

/// What `/metrics` shows of the sync: the metagraph's age and the last failure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncSnapshot {
    /// When the metagraph was last refreshed.
    pub last_success: Option<SystemTime>,
    /// The block of the last refreshed metagraph.
    pub last_block: Option<u64>,
    /// Failed refreshes since the last success.
    pub consecutive_failures: u32,
    /// The last refresh error (kept after a later success, for diagnosis).
    pub last_error: Option<String>,
    /// When weights were last set successfully.
    pub last_weights_set: Option<SystemTime>,
    /// The last `set_weights` error.
    pub last_weights_error: Option<String>,
}

impl SyncSnapshot {
    /// Time since the last successful refresh.
    pub fn age(&self) -> Option<Duration> {
        self.last_success
            .and_then(|at| SystemTime::now().duration_since(at).ok())
    }
}

/// Shared, lock-protected sync status.
#[derive(Debug, Default)]
pub struct SyncStatus {
    inner: Mutex<SyncSnapshot>,
}

impl SyncStatus {
    /// A copy of the current status.
    pub fn snapshot(&self) -> SyncSnapshot {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut SyncSnapshot)) {
        change(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Starts the background refresh: every epoch, fetch the metagraph of `options.netuid`, store it
/// into `shared`, and (unless disabled) set weights on the signer's own uid. A failed refresh
/// keeps the last good view, is logged and recorded in the status, and is retried with
/// exponential backoff; a failed `set_weights` is logged and retried next epoch.
///
/// The first refresh happens at once. Abort the returned handle to stop.
pub fn spawn_sync(
    subtensor: Subtensor,
    shared: Arc<SharedMetagraph>,
    signer: Arc<dyn ExtrinsicSigner>,
    options: SyncOptions,
) -> (JoinHandle<()>, Arc<SyncStatus>) {
    let status = Arc::new(SyncStatus::default());
    let task_status = Arc::clone(&status);
    let handle = tokio::spawn(async move {
        let hotkey = signer.ss58();
        loop {
            let delay = match subtensor.fetch_metagraph(options.netuid).await {
                Ok(metagraph) => {
                    let block = metagraph.block;
                    let own_uid = metagraph.neuron(&hotkey).map(|n| n.uid);
                    shared.store(metagraph);
                    task_status.update(|s| {
                        s.last_success = Some(SystemTime::now());
                        s.last_block = Some(block);
                        s.consecutive_failures = 0;
                    });
                    tracing::debug!(netuid = options.netuid, block, "metagraph refreshed");
                    if options.set_weights {
                        set_own_weights(
                            &subtensor,
                            signer.as_ref(),
                            &options,
                            own_uid,
                            &task_status,
                        )
                        .await;
                    }
                    options.epoch
                }
                Err(e) => {
                    let mut failures = 0;
                    task_status.update(|s| {
                        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                        s.last_error = Some(e.to_string());
                        failures = s.consecutive_failures;
                    });
                    let delay = options.retry_delay(failures);
                    tracing::warn!(
                        netuid = options.netuid,
                        error = %e,
                        failures,
                        retry_in = ?delay,
                        "metagraph refresh failed; keeping the last view"
                    );
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    });
    (handle, status)
}

async fn set_own_weights(
    subtensor: &Subtensor,
    signer: &dyn ExtrinsicSigner,
    options: &SyncOptions,
    own_uid: Option<u16>,
    status: &SyncStatus,
) {
    let Some(uid) = own_uid else {
        let message = format!(
            "hotkey {} is not registered on netuid {}; weights not set",
            signer.ss58(),
            options.netuid
        );
        tracing::warn!("{message}");
        status.update(|s| s.last_weights_error = Some(message));
        return;
    };
    let (dests, weights) = self_weights(uid);
    match subtensor
        .set_weights(
            signer,
            options.netuid,
            &dests,
            &weights,
            options.version_key,
        )
        .await
    {
        Ok(block_hash) => {
            tracing::info!(uid, block = %block_hash, "weights set");
            status.update(|s| s.last_weights_set = Some(SystemTime::now()));
        }
        Err(e) => {
            tracing::warn!(uid, error = %e, "setting weights failed; retrying next epoch");
            status.update(|s| s.last_weights_error = Some(e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let options = SyncOptions {
            netuid: 1,
            epoch: Duration::from_secs(1200),
            retry_min: Duration::from_secs(12),
            retry_max: Duration::from_secs(100),
            set_weights: false,
            version_key: 1,
        };
        let delays: Vec<u64> = (1..=6).map(|n| options.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [12, 24, 48, 96, 100, 100]);
        assert_eq!(options.retry_delay(u32::MAX).as_secs(), 100);
    }

    #[test]
    fn options_follow_the_flags() {
        let args = SubtensorArgs {
            blocks_per_epoch: 10,
            no_set_weights: true,
            netuid: 3,
            ..SubtensorArgs::default()
        };
        let options = SyncOptions::from_args(&args);
        assert_eq!(options.epoch, Duration::from_secs(120));
        assert_eq!((options.netuid, options.set_weights), (3, false));
    }
}
