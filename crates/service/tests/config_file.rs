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

    let config = write_config(dir.path(), "config = \"other.toml\"\n");
    let message = invalid_message(parse(&["--config", &config]));
    assert!(message.contains("unknown key `config`"), "{message}");

    let config = write_config(dir.path(), "dev = \"yes\"\n");
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
