//! Every signature recorded between real Python dendrites and axons verifies here, built from
//! the headers exactly as bittensor builds the signed message; the corrupted one does not.

use crate::support;

use prompting_keys::verify_hex;
use support::{HttpMessage, fixture, json_fixture};

fn dendrite_signature_verifies(request: &HttpMessage) -> bool {
    verify_hex(
        request.required("bt_header_dendrite_hotkey"),
        request.dendrite_signed_message().as_bytes(),
        request.required("bt_header_dendrite_signature"),
    )
    .unwrap()
}

fn axon_signature_verifies(response: &HttpMessage) -> bool {
    verify_hex(
        response.required("bt_header_axon_hotkey"),
        response.axon_signed_message().as_bytes(),
        response.required("bt_header_axon_signature"),
    )
    .unwrap()
}

/// `(name, raw request or response)` for every recorded exchange of bittensor 10.5.
fn legacy_messages(part: &str) -> Vec<(String, HttpMessage)> {
    let vectors = json_fixture("legacy/exchanges.json");
    let mut out = Vec::new();
    for (index, exchange) in vectors["exchanges"].as_array().unwrap().iter().enumerate() {
        if let Some(raw) = exchange[part].as_str() {
            out.push((format!("exchanges[{index}]"), HttpMessage::parse(raw)));
        }
    }
    for (name, result) in vectors["results"].as_object().unwrap() {
        if let Some(raw) = result[part].as_str() {
            out.push((name.clone(), HttpMessage::parse(raw)));
        }
    }
    out
}

#[test]
fn legacy_request_signatures_verify_except_the_corrupted_one() {
    let vectors = json_fixture("legacy/exchanges.json");
    let mut verified = Vec::new();
    for (name, request) in legacy_messages("request") {
        // The blacklisted call was made with the (unregistered) blocked hotkey.
        let signer = request.required("bt_header_dendrite_hotkey");
        assert!(
            signer == vectors["dendrite_hotkey"] || signer == vectors["blocked_hotkey"],
            "{name}: {signer}"
        );
        let ok = if name == "signed_for_other_axon" {
            // The header names another axon hotkey, but the dendrite signed for the receiving
            // axon, which (bittensor 10.5) verifies against its own hotkey: accepted (200).
            let claimed = request.required("bt_header_axon_hotkey");
            assert_ne!(claimed, vectors["axon_hotkey"], "{name}");
            assert!(!dendrite_signature_verifies(&request), "{name}");
            let own = vectors["axon_hotkey"].as_str().unwrap();
            let message = format!(
                "{}.{}.{own}.{}.{}",
                request.required("bt_header_dendrite_nonce"),
                request.required("bt_header_dendrite_hotkey"),
                request.required("bt_header_dendrite_uuid"),
                request.required("computed_body_hash"),
            );
            verify_hex(
                request.required("bt_header_dendrite_hotkey"),
                message.as_bytes(),
                request.required("bt_header_dendrite_signature"),
            )
            .unwrap()
        } else {
            dendrite_signature_verifies(&request)
        };
        assert_eq!(ok, name != "corrupted_signature", "{name}");
        if ok {
            verified.push(name);
        }
    }
    // 5 recorded calls + fresh_unaltered, tampered_body (headers intact), signed_for_other_axon.
    assert_eq!(verified.len(), 8, "{verified:?}");
}

#[test]
fn legacy_response_axon_signatures_verify() {
    let vectors = json_fixture("legacy/exchanges.json");
    let mut signed = Vec::new();
    for (name, response) in legacy_messages("response") {
        if response.header("bt_header_axon_signature").is_none() {
            continue;
        }
        assert_eq!(
            response.required("bt_header_axon_hotkey"),
            vectors["axon_hotkey"].as_str().unwrap()
        );
        assert!(axon_signature_verifies(&response), "{name}");
        signed.push(name);
    }
    // bittensor 10.5 signs the responses it builds itself (errors, refusals); a successful
    // forward's response carries no axon nonce/uuid/signature.
    assert_eq!(signed.len(), 5, "{signed:?}");
}

#[test]
fn v6_request_signature_verifies_and_matches_the_recorded_message() {
    let wire = json_fixture("v6/wire_results.json");
    let from_json = HttpMessage::from_header_object(
        wire["request_line"].as_str().unwrap(),
        &wire["request_headers"],
    );
    assert_eq!(
        from_json.dendrite_signed_message(),
        wire["signed_message"].as_str().unwrap()
    );
    assert_eq!(wire["sig_verifies_raw_sr25519_plain_utf8"], true);
    assert!(dendrite_signature_verifies(&from_json));

    let raw = std::fs::read_to_string(fixture("v6/request_raw.http")).unwrap();
    let request = HttpMessage::parse(&raw);
    assert_eq!(
        request.dendrite_signed_message(),
        wire["signed_message"].as_str().unwrap()
    );
    assert!(dendrite_signature_verifies(&request));
}

#[test]
fn v6_response_axon_signatures_verify() {
    let wire = json_fixture("v6/wire_results.json");
    let mut responses = vec![
        (
            "replay_response",
            HttpMessage::parse(wire["replay_response"].as_str().unwrap()),
        ),
        (
            "replay_again_response",
            HttpMessage::parse(wire["replay_again_response"].as_str().unwrap()),
        ),
    ];
    for name in ["raw_hash_mismatch", "raw_bad_signature"] {
        let status = wire[name]["status"].to_string();
        responses.push((
            name,
            HttpMessage::from_header_object(&status, &wire[name]["headers"]),
        ));
    }
    for file in ["v6/response_raw_200.http", "v6/response_raw_replay.http"] {
        let raw = std::fs::read_to_string(fixture(file)).unwrap();
        responses.push((file, HttpMessage::parse(&raw)));
    }
    for (name, response) in &responses {
        assert_eq!(
            response.required("bt_header_axon_hotkey"),
            wire["keys"]["axon_ss58"].as_str().unwrap()
        );
        assert!(axon_signature_verifies(response), "{name}");
    }
    // The all-zero dendrite signature echoed back by raw_bad_signature is well-formed hex but
    // not a schnorrkel signature: it is rejected, not a parse error.
    let bad = &responses[3].1;
    assert_eq!(
        bad.required("bt_header_dendrite_signature"),
        format!("0x{}", "00".repeat(64))
    );
    assert_eq!(
        verify_hex(
            bad.required("bt_header_dendrite_hotkey"),
            b"anything",
            bad.required("bt_header_dendrite_signature")
        ),
        Ok(false)
    );
}
