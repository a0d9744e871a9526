//! The JSON bodies of the chat-completions API: the request sent, the answers parsed (full
//! completion, stream chunk, error body). Answers are parsed leniently: unknown fields are
//! ignored, so OpenAI-compatible servers with extra fields work.

use serde::{Deserialize, Serialize};

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// The body of `POST /chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage<'a>>,
    pub temperature: f32,
    pub max_tokens: u32,
    pub top_p: f32,
    pub n: u32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Sent with `stream` only (OpenAI refuses it otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options` of a streamed request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct StreamOptions {
    /// Ask for a last chunk carrying the token usage.
    pub include_usage: bool,
}

/// Token counts, as OpenAI reports them (`usage`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

impl From<Usage> for prompting_miner::TokenUsage {
    fn from(usage: Usage) -> Self {
        prompting_miner::TokenUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        }
    }
}

/// A full (non-streamed) completion.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletion {
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Choice {
    pub message: AssistantMessage,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AssistantMessage {
    pub content: Option<String>,
}

/// One `data:` event of a streamed completion. Some servers send an `error` object instead
/// of choices when a stream fails midway.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatChunk {
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    pub error: Option<serde_json::Value>,
    /// On the last chunk (with no choices) when `stream_options.include_usage` was asked.
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Delta {
    pub content: Option<String>,
}

/// The human-readable message of an error body: OpenAI's `{"error": {"message": ...}}`,
/// vLLM's `{"message": ...}`, FastAPI's `{"detail": ...}`, or a bare `{"error": "..."}`.
pub(crate) fn error_message(body: &serde_json::Value) -> Option<String> {
    let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
    let error = body.get("error");
    error
        .and_then(|error| error.get("message"))
        .and_then(text)
        .or_else(|| error.and_then(text))
        .or_else(|| body.get("message").and_then(text))
        .or_else(|| body.get("detail").and_then(text))
}

impl ChatCompletion {
    /// The first choice, or why there is none.
    pub fn into_first_choice(self) -> Result<Choice, &'static str> {
        self.choices
            .into_iter()
            .next()
            .ok_or("the upstream answer has no choices")
    }
}

impl Choice {
    /// `message.content`, or why there is none.
    pub fn into_content(self) -> Result<String, &'static str> {
        self.message
            .content
            .ok_or("the upstream's first choice has no message content")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn request_serializes_like_the_python_call() {
        let request = ChatRequest {
            model: "gpt-3.5-turbo",
            messages: vec![ChatMessage {
                role: "user",
                content: "hi",
            }],
            temperature: 0.4,
            max_tokens: 100,
            top_p: 1.0,
            n: 1,
            presence_penalty: 0.1,
            frequency_penalty: 0.1,
            stream: false,
            stream_options: None,
        };
        // On the wire (not through `to_value`, which widens f32 to f64 digits).
        let text = serde_json::to_string(&request).expect("serializes");
        assert!(text.contains("\"temperature\":0.4,"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(
            value,
            json!({
                "model": "gpt-3.5-turbo",
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 0.4,
                "max_tokens": 100,
                "top_p": 1.0,
                "n": 1,
                "presence_penalty": 0.1,
                "frequency_penalty": 0.1,
            })
        );
        let streaming = serde_json::to_value(ChatRequest {
            stream: true,
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            ..request
        })
        .expect("serializes");
        assert_eq!(streaming["stream"], json!(true));
        assert_eq!(streaming["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn first_content_or_a_reason() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<ChatCompletion>(v)
                .expect("parses")
                .into_first_choice()
                .and_then(Choice::into_content)
        };
        assert_eq!(
            parse(json!({"id": "x", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "one"}},
                {"index": 1, "message": {"role": "assistant", "content": "two"}}
            ]})),
            Ok("one".into())
        );
        assert!(parse(json!({"choices": []})).is_err());
        assert!(parse(json!({"choices": [{"message": {"content": null}}]})).is_err());
        let completion: ChatCompletion = serde_json::from_value(json!({
            "choices": [{"message": {"content": "x"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 35, "completion_tokens": 2, "total_tokens": 37}
        }))
        .expect("parses");
        let usage = completion.usage.expect("usage");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (35, 2));
        let choice = completion.into_first_choice().expect("choice");
        assert_eq!(choice.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn error_messages_of_known_shapes() {
        for body in [
            json!({"error": {"message": "m", "type": "t"}}),
            json!({"error": "m"}),
            json!({"object": "error", "message": "m"}),
            json!({"detail": "m"}),
        ] {
            assert_eq!(error_message(&body).as_deref(), Some("m"), "{body}");
        }
        assert_eq!(error_message(&json!({"other": 1})), None);
    }
}
