//! The configured upstreams: round-robin between requests, and a cool-down per upstream while
//! it has asked (with `Retry-After`) not to be called.
//!
//! A cooling upstream is skipped while another is usable. When every upstream cools down,
//! requests are not all refused until the longest `Retry-After` has passed: one request at a
//! time *probes* a cooling upstream (at most one probe per `--openai.probe_interval`), the
//! others wait for its outcome; a probe that succeeds ends the cool-down at once, so a
//! single-upstream miner recovers as soon as its upstream does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::Url;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One chat-completions API.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The base URL as configured, for logs (never shown to callers).
    pub label: String,
    /// `{base_url}/chat/completions`.
    pub endpoint: Url,
    health: Mutex<Health>,
}

/// Whether an upstream may be called.
#[derive(Debug, Default)]
struct Health {
    /// Not to be called (except by a probe) before this instant.
    cooldown_until: Option<Instant>,
    /// A probe is in flight.
    probing: bool,
    /// The next probe may not start before this instant.
    next_probe_at: Option<Instant>,
}

impl Health {
    fn cooling(&self, now: Instant) -> bool {
        self.cooldown_until.is_some_and(|until| until > now)
    }

    /// When a probe could start: `None` while one is in flight.
    fn probe_at(&self, now: Instant) -> Option<Instant> {
        if self.probing {
            return None;
        }
        Some(self.next_probe_at.map_or(now, |at| at.max(now)))
    }
}

/// What to do next, from [`UpstreamPool::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Call the upstream at `index` from `at` on (then [`UpstreamPool::claim`] it).
    Call { index: usize, at: Instant },
    /// Every upstream cools down and is being probed: wait for a probe to end
    /// ([`UpstreamPool::probe_ended`]), or until `until`, when the first cool-down ends.
    Wait { until: Instant },
}

/// The right to call an upstream; for a probe, ends the probe when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    pool: Arc<PoolShared>,
    index: usize,
    probe: bool,
}

impl Claim {
    /// The upstream claimed.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this call probes a cooling upstream.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.probe {
            self.pool.upstreams[self.index].health.lock().probing = false;
            self.pool.probe_ended.notify_waiters();
        }
    }
}

#[derive(Debug)]
struct PoolShared {
    upstreams: Vec<Upstream>,
    probe_ended: Notify,
}

/// All upstreams, shared by every request.
#[derive(Debug)]
pub(crate) struct UpstreamPool {
    shared: Arc<PoolShared>,
    cursor: AtomicUsize,
    probe_interval: Duration,
}

impl UpstreamPool {
    /// A pool over `(label, endpoint)` pairs (there must be at least one) probing cooling
    /// upstreams at most once per `probe_interval`.
    pub fn new(upstreams: Vec<(String, Url)>, probe_interval: Duration) -> Self {
        UpstreamPool {
            shared: Arc::new(PoolShared {
                upstreams: upstreams
                    .into_iter()
                    .map(|(label, endpoint)| Upstream {
                        label,
                        endpoint,
                        health: Mutex::new(Health::default()),
                    })
                    .collect(),
                probe_ended: Notify::new(),
            }),
            cursor: AtomicUsize::new(0),
            probe_interval,
        }
    }

    /// How many upstreams there are.
    pub fn len(&self) -> usize {
        self.shared.upstreams.len()
    }

    /// The upstream at `index`.
    pub fn get(&self, index: usize) -> &Upstream {
        &self.shared.upstreams[index % self.len()]
    }

    /// Where a new request starts: successive requests start at successive upstreams.
    pub fn next_start(&self) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed) % self.len()
    }

    /// The first upstream from `from` on (wrapping) that is not cooling down at `now`; if
    /// all are, the one that can be probed (or leaves its cool-down) soonest; if every one
    /// is being probed, a [`Plan::Wait`].
    pub fn plan(&self, from: usize, now: Instant) -> Plan {
        let len = self.len();
        let mut soonest_probe: Option<(usize, Instant)> = None;
        let mut first_recovery: Option<Instant> = None;
        for offset in 0..len {
            let index = (from + offset) % len;
            let health = self.shared.upstreams[index].health.lock();
            if !health.cooling(now) {
                return Plan::Call { index, at: now };
            }
            let until = health.cooldown_until.unwrap_or(now);
            let ready = match health.probe_at(now) {
                Some(probe_at) => probe_at.min(until),
                None => {
                    first_recovery = Some(first_recovery.map_or(until, |at| at.min(until)));
                    continue;
                }
            };
            if soonest_probe.is_none_or(|(_, best)| ready < best) {
                soonest_probe = Some((index, ready));
            }
        }
        match (soonest_probe, first_recovery) {
            (Some((index, at)), _) => Plan::Call { index, at },
            (None, until) => Plan::Wait {
                until: until.unwrap_or(now),
            },
        }
    }

    /// Claims the upstream at `index` for a call starting `now`: always granted when it is
    /// not cooling down; while it is, granted as a probe when no probe is in flight and the
    /// last one started at least `--openai.probe_interval` ago. `None` when not granted (plan
    /// again).
    pub fn claim(&self, index: usize, now: Instant) -> Option<Claim> {
        let index = index % self.len();
        let mut health = self.shared.upstreams[index].health.lock();
        let probe = health.cooling(now);
        if probe {
            if health.probe_at(now).is_none_or(|at| at > now) {
                return None;
            }
            health.probing = true;
            health.next_probe_at = Some(now + self.probe_interval);
        }
        Some(Claim {
            pool: Arc::clone(&self.shared),
            index,
            probe,
        })
    }

    /// Resolves when a probe ends (create it before [`UpstreamPool::plan`] so no end is
    /// missed).
    pub fn probe_ended(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.probe_ended.notified()
    }

    /// Keeps the upstream at `index`, which asked at `now` to wait until `until`, unused
    /// until then (a later cool-down already set wins) but for probes, the first of them one
    /// probe interval after `now`.
    pub fn cool_down(&self, index: usize, now: Instant, until: Instant) {
        let mut health = self.get(index).health.lock();
        if health.cooldown_until.is_none_or(|current| current < until) {
            health.cooldown_until = Some(until);
        }
        let next_probe = now + self.probe_interval;
        if health.next_probe_at.is_none_or(|at| at < next_probe) {
            health.next_probe_at = Some(next_probe);
        }
    }

    /// The upstream at `index` answered: its cool-down, if any, is over.
    pub fn recovered(&self, index: usize) {
        let mut health = self.get(index).health.lock();
        if health.cooldown_until.take().is_some() {
            tracing::info!(upstream = %self.get(index).label, "the upstream answers again: its cool-down ends");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE_INTERVAL: Duration = Duration::from_secs(1);

    fn pool(n: usize) -> UpstreamPool {
        UpstreamPool::new(
            (0..n)
                .map(|i| {
                    let label = format!("http://u{i}/v1");
                    let endpoint = Url::parse(&format!("{label}/chat/completions")).expect("url");
                    (label, endpoint)
                })
                .collect(),
            PROBE_INTERVAL,
        )
    }

    #[test]
    fn requests_start_round_robin() {
        let pool = pool(3);
        let starts: Vec<usize> = (0..7).map(|_| pool.next_start()).collect();
        assert_eq!(starts, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn cooling_upstreams_are_skipped_until_they_are_ready() {
        let pool = pool(3);
        let now = Instant::now();
        assert_eq!(pool.plan(1, now), Plan::Call { index: 1, at: now });
        pool.cool_down(1, now, now + Duration::from_secs(5));
        assert_eq!(pool.plan(1, now), Plan::Call { index: 2, at: now });
        // Ready again once the cool-down has passed.
        let later = now + Duration::from_secs(5);
        assert_eq!(
            pool.plan(1, later),
            Plan::Call {
                index: 1,
                at: later
            }
        );
        let claim = pool.claim(1, later).expect("not cooling");
        assert!(!claim.is_probe());
    }

    #[test]
    fn when_all_cool_down_one_request_at_a_time_probes() {
        let pool = pool(2);
        let start = Instant::now();
        pool.cool_down(0, start, start + Duration::from_secs(100));
        pool.cool_down(1, start, start + Duration::from_secs(50));
        // The first probe of each waits one probe interval after its 429.
        assert_eq!(
            pool.plan(0, start),
            Plan::Call {
                index: 0,
                at: start + PROBE_INTERVAL
            }
        );
        assert!(pool.claim(0, start).is_none());
        let now = start + PROBE_INTERVAL;
        assert_eq!(pool.plan(0, now), Plan::Call { index: 0, at: now });
        let first = pool.claim(0, now).expect("probe granted");
        assert!(first.is_probe());
        assert!(pool.claim(0, now).is_none(), "one probe at a time");
        assert_eq!(pool.plan(0, now), Plan::Call { index: 1, at: now });
        let second = pool.claim(1, now).expect("probe of the other one");
        // Both probed: wait for a probe to end (or the first cool-down to pass).
        assert_eq!(
            pool.plan(0, now),
            Plan::Wait {
                until: start + Duration::from_secs(50)
            }
        );
        drop(first);
        // The next probe of upstream 0 waits for the probe interval.
        assert_eq!(
            pool.plan(0, now),
            Plan::Call {
                index: 0,
                at: now + PROBE_INTERVAL
            }
        );
        assert!(pool.claim(0, now).is_none());
        assert!(pool.claim(0, now + PROBE_INTERVAL).is_some());
        drop(second);
    }

    #[test]
    fn a_successful_call_ends_the_cool_down_and_a_later_one_is_not_shortened() {
        let pool = pool(1);
        let now = Instant::now();
        pool.cool_down(0, now, now + Duration::from_secs(9));
        pool.cool_down(0, now, now + Duration::from_secs(1));
        assert!(
            pool.claim(0, now + Duration::from_secs(5))
                .expect("probe")
                .is_probe(),
            "still cooling at 5 s"
        );
        pool.recovered(0);
        let claim = pool.claim(0, now).expect("not cooling");
        assert!(!claim.is_probe());
    }
}
