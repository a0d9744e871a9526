//! Recorded raw HTTP/1.1 messages (the vectors keep exact request and response bytes).

/// One recorded HTTP/1.1 message.
#[derive(Debug, Clone)]
pub struct RawHttp {
    /// The request or status line.
    pub start_line: String,
    /// Headers in wire order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawHttp {
    /// Splits a recorded message (CRLF line ends). Panics on a malformed recording.
    pub fn parse(raw: &[u8]) -> RawHttp {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head/body separator");
        let head = std::str::from_utf8(&raw[..split]).expect("UTF-8 head");
        let mut lines = head.split("\r\n");
        let start_line = lines.next().expect("start line").to_owned();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(": ").expect("header line");
                (name.to_owned(), value.to_owned())
            })
            .collect();
        RawHttp {
            start_line,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    /// The HTTP status of a response.
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status line")
    }

    /// The request target of a request (`/Prompting`).
    pub fn target(&self) -> &str {
        self.start_line.split(' ').nth(1).expect("request line")
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_recorded_message() {
        let raw = RawHttp::parse(b"POST /Prompting HTTP/1.1\r\nname: Prompting\r\nA: b\r\n\r\n{}");
        assert_eq!(raw.target(), "/Prompting");
        assert_eq!(raw.header("a"), Some("b"));
        assert_eq!(raw.headers.len(), 2);
        assert_eq!(raw.body, b"{}");
        assert_eq!(
            RawHttp::parse(b"HTTP/1.1 401 Unauthorized\r\n\r\n").status(),
            401
        );
    }
}
