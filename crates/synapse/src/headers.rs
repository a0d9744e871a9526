//! The header codec: `name`, `timeout`, `bt_header_axon_*`, `bt_header_dendrite_*`,
//! `bt_header_input_obj_*`, `header_size`, `total_size`, `computed_body_hash`.
//!
//! Names are emitted in lower case: the Python dendrite finds `bt_header_*` names with a
//! case-sensitive substring test. Parsing ignores case (HTTP names are case-insensitive,
//! and starlette hands the Python axon lower-cased names).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::HeaderError;
use crate::lenient::{parse_py_float, parse_py_int};
use crate::terminal::{FieldValueError, TerminalInfo};

/// Prefix of the axon's `TerminalInfo` headers.
pub const AXON_PREFIX: &str = "bt_header_axon_";
/// Prefix of the dendrite's `TerminalInfo` headers.
pub const DENDRITE_PREFIX: &str = "bt_header_dendrite_";
/// Prefix of the required-field placeholder headers.
pub const INPUT_OBJ_PREFIX: &str = "bt_header_input_obj_";

/// What a request's or response's headers say about a synapse, as Python's
/// `Synapse.from_headers()` reads them. Every field is optional: responses of 10.x axons
/// omit most `bt_header_axon_*` fields on success, and error responses may carry none.
///
/// ```
/// use prompting_synapse::SynapseHeaders;
///
/// let headers = [
///     ("name", "Prompting"),
///     ("timeout", "5.0"),
///     ("bt_header_dendrite_nonce", "1795303299506817297"),
///     ("bt_header_input_obj_messages", "W10="),
///     ("computed_body_hash", "0a0f38cb"),
///     ("Content-Type", "application/json"),
/// ];
/// let parsed = SynapseHeaders::parse(headers)?;
/// assert_eq!(parsed.timeout, Some(5.0));
/// assert_eq!(parsed.dendrite.nonce, Some(1795303299506817297));
/// assert_eq!(parsed.input_objects[0].0, "messages");
/// assert_eq!(parsed.computed_body_hash.as_deref(), Some("0a0f38cb"));
///
/// assert!(SynapseHeaders::parse([("bt_header_axon_port", "http")]).is_err());
/// # Ok::<(), prompting_synapse::HeaderError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SynapseHeaders {
    /// `name`: the synapse type.
    pub name: Option<String>,
    /// `timeout`, seconds.
    pub timeout: Option<f64>,
    /// `total_size` (informational).
    pub total_size: Option<u64>,
    /// `header_size` (informational).
    pub header_size: Option<u64>,
    /// `computed_body_hash`: the body hash the sender computed (and, for requests, signed).
    pub computed_body_hash: Option<String>,
    /// The `bt_header_axon_*` fields.
    pub axon: TerminalInfo,
    /// The `bt_header_dendrite_*` fields.
    pub dendrite: TerminalInfo,
    /// The decoded `bt_header_input_obj_<field>` placeholders (field name, JSON value), in
    /// header order.
    pub input_objects: Vec<(String, serde_json::Value)>,
}

/// Reads a header value as text: UTF-8, or else Latin-1 (what starlette/h11 write for
/// non-ASCII Python strings).
fn header_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

fn invalid(name: &str, value: &str, reason: impl Into<String>) -> HeaderError {
    HeaderError::InvalidValue {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl SynapseHeaders {
    /// Parses `(name, value)` pairs: an `http::HeaderMap`'s `.iter()`, or `(&str, &str)`
    /// pairs. Unknown headers (`Content-Type`, `bt_header_axon_colour`...) are ignored, as
    /// Python ignores them; when a name repeats, the last value wins. A known header whose
    /// value does not parse is an error naming the header.
    pub fn parse<I, K, V>(headers: I) -> Result<Self, HeaderError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut parsed = SynapseHeaders::default();
        for (name, value) in headers {
            let name = name.as_ref().to_ascii_lowercase();
            let value = header_text(value.as_ref());
            parsed.absorb(&name, &value)?;
        }
        Ok(parsed)
    }

    /// Parses an `http::HeaderMap` (see [`SynapseHeaders::parse`]).
    pub fn from_header_map(headers: &HeaderMap) -> Result<Self, HeaderError> {
        Self::parse(headers.iter())
    }

    fn absorb(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        let terminal_field =
            |info: &mut TerminalInfo, field: &str| match info.set_from_header(field, value) {
                Ok(()) | Err(FieldValueError::UnknownField) => Ok(()),
                Err(FieldValueError::Invalid(reason)) => Err(invalid(name, value, reason)),
            };
        if let Some(field) = name.strip_prefix(AXON_PREFIX) {
            return terminal_field(&mut self.axon, field);
        }
        if let Some(field) = name.strip_prefix(DENDRITE_PREFIX) {
            return terminal_field(&mut self.dendrite, field);
        }
        if let Some(field) = name.strip_prefix(INPUT_OBJ_PREFIX) {
            let decoded = BASE64
                .decode(value.trim())
                .map_err(|e| invalid(name, value, format!("not base64: {e}")))?;
            let json = serde_json::from_slice(&decoded)
                .map_err(|e| invalid(name, value, format!("not base64 of JSON: {e}")))?;
            self.input_objects.retain(|(existing, _)| existing != field);
            self.input_objects.push((field.to_owned(), json));
            return Ok(());
        }
        let int = |value: &str| -> Result<u64, HeaderError> {
            let number =
                parse_py_int(value).ok_or_else(|| invalid(name, value, "not an integer"))?;
            u64::try_from(number).map_err(|_| invalid(name, value, "out of range"))
        };
        match name {
            "name" => self.name = Some(value.to_owned()),
            "timeout" => {
                self.timeout = Some(
                    parse_py_float(value).ok_or_else(|| invalid(name, value, "not a number"))?,
                )
            }
            "total_size" => self.total_size = Some(int(value)?),
            "header_size" => self.header_size = Some(int(value)?),
            "computed_body_hash" => self.computed_body_hash = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }
}

/// `sys.getsizeof()` in CPython 3.11 of a dict with `entries` string keys built the way
/// `Synapse.to_headers()` builds its dict (a 2-entry literal, then `update()`s and
/// single inserts): what Python sends as `header_size`.
///
/// The keys table grows to the smallest power of two (at least 8) whose usable two
/// thirds hold the entries; the object is 64 bytes (GC header included) plus a 32-byte
/// keys header, one index byte per slot (two from 256 slots) and 16 bytes per usable entry.
pub fn python_headers_dict_size(entries: usize) -> u64 {
    let mut slots: usize = 8;
    while slots * 2 / 3 < entries {
        slots *= 2;
    }
    let usable = slots * 2 / 3;
    let index_width = if slots <= 128 {
        1
    } else if slots <= 1 << 15 {
        2
    } else {
        4
    };
    (64 + 32 + slots * index_width + usable * 16) as u64
}

/// Makes a header value of Python's `str()` text: starlette encodes header values as
/// Latin-1, so characters above U+00FF become `?`; control characters, which HTTP forbids
/// in values, become spaces.
pub fn header_value(text: &str) -> HeaderValue {
    let bytes: Vec<u8> = text
        .chars()
        .map(|c| match u32::from(c) {
            0x09 => b'\t',
            cp if cp < 0x20 || cp == 0x7F => b' ',
            cp => u8::try_from(cp).unwrap_or(b'?'),
        })
        .collect();
    // Every byte is now TAB, visible ASCII, space or 0x80..=0xFF: all valid in a value.
    HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Builds an `http::HeaderMap` from `(name, value)` pairs made by the codec. Pairs whose
/// name is not a valid header name are skipped (the codec only makes valid lower-case
/// names; a synapse field name with other characters could not travel in Python either).
pub fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            map.insert(name, header_value(value));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_sizes_match_cpython_3_11() {
        assert_eq!(python_headers_dict_size(2), 184);
        assert_eq!(python_headers_dict_size(5), 184);
        assert_eq!(python_headers_dict_size(6), 272);
        assert_eq!(python_headers_dict_size(13), 464);
        assert_eq!(python_headers_dict_size(21), 464);
        assert_eq!(python_headers_dict_size(22), 832);
    }

    #[test]
    fn names_are_case_insensitive_and_unknown_ignored() {
        let parsed = SynapseHeaders::parse([
            ("Bt_Header_Axon_Port", "18092"),
            ("TIMEOUT", "12"),
            ("bt_header_axon_colour", "blue"),
            ("X-Other", "1"),
        ])
        .unwrap();
        assert_eq!(parsed.axon.port, Some(18092));
        assert_eq!(parsed.timeout, Some(12.0));
    }

    #[test]
    fn malformed_values_name_the_header() {
        let cases = [
            ("timeout", "soon", "timeout"),
            ("header_size", "-1", "header_size"),
            ("total_size", "1.5", "total_size"),
            (
                "bt_header_dendrite_nonce",
                "abc",
                "bt_header_dendrite_nonce",
            ),
            (
                "bt_header_axon_status_code",
                "99999",
                "bt_header_axon_status_code",
            ),
            (
                "bt_header_axon_process_time",
                "fast",
                "bt_header_axon_process_time",
            ),
            (
                "bt_header_input_obj_messages",
                "!!",
                "bt_header_input_obj_messages",
            ),
            (
                "bt_header_input_obj_messages",
                "bm90IGpzb24=",
                "bt_header_input_obj_messages",
            ),
        ];
        for (name, value, expected) in cases {
            match SynapseHeaders::parse([(name, value)]) {
                Err(HeaderError::InvalidValue { name, .. }) => assert_eq!(name, expected),
                other => panic!("{name}: {value}: {other:?}"),
            }
        }
    }

    #[test]
    fn latin1_values_are_read() {
        let parsed =
            SynapseHeaders::parse([("bt_header_axon_status_message", &b"caf\xe9"[..])]).unwrap();
        assert_eq!(parsed.axon.status_message.as_deref(), Some("café"));
    }

    #[test]
    fn header_values_are_latin1_without_controls() {
        assert_eq!(header_value("café").as_bytes(), b"caf\xe9");
        assert_eq!(header_value("a\nb🙂").as_bytes(), b"a b?");
    }
}
