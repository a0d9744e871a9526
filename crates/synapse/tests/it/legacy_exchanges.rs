//! The recorded bittensor 10.5.0 exchanges (`legacy/exchanges.json`): every request parses,
//! its body hash is recomputed, its synapse headers are reproduced; every response folds
//! into the client's view the Python dendrite had.

use crate::common;

use common::{RawHttp, fixture_json, synapse_headers};
use prompting_synapse::{Prompting, Synapse, SynapseHeaders};
use serde_json::Value;

/// All recorded (label, request, response) triples.
fn exchanges() -> Vec<(String, RawHttp, RawHttp)> {
    let vectors = fixture_json("legacy/exchanges.json");
    let mut out = Vec::new();
    for (index, exchange) in vectors["exchanges"].as_array().unwrap().iter().enumerate() {
        out.push((
            format!("exchanges[{index}]"),
            RawHttp::parse(exchange["request"].as_str().unwrap().as_bytes()),
            RawHttp::parse(exchange["response"].as_str().unwrap().as_bytes()),
        ));
    }
    for (label, result) in vectors["results"].as_object().unwrap() {
        if let (Some(request), Some(response)) = (result.get("request"), result.get("response")) {
            out.push((
                label.clone(),
                RawHttp::parse(request.as_str().unwrap().as_bytes()),
                RawHttp::parse(response.as_str().unwrap().as_bytes()),
            ));
        }
    }
    out
}

fn received(request: &RawHttp) -> (SynapseHeaders, Synapse<Prompting>) {
    let headers = SynapseHeaders::parse(request.headers.iter().map(|(n, v)| (n, v)))
        .expect("request headers parse");
    let synapse = Synapse::<Prompting>::from_request(&headers, &request.body).expect("body parses");
    (headers, synapse)
}

#[test]
fn there_are_recorded_exchanges() {
    assert!(exchanges().len() >= 8, "{}", exchanges().len());
}

#[test]
fn every_request_parses_and_its_body_hash_is_recomputed() {
    for (label, request, _) in exchanges() {
        assert!(
            request.start_line.starts_with("POST /Prompting "),
            "{label}"
        );
        let (headers, synapse) = received(&request);
        let claimed = headers.computed_body_hash.as_deref().expect("hash header");
        if label == "tampered_body" {
            let mismatch = synapse.verify_body_hash(claimed).unwrap_err();
            assert_eq!(mismatch.claimed, claimed);
        } else {
            assert_eq!(synapse.verify_body_hash(claimed), Ok(()), "{label}");
        }
        assert_eq!(synapse.name, "Prompting");
        assert_eq!(synapse.computed_body_hash, claimed, "{label}: from header");
        assert_eq!(synapse.dendrite.version, Some(10005000), "{label}");
        assert!(
            synapse.dendrite.nonce.unwrap() > 1_700_000_000_000_000_000,
            "{label}"
        );
        assert_eq!(
            headers.input_objects,
            vec![
                ("roles".to_string(), serde_json::json!([])),
                ("messages".to_string(), serde_json::json!([]))
            ],
            "{label}"
        );
    }
}

#[test]
fn request_headers_are_reproduced_exactly() {
    for (label, request, _) in exchanges() {
        if [
            "tampered_body",
            "corrupted_signature",
            "signed_for_other_axon",
        ]
        .contains(&label.as_str())
        {
            continue; // the recorder altered the body or a header after Python made them
        }
        let (_, synapse) = received(&request);
        // Python's dendrite serializes the body after `to_headers()`, so the body carries
        // the header's total_size and the synapse as it was when headers were made.
        let body_only = Synapse::<Prompting>::from_json(&request.body).unwrap();
        assert_eq!(body_only.total_size, synapse.total_size);
        assert_eq!(body_only.to_headers(), synapse_headers(&request), "{label}");
    }
}

#[test]
fn request_bodies_round_trip() {
    for (label, request, _) in exchanges() {
        let synapse = Synapse::<Prompting>::from_json(&request.body).unwrap();
        let python: Value = serde_json::from_slice(&request.body).unwrap();
        let ours: Value = serde_json::from_str(&synapse.to_json()).unwrap();
        assert_eq!(ours, python, "{label}");
        assert_eq!(
            Synapse::<Prompting>::from_json(synapse.to_json().as_bytes()).unwrap(),
            synapse
        );
    }
}

#[test]
fn signed_request_message_matches_what_the_axon_verified() {
    let vectors = fixture_json("legacy/exchanges.json");
    let axon_hotkey = vectors["axon_hotkey"].as_str().unwrap();
    let result = &vectors["results"]["corrupted_signature"];
    let request = RawHttp::parse(result["request"].as_str().unwrap().as_bytes());
    let response = RawHttp::parse(result["response"].as_str().unwrap().as_bytes());
    let (_, synapse) = received(&request);
    // "Not Verified with error: Signature mismatch with {message} and {signature}"
    let status = response.header("bt_header_axon_status_message").unwrap();
    let message = status
        .strip_prefix("Not Verified with error: Signature mismatch with ")
        .and_then(|rest| rest.split(" and ").next())
        .unwrap();
    assert_eq!(synapse.request_signing_message(axon_hotkey), message);
}

#[test]
fn every_response_parses() {
    for (label, request, response) in exchanges() {
        let headers = SynapseHeaders::parse(response.headers.iter().map(|(n, v)| (n, v)))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(headers.name.as_deref(), Some("Prompting"), "{label}");
        assert_eq!(headers.axon.status_code, Some(response.status()), "{label}");
        let mut local = Synapse::<Prompting>::from_json(&request.body).unwrap();
        local
            .apply_response(response.status(), &headers, &response.body)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(
            local.dendrite.status_code,
            Some(response.status()),
            "{label}"
        );
        if response.status() == 200 {
            let python: Value = serde_json::from_slice(&response.body).unwrap();
            let parsed = Synapse::<Prompting>::from_json(&response.body).unwrap();
            let ours: Value = serde_json::from_str(&parsed.to_json()).unwrap();
            assert_eq!(ours, python, "{label}: response body round trip");
            assert_eq!(local.body.completion, python["completion"], "{label}");
        } else {
            let python: Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(
                local.axon.status_message.as_deref(),
                python["message"].as_str(),
                "{label}"
            );
        }
    }
}

#[test]
fn success_response_headers_are_reproduced_except_total_size() {
    // A 10.5 axon answers 200 with the headers of the synapse it returns (its body).
    for (label, _, response) in exchanges() {
        if response.status() != 200 {
            continue;
        }
        let parsed = Synapse::<Prompting>::from_json(&response.body).unwrap();
        let without_total = |headers: Vec<(String, String)>| -> Vec<(String, String)> {
            headers
                .into_iter()
                .filter(|(n, _)| n != "total_size")
                .collect()
        };
        assert_eq!(
            without_total(parsed.to_headers()),
            without_total(synapse_headers(&response)),
            "{label}"
        );
    }
}

#[test]
fn the_client_sees_what_the_python_dendrite_saw() {
    let vectors = fixture_json("legacy/exchanges.json");
    let exchanges = vectors["exchanges"].as_array().unwrap();
    for (label, result) in vectors["results"].as_object().unwrap() {
        let Some(index) = result.get("exchange_index").and_then(Value::as_u64) else {
            continue;
        };
        if label == "timeout" {
            continue; // the Python client gave up (408) before the 200 arrived
        }
        let exchange = &exchanges[index as usize];
        let request = RawHttp::parse(exchange["request"].as_str().unwrap().as_bytes());
        let response = RawHttp::parse(exchange["response"].as_str().unwrap().as_bytes());
        let headers = SynapseHeaders::parse(response.headers.iter().map(|(n, v)| (n, v))).unwrap();
        let mut local = Synapse::<Prompting>::from_json(&request.body).unwrap();
        local
            .apply_response(response.status(), &headers, &response.body)
            .unwrap();
        let view = &result["client_view"];
        assert_eq!(local.body.completion, view["completion"], "{label}");
        for (field, ours) in [
            ("dendrite.status_code", local.dendrite.status_code),
            ("axon.status_code", local.axon.status_code),
        ] {
            assert_eq!(ours.map(u64::from), view[field].as_u64(), "{label} {field}");
        }
        for (field, ours) in [
            ("dendrite.status_message", &local.dendrite.status_message),
            ("axon.status_message", &local.axon.status_message),
        ] {
            assert_eq!(ours.as_deref(), view[field].as_str(), "{label} {field}");
        }
    }
}
