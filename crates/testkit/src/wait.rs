//! Waiting for a condition in async tests, with a bound.

use std::time::Duration;

/// Polls `check` every 25 ms until it holds; panics naming `what` after 20 s.
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..800 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}
