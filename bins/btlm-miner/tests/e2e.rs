//! The built `btlm-miner` binary end to end on the tiny checkpoint, queried by a real Python
//! bittensor 10.5 Dendrite (needs the venv made by `scripts/setup-python.sh`; fails, does not
//! skip, without it).

#[path = "../../openai-miner/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use prompting_btlm_backend::{BtlmArgs, BtlmMiner};
use prompting_miner::{Miner, PromptRequest, Protocol};
use support::{
    MinerProcess, PYTHON_V216_WARNINGS, assert_warned, free_port, hotkey_under, python_dendrite,
    python_v216_flags, run_to_exit, warnings_only,
};

const BIN: &str = env!("CARGO_BIN_EXE_btlm-miner");

fn tiny_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/btlm-backend/tests/fixtures/btlm-tiny")
}

/// A `--dev` miner's flags on the tiny checkpoint (CPU, 8-token answers), then `extra`.
fn tiny_dev_args(wallets: &Path, port: u16, extra: &[&str]) -> Vec<String> {
    let fixed = [
        "--dev",
        "--wallet.path",
        &wallets.display().to_string(),
        "--axon.port",
        &port.to_string(),
        "--btlm.model_dir",
        &tiny_checkpoint().display().to_string(),
        "--btlm.max_length",
        "8",
        "--btlm.device",
        "cpu",
    ]
    .map(String::from);
    fixed
        .into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

/// The reference greedy continuation (24 tokens, `no_repeat_ngram_size` 2) of reference case
/// 1, "user: Write one sentence about the sea.\nassistant: ".
fn reference_text() -> String {
    let text = std::fs::read_to_string(tiny_checkpoint().join("reference_outputs.json"))
        .expect("read the reference outputs");
    let outputs: serde_json::Value = serde_json::from_str(&text).expect("reference JSON");
    let case = &outputs["cases"][1];
    assert_eq!(
        case["prompt"],
        "user: Write one sentence about the sea.\nassistant: "
    );
    case["greedy_24_no_repeat_ngram_2_text"]
        .as_str()
        .expect("reference text")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_miner_answers_a_python_dendrite_with_the_greedy_completion() {
    let roles: &[&str] = &["user"];
    let messages: &[&str] = &["Write one sentence about the sea."];

    // What the library generates for that prompt with the same settings.
    let library = BtlmMiner::from_args(&BtlmArgs {
        model_dir: Some(tiny_checkpoint()),
        max_length: 8,
        device: "cpu".into(),
        ..BtlmArgs::default()
    })
    .expect("load the tiny checkpoint");
    let request = PromptRequest::new(
        roles.iter().map(|s| s.to_string()).collect(),
        messages.iter().map(|s| s.to_string()).collect(),
        "5LibraryCaller",
        Protocol::Legacy,
        Duration::from_secs(60),
    );
    let expected = library.prompt(&request).await.expect("library completion");
    assert!(!expected.is_empty());
    assert!(
        reference_text().starts_with(&expected),
        "8 greedy tokens start the 24-token reference: {expected:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().join("wallets");
    let port = free_port();
    let args = tiny_dev_args(&wallets, port, &[]);
    let mut miner = MinerProcess::spawn(BIN, &args, port, &dir.path().join("miner.log"));
    miner.wait_ready(Duration::from_secs(120)).await;
    let hotkey = hotkey_under(&wallets);
    assert!(
        miner.log().contains(&format!(
            "serving on 127.0.0.1:{port} as hotkey {hotkey} (miner: btlm-tiny)"
        )),
        "{}",
        miner.log()
    );

    let seen = python_dendrite(port, &hotkey, &[(roles, messages)], 30.0).await;
    let answer = &seen[0];
    assert_eq!(
        answer["dendrite_status_code"],
        200,
        "{answer}\n{}",
        miner.log()
    );
    assert_eq!(answer["completion"], expected.as_str(), "{answer}");
}

/// Starts the tiny dev miner with `extra` flags, waits until it serves and returns what it
/// logged by then (the miner is stopped on return).
async fn start_up_log(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let args = tiny_dev_args(&dir.path().join("wallets"), port, extra);
    let mut miner = MinerProcess::spawn(BIN, &args, port, &dir.path().join("miner.log"));
    miner.wait_ready(Duration::from_secs(120)).await;
    miner.log()
}

/// After loading, the miner logs the answer time its start-up probe measured (information
/// for the tiny checkpoint, far within 12 s); `--btlm.speed_probe_steps 0` skips the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_speed_probe_is_logged_and_can_be_turned_off() {
    for steps in ["3", "0"] {
        let log = start_up_log(&["--btlm.speed_probe_steps", steps]).await;
        let probe = log
            .lines()
            .find(|line| line.contains("one validator alone: a prompt of 16 tokens in "));
        if steps == "0" {
            assert!(probe.is_none(), "no probe with 0 steps: {log}");
            continue;
        }
        let probe = probe.unwrap_or_else(|| panic!("the probe's line: {log}"));
        assert!(probe.contains(" INFO "), "{probe}");
        assert!(
            probe.contains("an answer of 8 tokens (--btlm.max_length) in ~"),
            "{probe}"
        );
    }
}

/// After loading, the miner reads how much of the weights' memory got 2 MiB pages and
/// logs it at debug level (a warning only for weights of 64 MiB and more, mostly in small
/// pages: not the tiny checkpoint's 1.5 MB).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weights_pages_are_read_after_loading() {
    let log = start_up_log(&["--logging.debug"]).await;
    let line = log
        .lines()
        .find(|line| line.contains("weights' memory in 2 MiB pages"))
        .unwrap_or_else(|| panic!("the weights' pages: {log}"));
    assert!(
        line.contains(" DEBUG ") && line.contains("resident_mib="),
        "{line}"
    );
    assert!(!log.contains("are in 2 MiB pages"), "no warning: {log}");
}

/// A key/value cache budget past the memory left after loading is warned about at start,
/// with one that fits (the budget of 95 TiB no host here has).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_budget_past_the_memory_left_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let args = tiny_dev_args(
        &dir.path().join("wallets"),
        port,
        &["--btlm.kv_cache_mb", "100000000"],
    );
    let mut miner = MinerProcess::spawn(BIN, &args, port, &dir.path().join("miner.log"));
    miner.wait_ready(Duration::from_secs(120)).await;
    let log = miner.log();
    let warning = log
        .lines()
        .find(|line| line.contains("(--btlm.kv_cache_mb 100000000)"))
        .unwrap_or_else(|| panic!("the budget's warning: {log}"));
    assert!(warning.contains(" WARN "), "{warning}");
    assert!(
        warning.contains("left after loading") && warning.contains("MiB fits (--btlm.kv_cache_mb "),
        "{warning}"
    );
    // The engine then holds its caches to the memory left (read every 100 ms), and says so
    // once.
    let start = std::time::Instant::now();
    let held = loop {
        let log = miner.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|line| line.contains("the key/value caches are held to"))
            .map(String::from)
            .collect();
        if !lines.is_empty() {
            break lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the engine's memory warning: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].contains(" WARN ") && held[0].contains("of their 100000000 MiB budget"),
        "{}",
        held[0]
    );
}

#[test]
fn a_missing_model_dir_is_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let absent = dir.path().join("no-model");
    let args: Vec<String> = [
        "--dev",
        "--wallet.path",
        &dir.path().display().to_string(),
        "--axon.port",
        &free_port().to_string(),
        "--btlm.model_dir",
        &absent.display().to_string(),
        "--btlm.device",
        "cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("btlm-miner: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with("btlm-miner: error: cannot load the model: "),
        "{stderr}"
    );
    assert!(
        errors[0].contains(&absent.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn invalid_btlm_flags_stop_before_the_wallet_is_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "--dev",
        "--wallet.path",
        &dir.path().display().to_string(),
        "--btlm.device",
        "tpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "a flag mistake: {stderr}");
    assert!(
        stderr
            .trim()
            .starts_with("btlm-miner: error: invalid BTLM settings: "),
        "{stderr}"
    );
    assert!(stderr.contains("--btlm.device"), "{stderr}");
    assert!(
        std::fs::read_dir(dir.path())
            .expect("read dir")
            .next()
            .is_none(),
        "no hotkey was created"
    );
}

/// The warning of `--btlm.device cuda` (the Python default) on a build without CUDA.
const NO_CUDA: &str = "this build has no CUDA support (build with `--features cuda` for a GPU, see README); running on the CPU";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    feature = "cuda",
    ignore = "the Python command line asks for --btlm.device cuda: a cuda build needs a GPU \
              (run with --include-ignored there)"
)]
async fn a_python_v216_command_line_and_its_yaml_config_start_with_warnings_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().join("wallets");
    for name in ["default", "miner"] {
        prompting_keys::Wallet::new(&wallets, name, "default")
            .create_hotkey_if_missing()
            .expect("create a hotkey");
    }
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/service/tests/fixtures/bittensor-6.1-btlm-miner.yaml"
    );
    let mut command_line = python_v216_flags(&dir.path().join("logs"));
    command_line.extend(
        [
            "--btlm.use_deepspeed",
            "--btlm.device",
            "cuda",
            "--btlm.max_length",
            "8",
        ]
        .map(String::from),
    );
    let from_yaml = vec!["--config".to_string(), config.to_string()];
    for (case, given, wallet) in [
        ("command line", command_line, "default"),
        ("YAML", from_yaml, "miner"),
    ] {
        let port = free_port();
        let mut args = given;
        args.extend(
            [
                "--wallet.path",
                &wallets.display().to_string(),
                "--axon.ip",
                "127.0.0.1",
                "--axon.port",
                &port.to_string(),
                "--btlm.model_dir",
                &tiny_checkpoint().display().to_string(),
            ]
            .map(String::from),
        );
        let log = dir.path().join(format!("{wallet}.log"));
        let mut miner = MinerProcess::spawn(BIN, &args, port, &log);
        miner.wait_ready(Duration::from_secs(120)).await;
        let hotkey = prompting_keys::Wallet::new(&wallets, wallet, "default")
            .load_hotkey_public()
            .expect("hotkey")
            .to_string();
        let roles: &[&str] = &["user"];
        let messages: &[&str] = &["Write one sentence about the sea."];
        let seen = python_dendrite(port, &hotkey, &[(roles, messages)], 30.0).await;
        assert_eq!(seen[0]["dendrite_status_code"], 200, "{case}: {}", seen[0]);
        let status = miner.terminate(Duration::from_secs(30));
        assert!(status.success(), "{case}: {status}\n{}", miner.log());
        let warnings = warnings_only(&miner.log());
        let mut expected = vec![
            "ignored --btlm.use_deepspeed: BTLM runs natively with candle",
            "--miner.mock_subtensor: no chain.",
        ];
        if !cfg!(feature = "cuda") {
            expected.push(NO_CUDA);
        }
        if case == "command line" {
            expected.extend(PYTHON_V216_WARNINGS);
        } else {
            expected.extend(["ignored --no_version_checking", "--wandb.project_name"]);
        }
        assert_warned(&warnings, &expected);
    }
}

/// A `cuda` build asked for a GPU it cannot open (none here, or no 100th one) says so on one
/// line before the wallet is touched. scripts/check-cuda.sh runs this against a driver stub.
#[cfg(feature = "cuda")]
#[test]
fn an_unavailable_cuda_device_is_one_line_before_the_wallet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "--dev",
        "--wallet.path",
        &dir.path().display().to_string(),
        "--btlm.device",
        "cuda:99",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(1),
        "the machine, not a flag mistake: {stderr}"
    );
    // The binary writes one line; without candle's backtrace (shown under RUST_BACKTRACE).
    assert!(!stderr.contains("candle_core::"), "{stderr}");
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("btlm-miner: error: device: cannot open CUDA device 99: "),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(dir.path())
            .expect("read dir")
            .next()
            .is_none(),
        "no hotkey was created"
    );
}
