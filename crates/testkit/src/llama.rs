//! llama.cpp's OpenAI-compatible server (`llama-cpp-python[server]`, the `llama` venv of
//! `scripts/setup-python.sh`) serving a tiny random GGUF: a real upstream for the
//! OpenAI-backend interop tests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{Venv, python, run_python, workspace_root};

/// Writes the tiny GGUF (see the script's docstring).
const WRITE_GGUF: &str = include_str!("llama/write_gguf.py");

/// Runs the server and exits when its standard input closes: the server cannot outlive the
/// test process, even one that aborts.
const SERVE: &str = "import os, runpy, sys, threading\n\
def watch():\n    sys.stdin.buffer.read()\n    os._exit(0)\n\
threading.Thread(target=watch, daemon=True).start()\n\
sys.argv[0] = 'llama_cpp.server'\n\
runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n";

/// How long the server may take to load the model and answer its first request.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// A running `python -m llama_cpp.server` on 127.0.0.1, killed (and its files removed) on drop.
/// Requests are served one at a time, none interrupting another.
pub struct LlamaServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    api_key: String,
    n_ctx: u32,
}

impl LlamaServer {
    /// Writes a tiny random 2-layer llama GGUF (n_embd 64, the GPT-2 BPE vocabulary of the
    /// tiny BTLM fixture, a ChatML-like chat template, `n_ctx` positions) and serves it on a
    /// free loopback port with an API key. Waits until the server answers (at most 120 s);
    /// panics with its log if it does not. Panics, naming the set-up command, without the venv.
    pub fn start(n_ctx: u32) -> LlamaServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "prompting-llama-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the llama server's folder");
        let fixture = workspace_root().join("crates/btlm-backend/tests/fixtures/btlm-tiny");
        let model = dir.join("tiny-llama.gguf");
        let n_ctx_arg = n_ctx.to_string();
        run_python(
            Venv::Llama,
            WRITE_GGUF,
            &[
                path_str(&model),
                path_str(&fixture.join("vocab.json")),
                path_str(&fixture.join("merges.txt")),
                &n_ctx_arg,
            ],
            b"",
        );
        let mut server = LlamaServer {
            child: None,
            dir,
            port: free_port(),
            api_key: format!("sk-llama-test-{}", std::process::id()),
            n_ctx,
        };
        server.spawn();
        server
    }

    /// The OpenAI base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The API key it demands (`Authorization: Bearer ...`).
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The model's context size in tokens.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the server at once (SIGKILL): open connections break off.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("open the llama server log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new(python(Venv::Llama))
            .args(["-c", SERVE, "--host", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--model", path_str(&self.dir.join("tiny-llama.gguf"))])
            .args(["--model_alias", "tiny-llama"])
            .args(["--api_key", &self.api_key])
            .args(["--n_ctx", &self.n_ctx.to_string()])
            .args(["--n_threads", "1", "--n_threads_batch", "1"])
            .args(["--interrupt_requests", "False"])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start the llama server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().expect("poll the llama server")
            {
                panic!("the llama server exited early ({status}):\n{}", self.log());
            }
            if self.get("/v1/models").is_some_and(|status| status == 200) {
                return;
            }
            assert!(
                started.elapsed() < READY_LIMIT,
                "the llama server did not answer within {READY_LIMIT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The status of `GET path` with the API key, if the server answered.
    fn get(&self, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.port, self.api_key
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}
