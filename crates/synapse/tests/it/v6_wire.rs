//! The bittensor 6.4.4 wire vectors (`v6/`), with the `Dummy` synapse: a second synapse
//! type through the same generic codec.

use crate::common;

use common::{Dummy, RawHttp, fixture, fixture_json, synapse_headers};
use prompting_synapse::{Synapse, SynapseHeaders};
use serde_json::Value;

fn raw(path: &str) -> RawHttp {
    RawHttp::parse(&std::fs::read(fixture(path)).expect("fixture"))
}

fn headers_of(message: &RawHttp) -> SynapseHeaders {
    SynapseHeaders::parse(message.headers.iter().map(|(n, v)| (n, v))).expect("headers parse")
}

#[test]
fn request_parses_and_hashes() {
    let request = raw("v6/request_raw.http");
    assert_eq!(request.start_line, "POST /Dummy HTTP/1.1");
    let headers = headers_of(&request);
    let synapse = Synapse::<Dummy>::from_request(&headers, &request.body).unwrap();
    assert_eq!(synapse.body.input, 21);
    assert_eq!(synapse.body.items, [1, 2]);
    assert_eq!(synapse.dendrite.version, Some(644));
    assert_eq!(synapse.dendrite.nonce, Some(757512466505));
    assert_eq!(
        headers.input_objects,
        vec![("input".to_string(), serde_json::json!(0))]
    );
    let claimed = headers.computed_body_hash.as_deref().unwrap();
    assert_eq!(synapse.verify_body_hash(claimed), Ok(()));
}

#[test]
fn request_headers_are_reproduced_exactly() {
    let request = raw("v6/request_raw.http");
    let body_only = Synapse::<Dummy>::from_json(&request.body).unwrap();
    // Including `bt_header_input_obj_input: MA==` (json.dumps(int()) = "0") and no
    // placeholder for the defaulted `text`/`items`, `header_size: 464`.
    assert_eq!(body_only.to_headers(), synapse_headers(&request));
}

#[test]
fn request_body_round_trips_with_required_hash_fields() {
    let request = raw("v6/request_raw.http");
    let synapse = Synapse::<Dummy>::from_json(&request.body).unwrap();
    let python: Value = serde_json::from_slice(&request.body).unwrap();
    let ours: Value = serde_json::from_str(&synapse.to_json()).unwrap();
    assert_eq!(ours, python);
    assert_eq!(
        ours["required_hash_fields"],
        serde_json::json!(["input", "text", "items"])
    );
}

#[test]
fn signed_message_matches_the_recorded_one() {
    let wire = fixture_json("v6/wire_results.json");
    let request = raw("v6/request_raw.http");
    let synapse = Synapse::<Dummy>::from_request(&headers_of(&request), &request.body).unwrap();
    let axon_hotkey = wire["keys"]["axon_ss58"].as_str().unwrap();
    assert_eq!(
        synapse.request_signing_message(axon_hotkey),
        wire["signed_message"].as_str().unwrap()
    );
}

#[test]
fn success_response_folds_into_the_request() {
    let request = raw("v6/request_raw.http");
    let response = raw("v6/response_raw_200.http");
    let mut local = Synapse::<Dummy>::from_json(&request.body).unwrap();
    local
        .apply_response(response.status(), &headers_of(&response), &response.body)
        .unwrap();
    assert_eq!(local.body.output, Some(42));
    assert_eq!(local.dendrite.status_code, Some(200));
    assert_eq!(local.dendrite.status_message.as_deref(), Some("Success"));
    assert_eq!(local.axon.nonce, Some(757766421419));
    assert_eq!(local.dendrite.port, Some(58686));
    assert_eq!(
        local.axon_signing_message(),
        "757766421419.5CcyqxXnJucaCnQQvvUg5EPzj1uoNAxACZvzArHw5aVDvgNH.\
         5CfCr47V5Dte6bwxNBE8K9oNnQd9fiay6aDEEkgYtFv7w4Fq.22d4aae0-e5fe-11f1-aefd-02fc00000001"
    );
}

#[test]
fn http_500_with_real_code_in_header_reads_as_that_code() {
    let request = raw("v6/request_raw.http");
    let response = raw("v6/response_raw_replay.http");
    assert_eq!(response.status(), 500);
    let mut local = Synapse::<Dummy>::from_json(&request.body).unwrap();
    local
        .apply_response(response.status(), &headers_of(&response), &response.body)
        .unwrap();
    assert_eq!(local.dendrite.status_code, Some(401));
    assert_eq!(
        local.dendrite.status_message.as_deref(),
        Some("Not Verified with error: Nonce is too small")
    );
    assert_eq!(local.body.output, None);
}

/// 6.4.4 answers errors with HTTP 500 + `{}`; 6.12.4 with HTTP = code + `{"message"}`.
#[test]
fn recorded_error_responses_give_the_axon_code_and_message() {
    let request = raw("v6/request_raw.http");
    let mut checked = 0;
    for file in ["v6/raw_errors_v6.4.4.json", "v6/raw_errors_v6.12.4.json"] {
        for (case, error) in fixture_json(file).as_object().unwrap() {
            let Some(code) = error["bt_header_axon_status_code"].as_str() else {
                continue; // plain-text 500 from the web server, no synapse headers
            };
            if error["http_status"] == 200 {
                continue;
            }
            let message = error["bt_header_axon_status_message"].as_str().unwrap();
            let headers = SynapseHeaders::parse([
                ("bt_header_axon_status_code", code),
                ("bt_header_axon_status_message", message),
            ])
            .unwrap();
            let mut local = Synapse::<Dummy>::from_json(&request.body).unwrap();
            let status = error["http_status"].as_u64().unwrap() as u16;
            local
                .apply_response(status, &headers, error["body"].as_str().unwrap().as_bytes())
                .unwrap();
            assert_eq!(
                local.dendrite.status_code.map(|c| c.to_string()).as_deref(),
                Some(code),
                "{file} {case}"
            );
            assert_eq!(
                local.dendrite.status_message.as_deref(),
                Some(message),
                "{file} {case}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} error responses checked");
}

#[test]
fn missing_required_field_is_a_typed_error() {
    let err = Synapse::<Dummy>::from_json(br#"{"name": "Dummy", "text": "x"}"#).unwrap_err();
    assert_eq!(
        err,
        prompting_synapse::BodyError::MissingField {
            synapse: "Dummy",
            field: "input"
        }
    );
}
