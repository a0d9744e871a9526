//! `Synapse<B>`: the base fields every request carries around a typed body, with the JSON
//! codec, the header codec and the body hash.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::body::SynapseBody;
use crate::body_hash::body_hash_of;
use crate::error::{BodyError, BodyHashMismatch};
use crate::headers::{
    AXON_PREFIX, DENDRITE_PREFIX, INPUT_OBJ_PREFIX, SynapseHeaders, header_map,
    python_headers_dict_size,
};
use crate::lenient::{self, DEFAULT_TIMEOUT};
use crate::python_repr::{PyStr, float_repr};
use crate::signing::{self, or_none};
use crate::terminal::TerminalInfo;

/// A synapse: bittensor's base `Synapse` fields plus the typed body `B`.
///
/// The JSON form is Python's `model_dump()`: the base fields, `required_hash_fields`, then
/// the body's fields, `null` kept.
///
/// ```
/// use prompting_synapse::{Prompting, Synapse};
///
/// let mut request = Synapse::new(Prompting::new(vec!["user".into()], vec!["hi".into()]));
/// request.timeout = 5.0;
/// let headers = request.to_headers();
/// assert!(headers.contains(&("bt_header_input_obj_messages".into(), "W10=".into())));
/// assert!(headers.contains(&("computed_body_hash".into(), request.body_hash())));
///
/// let body = request.to_json();
/// let received = Synapse::<Prompting>::from_json(body.as_bytes())?;
/// assert_eq!(received, request);
/// # Ok::<(), prompting_synapse::BodyError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Synapse<B> {
    /// The route name; always `B::NAME` after parsing (Python forces the class name).
    pub name: String,
    /// The call timeout in seconds (default 12.0).
    pub timeout: f64,
    /// Python's `get_size(synapse)` as the sender computed it (informational, default 0).
    pub total_size: u64,
    /// Python's `sys.getsizeof(headers)` (informational, default 0).
    pub header_size: u64,
    /// What the dendrite (client) says about itself.
    pub dendrite: TerminalInfo,
    /// What the axon (server) says about itself.
    pub axon: TerminalInfo,
    /// The body hash as received in the `computed_body_hash` header (`""` in JSON bodies,
    /// where Python never fills it). [`Synapse::body_hash`] computes the real one.
    pub computed_body_hash: String,
    /// The synapse-specific fields.
    pub body: B,
}

/// The JSON layout of [`Synapse`] (Python field order).
#[derive(Serialize)]
struct Wire<'a, B> {
    name: &'a str,
    timeout: f64,
    total_size: u64,
    header_size: u64,
    dendrite: &'a TerminalInfo,
    axon: &'a TerminalInfo,
    computed_body_hash: &'a str,
    required_hash_fields: &'a [&'static str],
    #[serde(flatten)]
    body: &'a B,
}

/// A request ready to send: what a dendrite POSTs to `/{name}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestParts {
    /// The URL path, `/{B::NAME}`.
    pub path: String,
    /// The synapse headers (lower-case names, Python's order). Add `Content-Type: application/json`.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: String,
}

/// A response ready to send: what an axon answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseParts {
    /// The HTTP status: the axon's status code.
    pub status: u16,
    /// The synapse headers (lower-case names, Python's order). Add `Content-Type: application/json`.
    pub headers: Vec<(String, String)>,
    /// The JSON body: the whole synapse on 200, `{"message": ...}` otherwise.
    pub body: String,
}

fn take_field<T>(
    map: &mut Map<String, Value>,
    field: &'static str,
    read: fn(Value) -> Result<T, serde_json::Error>,
    default: T,
) -> Result<T, BodyError> {
    match map.remove(field) {
        None => Ok(default),
        Some(value) => read(value).map_err(|e| BodyError::InvalidField {
            field,
            reason: e.to_string(),
        }),
    }
}

fn read_terminal(value: Value) -> Result<TerminalInfo, serde_json::Error> {
    // Python's `dendrite`/`axon` are Optional: null reads as an empty TerminalInfo.
    Ok(serde_json::from_value::<Option<TerminalInfo>>(value)?.unwrap_or_default())
}

fn read_optional_string(value: Value) -> Result<String, serde_json::Error> {
    Ok(serde_json::from_value::<Option<String>>(value)?.unwrap_or_default())
}

impl<B: SynapseBody> Synapse<B> {
    /// A synapse around `body` with Python's defaults: name `B::NAME`, timeout 12.0,
    /// sizes 0, empty terminals, empty `computed_body_hash`.
    pub fn new(body: B) -> Self {
        Self {
            name: B::NAME.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            total_size: 0,
            header_size: 0,
            dendrite: TerminalInfo::default(),
            axon: TerminalInfo::default(),
            computed_body_hash: String::new(),
            body,
        }
    }

    /// The body hash of this synapse's hashed fields (`B::HASH_FIELDS`):
    /// `sha3_256_hex(concat(sha3_256_hex(str(field)) for field))`.
    pub fn body_hash(&self) -> String {
        let values: Vec<&dyn PyStr> = B::HASH_FIELDS
            .iter()
            .filter_map(|field| self.body.hash_field(field))
            .collect();
        debug_assert_eq!(
            values.len(),
            B::HASH_FIELDS.len(),
            "hash_field misses a name"
        );
        body_hash_of(&values)
    }

    /// Checks the body hash against the `computed_body_hash` a request's headers claim
    /// (the axon's integrity check).
    pub fn verify_body_hash(&self, claimed: &str) -> Result<(), BodyHashMismatch> {
        let computed = self.body_hash();
        if computed == claimed {
            Ok(())
        } else {
            Err(BodyHashMismatch {
                claimed: claimed.to_owned(),
                computed,
            })
        }
    }

    /// The JSON of this synapse, compact (as a Python axon answers; a Python dendrite
    /// sends the same fields with `", "`/`": "` separators, which parse the same).
    ///
    /// # Panics
    ///
    /// If `B` does not serialize as a JSON object, which breaks the [`SynapseBody`]
    /// contract (a programming error, never caused by received data).
    pub fn to_json(&self) -> String {
        let wire = Wire {
            name: &self.name,
            timeout: self.timeout,
            total_size: self.total_size,
            header_size: self.header_size,
            dendrite: &self.dendrite,
            axon: &self.axon,
            computed_body_hash: &self.computed_body_hash,
            required_hash_fields: B::HASH_FIELDS,
            body: &self.body,
        };
        // Serializing plain data with string keys into a String cannot fail; a body type
        // whose Serialize impl fails would be a programming error.
        serde_json::to_string(&wire)
            .unwrap_or_else(|e| panic!("synapse {} does not serialize to JSON: {e}", B::NAME))
    }

    /// Parses a JSON body as bittensor 6.x–10.x sends it: numbers may be strings
    /// (`"timeout": "12.0"`), base fields may be absent or `null` (defaults), an incoming
    /// `required_hash_fields` is ignored (the class's own list is used, as in Python),
    /// unknown fields are ignored, and `name` becomes `B::NAME`.
    ///
    /// A missing required field is [`BodyError::MissingField`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, BodyError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| BodyError::InvalidJson {
            reason: e.to_string(),
        })?;
        let Value::Object(mut map) = value else {
            return Err(BodyError::NotAnObject);
        };
        map.remove("name");
        map.remove("required_hash_fields");
        let timeout = take_field(&mut map, "timeout", lenient::timeout, DEFAULT_TIMEOUT)?;
        let total_size = take_field(&mut map, "total_size", lenient::size, 0)?;
        let header_size = take_field(&mut map, "header_size", lenient::size, 0)?;
        let dendrite = take_field(&mut map, "dendrite", read_terminal, TerminalInfo::default())?;
        let axon = take_field(&mut map, "axon", read_terminal, TerminalInfo::default())?;
        let computed_body_hash = take_field(
            &mut map,
            "computed_body_hash",
            read_optional_string,
            String::new(),
        )?;
        if let Some(missing) = B::REQUIRED_FIELDS
            .iter()
            .find(|field| !map.contains_key(field.name))
        {
            return Err(BodyError::MissingField {
                synapse: B::NAME,
                field: missing.name,
            });
        }
        let body =
            serde_json::from_value(Value::Object(map)).map_err(|e| BodyError::InvalidBody {
                synapse: B::NAME,
                reason: e.to_string(),
            })?;
        Ok(Self {
            name: B::NAME.to_owned(),
            timeout,
            total_size,
            header_size,
            dendrite,
            axon,
            computed_body_hash,
            body,
        })
    }

    /// The headers Python's `Synapse.to_headers()` makes, in its order and with its value
    /// formats: `name`, `timeout`, `bt_header_axon_*` and `bt_header_dendrite_*` (fields
    /// that are set), `bt_header_input_obj_*` (one per required field: base64 of the JSON
    /// of an empty value, `W10=` for a list), `header_size` (CPython's size of that header
    /// dict), `total_size` (this synapse's value) and `computed_body_hash` (computed now).
    pub fn to_headers(&self) -> Vec<(String, String)> {
        self.to_headers_with_hash(self.body_hash())
    }

    /// [`Synapse::to_headers`] with a `computed_body_hash` the caller already has: it must be
    /// this synapse's [`Synapse::body_hash`] (e.g. the one [`Synapse::verify_body_hash`]
    /// just accepted). Saves hashing the body twice on the axon's hot path.
    pub fn to_headers_with_hash(&self, body_hash: String) -> Vec<(String, String)> {
        let mut headers = vec![
            ("name".to_owned(), self.name.clone()),
            ("timeout".to_owned(), float_repr(self.timeout)),
        ];
        headers.extend(self.axon.header_pairs(AXON_PREFIX));
        headers.extend(self.dendrite.header_pairs(DENDRITE_PREFIX));
        for field in B::REQUIRED_FIELDS {
            headers.push((
                format!("{INPUT_OBJ_PREFIX}{}", field.name),
                BASE64.encode(field.empty_json),
            ));
        }
        let header_size = python_headers_dict_size(headers.len());
        headers.push(("header_size".to_owned(), header_size.to_string()));
        headers.push(("total_size".to_owned(), self.total_size.to_string()));
        headers.push(("computed_body_hash".to_owned(), body_hash));
        headers
    }

    /// [`Synapse::to_headers`] as an `http::HeaderMap` (values Latin-1, control characters
    /// as spaces; see [`crate::headers::header_value`]).
    pub fn to_header_map(&self) -> http::HeaderMap {
        header_map(&self.to_headers())
    }

    /// Sets the fields that headers carry: `timeout`, `total_size`, `header_size`,
    /// `computed_body_hash` when present, and the terminals' fields that are present
    /// (over what the body said). `name` stays `B::NAME`.
    pub fn apply_headers(&mut self, headers: &SynapseHeaders) {
        if let Some(timeout) = headers.timeout {
            self.timeout = timeout;
        }
        if let Some(total_size) = headers.total_size {
            self.total_size = total_size;
        }
        if let Some(header_size) = headers.header_size {
            self.header_size = header_size;
        }
        if let Some(hash) = &headers.computed_body_hash {
            self.computed_body_hash = hash.clone();
        }
        self.dendrite.merge_from(&headers.dendrite);
        self.axon.merge_from(&headers.axon);
    }

    /// The axon side: a request as received, body parsed then headers applied (so
    /// `computed_body_hash`, `dendrite` and `axon` hold what the headers say). Check it with
    /// [`Synapse::verify_body_hash`] against `headers.computed_body_hash` and verify the
    /// signature over [`Synapse::request_signing_message`].
    pub fn from_request(headers: &SynapseHeaders, body: &[u8]) -> Result<Self, BodyError> {
        let mut synapse = Self::from_json(body)?;
        synapse.apply_headers(headers);
        Ok(synapse)
    }

    /// The dendrite side: the path, headers and JSON body of the request. Sets
    /// `total_size` to the body length first if it is 0 (Python sends its own `get_size`
    /// estimate there; no Python code checks it).
    pub fn to_request(&mut self) -> RequestParts {
        if self.total_size == 0 {
            self.total_size = self.to_json().len() as u64;
        }
        RequestParts {
            path: format!("/{}", B::NAME),
            headers: self.to_headers(),
            body: self.to_json(),
        }
    }

    /// The axon side: the response for this synapse, as a bittensor 10.x axon makes it.
    /// An unset `axon.status_code` becomes 200, and a 200 without message gets `"Success"`.
    /// On 200 the body is the whole synapse; otherwise it is `{"message": status_message}`.
    /// Headers are [`Synapse::to_headers`].
    pub fn to_response(&mut self) -> ResponseParts {
        let body_hash = self.body_hash();
        self.to_response_with_hash(body_hash)
    }

    /// [`Synapse::to_response`] with a body hash the caller already has (see
    /// [`Synapse::to_headers_with_hash`]).
    pub fn to_response_with_hash(&mut self, body_hash: String) -> ResponseParts {
        let status = *self.axon.status_code.get_or_insert(200);
        if status == 200
            && self
                .axon
                .status_message
                .as_deref()
                .is_none_or(str::is_empty)
        {
            self.axon.status_message = Some("Success".to_owned());
        }
        let body = if status == 200 {
            self.to_json()
        } else {
            serde_json::json!({ "message": self.axon.status_message }).to_string()
        };
        ResponseParts {
            status,
            headers: self.to_headers_with_hash(body_hash),
            body,
        }
    }

    /// The dendrite side: folds an axon's response into this, the request that was sent,
    /// as Python's `Dendrite.process_server_response` does:
    ///
    /// * HTTP 200: the body must be a whole synapse; its `timeout`, sizes, `dendrite`,
    ///   `axon` and the body's mutable fields (see [`SynapseBody::accept_response`]) are
    ///   taken; `computed_body_hash` is kept (frozen).
    /// * otherwise: `axon.status_code` = the HTTP status and `axon.status_message` = the
    ///   body's `"message"` (none when absent or not JSON, e.g. 6.4.x's `{}`).
    ///
    /// Then the headers' terminal fields overwrite (6.4.x puts the real code in
    /// `bt_header_axon_status_code` of an HTTP 500), and `dendrite.status_code`/
    /// `status_message` become the axon's.
    pub fn apply_response(
        &mut self,
        status: u16,
        headers: &SynapseHeaders,
        body: &[u8],
    ) -> Result<(), BodyError> {
        if status == 200 {
            let server = Self::from_json(body)?;
            self.timeout = server.timeout;
            self.total_size = server.total_size;
            self.header_size = server.header_size;
            self.dendrite = server.dendrite;
            self.axon = server.axon;
            self.body.accept_response(server.body);
        } else {
            self.axon.status_code = Some(status);
            self.axon.status_message = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned));
        }
        self.dendrite.merge_from(&headers.dendrite);
        self.axon.merge_from(&headers.axon);
        self.dendrite.status_code = self.axon.status_code;
        self.dendrite.status_message = self.axon.status_message.clone();
        Ok(())
    }

    /// The message the dendrite signs and the axon verifies, from this synapse's dendrite
    /// fields and `computed_body_hash`, with the *verifying axon's own* hotkey; absent
    /// fields print as `None`, as in Python. See [`signing::request_message`].
    pub fn request_signing_message(&self, axon_hotkey: &str) -> String {
        signing::request_message(
            &or_none(self.dendrite.nonce.as_ref()),
            &or_none(self.dendrite.hotkey.as_ref()),
            axon_hotkey,
            &or_none(self.dendrite.uuid.as_ref()),
            &self.computed_body_hash,
        )
    }

    /// The message the axon signs into `axon.signature`, from this synapse's fields;
    /// absent fields print as `None`. See [`signing::axon_message`].
    pub fn axon_signing_message(&self) -> String {
        signing::axon_message(
            &or_none(self.axon.nonce.as_ref()),
            &or_none(self.dendrite.hotkey.as_ref()),
            &or_none(self.axon.hotkey.as_ref()),
            &or_none(self.axon.uuid.as_ref()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Prompting;

    fn prompting() -> Synapse<Prompting> {
        Synapse::new(Prompting::new(
            vec!["user".into()],
            vec!["What is the capital of France?".into()],
        ))
    }

    #[test]
    fn a_known_hash_gives_the_same_response() {
        let mut computed = prompting();
        computed.axon.status_code = Some(200);
        let mut known = computed.clone();
        let hash = known.body_hash();
        assert_eq!(known.to_response_with_hash(hash), computed.to_response());
    }

    #[test]
    fn json_has_python_field_order_and_nulls() {
        let json = prompting().to_json();
        assert!(json.starts_with(
            r#"{"name":"Prompting","timeout":12.0,"total_size":0,"header_size":0,"dendrite":{"status_code":null"#
        ));
        assert!(json.ends_with(
            r#""computed_body_hash":"","required_hash_fields":["messages"],"roles":["user"],"messages":["What is the capital of France?"],"completion":""}"#
        ));
    }

    #[test]
    fn missing_required_fields_are_typed_errors() {
        assert_eq!(
            Synapse::<Prompting>::from_json(br#"{"roles": ["user"]}"#),
            Err(BodyError::MissingField {
                synapse: "Prompting",
                field: "messages"
            })
        );
        assert_eq!(
            Synapse::<Prompting>::from_json(br#"{"messages": []}"#),
            Err(BodyError::MissingField {
                synapse: "Prompting",
                field: "roles"
            })
        );
    }

    #[test]
    fn bad_bodies_are_typed_errors() {
        assert!(matches!(
            Synapse::<Prompting>::from_json(b"{"),
            Err(BodyError::InvalidJson { .. })
        ));
        assert_eq!(
            Synapse::<Prompting>::from_json(b"[]"),
            Err(BodyError::NotAnObject)
        );
        assert!(matches!(
            Synapse::<Prompting>::from_json(br#"{"roles":[],"messages":[1]}"#),
            Err(BodyError::InvalidBody { .. })
        ));
        assert!(matches!(
            Synapse::<Prompting>::from_json(br#"{"roles":[],"messages":[],"timeout":"soon"}"#),
            Err(BodyError::InvalidField {
                field: "timeout",
                ..
            })
        ));
        assert!(matches!(
            Synapse::<Prompting>::from_json(br#"{"roles":[],"messages":[],"axon":{"port":"x"}}"#),
            Err(BodyError::InvalidField { field: "axon", .. })
        ));
    }

    #[test]
    fn lenient_base_fields() {
        let s = Synapse::<Prompting>::from_json(
            br#"{"name":"Other","timeout":"5.0","total_size":"3587","header_size":null,
                 "dendrite":null,"axon":{"status_code":"200"},"computed_body_hash":null,
                 "required_hash_fields":["roles"],"roles":[],"messages":[],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(s.name, "Prompting");
        assert_eq!(s.timeout, 5.0);
        assert_eq!(s.total_size, 3587);
        assert_eq!(s.header_size, 0);
        assert_eq!(s.dendrite, TerminalInfo::default());
        assert_eq!(s.axon.status_code, Some(200));
        assert_eq!(s.computed_body_hash, "");
    }

    #[test]
    fn headers_follow_python_order() {
        let mut s = prompting();
        s.timeout = 5.0;
        s.axon.ip = Some("127.0.0.1".into());
        s.axon.port = Some(18391);
        s.dendrite.nonce = Some(7);
        let names: Vec<String> = s.to_headers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "name",
                "timeout",
                "bt_header_axon_ip",
                "bt_header_axon_port",
                "bt_header_dendrite_nonce",
                "bt_header_input_obj_roles",
                "bt_header_input_obj_messages",
                "header_size",
                "total_size",
                "computed_body_hash"
            ]
        );
        let headers = s.to_headers();
        assert_eq!(headers[1].1, "5.0");
        assert_eq!(headers[7].1, "272");
        assert_eq!(
            headers[9].1,
            "0a0f38cbfc2c9422ef9245bcd617e7d027c68e59ed9961464bfc0edcaefc9042"
        );
    }

    #[test]
    fn headers_round_trip() {
        let mut s = prompting();
        s.timeout = 3.5;
        s.total_size = 99;
        s.dendrite = TerminalInfo {
            ip: Some("10.0.0.1".into()),
            version: Some(10005000),
            nonce: Some(1_795_303_299_506_817_297),
            uuid: Some("u".into()),
            hotkey: Some("5D".into()),
            signature: Some("0xab".into()),
            ..TerminalInfo::default()
        };
        s.axon.process_time = Some(0.25);
        let parsed = SynapseHeaders::from_header_map(&s.to_header_map()).unwrap();
        assert_eq!(parsed.name.as_deref(), Some("Prompting"));
        assert_eq!(parsed.timeout, Some(3.5));
        assert_eq!(parsed.total_size, Some(99));
        assert_eq!(parsed.dendrite, s.dendrite);
        assert_eq!(parsed.axon, s.axon);
        assert_eq!(parsed.computed_body_hash, Some(s.body_hash()));
        assert_eq!(
            parsed.input_objects,
            vec![
                ("roles".to_string(), serde_json::json!([])),
                ("messages".to_string(), serde_json::json!([]))
            ]
        );
    }

    #[test]
    fn verify_body_hash_reports_both_hashes() {
        let s = prompting();
        assert!(s.verify_body_hash(&s.body_hash()).is_ok());
        let err = s.verify_body_hash("00").unwrap_err();
        assert_eq!(err.claimed, "00");
        assert_eq!(err.computed, s.body_hash());
    }

    #[test]
    fn error_response_has_message_body_and_status() {
        let mut s = prompting();
        s.axon.status_code = Some(403);
        s.axon.status_message = Some("Forbidden. Key is blacklisted: x.".into());
        let response = s.to_response();
        assert_eq!(response.status, 403);
        assert_eq!(
            response.body,
            r#"{"message":"Forbidden. Key is blacklisted: x."}"#
        );
    }

    #[test]
    fn success_response_defaults_status() {
        let mut s = prompting();
        s.body.completion = "Paris".into();
        let response = s.to_response();
        assert_eq!(response.status, 200);
        assert_eq!(s.axon.status_message.as_deref(), Some("Success"));
        let back = Synapse::<Prompting>::from_json(response.body.as_bytes()).unwrap();
        assert_eq!(back.body.completion, "Paris");
        assert_eq!(back.axon.status_code, Some(200));
    }

    #[test]
    fn signing_messages_print_none_like_python() {
        let mut s = prompting();
        assert_eq!(s.request_signing_message("5A"), "None.None.5A.None.");
        s.dendrite.nonce = Some(1);
        s.dendrite.hotkey = Some("5D".into());
        s.dendrite.uuid = Some("u".into());
        s.computed_body_hash = "h".into();
        assert_eq!(s.request_signing_message("5A"), "1.5D.5A.u.h");
        s.axon.nonce = Some(2);
        s.axon.hotkey = Some("5A".into());
        s.axon.uuid = Some("v".into());
        assert_eq!(s.axon_signing_message(), "2.5D.5A.v");
    }
}
