//! The `dendrite` binary against a small local axon that answers as a bittensor 10.5 axon
//! does (it checks the body hash and signature first), on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use prompting_keys::Keypair;
use prompting_synapse::{Prompting, Synapse, SynapseHeaders};
use serde_json::Value;

/// The hotkey the emulated axon signs as (the fixture miner's).
const AXON_HOTKEY: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";

/// How the emulated axon answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 with `completion = "echo: " + last message` (stream: the same text in pieces).
    Echo,
    /// 403 as a 10.5 axon refuses a blacklisted hotkey.
    Refuse,
}

/// An emulated axon on 127.0.0.1 serving every connection in a thread.
fn start_axon(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                // A failed exchange shows up in the client's output.
                let _ = serve(stream, behaviour);
            });
        }
    });
    addr
}

fn serve(mut stream: TcpStream, behaviour: Behaviour) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;

    let parsed = SynapseHeaders::parse(headers.iter().map(|(n, v)| (n, v)))
        .map_err(std::io::Error::other)?;
    let mut synapse =
        Synapse::<Prompting>::from_request(&parsed, &body).map_err(std::io::Error::other)?;
    let verified = synapse
        .verify_body_hash(parsed.computed_body_hash.as_deref().unwrap_or(""))
        .is_ok()
        && prompting_keys::verify_hex(
            synapse.dendrite.hotkey.as_deref().unwrap_or(""),
            synapse.request_signing_message(AXON_HOTKEY).as_bytes(),
            synapse.dendrite.signature.as_deref().unwrap_or(""),
        )
        .unwrap_or(false);
    if !verified {
        synapse.axon.status_code = Some(401);
        synapse.axon.status_message = Some("Not Verified with error: bad signature".into());
    } else if let Behaviour::Refuse = behaviour {
        synapse.axon.status_code = Some(403);
        synapse.axon.status_message =
            Some("Forbidden. Key is blacklisted: hotkey not registered.".into());
    }
    let echo = format!(
        "echo: {}",
        synapse.body.messages.last().cloned().unwrap_or_default()
    );
    if request_line.starts_with("POST /StreamPrompting ") && synapse.axon.status_code.is_none() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    bt_header_axon_status_code: 200\r\nbt_header_axon_status_message: Success\r\n\
                    connection: close\r\n\r\n";
        stream.write_all(head.as_bytes())?;
        for piece in echo.as_bytes().chunks(4) {
            stream.write_all(piece)?;
            stream.flush()?;
            thread::sleep(Duration::from_millis(5));
        }
        return Ok(());
    }
    synapse.body.completion = echo;
    let response = synapse.to_response();
    let mut head = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(response.body.as_bytes())
}

fn wallets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wallets")
}

fn dendrite(addr: SocketAddr, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dendrite"))
        .env_remove("BT_WALLET_NAME")
        .env_remove("BT_WALLET_HOTKEY")
        .env_remove("BT_WALLET_PATH")
        .arg("--wallet.path")
        .arg(wallets())
        .args(["--wallet.name", "validator", "--axon.hotkey", AXON_HOTKEY])
        .args(["--axon", &addr.to_string(), "--timeout", "5"])
        .args(extra)
        .output()
        .expect("run the dendrite binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

#[test]
fn prints_the_completion() {
    let addr = start_axon(Behaviour::Echo);
    let output = dendrite(addr, &["What is the capital of France?"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        text(&output.stdout),
        "echo: What is the capital of France?\n"
    );
    assert!(
        text(&output.stderr).starts_with("200 Success"),
        "{output:?}"
    );
}

#[test]
fn json_shows_the_whole_response() {
    let addr = start_axon(Behaviour::Echo);
    let output = dendrite(addr, &["--json", "--system", "Be brief.", "é 🙂\nbye"]);
    assert!(output.status.success(), "{output:?}");
    let document: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(document["status_code"], 200);
    assert_eq!(document["status_message"], "Success");
    assert_eq!(document["failure"], Value::Null);
    assert_eq!(
        document["synapse"]["roles"],
        serde_json::json!(["system", "user"])
    );
    assert_eq!(
        document["synapse"]["messages"],
        serde_json::json!(["Be brief.", "é 🙂\nbye"])
    );
    assert_eq!(document["synapse"]["completion"], "echo: é 🙂\nbye");
    assert_eq!(
        document["synapse"]["dendrite"]["hotkey"],
        Keypair::from_mnemonic(
            "letter advice cage absurd amount doctor acoustic avoid letter advice cage above"
        )
        .expect("mnemonic")
        .ss58_address()
    );
}

#[test]
fn streams_the_completion() {
    let addr = start_axon(Behaviour::Echo);
    let output = dendrite(addr, &["--stream", "--role", "user", "stream me, please"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(text(&output.stdout), "echo: stream me, please\n");
}

#[test]
fn refusals_exit_non_zero_with_one_line() {
    let addr = start_axon(Behaviour::Refuse);
    for extra in [&["hi"][..], &["--stream", "hi"][..]] {
        let output = dendrite(addr, extra);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert_eq!(text(&output.stdout), "");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(
                "dendrite: error: 403 Forbidden. Key is blacklisted: hotkey not registered."
            ),
            "{stderr}"
        );
    }
}

#[test]
fn unreachable_axons_exit_non_zero() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let output = dendrite(addr, &["hi"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "503 Service unavailable at 127.0.0.1:{port}/Prompting"
        )),
        "{stderr}"
    );
}

#[test]
fn a_missing_wallet_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_dendrite"))
        .env_remove("BT_WALLET_NAME")
        .env_remove("BT_WALLET_HOTKEY")
        .env("BT_WALLET_PATH", dir.path())
        .args([
            "--wallet.name",
            "nobody",
            "--axon",
            "127.0.0.1:9",
            "--axon.hotkey",
            AXON_HOTKEY,
            "hi",
        ])
        .output()
        .expect("run the dendrite binary");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("dendrite: error: cannot load the hotkey: "),
        "{stderr}"
    );
    let expected_path = dir.path().join("nobody/hotkeys/default");
    assert!(
        stderr.contains(&expected_path.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn argument_mistakes_are_one_line_and_exit_2() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dendrite"))
            .args(args)
            .output()
            .expect("run the dendrite binary")
    };
    for (args, expected) in [
        (
            &["--axon", "127.0.0.1:9", "--axon.hotkey", "<ss58>", "hi"][..],
            "dendrite: error: invalid value '<ss58>' for '--axon.hotkey <SS58>': \"<ss58>\" is not an SS58 address",
        ),
        (
            &["--axon", "nowhere", "--axon.hotkey", AXON_HOTKEY, "hi"][..],
            "dendrite: error: invalid value 'nowhere' for '--axon <AXON>'",
        ),
        (
            &[
                "--axon",
                "127.0.0.1:9",
                "--axon.hotkey",
                AXON_HOTKEY,
                "--bogus",
                "hi",
            ][..],
            "dendrite: error: unexpected argument '--bogus' found",
        ),
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(expected), "{stderr}");
    }
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("--axon.hotkey"));
}
