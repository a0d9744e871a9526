//! The `--openai.*` settings (command line or TOML config file) and their validation.
//!
//! Names and defaults of the generation settings are those of the text-prompting v2.1.6
//! `OpenAIMiner`; `base_url`, `api_key`, `timeout`, `max_retries`, `retry_backoff`,
//! `probe_interval` and `stream_usage` are new.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[cfg(feature = "cli")]
use clap::ArgAction;
use reqwest::Url;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use crate::error::OpenAiError;

/// Default `--openai.model_name`.
pub const DEFAULT_MODEL_NAME: &str = "gpt-3.5-turbo";
/// Default `--openai.base_url`.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Default `--openai.max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 100;
/// Default `--openai.temperature`.
pub const DEFAULT_TEMPERATURE: f32 = 0.4;
/// Default `--openai.top_p`.
pub const DEFAULT_TOP_P: f32 = 1.0;
/// Default `--openai.n`.
pub const DEFAULT_N: u32 = 1;
/// Default `--openai.presence_penalty`.
pub const DEFAULT_PRESENCE_PENALTY: f32 = 0.1;
/// Default `--openai.frequency_penalty`.
pub const DEFAULT_FREQUENCY_PENALTY: f32 = 0.1;
/// Default `--openai.timeout`, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 60.0;
/// Default `--openai.max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Default `--openai.retry_backoff`, in seconds.
pub const DEFAULT_RETRY_BACKOFF_SECS: f64 = 0.5;
/// Default `--openai.probe_interval`, in seconds.
pub const DEFAULT_PROBE_INTERVAL_SECS: f64 = 1.0;
/// Default `--openai.stream_usage`.
pub const DEFAULT_STREAM_USAGE: bool = true;
/// The environment variable `--openai.api_key` falls back to.
pub const API_KEY_ENV: &str = "OPENAI_API_KEY";

/// Hosts that refuse requests without an API key.
const HOSTS_NEEDING_A_KEY: &[&str] = &["api.openai.com"];

/// An API key. It is only ever written into the `Authorization` header: `Debug` shows
/// `ApiKey(<redacted>)` and there is no `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself, for building the header and scrubbing upstream messages.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ApiKey::new(s))
    }
}

/// Settings of the OpenAI backend, as `--openai.*` flags (flatten into the binary's clap
/// parser) or as a TOML table whose keys are the flag names without `--openai.` (missing
/// keys take the defaults; `base_url` may be one string or a list).
///
/// Call [`OpenAiArgs::validate`] (or just [`OpenAiBackend::new`](crate::OpenAiBackend::new),
/// which does) to check the values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiArgs {
    /// OpenAI model to use for completion.
    #[cfg_attr(feature = "cli", arg(id = "openai.model_name", long = "openai.model_name", default_value = DEFAULT_MODEL_NAME))]
    pub model_name: String,

    /// The maximum number of tokens to generate in the completion (callers may override).
    #[cfg_attr(feature = "cli", arg(id = "openai.max_tokens", long = "openai.max_tokens", default_value_t = DEFAULT_MAX_TOKENS))]
    pub max_tokens: u32,

    /// Sampling temperature to use, between 0 and 2 (callers may override).
    #[cfg_attr(feature = "cli", arg(id = "openai.temperature", long = "openai.temperature", default_value_t = DEFAULT_TEMPERATURE, allow_negative_numbers = true))]
    pub temperature: f32,

    /// Nucleus sampling parameter, top_p probability mass, between 0 and 1 (callers may
    /// override).
    #[cfg_attr(feature = "cli", arg(id = "openai.top_p", long = "openai.top_p", default_value_t = DEFAULT_TOP_P, allow_negative_numbers = true))]
    pub top_p: f32,

    /// How many completions to generate for each prompt (only the first is used).
    #[cfg_attr(feature = "cli", arg(id = "openai.n", long = "openai.n", default_value_t = DEFAULT_N))]
    pub n: u32,

    /// Penalty for tokens based on their presence in the text so far, between -2 and 2.
    #[cfg_attr(feature = "cli", arg(id = "openai.presence_penalty", long = "openai.presence_penalty", default_value_t = DEFAULT_PRESENCE_PENALTY, allow_negative_numbers = true))]
    pub presence_penalty: f32,

    /// Penalty for tokens based on their frequency in the text so far, between -2 and 2.
    #[cfg_attr(feature = "cli", arg(id = "openai.frequency_penalty", long = "openai.frequency_penalty", default_value_t = DEFAULT_FREQUENCY_PENALTY, allow_negative_numbers = true))]
    pub frequency_penalty: f32,

    /// Accepted for compatibility with the Python miner; unused, since chat models have no
    /// suffix.
    #[cfg_attr(feature = "cli", arg(id = "openai.suffix", long = "openai.suffix"))]
    pub suffix: Option<String>,

    /// Base URL of a chat-completions API (`{base_url}/chat/completions` is called).
    /// Repeat the flag to use several upstreams: round-robin, with failover.
    #[cfg_attr(feature = "cli", arg(id = "openai.base_url", long = "openai.base_url", default_value = DEFAULT_BASE_URL, action = ArgAction::Append))]
    #[serde(deserialize_with = "one_or_many")]
    pub base_url: Vec<String>,

    /// API key sent as `Authorization: Bearer <key>`; required by api.openai.com, optional
    /// for self-hosted upstreams.
    #[cfg_attr(feature = "cli", arg(id = "openai.api_key", long = "openai.api_key", env = API_KEY_ENV, hide_env_values = true))]
    pub api_key: Option<ApiKey>,

    /// Seconds one upstream call may take before the next upstream is tried.
    #[cfg_attr(feature = "cli", arg(id = "openai.timeout", long = "openai.timeout", default_value_t = DEFAULT_TIMEOUT_SECS))]
    pub timeout: f64,

    /// How many times a failed call (429, 5xx, connection error, timeout) is retried,
    /// within the request's deadline.
    #[cfg_attr(feature = "cli", arg(id = "openai.max_retries", long = "openai.max_retries", default_value_t = DEFAULT_MAX_RETRIES))]
    pub max_retries: u32,

    /// Seconds to wait before the first retry on an upstream already tried; doubles at
    /// each further retry (capped), and `Retry-After` wins when it asks for longer.
    #[cfg_attr(feature = "cli", arg(id = "openai.retry_backoff", long = "openai.retry_backoff", default_value_t = DEFAULT_RETRY_BACKOFF_SECS))]
    pub retry_backoff: f64,

    /// While every upstream cools down after a `Retry-After`, one request at a time still
    /// probes one of them, at most once per this many seconds; a probe that succeeds ends the
    /// cool-down.
    #[cfg_attr(feature = "cli", arg(id = "openai.probe_interval", long = "openai.probe_interval", default_value_t = DEFAULT_PROBE_INTERVAL_SECS))]
    pub probe_interval: f64,

    /// Ask streamed answers for their token usage (`stream_options.include_usage`, counted in
    /// `/metrics`); `false` for servers that refuse the field.
    #[cfg_attr(feature = "cli", arg(id = "openai.stream_usage", long = "openai.stream_usage", default_value_t = DEFAULT_STREAM_USAGE, action = clap::ArgAction::Set))]
    pub stream_usage: bool,
}

impl Default for OpenAiArgs {
    fn default() -> Self {
        OpenAiArgs {
            model_name: DEFAULT_MODEL_NAME.to_owned(),
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: DEFAULT_TEMPERATURE,
            top_p: DEFAULT_TOP_P,
            n: DEFAULT_N,
            presence_penalty: DEFAULT_PRESENCE_PENALTY,
            frequency_penalty: DEFAULT_FREQUENCY_PENALTY,
            suffix: None,
            base_url: vec![DEFAULT_BASE_URL.to_owned()],
            api_key: None,
            timeout: DEFAULT_TIMEOUT_SECS,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF_SECS,
            probe_interval: DEFAULT_PROBE_INTERVAL_SECS,
            stream_usage: DEFAULT_STREAM_USAGE,
        }
    }
}

/// Accepts `base_url = "http://..."` as well as `base_url = ["http://...", ...]`.
fn one_or_many<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

/// The generation settings sent with every request unless the caller overrides them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sampling {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub n: u32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

/// Validated settings, ready for the backend.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub model_name: String,
    pub sampling: Sampling,
    /// `(base URL as configured, chat-completions endpoint)` for each upstream.
    pub upstreams: Vec<(String, Url)>,
    /// The key, kept to scrub it from upstream messages.
    pub api_key: Option<ApiKey>,
    /// `Bearer <key>`, marked sensitive.
    pub authorization: Option<HeaderValue>,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub probe_interval: Duration,
    pub stream_usage: bool,
}

/// Checks a temperature (OpenAI accepts 0 to 2).
pub(crate) fn check_temperature(value: f32) -> Result<f32, &'static str> {
    in_range(value, 0.0, 2.0, "a number from 0 to 2")
}

/// Checks a top_p (OpenAI accepts 0 to 1).
pub(crate) fn check_top_p(value: f32) -> Result<f32, &'static str> {
    in_range(value, 0.0, 1.0, "a number from 0 to 1")
}

/// Checks a max_tokens (at least one token).
pub(crate) fn check_max_tokens(value: u32) -> Result<u32, &'static str> {
    if value == 0 {
        Err("at least 1")
    } else {
        Ok(value)
    }
}

fn in_range(value: f32, low: f32, high: f32, expected: &'static str) -> Result<f32, &'static str> {
    if value.is_finite() && (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(expected)
    }
}

fn seconds(flag: &'static str, value: f64, allow_zero: bool) -> Result<Duration, OpenAiError> {
    let expected = if allow_zero {
        "a number of seconds, zero or more"
    } else {
        "a number of seconds, more than zero"
    };
    let invalid = || OpenAiError::InvalidValue {
        flag,
        value: value.to_string(),
        expected,
    };
    if !value.is_finite() || value < 0.0 || (value == 0.0 && !allow_zero) {
        return Err(invalid());
    }
    Duration::try_from_secs_f64(value).map_err(|_| invalid())
}

/// Parses one `--openai.base_url` and returns the chat-completions endpoint under it.
///
/// A URL that already ends in `/chat/completions` is used as is.
fn endpoint(base_url: &str) -> Result<Url, OpenAiError> {
    let invalid = |reason: &str| OpenAiError::InvalidBaseUrl {
        url: base_url.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials in the URL are not allowed; use --openai.api_key",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the URL must not have a query or a fragment"));
    }
    let path = url.path().trim_end_matches('/');
    let path = if path.ends_with("/chat/completions") {
        path.to_owned()
    } else {
        format!("{path}/chat/completions")
    };
    let mut endpoint = url.clone();
    endpoint.set_path(&path);
    Ok(endpoint)
}

impl OpenAiArgs {
    /// Fills `api_key` from `OPENAI_API_KEY` when it is unset; for settings read from a config
    /// file (clap already does this for the command line).
    pub fn with_api_key_from_env(self) -> Self {
        self.with_api_key_from(|name| std::env::var(name).ok())
    }

    fn with_api_key_from(mut self, lookup: impl FnOnce(&str) -> Option<String>) -> Self {
        if self.api_key.is_none()
            && let Some(key) = lookup(API_KEY_ENV)
        {
            self.api_key = Some(ApiKey::new(key));
        }
        self
    }

    /// Checks every setting and reports the first problem.
    pub fn validate(&self) -> Result<(), OpenAiError> {
        self.clone().into_settings().map(|_| ())
    }

    pub(crate) fn into_settings(self) -> Result<Settings, OpenAiError> {
        fn value_error<T: ToString>(
            flag: &'static str,
            value: T,
        ) -> impl FnOnce(&'static str) -> OpenAiError {
            move |expected| OpenAiError::InvalidValue {
                flag,
                value: value.to_string(),
                expected,
            }
        }

        let model_name = self.model_name.trim().to_owned();
        if model_name.is_empty() {
            return Err(OpenAiError::InvalidValue {
                flag: "model_name",
                value: format!("{:?}", self.model_name),
                expected: "a model name",
            });
        }
        let sampling = Sampling {
            max_tokens: check_max_tokens(self.max_tokens)
                .map_err(value_error("max_tokens", self.max_tokens))?,
            temperature: check_temperature(self.temperature)
                .map_err(value_error("temperature", self.temperature))?,
            top_p: check_top_p(self.top_p).map_err(value_error("top_p", self.top_p))?,
            n: if (1..=128).contains(&self.n) {
                self.n
            } else {
                return Err(value_error("n", self.n)("a number from 1 to 128"));
            },
            presence_penalty: in_range(self.presence_penalty, -2.0, 2.0, "a number from -2 to 2")
                .map_err(value_error("presence_penalty", self.presence_penalty))?,
            frequency_penalty: in_range(self.frequency_penalty, -2.0, 2.0, "a number from -2 to 2")
                .map_err(value_error("frequency_penalty", self.frequency_penalty))?,
        };

        if self.base_url.is_empty() {
            return Err(OpenAiError::NoBaseUrl);
        }
        let upstreams = self
            .base_url
            .iter()
            .map(|base| Ok((base.trim().to_owned(), endpoint(base)?)))
            .collect::<Result<Vec<_>, OpenAiError>>()?;

        let api_key = self
            .api_key
            .map(|key| ApiKey::new(key.expose().trim()))
            .filter(|key| !key.expose().is_empty());
        let authorization = match &api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| {
                        OpenAiError::InvalidApiKey(
                            "it contains characters that cannot be sent in an HTTP header",
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => {
                if let Some((base, _)) = upstreams.iter().find(|(_, endpoint)| {
                    endpoint
                        .host_str()
                        .is_some_and(|host| HOSTS_NEEDING_A_KEY.contains(&host))
                }) {
                    return Err(OpenAiError::MissingApiKey { url: base.clone() });
                }
                None
            }
        };

        Ok(Settings {
            model_name,
            sampling,
            upstreams,
            api_key,
            authorization,
            timeout: seconds("timeout", self.timeout, false)?,
            max_retries: self.max_retries,
            retry_backoff: seconds("retry_backoff", self.retry_backoff, true)?,
            probe_interval: seconds("probe_interval", self.probe_interval, true)?,
            stream_usage: self.stream_usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        openai: OpenAiArgs,
    }

    fn parse(args: &[&str]) -> Result<OpenAiArgs, clap::Error> {
        let mut argv = vec!["miner"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.openai)
    }

    fn local() -> OpenAiArgs {
        OpenAiArgs {
            base_url: vec!["http://127.0.0.1:8000/v1".into()],
            ..OpenAiArgs::default()
        }
    }

    #[test]
    fn command_line_defaults_are_the_python_ones() {
        let mut parsed = parse(&[]).expect("no flags parse");
        // The environment of the test run may hold a key; it is not a default.
        parsed.api_key = None;
        assert_eq!(parsed, OpenAiArgs::default());
        assert_eq!(parsed.model_name, "gpt-3.5-turbo");
        assert_eq!(parsed.max_tokens, 100);
        assert_eq!(parsed.temperature, 0.4);
        assert_eq!(parsed.top_p, 1.0);
        assert_eq!(parsed.n, 1);
        assert_eq!(parsed.presence_penalty, 0.1);
        assert_eq!(parsed.frequency_penalty, 0.1);
        assert_eq!(parsed.suffix, None);
        assert_eq!(parsed.base_url, vec!["https://api.openai.com/v1"]);
    }

    #[test]
    fn flags_use_the_python_names_and_base_url_repeats() {
        let parsed = parse(&[
            "--openai.model_name",
            "m",
            "--openai.max_tokens",
            "7",
            "--openai.temperature",
            "0.9",
            "--openai.top_p",
            "0.5",
            "--openai.n",
            "2",
            "--openai.presence_penalty",
            "-0.5",
            "--openai.frequency_penalty",
            "-1",
            "--openai.suffix",
            "s",
            "--openai.base_url",
            "http://a/v1",
            "--openai.base_url",
            "http://b/v1",
            "--openai.api_key",
            "sk-flag",
            "--openai.timeout",
            "2.5",
            "--openai.max_retries",
            "4",
            "--openai.retry_backoff",
            "0",
            "--openai.probe_interval",
            "0.25",
            "--openai.stream_usage",
            "false",
        ])
        .expect("flags parse");
        assert_eq!(
            parsed,
            OpenAiArgs {
                model_name: "m".into(),
                max_tokens: 7,
                temperature: 0.9,
                top_p: 0.5,
                n: 2,
                presence_penalty: -0.5,
                frequency_penalty: -1.0,
                suffix: Some("s".into()),
                base_url: vec!["http://a/v1".into(), "http://b/v1".into()],
                api_key: Some(ApiKey::new("sk-flag")),
                timeout: 2.5,
                max_retries: 4,
                retry_backoff: 0.0,
                probe_interval: 0.25,
                stream_usage: false,
            }
        );
        parsed.validate().expect("valid");
    }

    #[test]
    fn flattens_next_to_other_backends_with_the_same_field_names() {
        #[derive(clap::Args, Debug)]
        struct Other {
            #[arg(long = "other.temperature", default_value_t = 0.7)]
            temperature: f64,
            #[arg(long = "other.max_tokens", default_value_t = 5)]
            max_tokens: u32,
            #[arg(long = "other.timeout", default_value_t = 1.0)]
            timeout: f64,
        }
        #[derive(Parser, Debug)]
        struct Both {
            #[command(flatten)]
            openai: OpenAiArgs,
            #[command(flatten)]
            other: Other,
        }
        use clap::CommandFactory;
        Both::command().debug_assert();
        let both = Both::try_parse_from(["miner", "--openai.temperature", "1.25"]).expect("parses");
        assert_eq!(both.openai.temperature, 1.25);
        assert_eq!(both.other.temperature, 0.7);
    }

    #[test]
    fn help_never_prints_the_key_from_the_environment() {
        use clap::CommandFactory;
        let command = Cli::command();
        let api_key = command
            .get_arguments()
            .find(|arg| arg.get_id() == "openai.api_key")
            .expect("api_key argument");
        assert!(api_key.is_hide_env_values_set());
        assert_eq!(api_key.get_env(), Some(std::ffi::OsStr::new(API_KEY_ENV)));
    }

    #[test]
    fn negative_max_tokens_is_refused_by_the_parser() {
        assert!(parse(&["--openai.max_tokens", "-1"]).is_err());
    }

    #[test]
    fn toml_table_takes_defaults_and_one_or_many_base_urls() {
        let parsed: OpenAiArgs = toml::from_str("").expect("empty table");
        assert_eq!(parsed, OpenAiArgs::default());

        let parsed: OpenAiArgs =
            toml::from_str("base_url = \"http://a/v1\"\nmax_tokens = 5\napi_key = \"sk-toml\"")
                .expect("one url");
        assert_eq!(parsed.base_url, vec!["http://a/v1"]);
        assert_eq!(parsed.max_tokens, 5);
        assert_eq!(parsed.api_key, Some(ApiKey::new("sk-toml")));

        let parsed: OpenAiArgs =
            toml::from_str("base_url = [\"http://a/v1\", \"http://b/v1\"]").expect("two urls");
        assert_eq!(parsed.base_url.len(), 2);

        assert!(toml::from_str::<OpenAiArgs>("modelname = \"typo\"").is_err());
    }

    #[test]
    fn config_file_settings_take_the_key_from_the_environment_only_when_unset() {
        let lookup = |name: &str| (name == API_KEY_ENV).then(|| "sk-env".to_owned());
        let from_env = local().with_api_key_from(lookup);
        assert_eq!(from_env.api_key, Some(ApiKey::new("sk-env")));
        let explicit = OpenAiArgs {
            api_key: Some(ApiKey::new("sk-file")),
            ..local()
        }
        .with_api_key_from(lookup);
        assert_eq!(explicit.api_key, Some(ApiKey::new("sk-file")));
        assert_eq!(local().with_api_key_from(|_| None).api_key, None);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let args = OpenAiArgs {
            api_key: Some(ApiKey::new("sk-very-secret-123")),
            ..local()
        };
        let debug = format!("{args:?} {:#?}", args);
        assert!(!debug.contains("sk-very-secret-123"), "{debug}");
        assert!(debug.contains("<redacted>"));
        let settings = args.into_settings().expect("valid");
        let debug = format!("{settings:?}");
        assert!(!debug.contains("sk-very-secret-123"), "{debug}");
    }

    #[test]
    fn endpoints_are_built_under_the_base_url() {
        let cases = [
            ("http://h:1/v1", "http://h:1/v1/chat/completions"),
            ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
            ("https://h", "https://h/chat/completions"),
            (
                "http://h/v1/chat/completions",
                "http://h/v1/chat/completions",
            ),
        ];
        for (base, expected) in cases {
            assert_eq!(endpoint(base).expect(base).as_str(), expected);
        }
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (url, reason) in [
            ("not a url", "relative URL"),
            ("ftp://h/v1", "scheme"),
            ("http://user:pw@h/v1", "credentials"),
            ("http://h/v1?x=1", "query"),
        ] {
            let args = OpenAiArgs {
                base_url: vec![url.into()],
                ..local()
            };
            let error = args.validate().expect_err(url).to_string();
            assert!(error.contains(reason), "{url}: {error}");
            assert!(error.contains("--openai.base_url"), "{error}");
        }
        let args = OpenAiArgs {
            base_url: vec![],
            ..local()
        };
        assert!(matches!(args.validate(), Err(OpenAiError::NoBaseUrl)));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let cases: Vec<(OpenAiArgs, &str)> = vec![
            (
                OpenAiArgs {
                    temperature: -0.1,
                    ..local()
                },
                "temperature",
            ),
            (
                OpenAiArgs {
                    temperature: f32::NAN,
                    ..local()
                },
                "temperature",
            ),
            (
                OpenAiArgs {
                    top_p: 1.5,
                    ..local()
                },
                "top_p",
            ),
            (
                OpenAiArgs {
                    max_tokens: 0,
                    ..local()
                },
                "max_tokens",
            ),
            (OpenAiArgs { n: 0, ..local() }, "n"),
            (
                OpenAiArgs {
                    presence_penalty: -2.5,
                    ..local()
                },
                "presence_penalty",
            ),
            (
                OpenAiArgs {
                    frequency_penalty: 3.0,
                    ..local()
                },
                "frequency_penalty",
            ),
            (
                OpenAiArgs {
                    timeout: 0.0,
                    ..local()
                },
                "timeout",
            ),
            (
                OpenAiArgs {
                    timeout: -1.0,
                    ..local()
                },
                "timeout",
            ),
            (
                OpenAiArgs {
                    timeout: f64::INFINITY,
                    ..local()
                },
                "timeout",
            ),
            (
                OpenAiArgs {
                    timeout: 1e300,
                    ..local()
                },
                "timeout",
            ),
            (
                OpenAiArgs {
                    retry_backoff: -0.5,
                    ..local()
                },
                "retry_backoff",
            ),
            (
                OpenAiArgs {
                    probe_interval: f64::NAN,
                    ..local()
                },
                "probe_interval",
            ),
            (
                OpenAiArgs {
                    model_name: " ".into(),
                    ..local()
                },
                "model_name",
            ),
        ];
        for (args, flag) in cases {
            match args.validate() {
                Err(OpenAiError::InvalidValue { flag: got, .. }) => assert_eq!(got, flag),
                other => panic!("{flag}: expected InvalidValue, got {other:?}"),
            }
        }
    }

    #[test]
    fn openai_needs_a_key_but_local_upstreams_do_not() {
        let error = OpenAiArgs::default().validate().expect_err("no key");
        assert!(matches!(error, OpenAiError::MissingApiKey { .. }));
        assert!(error.to_string().contains("OPENAI_API_KEY"));

        let blank = OpenAiArgs {
            api_key: Some(ApiKey::new("  ")),
            ..OpenAiArgs::default()
        };
        assert!(matches!(
            blank.validate(),
            Err(OpenAiError::MissingApiKey { .. })
        ));

        let settings = local().into_settings().expect("valid");
        assert!(settings.authorization.is_none());
    }

    #[test]
    fn key_is_trimmed_and_checked_for_header_safety() {
        let args = OpenAiArgs {
            api_key: Some(ApiKey::new("sk-abc\n")),
            ..local()
        };
        let settings = args.into_settings().expect("valid");
        let header = settings.authorization.expect("header");
        assert_eq!(header.to_str().ok(), Some("Bearer sk-abc"));
        assert!(header.is_sensitive());

        let args = OpenAiArgs {
            api_key: Some(ApiKey::new("sk-a\u{0}b")),
            ..local()
        };
        let error = args.validate().expect_err("NUL in key").to_string();
        assert!(!error.contains("sk-a"), "{error}");
    }
}
