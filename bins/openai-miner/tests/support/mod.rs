//! Helpers of the miner binaries' end-to-end tests (also used by `bins/btlm-miner/tests`):
//! the binary as a child process on loopback, and a real Python Dendrite querying it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use prompting_keys::Wallet;
use prompting_testkit::{Venv, run_python};
use serde_json::{Value, json};

/// Environment variables that would change what the flags say.
const SCRUBBED_ENV: &[&str] = &[
    "BT_AXON_IP",
    "BT_AXON_PORT",
    "BT_AXON_EXTERNAL_IP",
    "BT_AXON_EXTERNAL_PORT",
    "BT_AXON_MAX_WORKERS",
    "BT_WALLET_NAME",
    "BT_WALLET_HOTKEY",
    "BT_WALLET_PATH",
    "BT_SUBTENSOR_NETWORK",
    "BT_SUBTENSOR_CHAIN_ENDPOINT",
    "BT_LOGGING_DEBUG",
    "BT_LOGGING_TRACE",
    "BT_LOGGING_RECORD_LOG",
    "BT_LOGGING_LOGGING_DIR",
    "OPENAI_API_KEY",
    "PROMPTING_OPENAI_API_KEY",
    "RUST_LOG",
];

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn command(bin: &str, args: &[String]) -> Command {
    let mut command = Command::new(bin);
    command.args(args).stdin(Stdio::null());
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    command
}

/// A miner binary running in the background; killed when dropped.
pub struct MinerProcess {
    child: Child,
    log: PathBuf,
    /// Where it serves.
    pub addr: SocketAddr,
}

impl MinerProcess {
    /// Starts `bin` with `args`, serving on 127.0.0.1:`port`; its stderr goes to `log`.
    pub fn spawn(bin: &str, args: &[String], port: u16, log: &Path) -> MinerProcess {
        Self::spawn_with_env(bin, args, &[], port, log)
    }

    /// [`MinerProcess::spawn`] with the environment variables `env` set.
    pub fn spawn_with_env(
        bin: &str,
        args: &[String],
        env: &[(&str, &str)],
        port: u16,
        log: &Path,
    ) -> MinerProcess {
        let stderr = std::fs::File::create(log).expect("create the log file");
        let child = command(bin, args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the miner binary");
        MinerProcess {
            child,
            log: log.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// What the miner logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `limit`) until `/healthz` answers 200; panics with the log if the
    /// process exits or the time is up.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("http://{}/healthz", self.addr);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the miner") {
                panic!("the miner exited early ({status}):\n{}", self.log());
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "the miner did not serve within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl MinerProcess {
    /// Sends SIGTERM and waits (at most `limit`) for the process to exit; its status.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the miner") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the miner did not stop within {limit:?} of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MinerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bin` with `args` until it exits (at most `limit`); its status and stderr.
pub fn run_to_exit(bin: &str, args: &[String], limit: Duration) -> (ExitStatus, String) {
    let mut child = command(bin, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the miner binary");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the miner") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "the miner did not exit within {limit:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("collect output");
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The SS58 address of the default hotkey of the default wallet under `wallet_path`.
pub fn hotkey_under(wallet_path: &Path) -> String {
    Wallet::new(wallet_path, "default", "default")
        .load_hotkey_public()
        .expect("the miner wrote its hotkey")
        .to_string()
}

/// Sends each `(roles, messages)` query from a real bittensor 10.5 Dendrite (fresh keypair)
/// to the axon at 127.0.0.1:`port` signed for `hotkey`; what the Python client saw for each.
pub async fn python_dendrite(
    port: u16,
    hotkey: &str,
    queries: &[(&[&str], &[&str])],
    timeout_secs: f64,
) -> Vec<Value> {
    let queries: Vec<Value> = queries
        .iter()
        .map(|(roles, messages)| json!({"roles": roles, "messages": messages}))
        .collect();
    let spec = json!({"port": port, "hotkey": hotkey, "timeout": timeout_secs, "queries": queries});
    let script = include_str!("../python/dendrite_query.py");
    let output = tokio::task::spawn_blocking(move || {
        run_python(Venv::Bt10, script, &[], spec.to_string().as_bytes())
    })
    .await
    .expect("python task");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "python output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The flags issue 14 lists from Python v2.1.6 miner command lines, verbatim (with values
/// where they take one), but `--miner.no_start_axon`: with the mock subtensor there would be
/// nothing left to run. `--miner.mock_subtensor` keeps the miner off the chain; the log file
/// goes under `logging_dir`.
pub fn python_v216_flags(logging_dir: &Path) -> Vec<String> {
    let logging_dir = logging_dir.display().to_string();
    [
        "--netuid",
        "1",
        "--miner.root",
        "~/.bittensor/miners/",
        "--miner.name",
        "my miner",
        "--miner.mock_subtensor",
        "--miner.blacklist.force_validator_permit",
        "--miner.blocks_per_epoch",
        "100",
        "--wandb.on",
        "--wandb.off",
        "--wandb.project_name",
        "prompting",
        "--wandb.entity",
        "my-team",
        "--wandb.tags",
        "miner",
        "--wandb.run_name",
        "run-1",
        "--wandb.notes",
        "switching to Rust",
        "--wandb.offline",
        "--wandb.job_type",
        "mining",
        "--wandb.weights_step_length",
        "10",
        "--logging.record_log",
        "--logging.logging_dir",
        &logging_dir,
        "--logging.debug",
        "--strict",
        "--no_version_checking",
        "--no_prompt",
        "--neuron.device",
        "cuda",
        "--neuron.name",
        "core_prompting_miner",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The warning lines of a miner's log, after checking it has no error line.
pub fn warnings_only(log: &str) -> Vec<String> {
    for line in log.lines() {
        assert!(
            !line.contains(" ERROR ") && !line.contains("error:"),
            "an error in the log: {line}\n{log}"
        );
    }
    log.lines()
        .filter(|line| line.contains(" WARN "))
        .map(str::to_string)
        .collect()
}

/// Asserts one of `warnings` contains each of `expected`.
pub fn assert_warned(warnings: &[String], expected: &[&str]) {
    for text in expected {
        assert!(
            warnings.iter().any(|line| line.contains(text)),
            "no warning says {text:?}:\n{}",
            warnings.join("\n")
        );
    }
}

/// The ignored-flag warnings every Python v2.1.6 command line of [`python_v216_flags`] gives.
pub const PYTHON_V216_WARNINGS: &[&str] = &[
    "ignored --miner.root, --miner.name: the Python miner's trial folder",
    "ignored --wandb.on, --wandb.off, --wandb.project_name, --wandb.entity, --wandb.tags, --wandb.run_name, --wandb.notes, --wandb.offline, --wandb.job_type, --wandb.weights_step_length: Weights & Biases is not used here; the metrics are on /metrics (Prometheus)",
    "ignored --strict: unknown flags are always refused here",
    "ignored --no_version_checking: no version check is made",
    "ignored --no_prompt: the miners never prompt",
    "ignored --neuron.device, --neuron.name: validator settings; this is a miner",
    "--miner.mock_subtensor: no chain.",
];
