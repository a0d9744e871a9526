//! Fuzzing what the miner parses from outsiders, on the stable toolchain.
//!
//! [`fuzz`] is a small in-process mutation fuzzer: it starts from each target's seeds (valid
//! inputs), applies stacked byte-level and dictionary mutations, runs the target, and keeps
//! an input in its corpus when it produced an outcome not seen before (a poor man's
//! coverage: each target labels its outcomes by error kind and by what parsed). A target
//! fails on a panic or when an invariant it checks does not hold (a round trip, two ways of
//! parsing the same bytes, or CPython's answer for the body hash). See [`targets`] and
//! `scripts/fuzz.sh`.

pub mod pyhash;
pub mod targets;

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest input the mutator makes.
pub const MAX_INPUT: usize = 4096;

/// Inputs kept for their new outcomes, at most.
const MAX_CORPUS: usize = 8192;

/// What one run of a target says about an input.
pub type Outcome = Result<u64, String>;

/// A fuzz target: bytes in, a label of what happened out, or an invariant violation.
pub trait Target {
    /// The name `scripts/fuzz.sh` knows it by.
    fn name(&self) -> &'static str;
    /// Valid inputs to start from.
    fn seeds(&self) -> Vec<Vec<u8>>;
    /// Tokens the mutator inserts (header names, JSON keywords, numbers...).
    fn dictionary(&self) -> Vec<Vec<u8>>;
    /// Runs the target on `input`: `Ok(label)` (inputs with labels not seen before are
    /// kept), `Err(why)` when an invariant does not hold. Panics are caught as findings.
    fn run(&mut self, input: &[u8]) -> Outcome;
    /// Checks what [`Target::run`] deferred (batched differential checks); called
    /// regularly and at the end. Returns the violations found, with their inputs.
    fn flush(&mut self) -> Vec<(Vec<u8>, String)> {
        Vec::new()
    }
    /// Extra figures for the report (e.g. how many inputs CPython accepted).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// An input that broke a target.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The input.
    pub input: Vec<u8>,
    /// The panic message or the violated invariant.
    pub message: String,
    /// Where it was saved, if it was.
    pub saved: Option<PathBuf>,
}

/// How long to fuzz.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Wall-clock limit.
    pub time: Duration,
    /// Execution limit (`u64::MAX`: none).
    pub execs: u64,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Inputs run.
    pub execs: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Distinct outcomes seen.
    pub outcomes: usize,
    /// Inputs in the corpus at the end (seeds included).
    pub corpus: usize,
    /// What broke (at most the first 20 distinct messages are kept).
    pub findings: Vec<Finding>,
    /// The target's own figures.
    pub notes: Vec<String>,
}

/// A xorshift64* generator: fast, reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Numbers and values that break parsers, as text.
const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-0",
    b"-1",
    b"1e309",
    b"-1e309",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551615",
    b"18446744073709551616",
    b"340282366920938463463374607431768211456",
    b"0x10",
    b"1_000",
    b" 12 ",
    b"12.5",
    b"\"\"",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\\ud800",
    b"\\udc00\\ud800",
    b"\\u0000",
    b"\xff\xfe",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\x80",
    b"\r\n",
    b"\n\n",
    b"\x00",
];

/// Applies one to four random mutations to `input`.
pub fn mutate(input: &mut Vec<u8>, rng: &mut Rng, dictionary: &[Vec<u8>], corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next_u64() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                input.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, copy);
            }
            5 | 6 if !dictionary.is_empty() => {
                let token = &dictionary[rng.below(dictionary.len())];
                let at = rng.below(len + 1);
                if rng.below(2) == 0 || at == len {
                    input.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    input.splice(at..end, token.iter().copied());
                }
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - from);
                    let at = rng.below(len + 1);
                    let end = if rng.below(2) == 0 {
                        at
                    } else {
                        (at + n).min(len)
                    };
                    input.splice(at..end, other[from..from + n].iter().copied());
                }
            }
            8 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(len + 1);
                // Replace a run of digits (or nothing) with the value.
                let mut end = at;
                while end < len && (input[end].is_ascii_digit() || input[end] == b'.') {
                    end += 1;
                }
                input.splice(at..end, token.iter().copied());
            }
            9 if len > 0 => input.truncate(rng.below(len)),
            10 if len > 1 => {
                let (a, b) = (rng.below(len), rng.below(len));
                input.swap(a, b);
            }
            11 if len > 0 => {
                let i = rng.below(len);
                if input[i].is_ascii_digit() {
                    input[i] = b'0' + rng.below(10) as u8;
                } else {
                    input[i] = input[i].wrapping_add(1 + rng.below(3) as u8);
                }
            }
            _ => {}
        }
    }
    input.truncate(MAX_INPUT);
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Fuzzes `target` within `budget` from `seed`; findings are saved under `findings_dir`
/// (one file per distinct message) when given.
pub fn fuzz(
    target: &mut dyn Target,
    budget: Budget,
    seed: u64,
    findings_dir: Option<&Path>,
) -> Report {
    let mut rng = Rng::new(seed);
    let dictionary = target.dictionary();
    let mut corpus = target.seeds();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut seen: HashSet<u64> = HashSet::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut messages: HashSet<String> = HashSet::new();
    // Panics are findings, not noise on stderr: keep the location for the report.
    let location = Arc::new(Mutex::new(String::new()));
    let hook_location = Arc::clone(&location);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let (Some(at), Ok(mut slot)) = (info.location(), hook_location.lock()) {
            *slot = format!("{}:{}", at.file(), at.line());
        }
    }));

    let mut record = |input: Vec<u8>, message: String, findings: &mut Vec<Finding>| {
        if findings.len() >= 20 || !messages.insert(message.clone()) {
            return;
        }
        let saved = findings_dir.and_then(|dir| {
            std::fs::create_dir_all(dir).ok()?;
            let path = dir.join(format!(
                "{}-{}.bin",
                target_name_of(&message),
                findings.len()
            ));
            std::fs::write(&path, &input).ok()?;
            Some(path)
        });
        findings.push(Finding {
            input,
            message,
            saved,
        });
    };
    fn target_name_of(message: &str) -> String {
        let digest = sha3_hex(message.as_bytes());
        format!("finding-{}", &digest[..12])
    }

    let start = Instant::now();
    let mut execs: u64 = 0;
    let mut input = Vec::with_capacity(MAX_INPUT);
    // Seeds first, unmutated.
    let seeds = corpus.clone();
    for seed_input in seeds {
        let outcome = catch_unwind(AssertUnwindSafe(|| target.run(&seed_input)));
        execs += 1;
        match outcome {
            Ok(Ok(label)) => {
                seen.insert(label);
            }
            Ok(Err(why)) => record(seed_input, why, &mut findings),
            Err(payload) => {
                let at = location.lock().map(|l| l.clone()).unwrap_or_default();
                record(
                    seed_input,
                    format!("panic at {at}: {}", panic_message(&*payload)),
                    &mut findings,
                );
            }
        }
    }
    while execs < budget.execs {
        if execs.is_multiple_of(4096) {
            for (bad, why) in target.flush() {
                record(bad, why, &mut findings);
            }
            if start.elapsed() >= budget.time {
                break;
            }
        }
        input.clear();
        input.extend_from_slice(&corpus[rng.below(corpus.len())]);
        mutate(&mut input, &mut rng, &dictionary, &corpus);
        let outcome = catch_unwind(AssertUnwindSafe(|| target.run(&input)));
        execs += 1;
        match outcome {
            Ok(Ok(label)) => {
                if seen.insert(label) && corpus.len() < MAX_CORPUS {
                    corpus.push(input.clone());
                }
            }
            Ok(Err(why)) => record(input.clone(), why, &mut findings),
            Err(payload) => {
                let at = location.lock().map(|l| l.clone()).unwrap_or_default();
                record(
                    input.clone(),
                    format!("panic at {at}: {}", panic_message(&*payload)),
                    &mut findings,
                );
            }
        }
    }
    for (bad, why) in target.flush() {
        record(bad, why, &mut findings);
    }
    std::panic::set_hook(previous_hook);
    Report {
        target: target.name(),
        execs,
        elapsed: start.elapsed(),
        outcomes: seen.len(),
        corpus: corpus.len(),
        findings,
        notes: target.notes(),
    }
}

/// The SHA3-256 of `bytes`, lower-case hex.
pub fn sha3_hex(bytes: &[u8]) -> String {
    use sha3::Digest;
    hex::encode(sha3::Sha3_256::digest(bytes))
}

/// A label from a piece of text (an error's kind, a field list...).
pub fn label(text: &str) -> u64 {
    // FNV-1a: labels need to be distinct, not secure.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target with a planted bug: the fuzzer must find it from a seed nearby.
    struct Planted;

    impl Target for Planted {
        fn name(&self) -> &'static str {
            "planted"
        }
        fn seeds(&self) -> Vec<Vec<u8>> {
            vec![b"abc".to_vec()]
        }
        fn dictionary(&self) -> Vec<Vec<u8>> {
            vec![b"BUG".to_vec()]
        }
        fn run(&mut self, input: &[u8]) -> Outcome {
            if input.windows(3).any(|w| w == b"BUG") {
                panic!("planted bug");
            }
            Ok(label(&input.len().to_string()))
        }
    }

    #[test]
    fn finds_a_planted_panic() {
        let report = fuzz(
            &mut Planted,
            Budget {
                time: Duration::from_secs(20),
                execs: 200_000,
            },
            1,
            None,
        );
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.message.contains("planted bug")),
            "{report:?}"
        );
    }

    #[test]
    fn mutations_stay_within_the_size_limit() {
        let mut rng = Rng::new(7);
        let mut input = vec![b'x'; MAX_INPUT];
        let corpus = vec![vec![b'y'; MAX_INPUT]];
        for _ in 0..10_000 {
            mutate(&mut input, &mut rng, &[b"token".to_vec()], &corpus);
            assert!(input.len() <= MAX_INPUT);
        }
    }
}
