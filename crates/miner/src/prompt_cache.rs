//! Blacklist step 7: refuse messages already seen within a span of blocks.
//!
//! The key is the SHA-256 of the messages list serialised exactly as Python's
//! `json.dumps(list(messages))` does, so keys match the Python miner's. The cache is shared
//! by all callers, bounded in size (oldest forgotten first) and forgets entries older than
//! the span.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The SHA-256 of a messages list, as the cache keys it.
pub type PromptKey = [u8; 32];

/// Recently seen prompts and the block each was first seen at.
#[derive(Debug)]
pub struct PromptCache {
    block_span: u64,
    capacity: usize,
    seen: HashMap<PromptKey, u64>,
    order: VecDeque<(PromptKey, u64)>,
}

impl PromptCache {
    /// Remembers at most `capacity` (at least 1) prompts for `block_span` blocks each.
    pub fn new(block_span: u64, capacity: usize) -> Self {
        PromptCache {
            block_span,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Number of prompts remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `messages` were seen within the span before `block`; if not, remembers them
    /// as seen at `block`. A repeat does not extend the first sighting's span.
    pub fn seen_recently(&mut self, messages: &[String], block: u64) -> bool {
        self.expire(block);
        let key = prompt_key(messages);
        if self.seen.contains_key(&key) {
            return true;
        }
        while self.seen.len() >= self.capacity {
            match self.order.pop_front() {
                Some((oldest, _)) => {
                    self.seen.remove(&oldest);
                }
                None => break,
            }
        }
        self.seen.insert(key, block);
        self.order.push_back((key, block));
        false
    }

    /// Forgets entries seen more than `block_span` blocks before `block`. Entries are in
    /// insertion order, and blocks only grow, so the oldest are at the front.
    fn expire(&mut self, block: u64) {
        while let Some(&(key, seen_at)) = self.order.front() {
            if seen_at.saturating_add(self.block_span) >= block {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }
}

/// The cache key of `messages`: SHA-256 of `json.dumps(list(messages))`.
pub fn prompt_key(messages: &[String]) -> PromptKey {
    Sha256::digest(python_json_list(messages).as_bytes()).into()
}

/// Serialises a list of strings as Python's `json.dumps` does with its defaults: `", "`
/// between items and every character outside printable ASCII escaped (`ensure_ascii`).
fn python_json_list(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        for c in item.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                ' '..='~' => out.push(c),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        // Writing to a String cannot fail.
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Vectors computed with CPython 3.11:
    /// `hashlib.sha256(json.dumps(list(m)).encode()).hexdigest()`.
    #[test]
    fn keys_match_python_json_dumps() {
        let cases: [(&[&str], &str, &str); 4] = [
            (
                &[],
                "[]",
                "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
            ),
            (
                &["hello"],
                r#"["hello"]"#,
                "c7a0f7154e64cd96c617f251dc12c4396b7234c2856ccf4860ab7af537dfcdd9",
            ),
            (
                &["You are helpful.", "What is 2+2?"],
                r#"["You are helpful.", "What is 2+2?"]"#,
                "2226da40a3096f278cede8d95a16959d2f191bd3489ab36ca7753bb6cd8d1ce1",
            ),
            (
                &["héllo \"q\" \\ \n\t\u{1} \u{7f} 😀 €"],
                r#"["h\u00e9llo \"q\" \\ \n\t\u0001 \u007f \ud83d\ude00 \u20ac"]"#,
                "511d558bf60bd986cbd10ff312484870b9baeb66a6c556c9171d46d75eb35005",
            ),
        ];
        for (messages, json, digest) in cases {
            let messages = strings(messages);
            assert_eq!(python_json_list(&messages), json);
            assert_eq!(hex(&prompt_key(&messages)), digest);
        }
    }

    #[test]
    fn repeats_within_span_are_refused() {
        let mut cache = PromptCache::new(10, 100);
        let a = strings(&["a"]);
        assert!(!cache.seen_recently(&a, 100));
        assert!(cache.seen_recently(&a, 100));
        assert!(cache.seen_recently(&a, 110), "still within the span");
        assert!(!cache.seen_recently(&strings(&["b"]), 110));
        // Same text, different split: a different prompt.
        assert!(!cache.seen_recently(&strings(&["a", ""]), 110));
    }

    #[test]
    fn entries_expire_after_the_span() {
        let mut cache = PromptCache::new(10, 100);
        let a = strings(&["a"]);
        assert!(!cache.seen_recently(&a, 100));
        assert!(!cache.seen_recently(&a, 111), "expired, seen afresh");
        assert_eq!(cache.len(), 1);
        assert!(cache.seen_recently(&a, 121));
    }

    #[test]
    fn size_is_bounded_oldest_forgotten() {
        let mut cache = PromptCache::new(1000, 2);
        let (a, b, c) = (strings(&["a"]), strings(&["b"]), strings(&["c"]));
        assert!(!cache.seen_recently(&a, 1));
        assert!(!cache.seen_recently(&b, 2));
        assert!(!cache.seen_recently(&c, 3));
        assert_eq!(cache.len(), 2);
        assert!(cache.seen_recently(&b, 4));
        assert!(cache.seen_recently(&c, 4));
        assert!(!cache.seen_recently(&a, 4), "the oldest was forgotten");
    }
}
