//! The subset of OpenAI's chat-completions schema the miner serves (the error shape is
//! [`crate::edge::rejection::OpenAiErrorBody`]).

use serde::{Deserialize, Serialize};

/// `POST /v1/chat/completions` request body. Unknown fields (`n`, `stop`, `user`...) are
/// accepted and ignored, as OpenAI-compatible servers commonly do.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Model name; informational (the miner serves its one backend).
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Maximum new tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Answer as Server-Sent Events.
    #[serde(default)]
    pub stream: bool,
    /// Seconds the caller waits (an extension; default 12).
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// One turn of the conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Text, or a list of content parts of which the text parts are used.
    pub content: Content,
}

/// Message content: a string or content parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`; other types are refused).
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// Part type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text of the content; non-text parts are an error naming their type.
    pub fn text(&self) -> Result<String, String> {
        match self {
            Content::Text(text) => Ok(text.clone()),
            Content::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => return Err(format!("unsupported content part type '{kind}'")),
                    }
                }
                Ok(text)
            }
        }
    }
}

/// The non-streaming answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-<uuid>`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The backend's name.
    pub model: String,
    /// One choice.
    pub choices: Vec<Choice>,
    /// What the answer cost, when the backend reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Token counts of an answer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

/// A full choice.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// 0.
    pub index: u32,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// Why generation stopped, as the backend said (`stop` when it did not).
    pub finish_reason: String,
}

/// The assistant's answer.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: &'static str,
    /// The completion.
    pub content: String,
}

/// One Server-Sent Event of a streamed answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    /// Same id for every chunk of one answer.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The backend's name.
    pub model: String,
    /// One choice delta.
    pub choices: Vec<ChunkChoice>,
}

/// A choice delta.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// 0.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// On the last chunk, why generation stopped, as the backend said (`stop` when it did
    /// not); else null.
    pub finish_reason: Option<String>,
}

/// New text (or the role, on the first chunk).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    /// `assistant` on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_strings_and_parts() {
        let request: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hel"},{"type":"text","text":"lo"}]}],
                "max_tokens":5,"stream":true,"n":1}"#,
        )
        .expect("request parses");
        assert!(request.stream);
        assert_eq!(request.messages[1].content.text().as_deref(), Ok("hello"));
        let image: Content =
            serde_json::from_str(r#"[{"type":"image_url","image_url":{"url":"x"}}]"#)
                .expect("parts");
        assert_eq!(
            image.text(),
            Err("unsupported content part type 'image_url'".into())
        );
    }
}
