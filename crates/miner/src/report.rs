//! What a backend learned about how its answer ended: the reason generation stopped and the
//! tokens it cost, when the backend knows them (an upstream API reports both).
//!
//! A [`CompletionReport`] travels with its [`PromptRequest`](crate::PromptRequest): the
//! backend fills it in while answering, the transport reads it once the answer (or its
//! stream) is over — e.g. to pass `finish_reason` on — and the pipeline adds the token
//! counts to its counters for `/metrics`.

use std::sync::Arc;

use parking_lot::Mutex;

/// Longest finish reason kept, in bytes.
const MAX_FINISH_REASON_LEN: usize = 32;

/// Tokens one answer cost, as the backend (or its upstream) counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

/// A snapshot of a [`CompletionReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompletionInfo {
    /// Why generation stopped, in OpenAI's words (`stop`, `length`, `content_filter`, ...).
    pub finish_reason: Option<String>,
    /// What the answer cost.
    pub usage: Option<TokenUsage>,
}

/// A shared, initially empty [`CompletionInfo`] that a backend fills in. Cheap to clone;
/// clones (and clones of the request carrying it) share the same report.
#[derive(Debug, Clone, Default)]
pub struct CompletionReport(Arc<Mutex<CompletionInfo>>);

impl CompletionReport {
    /// Records why generation stopped. Only a short lower-case word (`[a-z0-9_]`, at most 32
    /// bytes) is kept, since transports pass it on verbatim; anything else is ignored and
    /// `false` returned.
    pub fn set_finish_reason(&self, reason: &str) -> bool {
        let valid = !reason.is_empty()
            && reason.len() <= MAX_FINISH_REASON_LEN
            && reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            self.0.lock().finish_reason = Some(reason.to_owned());
        }
        valid
    }

    /// Records what the answer cost (replacing an earlier record).
    pub fn set_usage(&self, usage: TokenUsage) {
        self.0.lock().usage = Some(usage);
    }

    /// Forgets everything recorded, e.g. when a backend retries after a failed attempt.
    pub fn clear(&self) {
        *self.0.lock() = CompletionInfo::default();
    }

    /// What was recorded so far.
    pub fn info(&self) -> CompletionInfo {
        self.0.lock().clone()
    }

    /// Why generation stopped, if the backend said.
    pub fn finish_reason(&self) -> Option<String> {
        self.0.lock().finish_reason.clone()
    }

    /// What the answer cost, if the backend said.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.0.lock().usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_report() {
        let report = CompletionReport::default();
        let reader = report.clone();
        assert_eq!(reader.info(), CompletionInfo::default());
        assert!(report.set_finish_reason("length"));
        report.set_usage(TokenUsage {
            prompt_tokens: 5,
            completion_tokens: 7,
        });
        assert_eq!(reader.finish_reason().as_deref(), Some("length"));
        assert_eq!(
            reader.usage(),
            Some(TokenUsage {
                prompt_tokens: 5,
                completion_tokens: 7
            })
        );
        report.clear();
        assert_eq!(reader.info(), CompletionInfo::default());
    }

    #[test]
    fn only_short_lower_case_words_are_kept_as_finish_reasons() {
        let report = CompletionReport::default();
        for bad in ["", "Stop", "stop\n", "a b", "\"x\"", &"x".repeat(33)] {
            assert!(!report.set_finish_reason(bad), "{bad:?}");
        }
        assert_eq!(report.finish_reason(), None);
        assert!(report.set_finish_reason("content_filter"));
        assert_eq!(report.finish_reason().as_deref(), Some("content_filter"));
    }
}
