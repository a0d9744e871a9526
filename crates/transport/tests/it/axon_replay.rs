//! Recorded bittensor 10.5 dendrite requests (../shared/vectors/legacy/exchanges.json, copied
//! into tests/fixtures) replayed byte for byte into our axon, with the clock set to the time
//! of the recording. The axon uses the recorded miner hotkey, so real Python signatures
//! verify.

use crate::common;

use std::sync::Arc;

use common::{AxonSetup, header, replay};
use prompting_synapse::{Prompting, Synapse, SynapseHeaders};
use prompting_testkit::RawHttp;
use prompting_transport::clock::ManualClock;
use serde_json::Value;

fn exchanges() -> Value {
    serde_json::from_str(include_str!("../fixtures/legacy/exchanges.json")).expect("fixture json")
}

fn nonce_of(raw_request: &str) -> i64 {
    RawHttp::parse(raw_request.as_bytes())
        .header("bt_header_dendrite_nonce")
        .expect("nonce header")
        .parse()
        .expect("numeric nonce")
}

/// The axon's response signature verifies over Python's axon message.
fn assert_axon_signed(headers: &[(String, String)], axon_hotkey: &str) {
    let parsed = SynapseHeaders::parse(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
        .expect("response headers parse");
    let mut synapse = Synapse::new(Prompting::default());
    synapse.apply_headers(&parsed);
    assert_eq!(synapse.axon.hotkey.as_deref(), Some(axon_hotkey));
    let signature = synapse.axon.signature.clone().expect("axon signature");
    let message = synapse.axon_signing_message();
    assert!(
        prompting_keys::verify_hex(axon_hotkey, message.as_bytes(), &signature).expect("hex"),
        "axon signature over {message} does not verify"
    );
}

#[tokio::test]
async fn recorded_exchanges_get_python_compatible_answers() {
    let data = exchanges();
    let validator = data["dendrite_hotkey"].as_str().expect("dendrite hotkey");
    let miner = data["axon_hotkey"].as_str().expect("axon hotkey");
    let exchanges = data["exchanges"].as_array().expect("exchanges");
    let first = exchanges[0]["request"].as_str().expect("request");
    let mut setup = AxonSetup::new(&[validator]);
    setup.clock = Some(Arc::new(ManualClock::new(nonce_of(first) + 1_000_000_000)));
    let axon = setup.start().await;
    assert_eq!(axon.state.hotkey(), miner);

    // 0: success, 1: unicode round trip.
    for (index, expected) in [
        (0, "echo: What is the capital of France?"),
        (1, "echo: é 🙂 \"quoted\" it's\nnewline"),
    ] {
        let request = exchanges[index]["request"].as_str().expect("request");
        let (status, headers, body) = replay(axon.addr, request).await;
        assert_eq!(status, 200, "exchange {index}: {body}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(header(&headers, "bt_header_axon_status_code"), Some("200"));
        assert_eq!(
            header(&headers, "bt_header_axon_status_message"),
            Some("Success")
        );
        let synapse = Synapse::<Prompting>::from_json(body.as_bytes()).expect("synapse body");
        assert_eq!(synapse.body.completion, expected);
        assert_axon_signed(&headers, miner);
        // The Python client reads our response into the same view it recorded.
        let recorded = &data["results"][["success", "unicode"][index]]["client_view"];
        assert_eq!(recorded["completion"].as_str(), Some(expected));
    }

    // 2: the backend fails → 500 with a message, like Python's forward error.
    let request = exchanges[2]["request"].as_str().expect("request");
    let (status, headers, body) = replay(axon.addr, request).await;
    assert_eq!(status, 500);
    assert_eq!(header(&headers, "bt_header_axon_status_code"), Some("500"));
    let message: Value = serde_json::from_str(&body).expect("json error body");
    assert_eq!(
        message["message"],
        "Internal server error with error: kaboom"
    );
    assert_axon_signed(&headers, miner);

    // 3: forward sleeps 3 s with timeout 1.0: we answer 408 at the deadline (Python let the
    // client time out instead).
    let request = exchanges[3]["request"].as_str().expect("request");
    let started = std::time::Instant::now();
    let (status, headers, _) = replay(axon.addr, request).await;
    assert_eq!(status, 408);
    assert_eq!(header(&headers, "bt_header_axon_status_code"), Some("408"));
    assert!(started.elapsed() < std::time::Duration::from_millis(2500));

    // 4: an unregistered hotkey → 403 with Python's exact message.
    let request = exchanges[4]["request"].as_str().expect("request");
    let (status, headers, body) = replay(axon.addr, request).await;
    let recorded = &data["results"]["blacklisted"]["client_view"];
    assert_eq!(status, 403);
    assert_eq!(
        header(&headers, "bt_header_axon_status_message"),
        recorded["axon.status_message"].as_str()
    );
    let message: Value = serde_json::from_str(&body).expect("json error body");
    assert_eq!(message["message"], recorded["axon.status_message"]);
}

#[tokio::test]
async fn recorded_attacks_are_refused() {
    let data = exchanges();
    let validator = data["dendrite_hotkey"].as_str().expect("dendrite hotkey");
    let results = &data["results"];
    let fresh = results["fresh_unaltered"]["request"]
        .as_str()
        .expect("request");
    let mut setup = AxonSetup::new(&[validator]);
    setup.clock = Some(Arc::new(ManualClock::new(nonce_of(fresh) + 1_000_000_000)));
    let axon = setup.start().await;

    // The unaltered request is accepted once...
    let (status, _, body) = replay(axon.addr, fresh).await;
    assert_eq!(status, 200, "{body}");
    // ...and its replay is refused with Python's message.
    let (status, headers, _) = replay(axon.addr, fresh).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "bt_header_axon_status_message"),
        Some("Not Verified with error: Nonce is too old, a newer one was last processed")
    );

    // A body changed after signing: the recomputed hash differs from the signed one.
    let tampered = results["tampered_body"]["request"]
        .as_str()
        .expect("request");
    let (status, headers, _) = replay(axon.addr, tampered).await;
    assert_eq!(status, 401);
    let message = header(&headers, "bt_header_axon_status_message").expect("message");
    assert!(message.contains("Hash mismatch"), "{message}");

    // A corrupted signature: refused with exactly the Python axon's message.
    let corrupted = results["corrupted_signature"]["request"]
        .as_str()
        .expect("request");
    let (status, headers, _) = replay(axon.addr, corrupted).await;
    let recorded = RawHttp::parse(
        results["corrupted_signature"]["response"]
            .as_str()
            .expect("response")
            .as_bytes(),
    );
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "bt_header_axon_status_message"),
        recorded.header("bt_header_axon_status_message")
    );

    // The axon verifies against its own hotkey, whatever the header claims.
    let other = results["signed_for_other_axon"]["request"]
        .as_str()
        .expect("request");
    let (status, _, body) = replay(axon.addr, other).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn stale_first_nonce_is_refused() {
    let data = exchanges();
    let validator = data["dendrite_hotkey"].as_str().expect("dendrite hotkey");
    let fresh = data["results"]["fresh_unaltered"]["request"]
        .as_str()
        .expect("request");
    let mut setup = AxonSetup::new(&[validator]);
    // 60 s after the recording: older than 4 s + the 5 s timeout.
    setup.clock = Some(Arc::new(ManualClock::new(nonce_of(fresh) + 60_000_000_000)));
    let axon = setup.start().await;
    let (status, headers, _) = replay(axon.addr, fresh).await;
    assert_eq!(status, 401);
    let message = header(&headers, "bt_header_axon_status_message").expect("message");
    assert!(
        message.starts_with(
            "Not Verified with error: Nonce is too old: acceptable delta is 9.00 seconds"
        ),
        "{message}"
    );
}

/// A request recorded from bittensor 6.4.4's dendrite (`../shared/vectors/v6/request_raw.http`,
/// synapse `Dummy`, dendrite version 644: monotonic nonces, no freshness rule) sent to our
/// `/Prompting` route. The verifier only needs the headers: it accepts the 6.4.4 signature and
/// nonce (the answer is then 400, the Dummy body lacks `roles`), and refuses the replay with
/// 401.
#[tokio::test]
async fn bittensor_6_4_4_requests_verify_and_replays_are_refused() {
    let raw = include_str!("../fixtures/legacy/v6_4_4_request.http")
        .replace("POST /Dummy", "POST /Prompting");
    let dendrite = RawHttp::parse(raw.as_bytes())
        .header("bt_header_dendrite_hotkey")
        .expect("dendrite hotkey")
        .to_string();
    let mut setup = AxonSetup::new(&[&dendrite]);
    // The recording's axon: substrate-interface's Keypair.create_from_seed(0x02 * 32).
    setup.keypair = prompting_keys::Keypair::from_mini_secret(&[2; 32]);
    let axon = setup.start().await;
    assert_eq!(
        axon.state.hotkey(),
        "5CfCr47V5Dte6bwxNBE8K9oNnQd9fiay6aDEEkgYtFv7w4Fq"
    );
    let (status, headers, body) = replay(axon.addr, &raw).await;
    assert_eq!(status, 400, "{body}");
    let message = header(&headers, "bt_header_axon_status_message").expect("message");
    assert!(message.contains("roles"), "{message}");
    let (status, headers, _) = replay(axon.addr, &raw).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "bt_header_axon_status_message"),
        Some("Not Verified with error: Nonce is too old, a newer one was last processed")
    );
}
