//! Errors raised while setting the backend up (the per-request errors are
//! [`prompting_miner::MinerError`]s).

/// Why an [`OpenAiBackend`](crate::OpenAiBackend) could not be built from its settings.
///
/// No message ever contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    /// `--openai.base_url` was given an empty list.
    #[error("--openai.base_url needs at least one URL")]
    NoBaseUrl,
    /// A `--openai.base_url` value is not a usable http(s) URL.
    #[error("invalid --openai.base_url {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric or text setting is out of its allowed range.
    #[error("invalid --openai.{flag} {value}: expected {expected}")]
    InvalidValue {
        /// The flag name without the `--openai.` prefix.
        flag: &'static str,
        /// The offending value, as text.
        value: String,
        /// The allowed range, in words.
        expected: &'static str,
    },
    /// An upstream that needs an API key was configured without one.
    #[error("upstream {url} needs an API key: pass --openai.api_key or set OPENAI_API_KEY")]
    MissingApiKey {
        /// The base URL of the upstream.
        url: String,
    },
    /// The API key cannot be sent in an HTTP header.
    #[error("invalid --openai.api_key: {0}")]
    InvalidApiKey(&'static str),
    /// The HTTP client could not be created (e.g. TLS initialisation failed).
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
}
