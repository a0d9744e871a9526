//! BIP-39 phrases as Substrate uses them: the phrase's *entropy* (not the BIP-39 seed) goes
//! through PBKDF2 (`substrate-bip39`, empty password) and the first 32 bytes are the mini secret.

use bip39::{Language, Mnemonic};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::KeyError;

/// Bytes of entropy in a freshly generated phrase (16 bytes = 12 words, btcli's default).
const GENERATED_ENTROPY_LEN: usize = 16;

/// A parsed phrase: its canonical text (single spaces, lowercase) and derived mini secret.
pub(crate) struct DerivedPhrase {
    /// The phrase, normalized to single spaces and lowercase.
    pub(crate) phrase: Zeroizing<String>,
    /// The sr25519 mini secret the phrase stands for.
    pub(crate) mini_secret: Zeroizing<[u8; 32]>,
}

/// Parses an English BIP-39 phrase and derives its sr25519 mini secret.
pub(crate) fn derive(phrase: &str) -> Result<DerivedPhrase, KeyError> {
    let normalized = Zeroizing::new(
        phrase
            .split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let mnemonic = Mnemonic::parse_in_normalized(Language::English, &normalized)
        .map_err(|err| KeyError::InvalidMnemonic(err.to_string()))?;
    let entropy = Zeroizing::new(mnemonic.to_entropy());
    let seed = Zeroizing::new(
        substrate_bip39::seed_from_entropy(&entropy, "")
            .map_err(|err| KeyError::InvalidMnemonic(format!("{err:?}")))?,
    );
    let mut mini_secret = Zeroizing::new([0u8; 32]);
    mini_secret.copy_from_slice(&seed[..32]);
    Ok(DerivedPhrase {
        phrase: normalized,
        mini_secret,
    })
}

/// A fresh random 12-word English phrase from the operating system's RNG.
pub(crate) fn generate() -> Zeroizing<String> {
    let mut entropy = Zeroizing::new([0u8; GENERATED_ENTROPY_LEN]);
    rand::rngs::OsRng.fill_bytes(entropy.as_mut());
    match Mnemonic::from_entropy_in(Language::English, entropy.as_ref()) {
        Ok(mnemonic) => Zeroizing::new(mnemonic.to_string()),
        // 16 bytes is a valid BIP-39 entropy length, so this arm is unreachable.
        Err(err) => unreachable!("16-byte entropy is valid BIP-39 entropy: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_spacing_and_case() {
        let messy =
            "  LEGAL winner thank year wave sausage\tworth useful legal winner thank yellow ";
        let derived = derive(messy).unwrap();
        assert_eq!(
            derived.phrase.as_str(),
            "legal winner thank year wave sausage worth useful legal winner thank yellow"
        );
        // secretSeed of the legacy miner hotkey written by bittensor-wallet.
        assert_eq!(
            hex::encode(derived.mini_secret.as_ref()),
            "6fa2796b0071cac425d8a7851038318c2c37dcebfe4bae73197ce93e75909bd2"
        );
    }

    #[test]
    fn rejects_unknown_words_and_bad_checksums() {
        assert!(matches!(
            derive("legal winner thank year wave sausage worth useful legal winner thank zzz"),
            Err(KeyError::InvalidMnemonic(_))
        ));
        assert!(matches!(
            derive(
                "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon"
            ),
            Err(KeyError::InvalidMnemonic(_))
        ));
        assert!(matches!(derive(""), Err(KeyError::InvalidMnemonic(_))));
    }

    #[test]
    fn generated_phrases_are_twelve_valid_distinct_words() {
        let first = generate();
        let second = generate();
        assert_eq!(first.split(' ').count(), 12);
        assert!(derive(&first).is_ok());
        assert_ne!(first.as_str(), second.as_str());
    }
}
