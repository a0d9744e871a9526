//! CPython as the reference for the body hash: a `python3` child computes, for each line it
//! is sent, what a bittensor axon would: `sha3_256(sha3_256(str(messages)).hexdigest())`,
//! or `reject` when it would not get that far (not JSON, `messages` not a list of `str`, a
//! string that cannot be encoded to UTF-8).

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// What CPython computes. Input lines: `b <hex of a JSON body>` (a synapse body: the hash of
/// its `messages`) or `m <JSON list>` (a list of messages). A line `.` ends a batch: the
/// child flushes its answers.
const SCRIPT: &str = r#"
import sys, json, hashlib
def h(messages):
    return hashlib.sha3_256(hashlib.sha3_256(str(messages).encode("utf-8")).hexdigest().encode()).hexdigest()
out = sys.stdout
for line in sys.stdin:
    line = line.rstrip("\n")
    if line == ".":
        out.flush()
        continue
    kind, _, rest = line.partition(" ")
    try:
        if kind == "b":
            body = json.loads(bytes.fromhex(rest))
            messages = body["messages"]
            roles = body["roles"]
            if not (isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
                raise ValueError("roles")
        else:
            messages = json.loads(rest)
        if not (isinstance(messages, list) and all(isinstance(m, str) for m in messages)):
            raise ValueError("messages")
        out.write(h(messages) + "\n")
    except Exception:
        out.write("reject\n")
"#;

/// A CPython child answering hash requests in batches.
pub struct CPython {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    /// `sys.version` of the child.
    pub version: String,
}

/// Why CPython could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CPythonError {
    /// The interpreter did not start.
    #[error("cannot start {interpreter}: {source}")]
    Spawn {
        /// The command.
        interpreter: String,
        /// Why.
        source: std::io::Error,
    },
    /// The pipe broke or the child died.
    #[error("CPython pipe: {0}")]
    Pipe(#[from] std::io::Error),
    /// The child answered fewer lines than it was asked.
    #[error("CPython answered {got} of {asked} lines")]
    Short {
        /// Lines sent.
        asked: usize,
        /// Lines answered.
        got: usize,
    },
}

impl CPython {
    /// Starts `interpreter` (e.g. `python3`) with the hashing script.
    pub fn start(interpreter: &str) -> Result<CPython, CPythonError> {
        let version = Command::new(interpreter)
            .args(["-c", "import sys; print(sys.version.split()[0])"])
            .output()
            .map_err(|source| CPythonError::Spawn {
                interpreter: interpreter.to_owned(),
                source,
            })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let mut child = Command::new(interpreter)
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| CPythonError::Spawn {
                interpreter: interpreter.to_owned(),
                source,
            })?;
        let stdin = child.stdin.take().map(BufWriter::new);
        let stdout = child
            .stdout
            .take()
            .map(BufReader::new)
            .ok_or_else(|| CPythonError::Pipe(std::io::Error::other("no stdout")))?;
        Ok(CPython {
            child,
            stdin,
            stdout,
            version,
        })
    }

    /// CPython's answer to each line (`None`: rejected). Lines must not hold `\n`.
    pub fn ask(&mut self, lines: &[String]) -> Result<Vec<Option<String>>, CPythonError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| CPythonError::Pipe(std::io::Error::other("stdin closed")))?;
        // Writing and reading at once: the answers may fill the pipe before the questions
        // are all written.
        let stdout = &mut self.stdout;
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> std::io::Result<()> {
                for line in lines {
                    stdin.write_all(line.as_bytes())?;
                    stdin.write_all(b"\n")?;
                }
                stdin.write_all(b".\n")?;
                stdin.flush()
            });
            let mut answers = Vec::with_capacity(lines.len());
            let mut buf = String::new();
            while answers.len() < lines.len() {
                buf.clear();
                if stdout.read_line(&mut buf)? == 0 {
                    break;
                }
                let answer = buf.trim_end();
                answers.push((answer != "reject").then(|| answer.to_owned()));
            }
            writer
                .join()
                .map_err(|_| std::io::Error::other("writer thread panicked"))??;
            if answers.len() < lines.len() {
                return Err(CPythonError::Short {
                    asked: lines.len(),
                    got: answers.len(),
                });
            }
            Ok(answers)
        })
    }
}

impl Drop for CPython {
    fn drop(&mut self) {
        // Closing stdin ends the script's loop.
        self.stdin.take();
        let _ = self.child.wait();
    }
}
