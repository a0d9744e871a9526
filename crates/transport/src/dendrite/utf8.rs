//! Incremental UTF-8 decoding of a byte stream whose chunks may split a character.

/// Decodes chunks of a UTF-8 byte stream: a character split across chunks is held back
/// until its last byte arrives; invalid bytes become U+FFFD (Python's text-prompting
/// client would raise `UnicodeDecodeError` on both, failing the whole call).
#[derive(Debug, Default)]
pub(crate) struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// The text completed by `chunk` (possibly empty).
    pub(crate) fn push(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(error) => {
                    let valid_up_to = error.valid_up_to();
                    // The prefix was just validated.
                    text.push_str(&String::from_utf8_lossy(&self.pending[..valid_up_to]));
                    match error.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid_up_to);
                            return text;
                        }
                        Some(invalid) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid_up_to + invalid);
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream: U+FFFD for an unfinished character.
    pub(crate) fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_are_joined() {
        let bytes = "é 🙂 ok".as_bytes();
        for split in 0..=bytes.len() {
            let mut decoder = Utf8Decoder::default();
            let mut text = decoder.push(&bytes[..split]);
            text += &decoder.push(&bytes[split..]);
            text += &decoder.finish();
            assert_eq!(text, "é 🙂 ok", "split at {split}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut decoder = Utf8Decoder::default();
        let mut pieces = Vec::new();
        for byte in "a🙂b".as_bytes() {
            pieces.push(decoder.push(&[*byte]));
        }
        assert_eq!(pieces, ["a", "", "", "", "🙂", "b"]);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(decoder.push(b"\xf0\x9f"), "");
        assert_eq!(decoder.finish(), "\u{fffd}");
        assert_eq!(decoder.finish(), "");
    }
}
