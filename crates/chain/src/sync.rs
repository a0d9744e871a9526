//! The background task of the miner's chain duties: keep the metagraph fresh, keep the axon
//! published, and (opt-in) set weights.
//!
//! One task, three duties with their own schedule:
//!
//! - **refresh** every epoch (`--miner.blocks_per_epoch` blocks); a failure keeps the last
//!   good view and is retried with exponential backoff. Each refresh logs one info line with
//!   the miner's own figures, as the Python miners do at each epoch ([`EpochStatus`]), and
//!   compares the host's clock with the best block's time ([`crate::clock`]: one warning
//!   when it goes out of bounds, one line when it is back);
//! - **serve** at start and whenever the metagraph shows another address for the hotkey.
//!   An address subtensor's `ServingRateLimit` does not allow yet is retried at the block it
//!   allows; any other failure is a warning, retried with backoff. Never fatal: bittensor
//!   treats a failed serve the same way;
//! - **weights** after each refresh, when enabled: skipped with one warning when the subnet
//!   has commit-reveal on, sent at the block `WeightsSetRateLimit` allows when it is too
//!   early, otherwise sent; failures are recorded and retried next epoch.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prompting_metagraph::{Metagraph, SharedMetagraph};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::args::SubtensorArgs;
use crate::client::{ServeAxon, ServeOutcome, Subtensor, WeightsOutcome};
use crate::error::ChainError;
use crate::signer::ExtrinsicSigner;

/// How the sync task behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncOptions {
    /// The subnet.
    pub netuid: u16,
    /// Time between two successful refreshes.
    pub epoch: Duration,
    /// The chain's block time, to turn "allowed at block N" into a wait.
    pub block_time: Duration,
    /// First retry delay after a failure; doubled at each further failure.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// The axon to publish and keep published (`None`: `--miner.no_serve`).
    pub serve: Option<ServeAxon>,
    /// Whether to set weights (all on the miner's own uid) after each refresh.
    pub set_weights: bool,
    /// The `version_key` for `set_weights`; `None` reads the subnet's `WeightsVersionKey`.
    pub version_key: Option<u64>,
}

impl SyncOptions {
    /// Options from the command line: one epoch is `--miner.blocks_per_epoch` blocks; nothing
    /// is served (set [`SyncOptions::serve`] with the external address).
    pub fn from_args(args: &SubtensorArgs) -> Self {
        let epoch = args.epoch();
        let block_time = args.block_time();
        SyncOptions {
            netuid: args.netuid,
            epoch,
            block_time,
            retry_min: block_time,
            retry_max: epoch.max(block_time),
            serve: None,
            set_weights: args.sets_weights(),
            version_key: args.weights_version_key,
        }
    }

    /// The delay before retrying after `failures` consecutive failures (at least 1).
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.retry_min
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max.max(self.retry_min))
    }

    /// The wait until block `allowed_at` may include a transaction, the best block being
    /// `best`: the transaction must be sent on top of block `allowed_at - 1`. At least one
    /// block time, so that a slower chain is re-checked rather than spun on.
    pub fn wait_for_block(&self, best: u64, allowed_at: u64) -> Duration {
        let blocks = allowed_at.saturating_sub(best.saturating_add(1)).max(1);
        self.block_time
            .saturating_mul(u32::try_from(blocks).unwrap_or(u32::MAX))
    }
}

/// What `/metrics` and logs show of the chain duties.
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
    /// When the axon was last found or made published on chain.
    pub last_served: Option<SystemTime>,
    /// Why the axon is not published (yet): the last serve failure or the rate limit being
    /// waited out; cleared once published.
    pub serve_pending: Option<String>,
    /// When weights were last set successfully.
    pub last_weights_set: Option<SystemTime>,
    /// How many times weights were set successfully.
    pub weights_set_total: u64,
    /// The last `set_weights` error.
    pub last_weights_error: Option<String>,
    /// Why weights are currently not being set (commit-reveal subnet, rate limit), if so.
    pub weights_skipped: Option<String>,
    /// Successful refreshes so far: the next epoch line's `Step` (the Python miners' count).
    pub epochs: u64,
    /// This host's clock against the best block's time at the last refresh, in
    /// milliseconds (`crate::clock::skew_ms`; `None` until it could be read).
    pub clock_skew_ms: Option<i64>,
}

/// The miner's own figures at one epoch, read from the refreshed metagraph: what the Python
/// miners log at each epoch. `Display` gives their line, `Step:0 | Block:.. | Stake:.. |
/// Rank:.. | Trust:.. | Consensus:.. | Incentive:.. | Emission:..`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStatus {
    /// Epochs before this one (0 at the first refresh).
    pub step: u64,
    /// The metagraph's block.
    pub block: u64,
    /// The miner's uid.
    pub uid: u16,
    /// Its stake, in α (see `NeuronInfo::stake`).
    pub stake: f64,
    /// Its rank, trust, consensus and incentive, in [0, 1].
    pub rank: f64,
    /// See [`EpochStatus::rank`].
    pub trust: f64,
    /// See [`EpochStatus::rank`].
    pub consensus: f64,
    /// See [`EpochStatus::rank`].
    pub incentive: f64,
    /// Its emission, in units of 1e9 (α).
    pub emission: f64,
}

impl EpochStatus {
    /// The figures of `hotkey` in `metagraph` at epoch `step`; `None` when it is not
    /// registered there.
    pub fn of(metagraph: &Metagraph, hotkey: &str, step: u64) -> Option<EpochStatus> {
        let neuron = metagraph.neuron(hotkey)?;
        Some(EpochStatus {
            step,
            block: metagraph.block,
            uid: neuron.uid,
            stake: neuron.stake,
            rank: neuron.rank,
            trust: neuron.trust,
            consensus: neuron.consensus,
            incentive: neuron.incentive,
            emission: neuron.emission,
        })
    }
}

impl std::fmt::Display for EpochStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `{:?}` keeps the decimal point of whole numbers (`1.0`), as Python prints floats.
        write!(
            f,
            "Step:{} | Block:{} | Stake:{:?} | Rank:{:?} | Trust:{:?} | Consensus:{:?} | \
             Incentive:{:?} | Emission:{:?}",
            self.step,
            self.block,
            self.stake,
            self.rank,
            self.trust,
            self.consensus,
            self.incentive,
            self.emission
        )
    }
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

/// Starts the background chain duties (see the module documentation). The first refresh,
/// and the first serve, happen at once. Abort the returned handle to stop.
pub fn spawn_sync(
    subtensor: Subtensor,
    shared: Arc<SharedMetagraph>,
    signer: Arc<dyn ExtrinsicSigner>,
    options: SyncOptions,
) -> (JoinHandle<()>, Arc<SyncStatus>) {
    let status = Arc::new(SyncStatus::default());
    let duties = Duties {
        subtensor,
        shared,
        signer,
        status: Arc::clone(&status),
        options,
        refresh_failures: 0,
        serve_failures: 0,
        commit_reveal_warned: false,
        clock_warned: false,
    };
    (tokio::spawn(duties.run()), status)
}

struct Duties {
    subtensor: Subtensor,
    shared: Arc<SharedMetagraph>,
    signer: Arc<dyn ExtrinsicSigner>,
    status: Arc<SyncStatus>,
    options: SyncOptions,
    refresh_failures: u32,
    serve_failures: u32,
    commit_reveal_warned: bool,
    /// Whether the clock's skew was last reported (warned once when it goes out of
    /// bounds, told once when it is back).
    clock_warned: bool,
}

impl Duties {
    async fn run(mut self) {
        let start = Instant::now();
        let mut next_refresh = start;
        let mut serve_due = self.options.serve.map(|_| start);
        let mut weights_due: Option<Instant> = None;
        loop {
            let wake = [Some(next_refresh), serve_due, weights_due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_refresh);
            tokio::time::sleep_until(wake).await;
            let now = Instant::now();
            if now >= next_refresh {
                next_refresh = match self.refresh().await {
                    Ok(axon_differs) => {
                        if self.options.set_weights {
                            weights_due = Some(weights_due.map_or(now, |due| due.min(now)));
                        }
                        if axon_differs && serve_due.is_none() {
                            serve_due = Some(now);
                        }
                        now + self.options.epoch
                    }
                    Err(delay) => now + delay,
                };
            }
            if serve_due.is_some_and(|due| now >= due) {
                serve_due = self.serve().await.map(|wait| Instant::now() + wait);
            }
            if weights_due.is_some_and(|due| now >= due) {
                weights_due = self.weights().await.map(|wait| Instant::now() + wait);
            }
        }
    }

    /// Refreshes the metagraph; `Ok(true)` when it shows another axon than ours for our
    /// hotkey, `Err(retry delay)` on failure.
    async fn refresh(&mut self) -> Result<bool, Duration> {
        let netuid = self.options.netuid;
        match self.subtensor.fetch_metagraph(netuid).await {
            Ok(metagraph) => {
                let block = metagraph.block;
                let hotkey = self.signer.ss58();
                let axon_differs = match (&self.options.serve, metagraph.neuron(&hotkey)) {
                    (Some(serve), Some(neuron)) => !axon_matches(neuron.axon.as_deref(), serve),
                    _ => false,
                };
                let step = self.status.snapshot().epochs;
                match EpochStatus::of(&metagraph, &hotkey, step) {
                    Some(epoch) => tracing::info!(netuid, uid = epoch.uid, "{epoch}"),
                    None => tracing::warn!(
                        netuid,
                        block,
                        %hotkey,
                        "Step:{step} | the miner's hotkey is not registered in the metagraph \
                         (deregistered?)"
                    ),
                }
                self.shared.store(metagraph);
                self.refresh_failures = 0;
                self.status.update(|s| {
                    s.last_success = Some(SystemTime::now());
                    s.last_block = Some(block);
                    s.consecutive_failures = 0;
                    s.epochs = s.epochs.saturating_add(1);
                });
                tracing::debug!(netuid, block, "metagraph refreshed");
                self.check_clock().await;
                Ok(axon_differs)
            }
            Err(e) => {
                self.refresh_failures = self.refresh_failures.saturating_add(1);
                let failures = self.refresh_failures;
                self.status.update(|s| {
                    s.consecutive_failures = failures;
                    s.last_error = Some(e.to_string());
                });
                let delay = self.options.retry_delay(failures);
                tracing::warn!(
                    netuid,
                    error = %e,
                    failures,
                    retry_in = ?delay,
                    "metagraph refresh failed; keeping the last view"
                );
                Err(delay)
            }
        }
    }

    /// Compares this host's clock with the best block's time ([`crate::clock`]): warns when
    /// the skew goes out of bounds (at the first refresh: at start), says so once it is back;
    /// a time that cannot be read is a debug line.
    async fn check_clock(&mut self) {
        let (skew_ms, block) = match self.subtensor.clock_skew().await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(error = %e, "the chain's time could not be read");
                return;
            }
        };
        let clamped =
            i64::try_from(skew_ms).unwrap_or(if skew_ms < 0 { i64::MIN } else { i64::MAX });
        tracing::debug!(
            skew_ms = clamped,
            block,
            "this host's clock against the chain's best block"
        );
        match crate::clock::report(skew_ms, block) {
            Some(warning) if !self.clock_warned => {
                tracing::warn!("{warning}");
                self.clock_warned = true;
            }
            None if self.clock_warned => {
                tracing::info!(
                    skew_ms = clamped,
                    block,
                    "this host's clock agrees with the chain's again"
                );
                self.clock_warned = false;
            }
            _ => {}
        }
        // After the log, so that what `/metrics` shows was said first.
        self.status.update(|s| s.clock_skew_ms = Some(clamped));
    }

    /// Publishes the axon if needed; the wait before the next attempt, if one is needed.
    async fn serve(&mut self) -> Option<Duration> {
        let serve = self.options.serve?;
        let result = self
            .subtensor
            .serve_axon(self.signer.as_ref(), &serve)
            .await;
        let (pending, retry) = match result {
            Ok(ServeOutcome::AlreadyServed | ServeOutcome::Included { .. }) => {
                self.serve_failures = 0;
                self.status.update(|s| {
                    s.last_served = Some(SystemTime::now());
                    s.serve_pending = None;
                });
                return None;
            }
            Ok(ServeOutcome::RateLimited { best, allowed_at }) => {
                let wait = self.options.wait_for_block(best, allowed_at);
                let message = format!(
                    "the hotkey served another address less than ServingRateLimit blocks ago; \
                     serving {} at block {allowed_at} (best block {best})",
                    serve.external
                );
                tracing::warn!(retry_in = ?wait, "{message}");
                (message, Some(wait))
            }
            Err(e @ ChainError::UnservableAddress { .. }) => {
                tracing::error!(error = %e, "the axon will not be published");
                (e.to_string(), None)
            }
            Err(e) => {
                let wait = if e.rejection().is_some_and(|r| r.is_rate_limit()) {
                    // The chain's view moved since the check: re-check next block.
                    self.options.block_time
                } else {
                    self.serve_failures = self.serve_failures.saturating_add(1);
                    self.options.retry_delay(self.serve_failures)
                };
                tracing::warn!(axon = %serve.external, error = %e, retry_in = ?wait,
                    "publishing the axon failed; the miner keeps serving and retries");
                (e.to_string(), Some(wait))
            }
        };
        self.status.update(|s| s.serve_pending = Some(pending));
        retry
    }

    /// Sets weights if the subnet allows it now; the wait before the next attempt, if the
    /// rate limit asks for one.
    async fn weights(&mut self) -> Option<Duration> {
        let netuid = self.options.netuid;
        let result = self
            .subtensor
            .set_own_weights(self.signer.as_ref(), netuid, self.options.version_key)
            .await;
        match result {
            Ok(WeightsOutcome::Set {
                block_hash,
                version_key,
                uid,
            }) => {
                tracing::info!(uid, version_key, block = %block_hash, "weights set");
                self.commit_reveal_warned = false;
                self.status.update(|s| {
                    s.last_weights_set = Some(SystemTime::now());
                    s.weights_set_total = s.weights_set_total.saturating_add(1);
                    s.weights_skipped = None;
                });
                None
            }
            Ok(WeightsOutcome::CommitReveal) => {
                let message = format!(
                    "commit-reveal is on for netuid {netuid} (CommitRevealWeightsEnabled): the chain \
                     refuses plain set_weights there (CommitRevealEnabled) and this miner does not \
                     commit weights; not setting weights"
                );
                if !self.commit_reveal_warned {
                    tracing::warn!("{message}");
                    self.commit_reveal_warned = true;
                }
                self.status.update(|s| s.weights_skipped = Some(message));
                None
            }
            Ok(WeightsOutcome::TooEarly { best, allowed_at }) => {
                let wait = self.options.wait_for_block(best, allowed_at);
                let message = format!(
                    "weights were set less than WeightsSetRateLimit blocks ago; setting them at \
                     block {allowed_at} (best block {best})"
                );
                tracing::info!(retry_in = ?wait, "{message}");
                self.status.update(|s| s.weights_skipped = Some(message));
                Some(wait)
            }
            Err(e) => {
                tracing::warn!(netuid, error = %e, "setting weights failed; retrying next epoch");
                self.status
                    .update(|s| s.last_weights_error = Some(e.to_string()));
                e.rejection()
                    .is_some_and(|r| r.is_rate_limit())
                    .then_some(self.options.block_time)
            }
        }
    }
}

/// Whether the metagraph's formatted axon (`ip:port`, `[v6]:port`) is the one to serve,
/// comparing IPv4-mapped IPv6 addresses as IPv4 (as they are published).
fn axon_matches(on_chain: Option<&str>, serve: &ServeAxon) -> bool {
    let Some(on_chain) = on_chain.and_then(|text| text.parse::<std::net::SocketAddr>().ok()) else {
        return false;
    };
    let wanted = serve.external;
    // The metagraph does not carry the protocol; `serve_axon`'s own check compares it.
    on_chain.ip().to_canonical() == wanted.ip().to_canonical() && on_chain.port() == wanted.port()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SyncOptions {
        SyncOptions {
            netuid: 1,
            epoch: Duration::from_secs(1200),
            block_time: Duration::from_secs(12),
            retry_min: Duration::from_secs(12),
            retry_max: Duration::from_secs(100),
            serve: None,
            set_weights: false,
            version_key: None,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let options = options();
        let delays: Vec<u64> = (1..=6).map(|n| options.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [12, 24, 48, 96, 100, 100]);
        assert_eq!(options.retry_delay(u32::MAX).as_secs(), 100);
    }

    #[test]
    fn waits_until_the_block_before_the_allowed_one() {
        let options = options();
        // Allowed at 150, best 140: send on top of 149, nine blocks from now.
        assert_eq!(
            options.wait_for_block(140, 150),
            Duration::from_secs(9 * 12)
        );
        // Never less than one block.
        assert_eq!(options.wait_for_block(149, 150), Duration::from_secs(12));
        assert_eq!(options.wait_for_block(200, 150), Duration::from_secs(12));
    }

    #[test]
    fn options_follow_the_flags() {
        let args = SubtensorArgs {
            blocks_per_epoch: 10,
            netuid: 3,
            ..SubtensorArgs::default()
        };
        let options = SyncOptions::from_args(&args);
        assert_eq!(options.epoch, Duration::from_secs(120));
        assert_eq!((options.netuid, options.set_weights), (3, false));
        assert_eq!(options.version_key, None);
        let args = SubtensorArgs {
            set_weights: true,
            weights_version_key: Some(9),
            ..SubtensorArgs::default()
        };
        let options = SyncOptions::from_args(&args);
        assert!(options.set_weights);
        assert_eq!(options.version_key, Some(9));
    }

    #[test]
    fn the_epoch_line_is_the_python_miners_and_reads_our_neuron() {
        use prompting_metagraph::NeuronInfo;
        let ours = NeuronInfo {
            uid: 7,
            hotkey: "5Ours".into(),
            stake: 12.5,
            rank: 1.0,
            trust: 0.25,
            consensus: 0.0,
            incentive: 0.5,
            emission: 3.0,
            ..NeuronInfo::default()
        };
        let other = NeuronInfo {
            uid: 0,
            hotkey: "5Other".into(),
            rank: 0.75,
            ..NeuronInfo::default()
        };
        let metagraph = Metagraph::new(1, 4242, vec![other, ours]);
        let epoch = EpochStatus::of(&metagraph, "5Ours", 3).expect("registered");
        assert_eq!(epoch.uid, 7);
        assert_eq!(
            epoch.to_string(),
            "Step:3 | Block:4242 | Stake:12.5 | Rank:1.0 | Trust:0.25 | Consensus:0.0 | \
             Incentive:0.5 | Emission:3.0"
        );
        assert_eq!(EpochStatus::of(&metagraph, "5Nobody", 0), None);
    }

    #[test]
    fn metagraph_axons_compare_as_published() {
        let serve = ServeAxon::new(1, "[::ffff:203.0.113.5]:8091".parse().expect("literal"));
        assert!(axon_matches(Some("203.0.113.5:8091"), &serve));
        assert!(!axon_matches(Some("203.0.113.5:8092"), &serve));
        assert!(!axon_matches(None, &serve));
        let serve = ServeAxon::new(1, "[2001:db8::5]:9000".parse().expect("literal"));
        assert!(axon_matches(Some("[2001:db8::5]:9000"), &serve));
    }
}
