//! Keyfile contents: JSON (de)serialization and `$NACL` encryption, independent of paths.

mod encryption;
mod json;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::keypair::Keypair;

pub use encryption::{
    ANSIBLE_MAGIC, Encryption, FERNET_MAGIC, NACL_MAGIC, NACL_MEMLIMIT_BYTES, NACL_OPSLIMIT,
    NACL_SALT, decrypt_nacl, encrypt_nacl,
};
pub use json::{
    CRYPTO_TYPE_SR25519, keypair_from_json, keypair_to_json, public_key_from_json,
    public_key_to_json,
};

/// Why keyfile contents could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyfileError {
    /// The contents are not the expected JSON.
    #[error("not a valid keyfile JSON: {0}")]
    NotJson(String),
    /// A field is present but malformed.
    #[error("invalid `{field}`: {reason}")]
    InvalidField {
        /// The JSON key.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Fields disagree about which key the file holds.
    #[error("inconsistent keyfile: `{field}` {reason}")]
    Inconsistent {
        /// The JSON key that disagrees.
        field: &'static str,
        /// How it disagrees.
        reason: String,
    },
    /// The file has no `privateKey`, `secretSeed` or `secretPhrase`.
    #[error("the keyfile holds no secret (privateKey, secretSeed or secretPhrase)")]
    NoSecret,
    /// The file has no `publicKey`, `accountId` or `ss58Address`.
    #[error("the keyfile holds no public key (publicKey, accountId or ss58Address)")]
    NoPublicKey,
    /// `cryptoType` is not sr25519.
    #[error("unsupported cryptoType {0} (only 1 = sr25519 is supported)")]
    UnsupportedCryptoType(u8),
    /// The file is `$NACL` encrypted and no password was given.
    #[error("the keyfile is encrypted ($NACL): a password is required")]
    PasswordRequired,
    /// Decryption failed: the password is wrong (or the file was altered).
    #[error("wrong password (or the encrypted keyfile is corrupt)")]
    WrongPassword,
    /// An Ansible Vault keyfile.
    #[error(
        "Ansible Vault encrypted keyfiles are not supported: re-create (regenerate) the key with btcli"
    )]
    AnsibleVaultNotSupported,
    /// A legacy Fernet keyfile.
    #[error(
        "legacy (Fernet) encrypted keyfiles are not supported: re-create (regenerate) the key with btcli"
    )]
    FernetNotSupported,
    /// Data passed to [`decrypt_nacl`] does not start with `$NACL`.
    #[error("not a $NACL encrypted keyfile")]
    NotNacl,
    /// A `$NACL` file too short to hold a nonce and a tag.
    #[error("truncated $NACL keyfile ({len} bytes)")]
    Truncated {
        /// The file's length.
        len: usize,
    },
    /// The key derivation or cipher failed.
    #[error("keyfile cryptography failed: {0}")]
    Crypto(String),
}

/// The plain JSON of keyfile bytes: decrypted with `password` when `$NACL` encrypted.
pub fn plaintext(data: &[u8], password: Option<&str>) -> Result<Zeroizing<Vec<u8>>, KeyfileError> {
    match Encryption::detect(data) {
        Encryption::Unencrypted => Ok(Zeroizing::new(data.to_vec())),
        Encryption::Nacl => match password {
            Some(password) => decrypt_nacl(data, password),
            None => Err(KeyfileError::PasswordRequired),
        },
        Encryption::AnsibleVault => Err(KeyfileError::AnsibleVaultNotSupported),
        Encryption::LegacyFernet => Err(KeyfileError::FernetNotSupported),
    }
}

/// The keypair in keyfile bytes, decrypting `$NACL` files with `password`.
pub fn load_keypair(data: &[u8], password: Option<&str>) -> Result<Keypair, KeyfileError> {
    let json = plaintext(data, password)?;
    keypair_from_json(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_schemes_and_missing_passwords_are_clear_errors() {
        assert_eq!(
            load_keypair(b"$ANSIBLE_VAULT;1.1;AES256\n6162", Some("pw")).unwrap_err(),
            KeyfileError::AnsibleVaultNotSupported
        );
        assert_eq!(
            load_keypair(b"gAAAAABk", None).unwrap_err(),
            KeyfileError::FernetNotSupported
        );
        assert_eq!(
            load_keypair(b"$NACL0123456789012345678901234567890123456789", None).unwrap_err(),
            KeyfileError::PasswordRequired
        );
        assert!(
            KeyfileError::AnsibleVaultNotSupported
                .to_string()
                .contains("btcli")
        );
    }
}
