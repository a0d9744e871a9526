//! The fixture `tests/fixtures/python-v2.1.6-flags.tsv` (every flag of the Python miners, with
//! its source) and the check that a miner binary's parser accepts each of them as the fixture
//! says. Shared by the service tests and the binaries' tests (`#[path]`).

use std::path::Path;

use prompting_service::python_compat::COMMON_IGNORED;
use prompting_service::{MinerCli, parse_args};

/// One row of the fixture.
#[derive(Debug, Clone)]
pub struct PythonFlag {
    /// The flag without dashes (`wandb.` for a namespace).
    pub flag: String,
    /// `switch`, `value`, `list` or `namespace`.
    pub kind: String,
    /// A value to pass (`-` for switches).
    pub example: String,
    /// `all`, `openai` or `btlm`.
    pub miners: String,
    /// `flag`, `meaning` or `ignored`.
    pub here: String,
}

/// The fixture's rows.
pub fn fixture() -> Vec<PythonFlag> {
    include_str!("../fixtures/python-v2.1.6-flags.tsv")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert_eq!(cells.len(), 7, "7 columns: {line}");
            PythonFlag {
                flag: cells[0].to_string(),
                kind: cells[1].to_string(),
                example: cells[3].to_string(),
                miners: cells[4].to_string(),
                here: cells[5].to_string(),
            }
        })
        .collect()
}

/// The fixture's rows for `binary` (`openai`, `btlm`, or `all` for the shared flags only).
pub fn rows_for(binary: &str) -> Vec<PythonFlag> {
    fixture()
        .into_iter()
        .filter(|row| row.miners == "all" || row.miners == binary)
        .collect()
}

/// The command-line words giving `row` (a namespace gets a made-up member); `config` points
/// at an empty YAML file in `dir`.
pub fn words(row: &PythonFlag, dir: &Path) -> Vec<String> {
    let flag = match row.flag.strip_suffix('.') {
        Some(namespace) => format!("--{namespace}.some_flag"),
        None => format!("--{}", row.flag),
    };
    match row.kind.as_str() {
        "switch" => vec![flag],
        _ if row.flag == "config" => {
            let path = dir.join(&row.example);
            std::fs::write(&path, "").expect("write an empty config file");
            vec![flag, path.display().to_string()]
        }
        _ => vec![flag, row.example.clone()],
    }
}

/// Checks that `C` accepts every fixture flag of `binary` as the fixture says: a flag of its
/// own (`flag`, `meaning`) or ignored with a warning (`ignored`); that every ignored entry of
/// the code is in the fixture; and that flags in neither are refused.
pub fn check_parser<C: MinerCli + std::fmt::Debug>(binary: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = rows_for(binary);
    let command = C::command();
    for row in &rows {
        let given = words(row, dir.path());
        let argv = std::iter::once("miner".to_string()).chain(given.iter().cloned());
        let mut cli: C =
            parse_args(argv).unwrap_or_else(|e| panic!("{binary}: {given:?} is refused: {e}"));
        let ignored = cli.common_mut().ignored.clone();
        let own = command
            .get_arguments()
            .any(|arg| arg.get_long() == Some(row.flag.as_str()));
        match row.here.as_str() {
            "ignored" => {
                assert!(!own, "{}: ignored in the fixture but a flag here", row.flag);
                assert_eq!(ignored.len(), 1, "{given:?}: {ignored:?}");
                assert_eq!(format!("--{}", ignored[0].flag), given[0], "{given:?}");
            }
            "flag" | "meaning" => {
                assert!(own, "{}: not a flag of {binary}", row.flag);
                assert!(ignored.is_empty(), "{given:?}: {ignored:?}");
            }
            other => panic!("{}: unknown `here` {other}", row.flag),
        }
    }
    for entry in COMMON_IGNORED.iter().chain(C::PYTHON_IGNORED) {
        assert!(
            rows.iter()
                .any(|row| row.flag == entry.name && row.here == "ignored"),
            "{} is ignored in the code but not listed as ignored in the fixture",
            entry.name
        );
    }
    for stranger in [
        &["--vicuna.device", "cuda"][..],
        &["--wandb"][..],
        &["--neuron"][..],
        &["--miner.nonsense"][..],
    ] {
        let argv = std::iter::once("miner").chain(stranger.iter().copied());
        assert!(
            parse_args::<C, _, _>(argv).is_err(),
            "{binary}: {stranger:?} is neither ours nor the Python miners' and must be refused"
        );
    }
}

/// Reads the YAML config that bittensor 6.1 prints for the Python `binary` miner (the fixture
/// `bittensor-6.1-{binary}-miner.yaml`), checks the settings every miner takes from it, and
/// returns the parsed command line with the start-up warning lines about ignored keys.
#[allow(dead_code)] // used by the miner binaries' tests, not by the service's
pub fn read_python_yaml<C: MinerCli>(binary: &str) -> (C, Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/service/tests/fixtures")
        .join(format!("bittensor-6.1-{binary}-miner.yaml"));
    let argv = [
        format!("{binary}-miner"),
        "--config".into(),
        path.display().to_string(),
    ];
    let mut cli: C = parse_args(argv).expect("parse");
    let common = cli.common_mut();
    assert!(common.mock_subtensor && common.logging.debug);
    assert_eq!(common.wallet.name, "miner");
    assert_eq!(common.axon.ip, std::net::IpAddr::from([0u16; 8]));
    assert!(common.miner.blacklist.force_validator_permit);
    let lines = prompting_service::python_compat::warning_lines(&common.ignored);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ignored ") && l.contains("--wandb.on")),
        "{lines:?}"
    );
    (cli, lines)
}
