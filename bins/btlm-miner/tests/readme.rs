//! README.md's `btlm-miner` commands, read from README.md itself (not a copy), run as a
//! newcomer runs them: from the repository's root, then the `dendrite` command the miner
//! prints is run through `sh` as if pasted. Two changes only, so that tests can run side by
//! side on a shared machine: `/tmp/wallets` becomes a temporary folder and a free
//! `--axon.port` is appended.

#[path = "../../openai-miner/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{MinerProcess, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_btlm-miner");
const CARGO_RUN: &str = "cargo run --release --bin btlm-miner --";
const README_WALLETS: &str = "/tmp/wallets";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The commands of README.md's `sh` blocks, continuation lines joined, comments dropped.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("read README.md");
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in readme.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// Removes terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Makes sure the `dendrite` binary sits next to `btlm-miner`, as after `cargo build`, so the
/// miner prints a command naming it (rather than `cargo run --release`, a release build).
fn build_dendrite_beside() {
    let dir = Path::new(BIN).parent().expect("the binary's folder");
    if dir.join("dendrite").is_file() {
        return;
    }
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(root())
        .args(["build", "--bin", "dendrite"]);
    if dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build --bin dendrite failed");
    assert!(dir.join("dendrite").is_file(), "no dendrite beside {BIN}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    feature = "cuda",
    ignore = "README's commands are for the default build; a cuda build opens the GPU by \
              default (run with --include-ignored on a GPU machine)"
)]
async fn every_readme_btlm_miner_command_serves_and_its_printed_dendrite_command_answers() {
    let commands: Vec<String> = readme_commands()
        .into_iter()
        .filter(|command| command.starts_with(CARGO_RUN))
        .collect();
    assert!(
        commands.len() >= 2,
        "README.md shows the btlm-miner command of \"Two commands\" and of \"Running a \
         miner\": {commands:?}"
    );
    build_dendrite_beside();
    for command in commands {
        let dir = tempfile::tempdir().expect("tempdir");
        let wallets = dir.path().join("wallets");
        let port = free_port();
        let mut args: Vec<String> = command[CARGO_RUN.len()..]
            .split_whitespace()
            .map(|word| {
                if word == README_WALLETS {
                    wallets.display().to_string()
                } else {
                    word.to_string()
                }
            })
            .collect();
        assert!(
            args.contains(&wallets.display().to_string()),
            "the README command uses --wallet.path {README_WALLETS}: {command}"
        );
        args.extend(["--axon.port".to_string(), port.to_string()]);

        let log = dir.path().join("miner.log");
        let mut miner = {
            let cwd = std::env::current_dir().expect("cwd");
            std::env::set_current_dir(root()).expect("cd to the repository");
            let miner = MinerProcess::spawn(BIN, &args, port, &log);
            std::env::set_current_dir(cwd).expect("cd back");
            miner
        };
        miner.wait_ready(Duration::from_secs(120)).await;

        // The ready-to-paste command the miner printed.
        let started = Instant::now();
        let printed = loop {
            let text = strip_ansi(&miner.log());
            if let Some(line) = text.lines().find_map(|l| l.split_once("query it with: ")) {
                break line.1.trim().to_string();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no dendrite command printed:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            printed.contains(&format!("127.0.0.1:{port}")),
            "the command targets the miner: {printed}"
        );
        let output = tokio::task::spawn_blocking(move || {
            Command::new("sh")
                .args(["-c", &printed])
                .stdin(Stdio::null())
                .output()
                .expect("run sh")
        })
        .await
        .expect("join");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "the printed dendrite command failed ({}): {stdout}\n{stderr}\nminer log:\n{}",
            output.status,
            miner.log()
        );
        assert!(
            !stdout.trim().is_empty(),
            "a completion (gibberish from the tiny checkpoint) was printed: {stderr}"
        );
        let status = miner.terminate(Duration::from_secs(20));
        assert!(status.success(), "{status}: {}", miner.log());
    }
}
