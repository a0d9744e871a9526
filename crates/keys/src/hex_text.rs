//! `0x`-prefixed hex text, as bittensor writes keys and signatures.

use crate::error::KeyError;

/// Formats bytes as `0x` followed by lowercase hex.
pub(crate) fn to_0x_hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// Decodes hex text with or without a `0x`/`0X` prefix into exactly `N` bytes.
pub(crate) fn parse_fixed<const N: usize>(
    text: &str,
    what: &'static str,
) -> Result<[u8; N], KeyError> {
    let bytes = parse_vec(text, what)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| KeyError::InvalidLength {
        what,
        expected: N,
        actual: bytes.len(),
    })
}

/// Decodes hex text with or without a `0x`/`0X` prefix.
pub(crate) fn parse_vec(text: &str, what: &'static str) -> Result<Vec<u8>, KeyError> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    hex::decode(digits).map_err(|err| KeyError::InvalidHex {
        what,
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_prefix() {
        assert_eq!(to_0x_hex(&[0xab, 0x01]), "0xab01");
        assert_eq!(parse_fixed::<2>("0xab01", "x"), Ok([0xab, 0x01]));
        assert_eq!(parse_fixed::<2>("AB01", "x"), Ok([0xab, 0x01]));
    }

    #[test]
    fn rejects_bad_digits_and_lengths() {
        assert!(matches!(
            parse_fixed::<2>("0xzz01", "sig"),
            Err(KeyError::InvalidHex { what: "sig", .. })
        ));
        assert_eq!(
            parse_fixed::<2>("0xab", "sig"),
            Err(KeyError::InvalidLength {
                what: "sig",
                expected: 2,
                actual: 1
            })
        );
    }
}
