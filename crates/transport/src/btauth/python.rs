//! The few CPython text rules `bittensor.http_auth.verify` relies on, reproduced exactly:
//! header bytes as Starlette decodes them, `int(str)`, `bytes.fromhex` and `format(x, "g")`.

use std::cmp::Ordering;

/// CPython's default limit on the digits `int(str)` converts (`sys.get_int_max_str_digits()`).
const INT_MAX_STR_DIGITS: usize = 4300;

/// A header value as the Python side sees it: Starlette (and most ASGI servers) decode header
/// bytes as Latin-1, so every byte becomes the code point of the same value.
pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&byte| char::from(byte)).collect()
}

/// What `str.isspace()` holds for the characters `int()` strips (the Latin-1 range is all a
/// header value can hold after [`latin1`]).
fn is_python_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r' | '\u{85}' | '\u{a0}'
    )
}

/// A Python integer, exact within ±(2¹²⁷ − 1) and saturated beyond (such values are outside
/// every freshness window the verifier allows, so only their sign matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PyInt(pub(crate) i128);

/// `int(text)` for a `str` holding only Latin-1 characters: surrounding whitespace, one optional
/// sign, ASCII digits with single underscores between them, at most 4300 digits. `None` where
/// Python raises `ValueError`.
pub(crate) fn parse_int(text: &str) -> Option<PyInt> {
    let trimmed = text.trim_matches(is_python_space);
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let mut value: i128 = 0;
    let mut count = 0usize;
    let mut previous_was_digit = false;
    for byte in digits.bytes() {
        match byte {
            b'0'..=b'9' => {
                let digit = i128::from(byte - b'0');
                let signed = if negative { -digit } else { digit };
                value = value.saturating_mul(10).saturating_add(signed);
                count += 1;
                previous_was_digit = true;
            }
            b'_' if previous_was_digit => previous_was_digit = false,
            _ => return None,
        }
    }
    if count == 0 || !previous_was_digit || count > INT_MAX_STR_DIGITS {
        return None;
    }
    Some(PyInt(value))
}

/// `bytes.fromhex(text)`: pairs of hex digits (either case), ASCII whitespace allowed between
/// pairs but not inside one. `None` where Python raises `ValueError`.
pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 2);
    let mut index = 0;
    while index < bytes.len() {
        if matches!(bytes[index], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            index += 1;
            continue;
        }
        let high = hex_value(bytes[index])?;
        let low = hex_value(*bytes.get(index + 1)?)?;
        out.push(high << 4 | low);
        index += 2;
    }
    Some(out)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// `format(value, "g")`: six significant digits, trailing zeros dropped, exponent notation
/// (`1e+06`, `1e-05`) below 1e-4 or from 1e6 on.
pub(crate) fn format_g(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    let scientific = format!("{value:.5e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!(
            "{}e{sign}{:02}",
            strip_fraction_zeros(mantissa),
            exponent.unsigned_abs()
        );
    }
    let decimals = usize::try_from(5 - exponent).unwrap_or(0);
    strip_fraction_zeros(&format!("{value:.decimals$}")).to_owned()
}

fn strip_fraction_zeros(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

/// Python's exact comparison `int > float`: whether `lhs` exceeds the finite `rhs`.
pub(crate) fn int_exceeds(lhs: i128, rhs: f64) -> bool {
    // 2^127 as a float: every i128 is below it, and every float at or above it is an integer.
    const TWO_POW_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    if rhs >= TWO_POW_127 {
        return false;
    }
    if rhs < -TWO_POW_127 {
        return true;
    }
    // For an integer `lhs`, `lhs > rhs` exactly when `lhs > floor(rhs)`; `floor(rhs)` is an
    // integer-valued float inside the i128 range, so the cast is exact.
    lhs.cmp(&(rhs.floor() as i128)) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_accepts_what_python_accepts() {
        let cases = [
            ("12", 12),
            ("+12", 12),
            (" 12 ", 12),
            ("-5", -5),
            ("1_000", 1000),
            ("0012", 12),
            ("\u{a0}12\u{85}", 12),
            ("12\t", 12),
        ];
        for (text, value) in cases {
            assert_eq!(parse_int(text), Some(PyInt(value)), "{text:?}");
        }
    }

    #[test]
    fn int_refuses_what_python_refuses() {
        for text in [
            "", " ", "1__0", "_1", "1_", "0x10", "12.0", "+ 12", "+-1", "\u{1f}12", "1e3", "²",
        ] {
            assert_eq!(parse_int(text), None, "{text:?}");
        }
    }

    #[test]
    fn int_digit_limit_counts_digits_not_underscores() {
        assert!(parse_int(&"1".repeat(4300)).is_some());
        assert!(parse_int(&"1".repeat(4301)).is_none());
        assert!(parse_int(&"0".repeat(4301)).is_none());
        let underscored = format!("{}1", "1_".repeat(4299));
        assert!(parse_int(&underscored).is_some());
    }

    #[test]
    fn int_saturates_beyond_i128() {
        assert_eq!(parse_int(&"9".repeat(60)), Some(PyInt(i128::MAX)));
        assert_eq!(
            parse_int(&format!("-{}", "9".repeat(60))),
            Some(PyInt(i128::MIN))
        );
    }

    #[test]
    fn fromhex_follows_python() {
        assert_eq!(from_hex("ab cd"), Some(vec![0xab, 0xcd]));
        assert_eq!(from_hex(" abcd "), Some(vec![0xab, 0xcd]));
        assert_eq!(from_hex("AB\tCD"), Some(vec![0xab, 0xcd]));
        assert_eq!(from_hex("ab\u{0b}cd"), Some(vec![0xab, 0xcd]));
        assert_eq!(from_hex(""), Some(vec![]));
        assert_eq!(from_hex("  "), Some(vec![]));
        for bad in ["a bcd", "ab\u{1c}cd", "ab\u{a0}cd", "abc", "0x12", "zz"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_g_matches_python() {
        let cases = [
            (10.0, "10"),
            (2.0, "2"),
            (0.5, "0.5"),
            (1e6, "1e+06"),
            (123_456.7, "123457"),
            (1e-5, "1e-05"),
            (2.5e-5, "2.5e-05"),
            (10.000001, "10"),
            (0.0001, "0.0001"),
            (999_999.5, "1e+06"),
            (1.5e300, "1.5e+300"),
            (0.0, "0"),
            (f64::INFINITY, "inf"),
        ];
        for (value, text) in cases {
            assert_eq!(format_g(value), text, "{value}");
        }
    }

    #[test]
    fn int_float_comparison_is_exact() {
        assert!(int_exceeds(10_000_000_001, 1e10));
        assert!(!int_exceeds(10_000_000_000, 1e10));
        assert!(int_exceeds(1, 0.5));
        assert!(!int_exceeds(0, 0.5));
        assert!(int_exceeds(0, -0.5));
        assert!(!int_exceeds(-1, -0.5));
        assert!(!int_exceeds(i128::MAX, 1e300));
        assert!(int_exceeds(i128::MIN, -1e300));
    }
}
