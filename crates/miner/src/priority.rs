//! The priority formula of the Python miner: stake, boosted by how long the caller has been
//! quiet.
//!
//! For a registered caller with a request history,
//! `priority = stake × max(period / (time_stake_multiplicate × 60), 1)`, where `period` is
//! the number of seconds since its 10th most recent accepted request (see
//! [`RequestHistory::quiet_period`](crate::request_history::RequestHistory::quiet_period)).
//! Unregistered callers, and a hotkey's first request, get `--miner.priority.default`.

use std::time::Duration;

use crate::config::PriorityConfig;
use crate::metagraph::CallerInfo;

/// The priority of a request by `caller` (`None`: not registered) whose quiet period is
/// `quiet_period` (`None`: no known history). Never NaN.
pub fn priority(
    config: &PriorityConfig,
    caller: Option<&CallerInfo>,
    quiet_period: Option<Duration>,
) -> f64 {
    let (Some(info), Some(period)) = (caller, quiet_period) else {
        return config.default;
    };
    let doubling = config.time_stake_multiplicate as f64 * 60.0;
    let scale = (period.as_secs_f64() / doubling).max(1.0);
    let value = info.stake * scale;
    if value.is_nan() {
        config.default
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(stake: f64) -> CallerInfo {
        CallerInfo {
            uid: 0,
            stake,
            validator_permit: true,
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn default_for_unregistered_and_first_requests() {
        let config = PriorityConfig {
            default: 0.5,
            ..PriorityConfig::default()
        };
        assert_eq!(priority(&config, None, Some(MINUTE)), 0.5);
        assert_eq!(priority(&config, Some(&registered(100.0)), None), 0.5);
    }

    #[test]
    fn stake_scaled_by_quiet_period() {
        let config = PriorityConfig::default(); // 10 minutes to double
        let caller = registered(100.0);
        // Busy callers get their stake.
        assert_eq!(priority(&config, Some(&caller), Some(MINUTE)), 100.0);
        assert_eq!(priority(&config, Some(&caller), Some(10 * MINUTE)), 100.0);
        // Quiet ones get more.
        assert_eq!(priority(&config, Some(&caller), Some(20 * MINUTE)), 200.0);
        assert_eq!(priority(&config, Some(&caller), Some(35 * MINUTE)), 350.0);
        assert_eq!(priority(&config, Some(&registered(0.0)), Some(MINUTE)), 0.0);
    }

    #[test]
    fn never_nan() {
        let config = PriorityConfig::default();
        assert_eq!(
            priority(&config, Some(&registered(f64::NAN)), Some(MINUTE)),
            0.0
        );
    }
}
