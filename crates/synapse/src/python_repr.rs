//! CPython 3.11's `repr()` and `str()` of the values a synapse hashes.
//!
//! Bittensor hashes a field as `sha3_256(str(value))`, so the exact text Python prints
//! matters byte for byte: `str()` of a `str` is the string itself, `str()` of a `list` is
//! its `repr()` (each element by `repr()`: quotes and escapes for strings), `str()` of an
//! `int` is its decimal form.

use crate::printable_table::NON_PRINTABLE;

/// Python's `repr()` and `str()` of a value, as CPython 3.11 prints them.
///
/// `str()` defaults to `repr()`, which is right for `int`, `float`, `bool`, `None` and
/// `list`; only `str` differs (no quotes, no escapes).
///
/// ```
/// use prompting_synapse::PyStr;
///
/// let messages = vec!["it's".to_string(), "a\nb".to_string()];
/// assert_eq!(messages.py_str(), r#"["it's", 'a\nb']"#);
/// assert_eq!("it's".to_string().py_str(), "it's");
/// assert_eq!(21_i64.py_str(), "21");
/// ```
pub trait PyStr {
    /// Appends `repr(self)` to `out`.
    fn write_py_repr(&self, out: &mut String);

    /// Appends `str(self)` to `out`.
    fn write_py_str(&self, out: &mut String) {
        self.write_py_repr(out);
    }

    /// `repr(self)`.
    fn py_repr(&self) -> String {
        let mut out = String::new();
        self.write_py_repr(&mut out);
        out
    }

    /// `str(self)`.
    fn py_str(&self) -> String {
        let mut out = String::new();
        self.write_py_str(&mut out);
        out
    }
}

/// Whether CPython's `str.isprintable()` holds for `ch` (used by `repr()` to decide
/// between printing a character and escaping it).
pub fn is_python_printable(ch: char) -> bool {
    let cp = u32::from(ch);
    let index = NON_PRINTABLE.partition_point(|&(_, hi)| hi < cp);
    !matches!(NON_PRINTABLE.get(index), Some(&(lo, _)) if lo <= cp)
}

/// Appends CPython's `repr()` of the string `s` to `out`.
///
/// Quotes: `'` unless the string holds a `'` and no `"`. Escapes: the chosen quote and
/// `\` get a backslash; `\t`, `\n`, `\r`; other code points below U+0020 and U+007F as
/// `\xNN`; non-printable code points above U+007F as `\xNN`, `\uNNNN` or `\UNNNNNNNN`
/// (lower-case hex).
pub fn write_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.reserve(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            _ if ch == quote || ch == '\\' => {
                out.push('\\');
                out.push(ch);
            }
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(ch),
            _ if u32::from(ch) > 0x7F && is_python_printable(ch) => out.push(ch),
            _ => push_escape(u32::from(ch), out),
        }
    }
    out.push(quote);
}

/// Appends `\xNN`, `\uNNNN` or `\UNNNNNNNN` for a code point, as CPython picks them.
fn push_escape(cp: u32, out: &mut String) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = if cp <= 0xFF {
        write!(out, "\\x{cp:02x}")
    } else if cp <= 0xFFFF {
        write!(out, "\\u{cp:04x}")
    } else {
        write!(out, "\\U{cp:08x}")
    };
}

/// CPython's `repr()` of a `float` (shortest round-trip digits; exponent form when the
/// decimal exponent is below -4 or at least 16, e.g. `1e-05`, `1e+16`, `0.0001`, `5.0`).
pub fn float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "-1.25e-7".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // value = 0.DIGITS * 10^point
    let point = exponent + 1;
    let mut out = String::from(sign);
    if !(-4 < point && point <= 16) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        out.push_str(&format!("e{exp_sign}{:02}", exponent.unsigned_abs()));
    } else if point <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat(point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let point = point as usize;
        if digits.len() <= point {
            out.push_str(&digits);
            out.push_str(&"0".repeat(point - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

impl PyStr for str {
    fn write_py_repr(&self, out: &mut String) {
        write_str_repr(self, out);
    }

    fn write_py_str(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl PyStr for String {
    fn write_py_repr(&self, out: &mut String) {
        write_str_repr(self, out);
    }

    fn write_py_str(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl PyStr for bool {
    fn write_py_repr(&self, out: &mut String) {
        out.push_str(if *self { "True" } else { "False" });
    }
}

impl PyStr for f64 {
    fn write_py_repr(&self, out: &mut String) {
        out.push_str(&float_repr(*self));
    }
}

macro_rules! impl_py_str_for_integers {
    ($($int:ty),*) => {$(
        impl PyStr for $int {
            fn write_py_repr(&self, out: &mut String) {
                out.push_str(&self.to_string());
            }
        }
    )*};
}

impl_py_str_for_integers!(
    i8, i16, i32, i64, i128, u8, u16, u32, u64, u128, isize, usize
);

impl<T: PyStr> PyStr for Option<T> {
    fn write_py_repr(&self, out: &mut String) {
        match self {
            Some(value) => value.write_py_repr(out),
            None => out.push_str("None"),
        }
    }

    fn write_py_str(&self, out: &mut String) {
        match self {
            Some(value) => value.write_py_str(out),
            None => out.push_str("None"),
        }
    }
}

impl<T: PyStr> PyStr for [T] {
    fn write_py_repr(&self, out: &mut String) {
        out.push('[');
        for (index, item) in self.iter().enumerate() {
            if index > 0 {
                out.push_str(", ");
            }
            item.write_py_repr(out);
        }
        out.push(']');
    }
}

impl<T: PyStr> PyStr for Vec<T> {
    fn write_py_repr(&self, out: &mut String) {
        self.as_slice().write_py_repr(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_choice_follows_cpython() {
        assert_eq!("plain".py_repr(), "'plain'");
        assert_eq!("it's".py_repr(), "\"it's\"");
        assert_eq!("say \"hi\"".py_repr(), "'say \"hi\"'");
        assert_eq!("both ' and \"".py_repr(), "'both \\' and \"'");
    }

    #[test]
    fn escapes_control_and_non_printable_characters() {
        assert_eq!("a\\b".py_repr(), "'a\\\\b'");
        assert_eq!("\t\n\r".py_repr(), "'\\t\\n\\r'");
        assert_eq!("\u{7}\u{0}\u{1b}\u{7f}".py_repr(), "'\\x07\\x00\\x1b\\x7f'");
        assert_eq!("\u{85}\u{a0}\u{ad}".py_repr(), "'\\x85\\xa0\\xad'");
        assert_eq!(
            "\u{200b}\u{2028}\u{3000}".py_repr(),
            "'\\u200b\\u2028\\u3000'"
        );
        assert_eq!("\u{e000}".py_repr(), "'\\ue000'");
        assert_eq!("\u{e0001}\u{10ffff}".py_repr(), "'\\U000e0001\\U0010ffff'");
    }

    #[test]
    fn printable_characters_stay_literal() {
        assert_eq!("é ü 中文 🙂".py_repr(), "'é ü 中文 🙂'");
        assert!(is_python_printable(' '));
        assert!(!is_python_printable('\u{a0}'));
        assert!(is_python_printable('\u{a1}'));
        assert!(!is_python_printable('\u{10ffff}'));
    }

    #[test]
    fn str_of_str_is_the_string_and_lists_use_repr() {
        assert_eq!("it's\n".py_str(), "it's\n");
        assert_eq!(Vec::<String>::new().py_str(), "[]");
        assert_eq!(vec![1_i64, 2].py_str(), "[1, 2]");
        assert_eq!(vec![Some(true), None].py_str(), "[True, None]");
        assert_eq!(
            vec!["a".to_string(), "b'".to_string()].py_str(),
            "['a', \"b'\"]"
        );
    }

    #[test]
    fn float_repr_matches_cpython_forms() {
        let cases = [
            (5.0, "5.0"),
            (12.0, "12.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (5.698204040527344e-05, "5.698204040527344e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456.789, "123456.789"),
            (1e300, "1e+300"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (value, expected) in cases {
            assert_eq!(float_repr(value), expected, "{value:e}");
        }
    }
}
