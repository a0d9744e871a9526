//! What the integration tests of this crate share: the tiny checkpoint, waiting with a
//! bound, and rerunning a test under a kernel setting read once per process. Each test file
//! uses part of it.
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

/// Whether this process runs with `BTLM_MANY_ROWS=rows` (the kernels read it once per
/// process): if not, runs test `test` of this binary in a child process that does, asserts
/// that it passed, and returns false (the caller returns); true in the child.
pub fn with_many_rows(test: &str, rows: &str) -> bool {
    if std::env::var("BTLM_MANY_ROWS").as_deref() == Ok(rows) {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("BTLM_MANY_ROWS", rows)
        .output()
        .expect("child test");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}"
    );
    false
}
