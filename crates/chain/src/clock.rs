//! How far this host's clock is from the chain's, read once at start-up.
//!
//! A legacy request carries its sender's wall-clock time as its nonce, and bittensor's
//! axons (and ours) refuse a first nonce older than 4 s plus the request's timeout as
//! stale: a miner whose clock runs ahead by more than that (a VM without time
//! synchronisation drifts by minutes) refuses every validator. The chain's time is the best
//! block's `Timestamp.Now`, set by its author when it built the block: 0–12 s behind real
//! time on finney (a block every 12 s), plus the node's lag.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far the host's clock may read past the best block's time before the log warns:
/// a block's age (up to its 12 s) and some lag of the node, beyond which the skew alone is
/// past bittensor's 4 s + 12 s window.
pub const AHEAD_LIMIT: Duration = Duration::from_secs(30);

/// How far the host's clock may read before the best block's time (a block cannot be
/// built in the future: anything past a few seconds is the host's clock).
pub const BEHIND_LIMIT: Duration = Duration::from_secs(15);

/// The host's time minus the chain's (`chain_ms`, milliseconds since the Unix epoch), in
/// milliseconds: positive when the host reads later.
pub fn skew_ms(host: SystemTime, chain_ms: u64) -> i128 {
    let host_ms = match host.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    };
    host_ms - i128::from(chain_ms)
}

/// The warning for a skew of `skew_ms` (see [`skew_ms`]) at block `block`; `None` within
/// [`AHEAD_LIMIT`] and [`BEHIND_LIMIT`].
pub fn report(skew_ms: i128, block: u64) -> Option<String> {
    let seconds = skew_ms as f64 / 1e3;
    if skew_ms > AHEAD_LIMIT.as_millis() as i128 {
        Some(format!(
            "this host's clock reads {seconds:.0} s later than the chain's best block \
             (#{block}), which a synced node has from the last ~12 s: validators' requests \
             carry their own time, and ones that look older than 4 s plus their timeout are \
             refused as stale (\"Nonce is too old\"); synchronise the clock (e.g. \
             `timedatectl set-ntp true`, chrony), or check that the node is synced"
        ))
    } else if skew_ms < -(BEHIND_LIMIT.as_millis() as i128) {
        Some(format!(
            "this host's clock reads {:.0} s earlier than the chain's best block (#{block}): \
             requests signed with the time will look to come from the future; synchronise \
             the clock (e.g. `timedatectl set-ntp true`, chrony)",
            -seconds
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_the_host_minus_the_chain() {
        let host = UNIX_EPOCH + Duration::from_millis(1_700_000_090_000);
        assert_eq!(skew_ms(host, 1_700_000_000_000), 90_000);
        assert_eq!(skew_ms(host, 1_700_000_100_000), -10_000);
        assert_eq!(skew_ms(UNIX_EPOCH - Duration::from_secs(1), 0), -1_000);
    }

    #[test]
    fn only_a_skew_past_a_block_s_age_is_reported() {
        // A block 12 s old and some lag: normal.
        assert_eq!(report(12_000, 7), None);
        assert_eq!(report(30_000, 7), None);
        assert_eq!(report(-15_000, 7), None);
        let ahead = report(95_000, 4_200_123).expect("ahead");
        assert!(
            ahead.contains("95 s later") && ahead.contains("#4200123"),
            "{ahead}"
        );
        assert!(ahead.contains("Nonce is too old") && ahead.contains("timedatectl"));
        let behind = report(-60_000, 7).expect("behind");
        assert!(behind.contains("60 s earlier"), "{behind}");
    }
}
