//! Attacks on the axon's replay tables (issue 12): whatever an unregistered or low-stake key
//! sends, a registered validator's fresh, honest request is served, and no request the axon
//! accepted is ever served again. Capacities are set small (`--axon.nonce_capacity 100`,
//! `--btauth.replay_capacity 100`) so that filling a table takes a hundred requests, not a
//! hundred thousand.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{AxonSetup, miner_key, validator_key};
use http::Method;
use prompting_keys::Keypair;
use prompting_synapse::{Prompting, Synapse};
use prompting_transport::btauth::sign_request;
use prompting_transport::clock::{Clock, ManualClock};
use prompting_transport::dendrite::legacy::PreparedRequest;
use prompting_transport::dendrite::{AxonTarget, Dendrite};
use serde_json::json;

const STRANGER_MNEMONIC: &str = "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong";

fn stranger_key() -> Keypair {
    Keypair::from_mnemonic(STRANGER_MNEMONIC).expect("mnemonic")
}

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

/// Re-signs a prepared legacy request for another nonce (above what a dendrite's clock
/// gives: nonces are u64 on the wire).
fn with_nonce(request: &PreparedRequest, key: &Keypair, nonce: u64) -> PreparedRequest {
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("prepared request without {name}"))
    };
    let message = format!(
        "{nonce}.{}.{}.{}.{}",
        header("bt_header_dendrite_hotkey"),
        header("bt_header_axon_hotkey"),
        header("bt_header_dendrite_uuid"),
        header("computed_body_hash"),
    );
    let signature = key.sign_hex(message.as_bytes());
    let mut resigned = request.clone();
    for (name, value) in &mut resigned.headers {
        if name.eq_ignore_ascii_case("bt_header_dendrite_nonce") {
            *value = nonce.to_string();
        } else if name.eq_ignore_ascii_case("bt_header_dendrite_signature") {
            *value = signature.clone();
        }
    }
    resigned
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
/// The validator's endpoints, the old one and a new one, must still be served.
#[tokio::test]
async fn unregistered_nonce_flood_does_not_lock_out_a_legacy_validator() {
    let validator = validator_key();
    let mut setup = AxonSetup::new(&[&validator.ss58_address()]);
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
