//! The queue's admission settings (`--miner.admission.*`): deadline-aware admission and the
//! order among equal priorities under overload. See `docs/pipeline.md`, "Overload".

use std::time::Duration;

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::scheduler::Policy;

/// How the priority queue admits requests under load (`--miner.admission.*`, the
/// `[miner.admission]` table of a config file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct AdmissionConfig {
    /// Grant a waiting request a worker whatever time it has left (it is then cancelled at
    /// its deadline if it cannot finish). By default a waiting request whose time left is
    /// not above its expected service time is refused as overloaded (503) at once.
    #[cfg_attr(feature = "cli", arg(long = "miner.admission.ignore_deadlines"))]
    pub ignore_deadlines: bool,

    /// A waiting request is granted a worker only with more than its expected service time
    /// × this factor left before its deadline (with answers cut short at
    /// --miner.answer_margin_ms: its expected time to first chunk × this factor, plus that
    /// margin).
    #[cfg_attr(feature = "cli", arg(
        long = "miner.admission.margin",
        default_value_t = DEFAULT_MARGIN
    ))]
    pub margin: f64,

    /// The expected service time of a request is this quantile of the worker-hold times of
    /// the recent requests of its priority or higher (1 = the slowest of them), and its
    /// expected time to first chunk the same quantile of theirs; none of those: no
    /// expected time, nothing refused on it.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.admission.service_quantile",
        default_value_t = DEFAULT_SERVICE_QUANTILE
    ))]
    pub service_quantile: f64,

    /// How many recent requests, of every priority (answered, or cut off at their deadline
    /// after holding their worker longer than the estimate for their priority), the
    /// expected service times are taken from.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.admission.service_samples",
        default_value_t = DEFAULT_SERVICE_SAMPLES
    ))]
    pub service_samples: usize,

    /// Milliseconds the queue must have been non-empty before equal priorities are served
    /// newest first (the one with the most time left); until then, and after the queue
    /// empties, oldest first.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.admission.lifo_after_ms",
        default_value_t = DEFAULT_LIFO_AFTER_MS
    ))]
    pub lifo_after_ms: u64,

    /// Always serve equal priorities oldest first, however backed up the queue is.
    #[cfg_attr(feature = "cli", arg(long = "miner.admission.fifo"))]
    pub fifo: bool,
}

/// Default for `--miner.admission.margin`.
pub const DEFAULT_MARGIN: f64 = 1.0;
/// Default for `--miner.admission.service_quantile`.
pub const DEFAULT_SERVICE_QUANTILE: f64 = 0.9;
/// Default for `--miner.admission.service_samples`.
pub const DEFAULT_SERVICE_SAMPLES: usize = 50;
/// Default for `--miner.admission.lifo_after_ms`.
pub const DEFAULT_LIFO_AFTER_MS: u64 = 1000;

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            ignore_deadlines: false,
            margin: DEFAULT_MARGIN,
            service_quantile: DEFAULT_SERVICE_QUANTILE,
            service_samples: DEFAULT_SERVICE_SAMPLES,
            lifo_after_ms: DEFAULT_LIFO_AFTER_MS,
            fifo: false,
        }
    }
}

impl AdmissionConfig {
    /// Checks the values; the error names the flag at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |flag, reason: String| Err(ConfigError::Invalid { flag, reason });
        if !self.margin.is_finite() || self.margin < 0.0 {
            return invalid(
                "miner.admission.margin",
                format!("must be a finite factor ≥ 0, got {}", self.margin),
            );
        }
        let q = self.service_quantile;
        if !(q > 0.0 && q <= 1.0) {
            return invalid(
                "miner.admission.service_quantile",
                format!("must be in (0, 1], got {q}"),
            );
        }
        if self.service_samples == 0 {
            return invalid(
                "miner.admission.service_samples",
                "must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// The scheduler's policy for these settings.
    pub(crate) fn policy(&self) -> Policy {
        Policy {
            deadline_aware: !self.ignore_deadlines,
            margin: self.margin,
            lifo_after: (!self.fifo).then(|| Duration::from_millis(self.lifo_after_ms)),
            service_samples: self.service_samples,
            service_quantile: self.service_quantile,
            // Set by the pipeline: from `--miner.priority.preempt`, and from
            // `--miner.answer_margin_ms` when its backend streams as it generates.
            preempt: None,
            answer_margin: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag_of(c: AdmissionConfig) -> &'static str {
        match c.validate() {
            Err(ConfigError::Invalid { flag, .. }) => flag,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nonsense_is_refused_naming_the_flag() {
        let d = AdmissionConfig::default;
        for margin in [-0.5, f64::NAN, f64::INFINITY] {
            let c = AdmissionConfig { margin, ..d() };
            assert_eq!(flag_of(c), "miner.admission.margin");
        }
        for service_quantile in [0.0, 1.5, f64::NAN] {
            let c = AdmissionConfig {
                service_quantile,
                ..d()
            };
            assert_eq!(flag_of(c), "miner.admission.service_quantile");
        }
        let c = AdmissionConfig {
            service_samples: 0,
            ..d()
        };
        assert_eq!(flag_of(c), "miner.admission.service_samples");
        d().validate().expect("defaults are valid");
    }

    #[test]
    fn settings_become_the_scheduler_policy() {
        let p = AdmissionConfig::default().policy();
        assert_eq!(p, Policy::default());
        let p = AdmissionConfig {
            ignore_deadlines: true,
            fifo: true,
            margin: 1.5,
            service_samples: 7,
            service_quantile: 0.5,
            lifo_after_ms: 10,
        }
        .policy();
        assert!(!p.deadline_aware);
        assert_eq!(p.lifo_after, None);
        assert_eq!(
            (p.margin, p.service_samples, p.service_quantile),
            (1.5, 7, 0.5)
        );
        let p = AdmissionConfig {
            lifo_after_ms: 250,
            ..AdmissionConfig::default()
        }
        .policy();
        assert_eq!(p.lifo_after, Some(Duration::from_millis(250)));
    }
}
