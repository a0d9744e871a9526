//! Test-only helpers shared by the workspace's tests: where the pinned Python venvs (made by
//! `scripts/setup-python.sh`) and the shared vectors live, recorded HTTP exchanges
//! ([`RawHttp`]), an [`Echo`] miner and [`wait_until`].
//!
//! Interop tests must not silently pass when Python is missing: [`python`] panics with the
//! command that installs it.

mod echo;
mod llama;
mod raw_http;
mod wait;

pub use echo::Echo;
pub use llama::LlamaServer;
pub use raw_http::RawHttp;
pub use wait::wait_until;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The pinned Python environments the interop tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Venv {
    /// `bittensor==10.5.0`: the legacy `Axon`/`Dendrite` and `bittensor-wallet` 4.1.1.
    Bt10,
    /// `bittensor==11.3.0`: `bittensor.http_auth` (btauth/1).
    Bt11,
    /// `llama-cpp-python[server]==0.3.36` (llama.cpp's OpenAI-compatible server) and `gguf`.
    Llama,
    /// `openai==3.57.0`: the official OpenAI Python SDK.
    OpenAi,
}

impl Venv {
    fn dir_name(self) -> &'static str {
        match self {
            Venv::Bt10 => "bt10",
            Venv::Bt11 => "bt11",
            Venv::Llama => "llama",
            Venv::OpenAi => "openai",
        }
    }

    fn env_override(self) -> &'static str {
        match self {
            Venv::Bt10 => "PROMPTING_BT10_PYTHON",
            Venv::Bt11 => "PROMPTING_BT11_PYTHON",
            Venv::Llama => "PROMPTING_LLAMA_PYTHON",
            Venv::OpenAi => "PROMPTING_OPENAI_PYTHON",
        }
    }
}

/// The workspace's top folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// The `shared/` data folder that sits beside the checkout (`../shared`), or `$PROMPTING_SHARED`.
/// Only tests that say they read `../shared` use this; the others copy fixtures into the crate.
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PROMPTING_SHARED") {
        return PathBuf::from(dir);
    }
    let dir = workspace_root().join("../shared");
    assert!(
        dir.is_dir(),
        "{} is missing: clone the project beside its shared/ folder or set PROMPTING_SHARED",
        dir.display()
    );
    dir
}

/// The interpreter of a pinned venv. Panics, naming the set-up command, when it is missing.
pub fn python(venv: Venv) -> PathBuf {
    if let Some(path) = std::env::var_os(venv.env_override()) {
        return PathBuf::from(path);
    }
    let path = workspace_root()
        .join("target/py")
        .join(venv.dir_name())
        .join("bin/python");
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/setup-python.sh {}` (or `bash .ci/run`) first",
        path.display(),
        venv.dir_name()
    );
    path
}

/// Runs `script` (Python source) in `venv` with `args`, feeding `stdin`; returns its output.
/// Panics with the script's stderr when it exits non-zero.
pub fn run_python(venv: Venv, script: &str, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(python(venv))
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("write python stdin");
    let output = child.wait_with_output().expect("wait for python");
    assert!(
        output.status.success(),
        "python failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
