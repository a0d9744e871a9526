//! `parse_args`: flags, the `--config` file underneath them, and the errors naming the file.

use std::net::IpAddr;
use std::path::Path;

use clap::{CommandFactory, Parser};
use prompting_service::{CliError, CommonArgs, MinerCli, parse_args};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

impl MinerCli for Cli {
    fn common_mut(&mut self) -> &mut CommonArgs {
        &mut self.common
    }
}

fn parse(args: &[&str]) -> Result<CommonArgs, CliError> {
    let argv = std::iter::once("miner").chain(args.iter().copied());
    parse_args::<Cli, _, _>(argv).map(|cli| cli.common)
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("miner.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

const CONFIG: &str = r#"
netuid = 21
dev = true

[axon]
ip = "127.0.0.2"
port = 9100
read_timeout = 2.5

[miner]
max_concurrent = 3
blocks_per_epoch = 7
no_set_weights = true

[miner.blacklist]
whitelist = ["5Allowed1", "5Allowed2"]
force_validator_permit = true
use_prompt_cache = false

[logging]
debug = true
"#;

#[test]
fn the_parser_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn file_values_fill_what_the_command_line_does_not_give() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), CONFIG);
    let args = parse(&["--config", &config]).expect("parse");
    assert_eq!(args.subtensor.netuid, 21);
    assert!(args.dev);
    assert_eq!(args.axon.ip, "127.0.0.2".parse::<IpAddr>().expect("ip"));
    assert!(args.axon_ip_given, "--axon.ip came from the file");
    assert_eq!(args.axon.port, 9100);
    assert_eq!(args.axon.read_timeout, 2.5);
    assert_eq!(args.miner.max_concurrent, 3);
    assert_eq!(args.subtensor.blocks_per_epoch, 7);
    assert!(args.subtensor.no_set_weights);
    assert_eq!(
        args.miner.blacklist.whitelist,
        vec!["5Allowed1".to_string(), "5Allowed2".to_string()]
    );
    assert!(args.miner.blacklist.force_validator_permit);
    assert!(!args.miner.blacklist.use_prompt_cache);
    assert!(args.logging.debug && !args.logging.trace);
    // Keys the file does not mention keep their defaults.
    assert_eq!(args.miner.max_queue, 64);
    assert_eq!(args.axon.max_connections, 1024);
}

#[test]
fn command_line_flags_win_and_replace_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), CONFIG);
    let args = parse(&[
        "--axon.port",
        "9200",
        "--config",
        &config,
        "--miner.max_concurrent",
        "5",
        "--miner.blacklist.whitelist",
        "5FromFlag",
        "--netuid",
        "3",
    ])
    .expect("parse");
    assert_eq!(args.axon.port, 9200);
    assert_eq!(args.miner.max_concurrent, 5);
    assert_eq!(
        args.miner.blacklist.whitelist,
        vec!["5FromFlag".to_string()]
    );
    assert_eq!(args.subtensor.netuid, 3);
    // The rest still comes from the file.
    assert_eq!(args.axon.read_timeout, 2.5);
    assert!(args.miner.blacklist.force_validator_permit);
}

#[test]
fn without_a_file_defaults_apply_and_axon_ip_is_not_given() {
    let args = parse(&["--dev"]).expect("parse");
    assert!(args.dev);
    assert!(!args.axon_ip_given);
    assert_eq!(args.config, None);
    assert_eq!(args.miner.max_concurrent, 8);
    let args = parse(&["--dev", "--axon.ip", "0.0.0.0"]).expect("parse");
    assert!(args.axon_ip_given);
}

#[test]
fn empty_lists_and_false_switches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "[miner.blacklist]\nwhitelist = []\nallow_non_registered = false\n",
    );
    let args = parse(&["--config", &config]).expect("parse");
    assert!(args.miner.blacklist.whitelist.is_empty());
    assert!(!args.miner.blacklist.allow_non_registered);
}

fn invalid_message(result: Result<CommonArgs, CliError>) -> String {
    match result {
        Err(err @ CliError::Invalid { .. }) => err.to_string(),
        other => panic!("expected a config file error, got {other:?}"),
    }
}

#[test]
fn unknown_keys_and_bad_values_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "[axon]\nprot = 9000\n");
    let message = invalid_message(parse(&["--config", &config]));
    assert!(message.contains(&config), "{message}");
    assert!(message.contains("axon.prot"), "{message}");

    let config = write_config(dir.path(), "[axon]\nport = \"ninety\"\n");
    let message = invalid_message(parse(&["--config", &config]));
    assert!(message.contains("--axon.port"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");

    // bittensor's printed config names its own file: skipped, with a warning.
    let config = write_config(dir.path(), "config = \"other.toml\"\n");
    let args = parse(&["--config", &config]).expect("parse");
    assert_eq!(args.ignored.len(), 1);
    assert_eq!(args.ignored[0].flag, "config");

    let config = write_config(dir.path(), "dev = \"maybe\"\n");
    let message = invalid_message(parse(&["--config", &config]));
    assert!(
        message.contains("`dev`: expected true or false"),
        "{message}"
    );

    let config = write_config(dir.path(), "[axon\nport = 1\n");
    let message = invalid_message(parse(&["--config", &config]));
    assert!(
        message.starts_with(&format!("config file {config}: ")),
        "{message}"
    );

    // A flag the file sets but the flag refuses to repeat.
    let config = write_config(dir.path(), "[axon]\nport = [1, 2]\n");
    let message = invalid_message(parse(&["--config", &config]));
    assert!(message.contains("--axon.port"), "{message}");
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml").display().to_string();
    match parse(&["--config", &path]) {
        Err(err @ CliError::Read { .. }) => {
            let message = err.to_string();
            assert!(message.contains(&path), "{message}");
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn command_line_mistakes_are_usage_errors() {
    assert!(matches!(
        parse(&["--axon.port", "x"]),
        Err(CliError::Usage(_))
    ));
    assert!(matches!(
        parse(&["--dev", "--metagraph.file", "m.toml"]),
        Err(CliError::Usage(_))
    ));
    assert!(matches!(parse(&["--help"]), Err(CliError::Usage(_))));
}

#[path = "support/python_flags.rs"]
mod python_flags;

fn write_named(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn every_shared_python_flag_is_accepted_as_the_fixture_says() {
    python_flags::check_parser::<Cli>("all");
}

#[test]
fn ignored_python_flags_are_named_in_one_warning_per_reason() {
    let args = parse(&[
        "--wandb.on",
        "--wandb.project_name",
        "p",
        "--miner.name",
        "m",
        "--neuron.device",
        "cuda",
        "--netuid",
        "3",
    ])
    .expect("parse");
    assert_eq!(args.subtensor.netuid, 3);
    let lines = prompting_service::python_compat::warning_lines(&args.ignored);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("ignored --wandb.on, --wandb.project_name: "));
    assert!(lines[0].ends_with("the metrics are on /metrics (Prometheus)"));
    assert!(lines[1].starts_with("ignored --miner.name: "));
    assert!(lines[2].starts_with("ignored --neuron.device: validator settings"));
}

/// A bittensor-style YAML file: nested tables, `__is_set`, nulls, quoted `'on'`, derived keys.
const YAML: &str = r#"axon:
  __is_set: {}
  external_ip: null
  ip: '[::]'
  max_workers: 3
  port: 9100
config: null
full_path: /home/operator/.bittensor/miners/default/default/netuid1/miner
logging:
  __is_set: {}
  debug: true
  record_log: false
miner:
  __is_set: {}
  blacklist:
    __is_set: {}
    blacklist: []
    force_validator_permit: yes
    whitelist:
    - 5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX
  full_path: /home/operator/.bittensor/miners/default/default/Bittensor Miner
  mock_subtensor: true
  name: Bittensor Miner
  root: ~/.bittensor/miners/
netuid: 21
strict: false
subtensor:
  chain_endpoint: wss://entrypoint-finney.opentensor.ai:443
  network: finney
wandb:
  __is_set: {}
  entity: null
  'on': true
  project_name: null
"#;

#[test]
fn bittensor_yaml_configs_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_named(dir.path(), "miner.yaml", YAML);
    let args = parse(&["--config", &config, "--axon.port", "9200"]).expect("parse");
    assert_eq!(args.axon.ip, "::".parse::<IpAddr>().expect("ip"));
    assert!(args.axon_ip_given);
    assert_eq!(args.axon.port, 9200, "the command line wins");
    assert_eq!(args.axon.max_workers, Some(3));
    assert_eq!(args.axon.external_ip, None);
    assert!(args.logging.debug && !args.logging.record_log);
    assert!(
        args.miner.blacklist.force_validator_permit,
        "YAML 1.1 `yes`"
    );
    assert!(args.miner.blacklist.blacklist.is_empty());
    assert_eq!(args.miner.blacklist.whitelist.len(), 1);
    assert!(args.mock_subtensor);
    assert_eq!(args.subtensor.netuid, 21);
    // The Python defaults (miner.name, miner.root), nulls and `strict: false` change nothing
    // there: only `wandb.on: true` is worth a warning.
    let lines = prompting_service::python_compat::warning_lines(&args.ignored);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ignored --wandb.on: "), "{lines:?}");

    // `.yml` is YAML too; the extension decides.
    let yml = write_named(dir.path(), "miner.yml", "netuid: 4\n");
    assert_eq!(parse(&["--config", &yml]).expect("yml").subtensor.netuid, 4);
    let other = write_named(dir.path(), "miner.conf", "netuid: 4\n");
    let err = parse(&["--config", &other]).expect_err("unknown extension");
    assert!(err.to_string().contains("unknown format"), "{err}");
}

#[test]
fn yaml_mistakes_name_the_line_or_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_named(dir.path(), "bad.yaml", "axon:\n  port: 9100\n ip: 1\n");
    let err = parse(&["--config", &config]).expect_err("bad indentation");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("config file {config}: line 3, column ")),
        "{message}"
    );
    let config = write_named(dir.path(), "typo.yaml", "axon:\n  prot: 9100\n");
    let err = parse(&["--config", &config]).expect_err("unknown key");
    assert_eq!(
        err.to_string(),
        format!("config file {config}: unknown key `axon.prot` (there is no --axon.prot)")
    );
    let config = write_named(dir.path(), "value.yaml", "axon:\n  port: many\n");
    let err = parse(&["--config", &config]).expect_err("bad value");
    assert!(err.to_string().contains("many"), "{err}");
    let config = write_named(dir.path(), "bool.yaml", "dev: maybe\n");
    let err = parse(&["--config", &config]).expect_err("bad switch");
    assert!(
        err.to_string().contains("`dev`: expected true or false"),
        "{err}"
    );
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "netuid = 1\n[axon\nport = 1\n");
    let err = parse(&["--config", &config]).expect_err("bad table header");
    assert!(
        err.to_string()
            .starts_with(&format!("config file {config}: line 2, column ")),
        "{err}"
    );
}

#[test]
fn network_and_endpoint_follow_their_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_named(
        dir.path(),
        "chain.yaml",
        "subtensor:\n  chain_endpoint: wss://entrypoint-finney.opentensor.ai:443\n  network: finney\n",
    );
    // A network on the command line beats an endpoint from the file.
    let args = parse(&["--config", &config, "--subtensor.network", "test"]).expect("parse");
    assert_eq!(
        args.subtensor.endpoint(),
        prompting_chain::args::TEST_ENDPOINT
    );
    // From the same source the endpoint wins.
    let args = parse(&["--config", &config]).expect("parse");
    assert_eq!(
        args.subtensor.endpoint(),
        prompting_chain::args::FINNEY_ENDPOINT
    );
    let args = parse(&[
        "--subtensor.network",
        "test",
        "--subtensor.chain_endpoint",
        "ws://127.0.0.1:9944",
    ])
    .expect("parse");
    assert_eq!(args.subtensor.endpoint(), "ws://127.0.0.1:9944");
    // A URL as the network, as bittensor allows.
    let args = parse(&["--subtensor.network", "ws://10.1.2.3:9944"]).expect("parse");
    assert_eq!(args.subtensor.endpoint(), "ws://10.1.2.3:9944");
}

#[test]
fn the_log_file_goes_where_the_python_miner_puts_it() {
    let args = parse(&[
        "--logging.record_log",
        "--logging.logging_dir",
        "/var/log/miners",
        "--wallet.name",
        "cold",
        "--wallet.hotkey",
        "hot",
        "--netuid",
        "9",
    ])
    .expect("parse");
    assert_eq!(
        args.log_file(),
        Some("/var/log/miners/cold/hot/netuid9/miner/logs.log".into())
    );
    assert_eq!(parse(&[]).expect("parse").log_file(), None);
}

#[test]
fn openai_api_keys_come_repeated_comma_separated_or_from_the_file() {
    let keys = |args: &CommonArgs| -> Vec<String> {
        args.axon
            .openai_api
            .keys
            .iter()
            .map(|k| k.expose().to_string())
            .collect()
    };
    assert!(
        keys(&parse(&[]).expect("parse")).is_empty(),
        "off by default"
    );
    let args =
        parse(&["--openai_api.key", "sk-a", "--openai_api.key", "sk-b,sk-c"]).expect("parse");
    assert_eq!(keys(&args), ["sk-a", "sk-b", "sk-c"]);
    assert!(args.validate().is_ok());

    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = dir.path().join("miner.yaml");
    std::fs::write(&yaml, "openai_api:\n  key:\n  - sk-yaml-1\n  - sk-yaml-2\n").expect("write");
    let args = parse(&["--config", &yaml.display().to_string()]).expect("parse");
    assert_eq!(keys(&args), ["sk-yaml-1", "sk-yaml-2"]);
    let toml = write_config(dir.path(), "[openai_api]\nkey = [\"sk-toml\"]\n");
    let args = parse(&["--config", &toml]).expect("parse");
    assert_eq!(keys(&args), ["sk-toml"]);
    // The command line replaces the file's keys.
    let args = parse(&["--config", &toml, "--openai_api.key", "sk-flag"]).expect("parse");
    assert_eq!(keys(&args), ["sk-flag"]);

    // An unusable key is refused at start-up without being quoted; Debug never shows keys.
    let args = parse(&["--openai_api.key", "sk with space"]).expect("parse");
    let error = args.validate().expect_err("a space").to_string();
    assert!(
        error.contains("--openai_api.key") && !error.contains("sk with space"),
        "{error}"
    );
    assert!(!format!("{args:?}").contains("sk with space"));
}
