//! sr25519 keypairs as bittensor (substrate-interface / bittensor-wallet) makes and uses them.

use std::fmt;

use schnorrkel::{ExpansionMode, MiniSecretKey, SecretKey};
use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::hex_text::to_0x_hex;
use crate::mnemonic;
use crate::public_key::PublicKey;

/// The schnorrkel signing context Substrate (and bittensor) uses.
pub const SIGNING_CONTEXT: &[u8] = b"substrate";

/// An sr25519 keypair, remembering the mini secret and mnemonic it came from (if any) so that it
/// can be written back to a keyfile. `Debug` shows only the address.
#[derive(Clone)]
pub struct Keypair {
    inner: schnorrkel::Keypair,
    mini_secret: Option<Zeroizing<[u8; 32]>>,
    mnemonic: Option<Zeroizing<String>>,
}

impl Keypair {
    /// The keypair of a 32-byte mini secret (substrate-interface's "seed"), expanded in
    /// Ed25519 mode.
    pub fn from_mini_secret(seed: &[u8; 32]) -> Keypair {
        let inner = match MiniSecretKey::from_bytes(seed) {
            Ok(mini) => mini.expand_to_keypair(ExpansionMode::Ed25519),
            // A mini secret is any 32 bytes: from_bytes only fails on other lengths.
            Err(err) => unreachable!("32 bytes are always a mini secret: {err}"),
        };
        Keypair {
            inner,
            mini_secret: Some(Zeroizing::new(*seed)),
            mnemonic: None,
        }
    }

    /// The keypair of an English BIP-39 phrase (substrate-bip39: entropy → mini secret, empty
    /// password). Extra whitespace and upper case are tolerated.
    pub fn from_mnemonic(phrase: &str) -> Result<Keypair, KeyError> {
        let derived = mnemonic::derive(phrase)?;
        let mut keypair = Keypair::from_mini_secret(&derived.mini_secret);
        keypair.mnemonic = Some(derived.phrase);
        Ok(keypair)
    }

    /// The keypair of a 64-byte expanded secret (`key || nonce`), the `privateKey` of
    /// bittensor keyfiles.
    pub fn from_private_key(bytes: &[u8; 64]) -> Result<Keypair, KeyError> {
        let secret = SecretKey::from_bytes(bytes)
            .map_err(|err| KeyError::InvalidSecretKey(err.to_string()))?;
        Ok(Keypair {
            inner: secret.to_keypair(),
            mini_secret: None,
            mnemonic: None,
        })
    }

    /// A fresh keypair from a new random 12-word mnemonic, returned alongside it.
    pub fn generate() -> (Keypair, String) {
        let phrase = mnemonic::generate();
        match Keypair::from_mnemonic(&phrase) {
            Ok(keypair) => (keypair, phrase.to_string()),
            // The phrase was just generated from valid entropy.
            Err(err) => unreachable!("a generated mnemonic is valid: {err}"),
        }
    }

    /// The public key (account id).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.inner.public.to_bytes())
    }

    /// The SS58 address with prefix 42.
    pub fn ss58_address(&self) -> String {
        self.public_key().to_ss58()
    }

    /// Signs `message` with the `substrate` context. Signatures are randomized.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.inner.sign_simple(SIGNING_CONTEXT, message).to_bytes()
    }

    /// [`Keypair::sign`] as `0x` + lowercase hex, the form bittensor puts in headers.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        to_0x_hex(&self.sign(message))
    }

    /// The 64-byte expanded secret (`key || nonce`), as keyfiles store it in `privateKey`.
    pub fn private_key(&self) -> Zeroizing<[u8; 64]> {
        Zeroizing::new(self.inner.secret.to_bytes())
    }

    /// The 32-byte mini secret this keypair was expanded from, if known.
    pub fn mini_secret(&self) -> Option<&[u8; 32]> {
        self.mini_secret.as_deref()
    }

    /// The (normalized) mnemonic this keypair was derived from, if known.
    pub fn mnemonic(&self) -> Option<&str> {
        self.mnemonic.as_ref().map(|phrase| phrase.as_str())
    }

    /// Returns this keypair, remembering `mini_secret` and `mnemonic` as its origin (used when a
    /// keyfile carries them next to `privateKey`). The caller checks they match the key.
    pub(crate) fn with_origin(
        mut self,
        mini_secret: Option<Zeroizing<[u8; 32]>>,
        mnemonic: Option<Zeroizing<String>>,
    ) -> Keypair {
        self.mini_secret = mini_secret;
        self.mnemonic = mnemonic;
        self
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("ss58_address", &self.ss58_address())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::verify;

    const MINER_PHRASE: &str =
        "legal winner thank year wave sausage worth useful legal winner thank yellow";
    const MINER_SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";
    const MINER_PRIVATE: &str = "ad8a44476e667ef8eab356d1d6f09303f21ba1ac44a3f8b96210bdd603d1900bb25d15f130020fffc3261f584f84168e7a6f0009f6c3abb2f3fa460f493b0595";

    #[test]
    fn mnemonic_seed_and_private_key_give_the_same_key() {
        let from_phrase = Keypair::from_mnemonic(MINER_PHRASE).unwrap();
        assert_eq!(from_phrase.ss58_address(), MINER_SS58);
        assert_eq!(
            hex::encode(from_phrase.private_key().as_ref()),
            MINER_PRIVATE
        );
        assert_eq!(from_phrase.mnemonic(), Some(MINER_PHRASE));

        let seed = *from_phrase.mini_secret().unwrap();
        assert_eq!(Keypair::from_mini_secret(&seed).ss58_address(), MINER_SS58);

        let mut private = [0u8; 64];
        hex::decode_to_slice(MINER_PRIVATE, &mut private).unwrap();
        let from_private = Keypair::from_private_key(&private).unwrap();
        assert_eq!(from_private.public_key(), from_phrase.public_key());
        assert_eq!(from_private.mini_secret(), None);
    }

    #[test]
    fn substrate_interface_seed_vector() {
        // wire_results.json "keys": seed 0x02*32 -> axon hotkey.
        let keypair = Keypair::from_mini_secret(&[2u8; 32]);
        assert_eq!(
            keypair.ss58_address(),
            "5CfCr47V5Dte6bwxNBE8K9oNnQd9fiay6aDEEkgYtFv7w4Fq"
        );
        assert_eq!(
            hex::encode(keypair.private_key().as_ref()),
            "95476c2d7998911104036f3db61ab65681d821d1f0f87072bbc3693e8d3fd40967bdb50c138aad8fe3e6539e54f54e10f9a32399529a732be3d2243b867f6acc"
        );
    }

    #[test]
    fn signatures_verify_and_are_hex_encoded() {
        let keypair = Keypair::from_mini_secret(&[7u8; 32]);
        let signature = keypair.sign(b"hello");
        assert!(verify(&keypair.public_key(), b"hello", &signature));
        assert!(!verify(&keypair.public_key(), b"hellO", &signature));

        let text = keypair.sign_hex(b"hello");
        assert_eq!(text.len(), 2 + 128);
        assert!(text.starts_with("0x"));
    }

    #[test]
    fn rejects_a_non_canonical_private_key() {
        assert!(matches!(
            Keypair::from_private_key(&[0xff; 64]),
            Err(KeyError::InvalidSecretKey(_))
        ));
    }

    #[test]
    fn generated_keys_come_with_their_mnemonic() {
        let (keypair, phrase) = Keypair::generate();
        let again = Keypair::from_mnemonic(&phrase).unwrap();
        assert_eq!(again.public_key(), keypair.public_key());
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let keypair = Keypair::from_mnemonic(MINER_PHRASE).unwrap();
        let shown = format!("{keypair:?}");
        assert!(shown.contains(MINER_SS58));
        assert!(!shown.contains("legal"));
        assert!(!shown.contains("6fa2796b"));
        assert!(!shown.contains("ad8a4447"));
    }
}
