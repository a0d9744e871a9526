//! Number parsing as lenient as bittensor's pydantic validators (`cast_int`, `cast_float`):
//! a number may arrive as a JSON number or as a string (`"12.0"`, `"200"`), in bodies and
//! in headers alike.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Parses a Python `int()` literal: surrounding whitespace, an optional sign, decimal
/// digits with single `_` between digits.
pub(crate) fn parse_py_int(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let magnitude: i128 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// Parses a Python `float()` literal: surrounding whitespace, decimal or exponent form,
/// `inf`/`infinity`/`nan` in any case.
pub(crate) fn parse_py_float(text: &str) -> Option<f64> {
    let text = text.trim();
    if text.is_empty() || text.contains(|c: char| c.is_whitespace()) {
        return None;
    }
    text.parse().ok()
}

/// A JSON value that may stand for a number.
enum RawNumber {
    Null,
    Int(i128),
    Float(f64),
    Text(String),
}

struct RawNumberVisitor;

impl<'de> Visitor<'de> for RawNumberVisitor {
    type Value = RawNumber;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a number, a string holding a number, or null")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawNumber, E> {
        Ok(RawNumber::Int(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawNumber, E> {
        Ok(RawNumber::Int(value.into()))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<RawNumber, E> {
        Ok(RawNumber::Int(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<RawNumber, E> {
        Ok(RawNumber::Float(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawNumber, E> {
        Ok(RawNumber::Text(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<RawNumber, E> {
        Ok(RawNumber::Text(value))
    }

    fn visit_none<E: de::Error>(self) -> Result<RawNumber, E> {
        Ok(RawNumber::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawNumber, E> {
        Ok(RawNumber::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawNumber, D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn raw<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RawNumber, D::Error> {
    deserializer.deserialize_any(RawNumberVisitor)
}

/// An integer as Python's `int()` reads it (floats are truncated toward zero, as `int(5.7)`).
fn to_int<E: de::Error>(raw: RawNumber) -> Result<Option<i128>, E> {
    match raw {
        RawNumber::Null => Ok(None),
        RawNumber::Int(value) => Ok(Some(value)),
        RawNumber::Float(value) if value.is_finite() => Ok(Some(value.trunc() as i128)),
        RawNumber::Float(value) => Err(E::custom(format!("{value} is not an integer"))),
        RawNumber::Text(text) => parse_py_int(&text)
            .map(Some)
            .ok_or_else(|| E::custom(format!("{text:?} is not an integer"))),
    }
}

fn to_float<E: de::Error>(raw: RawNumber) -> Result<Option<f64>, E> {
    match raw {
        RawNumber::Null => Ok(None),
        RawNumber::Int(value) => Ok(Some(value as f64)),
        RawNumber::Float(value) => Ok(Some(value)),
        RawNumber::Text(text) => parse_py_float(&text)
            .map(Some)
            .ok_or_else(|| E::custom(format!("{text:?} is not a number"))),
    }
}

fn narrow<T: TryFrom<i128>, E: de::Error>(value: Option<i128>) -> Result<Option<T>, E> {
    value
        .map(|v| T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range"))))
        .transpose()
}

/// `Option<u16>` from a number, a numeric string or null.
pub(crate) fn opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    narrow(to_int(raw(d)?)?)
}

/// `Option<u64>` from a number, a numeric string or null.
pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    narrow(to_int(raw(d)?)?)
}

/// `Option<f64>` from a number, a numeric string or null.
pub(crate) fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    to_float(raw(d)?)
}

/// `u64` from a number or a numeric string; null reads as 0 (the Python default of
/// `total_size` and `header_size`).
pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(narrow(to_int(raw(d)?)?)?.unwrap_or(0))
}

/// The default call timeout of a synapse, in seconds.
pub const DEFAULT_TIMEOUT: f64 = 12.0;

/// `f64` from a number or a numeric string; null reads as the default timeout.
pub(crate) fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(to_float(raw(d)?)?.unwrap_or(DEFAULT_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_int_literals() {
        assert_eq!(parse_py_int("200"), Some(200));
        assert_eq!(parse_py_int(" -7 "), Some(-7));
        assert_eq!(parse_py_int("+1_000"), Some(1000));
        assert_eq!(
            parse_py_int("1795303299506817297"),
            Some(1_795_303_299_506_817_297)
        );
        for bad in ["", "12.0", "1__0", "_1", "1_", "0x10", "abc", "None", "- 1"] {
            assert_eq!(parse_py_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn python_float_literals() {
        assert_eq!(parse_py_float("12.0"), Some(12.0));
        assert_eq!(parse_py_float(" 5 "), Some(5.0));
        assert_eq!(
            parse_py_float("5.698204040527344e-05"),
            Some(5.698204040527344e-05)
        );
        assert_eq!(parse_py_float("inf"), Some(f64::INFINITY));
        for bad in ["", "abc", "1 2", "None"] {
            assert_eq!(parse_py_float(bad), None, "{bad:?}");
        }
    }
}
