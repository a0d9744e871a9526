//! What the integration tests of this crate share: the tiny checkpoint, waiting with a
//! bound, and rerunning a test under a kernel setting read once per process. Each test file
//! uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::DType;
use prompting_btlm_backend::config::Config;
use prompting_btlm_backend::loader::LoadOptions;
use prompting_btlm_backend::model::Btlm;
use prompting_btlm_backend::options::{KvDtype, Quantization};
use prompting_btlm_backend::weights::Checkpoint;

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

/// The tiny checkpoint's weights file `file`, loaded with `opts`.
pub fn load(file: &str, opts: &LoadOptions) -> Btlm {
    let dir = fixture();
    let cfg = Config::from_json(&std::fs::read_to_string(dir.join("config.json")).expect("cfg"))
        .expect("config");
    let ckpt = Checkpoint::open(&[dir.join(file)]).expect("checkpoint");
    Btlm::load(&cfg, &ckpt, opts).expect("model")
}

/// Every weight format of the tiny checkpoint's safetensors, by name.
pub fn every_format() -> Vec<(&'static str, LoadOptions)> {
    vec![
        ("f32", LoadOptions::default()),
        (
            "bf16",
            LoadOptions {
                dtype: DType::BF16,
                ..LoadOptions::default()
            },
        ),
        (
            "f16",
            LoadOptions {
                dtype: DType::F16,
                ..LoadOptions::default()
            },
        ),
        (
            "q8_0",
            LoadOptions {
                quantization: Quantization::Q8_0,
                ..LoadOptions::default()
            },
        ),
        (
            "q4k",
            LoadOptions {
                quantization: Quantization::Q4k,
                ..LoadOptions::default()
            },
        ),
        (
            "q4k, int8 cache",
            LoadOptions {
                quantization: Quantization::Q4k,
                kv_dtype: KvDtype::Q8,
                ..LoadOptions::default()
            },
        ),
        (
            "q4k, 4-bit cache",
            LoadOptions {
                quantization: Quantization::Q4k,
                kv_dtype: KvDtype::Q4,
                ..LoadOptions::default()
            },
        ),
    ]
}
