//! `--openai_api.key`: operator-chosen bearer keys that plain OpenAI clients may send
//! (`Authorization: Bearer <key>`) on `/v1/*` instead of btauth/1 headers.
//!
//! Off by default: with no key configured the routes only take btauth/1. With keys, a
//! request carrying btauth/1 headers is still verified as such; any other request must carry
//! one of the keys, or is refused with 401 in OpenAI's error shape (code `invalid_api_key`).
//! A key's caller goes through the same pipeline as everyone else, as the caller
//! [`API_KEY_CALLER`]: it is no registered hotkey, so the blacklist refuses it unless it is
//! whitelisted (`--miner.blacklist.whitelist openai_api.key`) or unregistered callers are
//! allowed (`--miner.blacklist.allow_non_registered`, which keeps the rate limit on it).
//! Keys never appear in logs or `Debug` output; a wrong key's message does not echo it.

use std::fmt;

use axum::http::{HeaderMap, header};

/// The caller (the pipeline's "hotkey") of every request authenticated by an API key.
pub const API_KEY_CALLER: &str = "openai_api.key";

/// Environment variable read for `--openai_api.key` (several keys comma-separated).
pub const ENV_API_KEYS: &str = "PROMPTING_OPENAI_API_KEY";

/// One bearer key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "String")]
pub struct ApiKey(String);

impl ApiKey {
    /// The key as sent in `Authorization: Bearer <key>`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Why the key cannot be used, without quoting it; `None` when it can.
    fn problem(&self) -> Option<&'static str> {
        if self.0.is_empty() {
            Some("a key is empty")
        } else if !self.0.bytes().all(|b| b.is_ascii_graphic()) {
            Some("a key has a character other than visible ASCII (space, control, non-ASCII)")
        } else {
            None
        }
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        ApiKey(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The `--openai_api.*` flags (the `openai_api` table of a config file).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiApiArgs {
    /// A key plain OpenAI clients may send as `Authorization: Bearer <key>` on `/v1/*`
    /// instead of btauth/1 headers; repeatable (or comma-separated). Their caller is
    /// `openai_api.key` for the blacklist: whitelist it (`--miner.blacklist.whitelist
    /// openai_api.key`) to serve it on a chain. Off when none is given.
    #[cfg_attr(feature = "cli", arg(
        id = "openai_api.key",
        long = "openai_api.key",
        value_name = "KEY",
        env = ENV_API_KEYS,
        hide_env_values = true,
        value_delimiter = ',',
        action = clap::ArgAction::Append
    ))]
    #[serde(rename = "key")]
    pub keys: Vec<ApiKey>,
}

impl OpenAiApiArgs {
    /// The first unusable key's problem, without quoting the key.
    pub fn validate(&self) -> Result<(), String> {
        match self.keys.iter().find_map(ApiKey::problem) {
            Some(problem) => Err(problem.to_string()),
            None => Ok(()),
        }
    }

    /// Whether bearer keys are accepted.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// Why a request was refused a bearer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Neither btauth/1 headers nor `Authorization: Bearer`.
    #[error(
        "no API key: send `Authorization: Bearer <key>` with a key of --openai_api.key, or \
         btauth/1 headers"
    )]
    Missing,
    /// An `Authorization` header that is not `Bearer <key>` with a configured key.
    #[error("incorrect API key provided")]
    Incorrect,
}

/// Checks the request's bearer key against `keys` (each compared in constant time).
pub fn check(keys: &[ApiKey], headers: &HeaderMap) -> Result<(), ApiKeyError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiKeyError::Missing)?;
    let value = value.to_str().map_err(|_| ApiKeyError::Incorrect)?;
    let (scheme, key) = value.trim().split_once(' ').ok_or(ApiKeyError::Incorrect)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiKeyError::Incorrect);
    }
    let key = key.trim().as_bytes();
    // Every key is compared, so the time does not tell which one matched.
    let matched = keys
        .iter()
        .fold(false, |found, k| found | same(k.expose().as_bytes(), key));
    if matched {
        Ok(())
    } else {
        Err(ApiKeyError::Incorrect)
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn keys(list: &[&str]) -> Vec<ApiKey> {
        list.iter().map(|k| ApiKey::from(k.to_string())).collect()
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header value"),
        );
        headers
    }

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        let keys = keys(&["sk-first", "sk-second"]);
        assert_eq!(check(&keys, &with_auth("Bearer sk-first")), Ok(()));
        assert_eq!(check(&keys, &with_auth("bearer sk-second")), Ok(()));
        assert_eq!(
            check(&keys, &with_auth("Bearer sk-third")),
            Err(ApiKeyError::Incorrect)
        );
        assert_eq!(
            check(&keys, &with_auth("Bearer sk-firs")),
            Err(ApiKeyError::Incorrect)
        );
        assert_eq!(
            check(&keys, &with_auth("Basic sk-first")),
            Err(ApiKeyError::Incorrect)
        );
        assert_eq!(
            check(&keys, &with_auth("sk-first")),
            Err(ApiKeyError::Incorrect)
        );
        assert_eq!(check(&keys, &HeaderMap::new()), Err(ApiKeyError::Missing));
        assert_eq!(
            check(&[], &with_auth("Bearer sk-first")),
            Err(ApiKeyError::Incorrect)
        );
    }

    #[test]
    fn keys_never_show_in_debug_or_errors() {
        let args = OpenAiApiArgs {
            keys: keys(&["sk-secret-1", "bad key"]),
        };
        let debug = format!("{args:?}");
        assert!(
            !debug.contains("secret") && debug.contains("<redacted>"),
            "{debug}"
        );
        let problem = args.validate().expect_err("a space");
        assert!(!problem.contains("bad key"), "{problem}");
        assert!(OpenAiApiArgs { keys: keys(&[""]) }.validate().is_err());
        assert!(OpenAiApiArgs::default().validate().is_ok());
        assert!(!OpenAiApiArgs::default().enabled());
    }
}
