//! Signature verification, with the same leniency as Python's `Keypair.verify`.

use crate::error::KeyError;
use crate::hex_text::parse_fixed;
use crate::keypair::SIGNING_CONTEXT;
use crate::public_key::PublicKey;

const BYTES_OPEN: &[u8] = b"<Bytes>";
const BYTES_CLOSE: &[u8] = b"</Bytes>";

/// Whether `signature` is an sr25519 signature (context `substrate`) by `public` over `message`
/// or, as Python's `Keypair.verify` also accepts (polkadot.js `signRaw` wraps messages), over
/// `<Bytes>` + message + `</Bytes>`.
pub fn verify(public: &PublicKey, message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = schnorrkel::PublicKey::from_bytes(public.as_bytes()) else {
        return false;
    };
    let Ok(signature) = schnorrkel::Signature::from_bytes(signature) else {
        return false;
    };
    if key
        .verify_simple(SIGNING_CONTEXT, message, &signature)
        .is_ok()
    {
        return true;
    }
    key.verify_simple(SIGNING_CONTEXT, &wrap_in_bytes_tags(message), &signature)
        .is_ok()
}

/// [`verify`] on text forms: an SS58 address and a hex signature (with or without `0x`).
///
/// An unparsable address or signature is an `Err`; a well-formed signature that does not
/// verify is `Ok(false)`.
pub fn verify_hex(ss58: &str, message: &[u8], signature_hex: &str) -> Result<bool, KeyError> {
    let public = PublicKey::from_ss58(ss58)?;
    let signature = parse_fixed::<64>(signature_hex, "signature")?;
    Ok(verify(&public, message, &signature))
}

/// Whether `signature` is an ed25519 signature by `public` over `message` or, as bittensor's
/// `verify` also accepts, over `<Bytes>` + message + `</Bytes>`.
///
/// Uses `ed25519-dalek`'s strict verification: honest signatures always pass; crafted edge
/// cases (small-order keys, non-canonical points) that the ZIP-215 rules of Substrate's
/// `ed25519-zebra` would tolerate are refused.
pub fn verify_ed25519(public: &PublicKey, message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public.as_bytes()) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &signature).is_ok()
        || key
            .verify_strict(&wrap_in_bytes_tags(message), &signature)
            .is_ok()
}

fn wrap_in_bytes_tags(message: &[u8]) -> Vec<u8> {
    let mut wrapped = Vec::with_capacity(BYTES_OPEN.len() + message.len() + BYTES_CLOSE.len());
    wrapped.extend_from_slice(BYTES_OPEN);
    wrapped.extend_from_slice(message);
    wrapped.extend_from_slice(BYTES_CLOSE);
    wrapped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair::Keypair;
    use ed25519_dalek::Signer;

    #[test]
    fn accepts_a_signature_over_the_bytes_wrapped_message() {
        let keypair = Keypair::from_mini_secret(&[1u8; 32]);
        let wrapped = keypair.sign(b"<Bytes>payload</Bytes>");
        assert!(verify(&keypair.public_key(), b"payload", &wrapped));
        assert!(!verify(&keypair.public_key(), b"other", &wrapped));
    }

    #[test]
    fn rejects_the_wrong_key_and_unmarked_signatures() {
        let signer = Keypair::from_mini_secret(&[1u8; 32]);
        let other = Keypair::from_mini_secret(&[2u8; 32]);
        let signature = signer.sign(b"m");
        assert!(!verify(&other.public_key(), b"m", &signature));
        assert!(!verify(&signer.public_key(), b"m", &[0u8; 64]));
    }

    #[test]
    fn hex_form_separates_parse_errors_from_bad_signatures() {
        let keypair = Keypair::from_mini_secret(&[3u8; 32]);
        let address = keypair.ss58_address();
        let signature = keypair.sign_hex(b"m");
        assert_eq!(verify_hex(&address, b"m", &signature), Ok(true));
        assert_eq!(verify_hex(&address, b"m", &signature[2..]), Ok(true));
        assert_eq!(verify_hex(&address, b"x", &signature), Ok(false));
        assert!(matches!(
            verify_hex(&address, b"m", "0x1234"),
            Err(KeyError::InvalidLength { actual: 2, .. })
        ));
        assert!(matches!(
            verify_hex(&address, b"m", "0xnothex"),
            Err(KeyError::InvalidHex { .. })
        ));
        assert!(matches!(
            verify_hex("5Fake", b"m", &signature),
            Err(KeyError::Ss58(_))
        ));
    }

    #[test]
    fn ed25519_signatures_verify() {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let public = PublicKey(signing.verifying_key().to_bytes());
        let signature = signing.sign(b"btauth").to_bytes();
        assert!(verify_ed25519(&public, b"btauth", &signature));
        assert!(!verify_ed25519(&public, b"btauth!", &signature));
        let wrapped = signing.sign(b"<Bytes>btauth</Bytes>").to_bytes();
        assert!(verify_ed25519(&public, b"btauth", &wrapped));
        // An sr25519 signature is not an ed25519 one.
        let sr = Keypair::from_mini_secret(&[9u8; 32]);
        assert!(!verify_ed25519(
            &sr.public_key(),
            b"btauth",
            &sr.sign(b"btauth")
        ));
    }
}
