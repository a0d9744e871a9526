//! An incremental parser for `text/event-stream` (server-sent events), as the WHATWG HTML
//! standard defines it: bytes arrive in arbitrary chunks, lines end in LF, CRLF or CR, lines
//! starting with `:` are comments, and several `data:` lines join into one event with `\n`.

/// Longest line or event the parser buffers before giving up (a broken or hostile upstream
/// must not make the miner buffer without bound).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

const BOM: &str = "\u{feff}";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen so far on the stream, if any.
    pub id: Option<String>,
}

/// Why the stream cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line or an event is longer than the parser's limit.
    #[error("server-sent event larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

/// Turns chunks of an event stream into events. Feed it with [`SseParser::push`], then call
/// [`SseParser::finish`] at the end of the stream.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// The previous byte was a CR: an LF right after it ends nothing.
    after_cr: bool,
    /// No line has been completed yet (a leading BOM is dropped from the first one).
    first_line: bool,
    data: String,
    event: String,
    last_id: Option<String>,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser with the [`DEFAULT_MAX_EVENT_BYTES`] limit.
    pub fn new() -> Self {
        SseParser::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser refusing lines and events longer than `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            data: String::new(),
            event: String::new(),
            last_id: None,
            max_event_bytes,
        }
    }

    /// Consumes the next chunk of the stream and returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        let mut rest = chunk;
        if self.after_cr && rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
        self.after_cr = false;
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.append(&rest[..end])?;
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.process_line(&line)? {
                events.push(event);
            }
            self.line = line;
            self.line.clear();
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[end + 1..];
            }
        }
        self.append(rest)?;
        Ok(events)
    }

    /// Ends the stream. Strictly, an event not closed by a blank line is dropped; this parser
    /// is lenient and dispatches it, since some servers omit the blank line after the last
    /// event (typically `data: [DONE]`).
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        let line = std::mem::take(&mut self.line);
        self.after_cr = false;
        if !line.is_empty() {
            // A non-empty line never dispatches by itself.
            self.process_line(&line)?;
        }
        Ok(self.dispatch())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_event_bytes {
            return Err(SseError::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        let text = String::from_utf8_lossy(line);
        let mut text: &str = &text;
        if self.first_line {
            self.first_line = false;
            text = text.strip_prefix(BOM).unwrap_or(text);
        }
        if text.is_empty() {
            return Ok(self.dispatch());
        }
        if text.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    return Err(SseError::TooLarge {
                        limit: self.max_event_bytes,
                    });
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => self.event = value.to_owned(),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            // `retry` and unknown fields are ignored.
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &str) -> SseEvent {
        SseEvent {
            event: "message".into(),
            data: data.into(),
            id: None,
        }
    }

    fn parse_in_chunks(stream: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            events.extend(parser.push(&stream[start..cut]).expect("parses"));
            start = cut;
        }
        events.extend(parser.finish().expect("finishes"));
        events
    }

    const OPENAI_LIKE: &str = concat!(
        ": keep-alive comment\r\n",
        "data: {\"a\":1}\r\n\r\n",
        "data:{\"b\":2}\n\n",
        "event: note\rdata: line one\rdata: line two\r\r",
        "id: 7\ndata: é ✓ 🎉\n\n",
        "data: [DONE]\n\n",
    );

    fn openai_like_events() -> Vec<SseEvent> {
        vec![
            message("{\"a\":1}"),
            message("{\"b\":2}"),
            SseEvent {
                event: "note".into(),
                data: "line one\nline two".into(),
                id: None,
            },
            SseEvent {
                event: "message".into(),
                data: "é ✓ 🎉".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: "message".into(),
                data: "[DONE]".into(),
                id: Some("7".into()),
            },
        ]
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        assert_eq!(
            parse_in_chunks(OPENAI_LIKE.as_bytes(), &[]),
            openai_like_events()
        );
    }

    #[test]
    fn every_single_split_point_gives_the_same_events() {
        let bytes = OPENAI_LIKE.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(
                parse_in_chunks(bytes, &[cut]),
                openai_like_events(),
                "split at byte {cut}"
            );
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let bytes = OPENAI_LIKE.as_bytes();
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_in_chunks(bytes, &cuts), openai_like_events());
    }

    #[test]
    fn crlf_split_between_chunks_ends_one_line_only() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"data: x\r").expect("ok").is_empty());
        // The LF completes the CRLF; the next CR ends the empty line and dispatches.
        assert_eq!(parser.push(b"\n\r").expect("ok"), vec![message("x")]);
    }

    #[test]
    fn empty_data_lines_and_fields_without_colon() {
        let events = parse_in_chunks(b"data\ndata:\n\ndata\n\n", &[]);
        assert_eq!(events, vec![message("\n"), message("")]);
    }

    #[test]
    fn blank_lines_and_events_without_data_dispatch_nothing() {
        let events = parse_in_chunks(b"\n\nevent: ping\n\n: comment\n\nretry: 10\n\n", &[]);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn only_one_leading_space_is_stripped() {
        let events = parse_in_chunks(b"data:  two spaces\n\n", &[]);
        assert_eq!(events, vec![message(" two spaces")]);
    }

    #[test]
    fn leading_bom_is_dropped_even_when_split() {
        let stream = "\u{feff}data: hi\n\n".as_bytes();
        assert_eq!(parse_in_chunks(stream, &[1, 2]), vec![message("hi")]);
    }

    #[test]
    fn unterminated_last_event_is_dispatched_on_finish() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"data: [DONE]").expect("ok").is_empty());
        assert_eq!(parser.finish().expect("ok"), Some(message("[DONE]")));
        assert_eq!(parser.finish().expect("ok"), None);
    }

    #[test]
    fn oversized_lines_and_events_are_refused() {
        let mut parser = SseParser::with_limit(16);
        assert_eq!(
            parser.push(&[b'x'; 17]),
            Err(SseError::TooLarge { limit: 16 })
        );

        let mut parser = SseParser::with_limit(14);
        parser.push(b"data: 0123456\n").expect("first line fits");
        assert_eq!(
            parser.push(b"data: 0123456\n"),
            Err(SseError::TooLarge { limit: 14 })
        );
    }
}
