//! Every case of `legacy/body_hash.json` (bittensor 10.5.0), and the v6 `Dummy` hash.

use crate::common;

use common::{Dummy, fixture_json};
use prompting_synapse::{Prompting, PyStr, Synapse, sha3_256_hex};

#[test]
fn every_recorded_message_list_hashes_like_python() {
    let vectors = fixture_json("legacy/body_hash.json");
    let cases = vectors["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10, "only {} cases", cases.len());
    for case in cases {
        let messages: Vec<String> =
            serde_json::from_value(case["messages"].clone()).expect("messages");
        let repr = messages.py_repr();
        assert_eq!(repr, case["python_repr"].as_str().unwrap(), "{messages:?}");
        assert_eq!(
            sha3_256_hex(&messages.py_str()),
            case["inner_sha3_256"].as_str().unwrap(),
            "{messages:?}"
        );
        let synapse = Synapse::new(Prompting::new(vec![], messages.clone()));
        assert_eq!(
            synapse.body_hash(),
            case["body_hash"].as_str().unwrap(),
            "{messages:?}"
        );
    }
}

#[test]
fn roles_and_completion_do_not_enter_the_hash() {
    let a = Synapse::new(Prompting::new(vec!["user".into()], vec!["hello".into()]));
    let mut b = Synapse::new(Prompting::new(vec!["system".into()], vec!["hello".into()]));
    b.body.completion = "anything".into();
    assert_eq!(a.body_hash(), b.body_hash());
    assert_eq!(
        a.body_hash(),
        "e2375691e17272625698e44c2322ea1d64374d5ad46f61f55698aaf0428b8550"
    );
}

#[test]
fn v6_dummy_hashes_int_str_and_list_fields() {
    let wire = fixture_json("v6/wire_results.json");
    let body = wire["request_body"].as_str().unwrap();
    let synapse = Synapse::<Dummy>::from_json(body.as_bytes()).expect("v6 body parses");
    assert_eq!(synapse.body.input, 21);
    // str(21) = "21", str("hello") = "hello" (no quotes), str([1, 2]) = "[1, 2]".
    assert_eq!(
        synapse.body_hash(),
        wire["recomputed_body_hash"].as_str().unwrap()
    );
    assert_eq!(
        synapse.body_hash(),
        wire["request_headers"]["computed_body_hash"]
            .as_str()
            .unwrap()
    );
}
