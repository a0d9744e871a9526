//! Reading a successful upstream answer: bounded body reads and the full-completion parse.

use prompting_miner::MinerError;
use reqwest::Response;

use crate::failure::{Failure, Scrubber, from_transport};
use crate::wire::ChatCompletion;

/// Largest full completion accepted, in bytes.
pub(crate) const MAX_COMPLETION_BYTES: usize = 16 << 20;

/// Largest part of an error body read for its message, in bytes.
pub(crate) const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Reads at most `limit` bytes of the body; the flag tells whether more was left unread.
pub(crate) async fn read_limited(
    mut response: Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Reads a full chat completion and returns `choices[0].message.content`.
pub(crate) async fn read_completion(
    response: Response,
    scrubber: Scrubber<'_>,
) -> Result<String, Failure> {
    let (body, truncated) = read_limited(response, MAX_COMPLETION_BYTES)
        .await
        .map_err(|e| from_transport(&e, scrubber))?;
    if truncated {
        return Err(Failure::Fatal(MinerError::Backend(format!(
            "the upstream answer is larger than {} MiB",
            MAX_COMPLETION_BYTES >> 20
        ))));
    }
    parse_completion(&body, scrubber).map_err(Failure::Fatal)
}

/// Parses a full chat completion body and returns `choices[0].message.content`.
pub(crate) fn parse_completion(body: &[u8], scrubber: Scrubber<'_>) -> Result<String, MinerError> {
    let completion: ChatCompletion = serde_json::from_slice(body).map_err(|e| {
        MinerError::Backend(format!(
            "the upstream answer is not a valid chat completion: {}",
            scrubber.scrub(&e.to_string())
        ))
    })?;
    completion
        .into_first_content()
        .map_err(|why| MinerError::Backend(why.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_KEY: Scrubber<'static> = Scrubber { api_key: None };

    #[test]
    fn malformed_and_empty_answers_are_clear_backend_errors() {
        let error = parse_completion(b"{not json", NO_KEY).expect_err("malformed");
        assert!(
            matches!(&error, MinerError::Backend(m) if m.starts_with("the upstream answer is not a valid chat completion")),
            "{error:?}"
        );
        assert_eq!(
            parse_completion(br#"{"choices":[]}"#, NO_KEY),
            Err(MinerError::Backend(
                "the upstream answer has no choices".into()
            ))
        );
        assert_eq!(
            parse_completion(br#"{"choices":[{"message":{"content":"ok"}}]}"#, NO_KEY),
            Ok("ok".into())
        );
    }
}
