//! A real bittensor 10.5 `Axon` in a child process (`tests/python/bt10_prompting_axon.py`),
//! killed when dropped.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prompting_testkit::{Venv, python};

/// How long the Python process gets to import bittensor and start listening.
const STARTUP_LIMIT: Duration = Duration::from_secs(90);

/// A running Python axon on 127.0.0.1.
pub struct PythonAxon {
    child: Child,
    /// Held open: the script exits when its stdin closes.
    _stdin: Option<ChildStdin>,
    /// Where the script's stderr goes (read for failure messages).
    stderr_path: std::path::PathBuf,
    /// Holds the wallet and the log.
    _dir: tempfile::TempDir,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl PythonAxon {
    /// Starts the axon with the fixture wallet `miner`, refusing `blocked_hotkey`, and waits
    /// until it accepts connections. Panics with the script's stderr when it does not.
    pub fn start(blocked_hotkey: &str) -> PythonAxon {
        let interpreter = python(Venv::Bt10);
        let dir = tempfile::tempdir().expect("temporary directory");
        copy_dir(&super::fixture("wallets/miner"), &dir.path().join("miner"));
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stderr_path = dir.path().join("axon.stderr");
        let stderr = fs::File::create(&stderr_path).expect("stderr file");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/bt10_prompting_axon.py");
        let mut child = Command::new(&interpreter)
            .arg(&script)
            .arg(dir.path())
            .arg(port.to_string())
            .arg(blocked_hotkey)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", interpreter.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut axon = PythonAxon {
            child,
            _stdin: stdin,
            stderr_path,
            _dir: dir,
            addr,
        };
        axon.wait_until_ready(stdout);
        axon
    }

    fn wait_until_ready(&mut self, stdout: std::process::ChildStdout) {
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        loop {
            let left = STARTUP_LIMIT.saturating_sub(started.elapsed());
            match received.recv_timeout(left) {
                Ok(line) if line.starts_with("READY") => break,
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "the Python axon did not get ready within {STARTUP_LIMIT:?} (exit: \
                         {status:?}); its stderr:\n{}",
                        self.stderr_tail()
                    );
                }
            }
        }
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            assert!(
                started.elapsed() < STARTUP_LIMIT,
                "the Python axon said READY but {} refuses connections; its stderr:\n{}",
                self.addr,
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of the script's stderr.
    pub fn stderr_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(4_000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }
}

impl Drop for PythonAxon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create directory");
    for entry in fs::read_dir(from).expect("read fixture directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}
