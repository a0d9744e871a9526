//! The text-prompting v2.1.6 synapses: `Prompting` (one JSON response) and
//! `StreamPrompting` (a streamed text response).

use serde::{Deserialize, Deserializer, Serialize};

use crate::body::{RequiredField, SynapseBody};
use crate::python_repr::PyStr;

/// Reads a `str` field whose Python default is `""`; `null` (sent by early text-prompting
/// versions, whose default was `None`) reads as `""`.
fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

const PROMPTING_REQUIRED: &[RequiredField] = &[
    RequiredField {
        name: "roles",
        empty_json: "[]",
    },
    RequiredField {
        name: "messages",
        empty_json: "[]",
    },
];

/// text-prompting's `Prompting` synapse: a chat (`roles[i]` said `messages[i]`) that the
/// miner answers in `completion`.
///
/// `roles` and `messages` are required and frozen (a response cannot change them);
/// `required_hash_fields = ["messages"]`.
///
/// ```
/// use prompting_synapse::{Prompting, Synapse};
///
/// let body = br#"{"roles": ["user"], "messages": ["hi"], "timeout": "12.0"}"#;
/// let synapse = Synapse::<Prompting>::from_json(body)?;
/// assert_eq!(synapse.body.messages, ["hi"]);
/// assert_eq!(synapse.body.completion, "");
/// assert_eq!(synapse.timeout, 12.0);
/// # Ok::<(), prompting_synapse::BodyError>(())
/// ```
pub type Prompting = PromptingBody<false>;

/// text-prompting's `StreamPrompting` synapse: the same fields as [`Prompting`], but the
/// axon streams the completion as text chunks instead of answering with JSON.
pub type StreamPrompting = PromptingBody<true>;

/// The body both text-prompting synapses share; `STREAMING` tells [`StreamPrompting`]
/// (the completion streamed as text chunks) from [`Prompting`] (one JSON answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptingBody<const STREAMING: bool> {
    /// Who said each message (`"system"`, `"user"`, `"assistant"`).
    pub roles: Vec<String>,
    /// The messages, in order.
    pub messages: Vec<String>,
    /// The miner's answer (`""` in requests; for [`StreamPrompting`], accumulated from the
    /// streamed chunks).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub completion: String,
}

impl<const STREAMING: bool> PromptingBody<STREAMING> {
    /// A request for `messages` said by `roles`, with an empty completion.
    pub fn new(roles: Vec<String>, messages: Vec<String>) -> Self {
        Self {
            roles,
            messages,
            completion: String::new(),
        }
    }
}

impl PromptingBody<true> {
    /// Absorbs one streamed chunk as text-prompting's `process_streaming_response` does:
    /// the chunk is split on `\n`, every non-empty piece is appended to `completion`
    /// (so newlines are dropped), and the pieces are returned (what Python yields).
    ///
    /// ```
    /// use prompting_synapse::StreamPrompting;
    ///
    /// let mut synapse = StreamPrompting::default();
    /// assert_eq!(synapse.absorb_chunk("Hello\nworld"), ["Hello", "world"]);
    /// assert_eq!(synapse.absorb_chunk("!\n"), ["!", ""]);
    /// assert_eq!(synapse.completion, "Helloworld!");
    /// ```
    pub fn absorb_chunk(&mut self, chunk: &str) -> Vec<String> {
        let pieces: Vec<String> = chunk.split('\n').map(str::to_owned).collect();
        for piece in &pieces {
            self.completion.push_str(piece);
        }
        pieces
    }
}

impl<const STREAMING: bool> SynapseBody for PromptingBody<STREAMING> {
    const NAME: &'static str = if STREAMING {
        "StreamPrompting"
    } else {
        "Prompting"
    };
    const HASH_FIELDS: &'static [&'static str] = &["messages"];
    const REQUIRED_FIELDS: &'static [RequiredField] = PROMPTING_REQUIRED;

    fn hash_field(&self, name: &str) -> Option<&dyn PyStr> {
        match name {
            "roles" => Some(&self.roles),
            "messages" => Some(&self.messages),
            "completion" => Some(&self.completion),
            _ => None,
        }
    }

    /// Keeps the frozen `roles` and `messages`; takes the server's `completion`.
    fn accept_response(&mut self, from_server: Self) {
        self.completion = from_server.completion;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_fields_resolve_to_fields() {
        let prompting = Prompting::default();
        for name in Prompting::HASH_FIELDS {
            assert!(prompting.hash_field(name).is_some(), "{name}");
        }
        let streaming = StreamPrompting::default();
        for name in StreamPrompting::HASH_FIELDS {
            assert!(streaming.hash_field(name).is_some(), "{name}");
        }
        assert!(prompting.hash_field("nope").is_none());
    }

    #[test]
    fn completion_defaults_and_accepts_null() {
        let p: Prompting = serde_json::from_str(r#"{"roles":[],"messages":[]}"#).unwrap();
        assert_eq!(p.completion, "");
        let p: Prompting =
            serde_json::from_str(r#"{"roles":[],"messages":[],"completion":null}"#).unwrap();
        assert_eq!(p.completion, "");
    }

    #[test]
    fn response_keeps_frozen_fields() {
        let mut local = Prompting::new(vec!["user".into()], vec!["hi".into()]);
        let server = Prompting {
            roles: vec!["evil".into()],
            messages: vec!["changed".into()],
            completion: "hello".into(),
        };
        local.accept_response(server);
        assert_eq!(local.messages, ["hi"]);
        assert_eq!(local.roles, ["user"]);
        assert_eq!(local.completion, "hello");
    }

    #[test]
    fn each_synapse_has_its_python_name() {
        assert_eq!(Prompting::NAME, "Prompting");
        assert_eq!(StreamPrompting::NAME, "StreamPrompting");
    }

    #[test]
    fn stream_chunks_drop_newlines() {
        let mut s = StreamPrompting::new(vec![], vec![]);
        s.absorb_chunk("a\n\nb");
        s.absorb_chunk("");
        s.absorb_chunk("c");
        assert_eq!(s.completion, "abc");
    }
}
