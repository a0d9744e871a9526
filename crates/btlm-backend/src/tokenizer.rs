//! The GPT-2 byte-level BPE tokenizer BTLM uses.
//!
//! The hub repository has no `tokenizer.json`, only `vocab.json` and `merges.txt`; the
//! tokenizer is then assembled here exactly like `GPT2Tokenizer` (byte-level pre-tokenizer
//! without prefix space, the GPT-2 split regex, byte-level decoder, `<|endoftext|>` special).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{BtlmError, Result};

/// The end-of-text token, BTLM's bos and eos.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A loaded tokenizer and its end-of-sequence id.
#[derive(Clone)]
pub struct BtlmTokenizer {
    inner: Tokenizer,
    eos_token_id: u32,
}

impl std::fmt::Debug for BtlmTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtlmTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("eos_token_id", &self.eos_token_id)
            .finish()
    }
}

fn tok_err(what: &str, path: &Path, e: impl std::fmt::Display) -> BtlmError {
    BtlmError::Tokenizer(format!("{what} {}: {e}", path.display()))
}

impl BtlmTokenizer {
    /// Loads `tokenizer.json` from `dir` if present, else builds the tokenizer from
    /// `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            Self::from_tokenizer_json(&json)
        } else {
            Self::from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt"))
        }
    }

    /// Loads a `tokenizers` JSON file.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| tok_err("cannot load", path, e))?;
        Self::with_inner(inner)
    }

    /// Builds the GPT-2 byte-level BPE tokenizer from `vocab.json` and `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        for p in [vocab, merges] {
            if !p.is_file() {
                return Err(BtlmError::Tokenizer(format!(
                    "{} not found (need tokenizer.json, or vocab.json and merges.txt)",
                    p.display()
                )));
            }
        }
        let vocab_s = vocab
            .to_str()
            .ok_or_else(|| tok_err("non UTF-8 path", vocab, ""))?;
        let merges_s = merges
            .to_str()
            .ok_or_else(|| tok_err("non UTF-8 path", merges, ""))?;
        let bpe = BPE::from_file(vocab_s, merges_s)
            .build()
            .map_err(|e| tok_err("cannot build BPE from", vocab, e))?;
        let mut inner = Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(ByteLevelProcessor::new(true, false, true)))
            .with_decoder(Some(ByteLevelDecoder::new(true, true, true)));
        inner.add_special_tokens(&[AddedToken::from(END_OF_TEXT, true)]);
        Self::with_inner(inner)
    }

    fn with_inner(inner: Tokenizer) -> Result<Self> {
        let eos_token_id = inner.token_to_id(END_OF_TEXT).ok_or_else(|| {
            BtlmError::Tokenizer(format!("the vocabulary has no {END_OF_TEXT} token"))
        })?;
        Ok(BtlmTokenizer {
            inner,
            eos_token_id,
        })
    }

    /// The id of `<|endoftext|>`.
    pub fn eos_token_id(&self) -> u32 {
        self.eos_token_id
    }

    /// The number of tokens, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text as `GPT2Tokenizer` does (no bos is added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| BtlmError::Tokenizer(format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, dropping special tokens. Bytes that do not form complete UTF-8
    /// characters become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| BtlmError::Tokenizer(format!("cannot decode: {e}")))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btlm-tiny")
    }

    #[test]
    fn builds_from_vocab_and_merges() {
        let t = BtlmTokenizer::from_dir(&fixture()).expect("tokenizer");
        assert_eq!(t.eos_token_id(), 1000);
        assert_eq!(t.vocab_size(), 1001);
        let ids = t.encode("hello world").expect("encode");
        assert_eq!(t.decode(&ids).expect("decode"), "hello world");
    }

    #[test]
    fn special_token_is_recognised_and_skipped_on_decode() {
        let t = BtlmTokenizer::from_dir(&fixture()).expect("tokenizer");
        let ids = t.encode("a<|endoftext|>b").expect("encode");
        assert!(ids.contains(&1000), "{ids:?}");
        assert_eq!(t.decode(&ids).expect("decode"), "ab");
    }

    #[test]
    fn missing_files_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = BtlmTokenizer::from_dir(dir.path()).expect_err("no files");
        assert!(err.to_string().contains("vocab.json"), "{err}");
    }
}
