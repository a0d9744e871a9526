//! What the integration tests of this crate share: the tiny checkpoint and waiting with a
//! bound. Each test file uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a test waits for something the engine or pipeline should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The tiny BTLM checkpoint (2 layers, 64 wide) shipped for the tests.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btlm-tiny")
}

/// Polls `ready` every 2 ms until it holds; fails the test after [`PATIENCE`].
pub async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < PATIENCE, "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
