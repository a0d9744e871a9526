//! Checks against the running `python3` (CPython 3.11): the non-printable table, `repr()`
//! of random string lists over the whole Unicode range, `repr()` of floats, and the size
//! of the header dict. Python runs once per batch.
//!
//! Surrogates (U+D800..U+DFFF) are not generated: a Rust `String` cannot hold them, so no
//! `Synapse` can carry one (serde_json rejects a lone `\ud800` escape in a body).

use crate::common;

use common::python3;
use prompting_synapse::headers::python_headers_dict_size;
use prompting_synapse::python_repr::float_repr;
use prompting_synapse::{Prompting, PyStr, Synapse};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const REPR_OF_LISTS: &str = r#"
import json, sys
lists = json.loads(sys.stdin.buffer.read().decode("utf-8"))
print(json.dumps([repr(l) for l in lists]))
"#;

#[test]
fn printable_table_matches_running_python() {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/gen_printable_table.py"
    ))
    .expect("generator script");
    let generated = python3(&script, b"");
    let committed = include_str!("../../src/printable_table.rs");
    assert!(
        generated == committed,
        "src/printable_table.rs differs from what this python3 generates (Unicode version?): \
         regenerate with `python3 scripts/gen_printable_table.py > src/printable_table.rs` \
         under CPython 3.11; first lines now: {:?}",
        generated.lines().take(2).collect::<Vec<_>>()
    );
}

fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        // Anywhere in Unicode (surrogates filtered out).
        3 => (0u32..=0x10FFFF).prop_filter_map("surrogate", char::from_u32),
        // Where most scripts, controls and format characters live.
        3 => (0u32..0x3400).prop_filter_map("surrogate", char::from_u32),
        // Quotes, escapes and the classic non-printables.
        2 => prop::sample::select(vec![
            '\'', '"', '\\', '\n', '\t', '\r', '\0', ' ', '\u{7f}', '\u{85}', '\u{a0}',
            '\u{ad}', '\u{2028}', '\u{2029}', '\u{200b}', '\u{feff}', '\u{3000}', '\u{e000}',
            '\u{f0000}', '\u{e0001}', '\u{10ffff}',
        ]),
        2 => prop::char::range(' ', '~'),
    ]
}

fn any_string() -> impl Strategy<Value = String> {
    vec(any_char(), 0..12).prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn repr_of_string_lists_matches_cpython(batch in vec(vec(any_string(), 0..4), 400..500)) {
        let input = serde_json::to_string(&batch).unwrap();
        let output = python3(REPR_OF_LISTS, input.as_bytes());
        let expected: Vec<String> = serde_json::from_str(&output).unwrap();
        prop_assert_eq!(expected.len(), batch.len());
        for (list, python) in batch.iter().zip(&expected) {
            prop_assert_eq!(&list.py_repr(), python, "{:?}", list);
        }
    }
}

#[test]
fn body_hash_of_random_messages_matches_python_hashlib() {
    let script = r#"
import hashlib, json, sys
h = lambda s: hashlib.sha3_256(s.encode("utf-8")).hexdigest()
lists = json.loads(sys.stdin.buffer.read().decode("utf-8"))
print(json.dumps([h(h(str(l))) for l in lists]))
"#;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = vec(vec(any_string(), 0..5), 300);
    let batch = strategy.new_tree(&mut runner).unwrap().current();
    let output = python3(script, serde_json::to_string(&batch).unwrap().as_bytes());
    let expected: Vec<String> = serde_json::from_str(&output).unwrap();
    for (messages, python) in batch.into_iter().zip(&expected) {
        let synapse = Synapse::new(Prompting::new(vec![], messages));
        assert_eq!(&synapse.body_hash(), python, "{:?}", synapse.body.messages);
    }
}

#[test]
fn float_repr_matches_cpython() {
    let script = r#"
import json, struct, sys
bits = json.loads(sys.stdin.read())
print(json.dumps([repr(struct.unpack("<d", struct.pack("<Q", b))[0]) for b in bits]))
"#;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut values: Vec<f64> = vec(any::<f64>(), 2000)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    values.extend((0..=40).map(|e| 10f64.powi(e - 20)));
    values.extend((0..=40).map(|e| 1.5 * 10f64.powi(e - 20)));
    values.extend([0.0, -0.0, 5e-324, f64::MAX, f64::MIN_POSITIVE, 0.1 + 0.2]);
    let bits: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
    let output = python3(script, serde_json::to_string(&bits).unwrap().as_bytes());
    let expected: Vec<String> = serde_json::from_str(&output).unwrap();
    for (value, python) in values.iter().zip(&expected) {
        assert_eq!(&float_repr(*value), python, "bits {:#x}", value.to_bits());
    }
}

#[test]
fn header_dict_size_matches_cpython_getsizeof() {
    // The way Synapse.to_headers() builds its dict: a 2-entry literal, update() with the
    // axon and dendrite fields, then one insert per required field.
    let script = r#"
import json, sys
out = []
for a in range(11):
    for d in range(11):
        for i in range(7):
            h = {"name": "n", "timeout": "1.0"}
            h.update({f"bt_header_axon_{k}": "v" for k in range(a)})
            h.update({f"bt_header_dendrite_{k}": "v" for k in range(d)})
            for k in range(i):
                h[f"bt_header_input_obj_{k}"] = "v"
            out.append([len(h), sys.getsizeof(h)])
print(json.dumps(out))
"#;
    let output = python3(script, b"");
    let sizes: Vec<(usize, u64)> = serde_json::from_str(&output).unwrap();
    assert_eq!(sizes.len(), 11 * 11 * 7);
    for (entries, size) in sizes {
        assert_eq!(python_headers_dict_size(entries), size, "{entries} entries");
    }
}
