//! Attacks on the axon (issue 12): whatever an unregistered or low-stake key sends, a
//! registered validator's fresh, honest request is served, no request the axon accepted is
//! ever served again, and no connection holds a slot without making progress. Capacities are
//! set small (`--axon.nonce_capacity 100`, `--btauth.replay_capacity 100`,
//! `--axon.max_connections 4`) so that filling a table takes a hundred requests, not a
//! hundred thousand.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{AxonSetup, axon_args, miner_key, stranger_key, validator_key, with_nonce};
use http::Method;
use prompting_keys::Keypair;
use prompting_miner::RefusalKind;
use prompting_synapse::{Prompting, Synapse};
use prompting_transport::btauth::{HEADER_SIGNATURE, sign_request};
use prompting_transport::clock::{Clock, ManualClock};
use prompting_transport::dendrite::legacy::PreparedRequest;
use prompting_transport::dendrite::{AxonTarget, Dendrite};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn wall_ns() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    )
    .expect("nanoseconds fit u64")
}

/// A manual clock starting now, shared by an axon and its dendrites.
fn clock_now() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        i64::try_from(wall_ns()).expect("nanoseconds fit i64"),
    ))
}

fn target(addr: SocketAddr) -> AxonTarget {
    AxonTarget::new(addr, miner_key().ss58_address())
}

fn prompt(text: &str) -> Synapse<Prompting> {
    Synapse::new(Prompting::new(vec!["user".into()], vec![text.into()]))
}

/// Sends a prepared legacy request, headers `drop` left out and `replace` overridden.
async fn send(
    request: &PreparedRequest,
    drop: &[&str],
    replace: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let mut builder = reqwest::Client::new().post(&request.url);
    for (name, value) in &request.headers {
        if drop.iter().any(|d| d.eq_ignore_ascii_case(name))
            || replace.iter().any(|(r, _)| r.eq_ignore_ascii_case(name))
        {
            continue;
        }
        builder = builder.header(name, value);
    }
    for (name, value) in replace {
        builder = builder.header(*name, *value);
    }
    let response = builder
        .body(body.unwrap_or(&request.body).to_owned())
        .send()
        .await
        .expect("send to axon");
    let status = response.status().as_u16();
    let message = response
        .headers()
        .get("bt_header_axon_status_message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    (status, message)
}

/// Issue 12, D2: an unregistered key fills the legacy nonce table with signed requests whose
/// nonces are near 2^64 (a new uuid each, `timeout: 300`, a body that is not JSON: all 400).
/// The validator's endpoints, the old one and a new one, must still be served. Unregistered
/// keys are allowed here: otherwise they are refused before the table (the test below).
#[tokio::test]
async fn unregistered_nonce_flood_does_not_lock_out_a_legacy_validator() {
    let validator = validator_key();
    let mut setup = AxonSetup::new(&[&validator.ss58_address()]);
    setup.config.blacklist.allow_non_registered = true;
    setup.args.nonce_capacity = 100;
    let axon = setup.start().await;
    let target = target(axon.addr);

    let honest = Dendrite::new(validator_key()).expect("dendrite");
    let first = honest.prepare(&target, &mut prompt("hello"), Duration::from_secs(12));
    assert_eq!(send(&first, &[], &[], None).await.0, 200);

    for i in 0..101u64 {
        let attacker = Dendrite::builder(stranger_key())
            .uuid(format!("flood-{i}"))
            .build()
            .expect("dendrite");
        let request = attacker.prepare(&target, &mut prompt("x"), Duration::from_secs(300));
        let request = with_nonce(&request, &stranger_key(), u64::MAX - 1_000 + i);
        let (status, message) = send(&request, &[], &[], Some("{bad json")).await;
        assert_eq!(status, 400, "flood request {i}: {message}");
    }

    let again = honest.prepare(&target, &mut prompt("hello again"), Duration::from_secs(12));
    let (status, message) = send(&again, &[], &[], None).await;
    assert_eq!(status, 200, "the validator's known endpoint: {message}");
    let fresh = Dendrite::new(validator_key()).expect("dendrite");
    let request = fresh.prepare(
        &target,
        &mut prompt("new dendrite"),
        Duration::from_secs(12),
    );
    let (status, message) = send(&request, &[], &[], None).await;
    assert_eq!(status, 200, "a new dendrite of the validator: {message}");
}

/// A key the blacklist refuses whatever it signs (here: not registered) is refused before its
/// signature is checked: a bad signature gets the blacklist's 403, not 401, and its nonce is
/// never recorded, so the same request is refused the same way again.
#[tokio::test]
async fn a_refused_key_is_refused_before_its_signature_is_checked() {
    let validator = validator_key();
    let axon = AxonSetup::new(&[&validator.ss58_address()]).start().await;
    let target = target(axon.addr);
    let stranger = Dendrite::new(stranger_key()).expect("dendrite");
    let request = stranger.prepare(&target, &mut prompt("x"), Duration::from_secs(12));
    let forged = "0x".to_owned() + &"ab".repeat(64);
    let forged = [("bt_header_dendrite_signature", forged.as_str())];
    for attempt in 0..2 {
        let (status, message) = send(&request, &[], &forged, None).await;
        assert_eq!(status, 403, "attempt {attempt}: {message}");
        assert_eq!(
            message, "Forbidden. Key is blacklisted: hotkey not registered.",
            "attempt {attempt}"
        );
    }
    // The validator's own request with a forged signature is still checked: 401.
    let honest = Dendrite::new(validator_key()).expect("dendrite");
    let request = honest.prepare(&target, &mut prompt("y"), Duration::from_secs(12));
    let (status, message) = send(&request, &[], &forged, None).await;
    assert_eq!(status, 401, "{message}");
    let stats = axon.state.pipeline().stats();
    assert_eq!(stats.refusals[&RefusalKind::NotRegistered], 2);
}

/// The same for btauth/1: a refused key's request is refused before its body is read or its
/// signature checked. A forged signature gets 403, not 401, and a body over the size limit
/// 403, not 413, on the bittensor 11 route and the OpenAI-compatible one alike; the
/// validator's forged request is still 401.
#[tokio::test]
async fn a_refused_btauth_key_is_refused_before_its_body_is_read() {
    let validator = validator_key();
    let mut setup = AxonSetup::new(&[&validator.ss58_address()]);
    setup.args.max_body_bytes = 1024;
    let axon = setup.start().await;
    let receiver = miner_key().ss58_address();
    let client = reqwest::Client::new();
    let post = |key: &Keypair, path: &'static str, body: Vec<u8>, forge: bool| {
        let mut headers = sign_request(
            key,
            &Method::POST,
            path,
            &body,
            Some(&receiver),
            clock_now().now_ns(),
        )
        .expect("sign");
        if forge {
            let forged = "0x".to_owned() + &"ab".repeat(64);
            headers.insert(HEADER_SIGNATURE, forged.parse().expect("header value"));
        }
        client
            .post(format!("http://{}{path}", axon.addr))
            .headers(headers)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let small =
        || serde_json::to_vec(&json!({"roles": ["user"], "messages": ["hi"]})).expect("json");
    let large = || vec![b' '; 4096];
    let stranger = stranger_key();
    for path in ["/Prompting", "/v1/chat/completions"] {
        for (what, body) in [("forged", small()), ("too large", large())] {
            let response = post(&stranger, path, body, what == "forged")
                .await
                .expect("send");
            let status = response.status();
            let text = response.text().await.expect("body");
            assert_eq!(status, 403, "{path}, {what}: {text}");
            assert!(
                text.contains("hotkey not registered"),
                "{path}, {what}: {text}"
            );
        }
    }
    let response = post(&validator, "/Prompting", small(), true)
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    let response = post(&validator, "/Prompting", large(), false)
        .await
        .expect("send");
    assert_eq!(response.status(), 413);
    let stats = axon.state.pipeline().stats();
    assert_eq!(stats.refusals[&RefusalKind::NotRegistered], 4);
}

/// Issue 12, D3: a captured request is replayed once its table entry may have expired, with
/// the unsigned headers that decide freshness changed (no `bt_header_dendrite_version`, or a
/// huge `timeout`). The nonce is signed and says when the request was made: refused.
#[tokio::test]
async fn replays_are_refused_after_the_table_forgot_them() {
    let validator = validator_key();
    let clock = clock_now();
    let mut setup = AxonSetup::new(&[&validator.ss58_address()]);
    setup.args.max_request_timeout = 10.0;
    setup.clock = Some(clock.clone());
    let axon = setup.start().await;
    let target = target(axon.addr);

    let honest = Dendrite::builder(validator_key())
        .clock(clock.clone())
        .build()
        .expect("dendrite");
    let captured = [
        honest.prepare(&target, &mut prompt("one"), Duration::from_secs(5)),
        honest.prepare(&target, &mut prompt("two"), Duration::from_secs(5)),
    ];
    for request in &captured {
        assert_eq!(send(request, &[], &[], None).await.0, 200);
        assert_eq!(send(request, &[], &[], None).await.0, 401);
    }

    // Long after the axon's longest request timeout: then any signed request churns the
    // table, and the captures come back with their unsigned headers changed.
    clock.advance_ns(600_000_000_000);
    let churn = Dendrite::builder(stranger_key())
        .clock(clock.clone())
        .build()
        .expect("dendrite");
    let request = churn.prepare(&target, &mut prompt("churn"), Duration::from_secs(5));
    assert_eq!(send(&request, &[], &[], None).await.0, 403);

    let (status, message) = send(&captured[0], &["bt_header_dendrite_version"], &[], None).await;
    assert_eq!(status, 401, "replay without a version header: {message}");
    let (status, message) = send(&captured[1], &[], &[("timeout", "1e9")], None).await;
    assert_eq!(status, 401, "replay with a huge timeout: {message}");
}

/// Issue 12, D4: an unregistered key fills the btauth/1 replay store with nonces just inside
/// the 2 s future window. The validator's next request, with a nonce of now, is served.
#[tokio::test]
async fn unregistered_btauth_flood_does_not_lock_out_a_validator() {
    let validator = validator_key();
    let clock = clock_now();
    let mut setup = AxonSetup::new(&[&validator.ss58_address()]);
    setup.args.btauth.replay_capacity = 100;
    setup.btauth_clock = Some(clock.clone());
    let axon = setup.start().await;
    let receiver = miner_key().ss58_address();
    let client = reqwest::Client::new();
    let url = format!("http://{}/Prompting", axon.addr);
    let post = |key: &Keypair, nonce: i64| {
        let body =
            serde_json::to_vec(&json!({"roles": ["user"], "messages": ["hi"]})).expect("json");
        let headers = sign_request(
            key,
            &Method::POST,
            "/Prompting",
            &body,
            Some(&receiver),
            nonce,
        )
        .expect("sign");
        client
            .post(&url)
            .headers(headers)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let response = post(&validator, clock.now_ns()).await.expect("send");
    assert_eq!(response.status(), 200);
    clock.advance_ns(1_000_000);

    let stranger = stranger_key();
    for i in 0..110 {
        let response = post(&stranger, clock.now_ns() + 1_900_000_000 + i)
            .await
            .expect("send");
        assert_eq!(response.status(), 403, "flood request {i}");
    }

    clock.advance_ns(1_000_000);
    let response = post(&validator, clock.now_ns()).await.expect("send");
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, 200, "the validator after the flood: {body}");
}

/// Reads until the server closes the connection (EOF or reset): true if it did within
/// `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    bytes
}

/// A HEADERS frame (stream 1, end of stream) for `GET /healthz` over h2c, HPACK literals.
fn h2_get_healthz() -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.extend_from_slice(&[0x44, 8]); // :path, literal, 8 bytes
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 9]); // :authority, literal, 9 bytes
    block.extend_from_slice(b"127.0.0.1");
    let len = block.len();
    let mut frame = vec![0, 0, len as u8, 0x1, 0x5, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    frame
}

/// Sends `GET /healthz` on a keep-alive HTTP/1.1 connection and reads the whole answer.
async fn h1_healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    read_h1_response(stream).await
}

/// Sends a prepared legacy request on `stream` (HTTP/1.1, kept alive) and reads the answer.
async fn h1_post(stream: &mut TcpStream, request: &PreparedRequest) -> String {
    let path = request
        .url
        .splitn(4, '/')
        .nth(3)
        .map(|p| format!("/{p}"))
        .expect("path");
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", request.body.len()));
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
        .write_all(request.body.as_bytes())
        .await
        .expect("write body");
    read_h1_response(stream).await
}

async fn read_h1_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "connection closed before the answer was complete");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().expect("length"))
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// Issue 12, D1: sockets that send nothing, a byte, part of the HTTP/2 preface, or the
/// preface and SETTINGS but no request must be closed within `--axon.read_timeout`.
#[tokio::test]
async fn stalled_connections_are_closed_within_the_read_timeout() {
    let mut setup = AxonSetup::new(&[]);
    setup.args = axon_args(&["--axon.read_timeout", "1"]);
    let axon = setup.start().await;
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("nothing", Vec::new()),
        ("one byte", b"P".to_vec()),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n".to_vec()),
        ("the HTTP/2 preface and SETTINGS", h2_preface()),
        ("part of an HTTP/1.1 request line", b"GET".to_vec()),
    ];
    let mut checks = Vec::new();
    for (what, payload) in payloads {
        let addr = axon.addr;
        checks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(&payload).await.expect("write");
            (
                what,
                closed_within(&mut stream, Duration::from_secs(4)).await,
            )
        }));
    }
    for check in checks {
        let (what, closed) = check.await.expect("task");
        assert!(closed, "a connection that sent {what} is still open");
    }
}

/// Issue 12, D1: keep-alive HTTP/1.1 and HTTP/2 connections are closed after
/// `--axon.idle_timeout` without a request.
#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let mut setup = AxonSetup::new(&[]);
    setup.args = axon_args(&["--axon.read_timeout", "8", "--axon.idle_timeout", "1"]);
    let axon = setup.start().await;

    let mut h1 = TcpStream::connect(axon.addr).await.expect("connect");
    let answer = h1_healthz(&mut h1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut h2 = TcpStream::connect(axon.addr).await.expect("connect");
    h2.write_all(&h2_preface()).await.expect("preface");
    h2.write_all(&h2_get_healthz()).await.expect("request");

    assert!(
        closed_within(&mut h1, Duration::from_secs(4)).await,
        "idle HTTP/1.1 connection still open"
    );
    assert!(
        closed_within(&mut h2, Duration::from_secs(4)).await,
        "idle HTTP/2 connection still open"
    );
}

/// Issue 12, D1: with every connection slot taken by idle sockets, a new connection is
/// served at once: the oldest idle connection of the lowest-ranked caller gives way (a
/// registered validator's idle keep-alive connection outranks sockets that never sent an
/// authenticated request).
#[tokio::test]
async fn at_the_connection_limit_the_oldest_idle_connection_gives_way() {
    let validator = validator_key();
    let mut setup = AxonSetup::new(&[&validator.ss58_address()]);
    setup.args = axon_args(&["--axon.max_connections", "4", "--axon.read_timeout", "30"]);
    let axon = setup.start().await;
    let target = target(axon.addr);

    // The oldest connection: a validator's, kept alive after an answered request.
    let honest = Dendrite::new(validator_key()).expect("dendrite");
    let mut kept = TcpStream::connect(axon.addr).await.expect("connect");
    let request = honest.prepare(&target, &mut prompt("hello"), Duration::from_secs(12));
    let answer = h1_post(&mut kept, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Then three sockets that say nothing.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(axon.addr).await.expect("connect"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A fifth connection is served without waiting.
    let response = reqwest::Client::new()
        .get(format!("http://{}/healthz", axon.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the new connection is served");
    assert_eq!(response.status(), 200);

    // The oldest silent socket gave way; the others and the validator's connection did not.
    assert!(closed_within(&mut silent[0], Duration::from_secs(2)).await);
    for other in &mut silent[1..] {
        assert!(!closed_within(other, Duration::from_millis(200)).await);
    }
    let request = honest.prepare(&target, &mut prompt("again"), Duration::from_secs(12));
    let answer = h1_post(&mut kept, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Issue 12, D1: when every slot is busy, a new connection waits only until one of them
/// goes idle (it then gives way), not until one closes.
#[tokio::test]
async fn at_the_connection_limit_a_busy_connection_gives_way_once_idle() {
    let validator = validator_key();
    let mut setup = AxonSetup::new(&[&validator.ss58_address()]);
    setup.args = axon_args(&["--axon.max_connections", "2", "--axon.read_timeout", "30"]);
    let axon = setup.start().await;
    let target = target(axon.addr);

    // Both slots busy: each connection has a request that takes 3 s ("sleep").
    let mut busy = Vec::new();
    for i in 0..2 {
        let honest = Dendrite::builder(validator_key())
            .uuid(format!("busy-{i}"))
            .build()
            .expect("dendrite");
        let request = honest.prepare(&target, &mut prompt("sleep"), Duration::from_secs(12));
        let addr = axon.addr;
        busy.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let answer = h1_post(&mut stream, &request).await;
            // Kept open (idle) afterwards.
            (answer, stream)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = std::time::Instant::now();
    let response = reqwest::Client::new()
        .get(format!("http://{}/healthz", axon.addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("served once a busy connection went idle");
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    for task in busy {
        let (answer, _stream) = task.await.expect("task");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
