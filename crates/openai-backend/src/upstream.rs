//! The configured upstreams: round-robin between requests, and a cool-down per upstream while
//! it has asked (with `Retry-After`) not to be called.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use reqwest::Url;
use tokio::time::Instant;

/// One chat-completions API.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The base URL as configured, for logs (never shown to callers).
    pub label: String,
    /// `{base_url}/chat/completions`.
    pub endpoint: Url,
    /// Not to be called before this instant.
    cooldown_until: Mutex<Option<Instant>>,
}

/// Which upstream to call next, and from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pick {
    pub index: usize,
    /// `Some` when every upstream is cooling down: this one is ready first, at that instant.
    pub ready_at: Option<Instant>,
}

/// All upstreams, shared by every request.
#[derive(Debug)]
pub(crate) struct UpstreamPool {
    upstreams: Vec<Upstream>,
    cursor: AtomicUsize,
}

impl UpstreamPool {
    /// A pool over `(label, endpoint)` pairs; there must be at least one.
    pub fn new(upstreams: Vec<(String, Url)>) -> Self {
        UpstreamPool {
            upstreams: upstreams
                .into_iter()
                .map(|(label, endpoint)| Upstream {
                    label,
                    endpoint,
                    cooldown_until: Mutex::new(None),
                })
                .collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// How many upstreams there are.
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    /// The upstream at `index`.
    pub fn get(&self, index: usize) -> &Upstream {
        &self.upstreams[index % self.upstreams.len()]
    }

    /// Where a new request starts: successive requests start at successive upstreams.
    pub fn next_start(&self) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed) % self.upstreams.len()
    }

    /// The first upstream from `from` on (wrapping) that is not cooling down at `now`, or, if
    /// all are, the one that is ready soonest.
    pub fn pick(&self, from: usize, now: Instant) -> Pick {
        let len = self.upstreams.len();
        let mut soonest: Option<(usize, Instant)> = None;
        for offset in 0..len {
            let index = (from + offset) % len;
            match *self.upstreams[index].cooldown_until.lock() {
                Some(until) if until > now => {
                    if soonest.is_none_or(|(_, best)| until < best) {
                        soonest = Some((index, until));
                    }
                }
                _ => {
                    return Pick {
                        index,
                        ready_at: None,
                    };
                }
            }
        }
        match soonest {
            Some((index, until)) => Pick {
                index,
                ready_at: Some(until),
            },
            None => Pick {
                index: from % len,
                ready_at: None,
            },
        }
    }

    /// Keeps the upstream at `index` unused until `until` (a later cool-down already set wins).
    pub fn cool_down(&self, index: usize, until: Instant) {
        let mut cooldown = self.get(index).cooldown_until.lock();
        if cooldown.is_none_or(|current| current < until) {
            *cooldown = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pool(n: usize) -> UpstreamPool {
        UpstreamPool::new(
            (0..n)
                .map(|i| {
                    let label = format!("http://u{i}/v1");
                    let endpoint = Url::parse(&format!("{label}/chat/completions")).expect("url");
                    (label, endpoint)
                })
                .collect(),
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
        assert_eq!(
            pool.pick(1, now),
            Pick {
                index: 1,
                ready_at: None
            }
        );
        pool.cool_down(1, now + Duration::from_secs(5));
        assert_eq!(
            pool.pick(1, now),
            Pick {
                index: 2,
                ready_at: None
            }
        );
        // Ready again once the cool-down has passed.
        assert_eq!(
            pool.pick(1, now + Duration::from_secs(5)),
            Pick {
                index: 1,
                ready_at: None
            }
        );
    }

    #[test]
    fn when_all_cool_down_the_soonest_ready_is_picked() {
        let pool = pool(3);
        let now = Instant::now();
        pool.cool_down(0, now + Duration::from_secs(9));
        pool.cool_down(1, now + Duration::from_secs(3));
        pool.cool_down(2, now + Duration::from_secs(6));
        assert_eq!(
            pool.pick(2, now),
            Pick {
                index: 1,
                ready_at: Some(now + Duration::from_secs(3))
            }
        );
        // A shorter cool-down does not shorten a longer one.
        pool.cool_down(1, now + Duration::from_secs(1));
        assert_eq!(
            pool.pick(0, now).ready_at,
            Some(now + Duration::from_secs(3))
        );
    }
}
