//! How keyfile bytes are encrypted, and the `$NACL` scheme of bittensor-wallet.
//!
//! `$NACL` layout: `b"$NACL"` + 24-byte nonce + XSalsa20-Poly1305 secretbox (16-byte Poly1305
//! tag, then the ciphertext). The 32-byte key is `argon2i` (version 0x13, one lane) of the
//! password with bittensor's fixed 16-byte salt, 8 passes and 512 MiB (libsodium's
//! `OPSLIMIT_SENSITIVE` / `MEMLIMIT_SENSITIVE`).

use argon2::{Algorithm, Argon2, Params, Version};
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::{Nonce, Tag, XSalsa20Poly1305};
use rand::RngCore;
use zeroize::Zeroizing;

use super::KeyfileError;

/// The magic that starts a `$NACL` encrypted keyfile.
pub const NACL_MAGIC: &[u8] = b"$NACL";
/// The magic that starts an Ansible Vault encrypted keyfile (bittensor < 4).
pub const ANSIBLE_MAGIC: &[u8] = b"$ANSIBLE_VAULT";
/// The start of a legacy Fernet token (bittensor's oldest keyfile encryption).
pub const FERNET_MAGIC: &[u8] = b"gAAAAA";

/// bittensor's fixed argon2 salt (`NACL_SALT`).
pub const NACL_SALT: [u8; 16] = [
    0x13, 0x71, 0x83, 0xdf, 0xf1, 0x5a, 0x09, 0xbc, 0x9c, 0x90, 0xb5, 0x51, 0x87, 0x39, 0xe9, 0xb1,
];
/// argon2i passes (libsodium `crypto_pwhash_argon2i_OPSLIMIT_SENSITIVE`).
pub const NACL_OPSLIMIT: u32 = 8;
/// argon2i memory in bytes (libsodium `crypto_pwhash_argon2i_MEMLIMIT_SENSITIVE`, 512 MiB).
pub const NACL_MEMLIMIT_BYTES: u32 = 512 * 1024 * 1024;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The encryption of a keyfile, as recognised from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// Plain JSON.
    Unencrypted,
    /// bittensor-wallet's `$NACL` scheme (supported).
    Nacl,
    /// `$ANSIBLE_VAULT` (unsupported: re-create the wallet with btcli).
    AnsibleVault,
    /// A legacy Fernet token (unsupported: re-create the wallet with btcli).
    LegacyFernet,
}

impl Encryption {
    /// Recognises the encryption of keyfile bytes from their prefix.
    pub fn detect(data: &[u8]) -> Encryption {
        if data.starts_with(NACL_MAGIC) {
            Encryption::Nacl
        } else if data.starts_with(ANSIBLE_MAGIC) {
            Encryption::AnsibleVault
        } else if data.starts_with(FERNET_MAGIC) {
            Encryption::LegacyFernet
        } else {
            Encryption::Unencrypted
        }
    }
}

/// The argon2i cost of the key derivation.
#[derive(Debug, Clone, Copy)]
struct KdfCost {
    passes: u32,
    memory_kib: u32,
}

/// The cost bittensor uses (libsodium's "sensitive" limits).
const BITTENSOR_COST: KdfCost = KdfCost {
    passes: NACL_OPSLIMIT,
    memory_kib: NACL_MEMLIMIT_BYTES / 1024,
};

/// Decrypts a `$NACL` keyfile. A wrong password (or a tampered file) is
/// [`KeyfileError::WrongPassword`].
pub fn decrypt_nacl(data: &[u8], password: &str) -> Result<Zeroizing<Vec<u8>>, KeyfileError> {
    decrypt_with_cost(data, password, BITTENSOR_COST)
}

/// Encrypts keyfile bytes with the `$NACL` scheme and a fresh random nonce.
pub fn encrypt_nacl(plaintext: &[u8], password: &str) -> Result<Vec<u8>, KeyfileError> {
    encrypt_with_cost(plaintext, password, BITTENSOR_COST)
}

fn decrypt_with_cost(
    data: &[u8],
    password: &str,
    cost: KdfCost,
) -> Result<Zeroizing<Vec<u8>>, KeyfileError> {
    let body = data.strip_prefix(NACL_MAGIC).ok_or(KeyfileError::NotNacl)?;
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(KeyfileError::Truncated { len: data.len() });
    }
    let (nonce, rest) = body.split_at(NONCE_LEN);
    let (tag, ciphertext) = rest.split_at(TAG_LEN);
    let key = derive_key(password, cost)?;
    let cipher = XSalsa20Poly1305::new(key.as_ref().into());
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            b"",
            plaintext.as_mut(),
            Tag::from_slice(tag),
        )
        .map_err(|_| KeyfileError::WrongPassword)?;
    Ok(plaintext)
}

fn encrypt_with_cost(
    plaintext: &[u8],
    password: &str,
    cost: KdfCost,
) -> Result<Vec<u8>, KeyfileError> {
    let key = derive_key(password, cost)?;
    let cipher = XSalsa20Poly1305::new(key.as_ref().into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut ciphertext = plaintext.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut ciphertext)
        .map_err(|err| KeyfileError::Crypto(err.to_string()))?;
    let mut out = Vec::with_capacity(NACL_MAGIC.len() + NONCE_LEN + TAG_LEN + ciphertext.len());
    out.extend_from_slice(NACL_MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn derive_key(password: &str, cost: KdfCost) -> Result<Zeroizing<[u8; 32]>, KeyfileError> {
    let params = Params::new(cost.memory_kib, cost.passes, 1, Some(32))
        .map_err(|err| KeyfileError::Crypto(err.to_string()))?;
    let argon2 = Argon2::new(Algorithm::Argon2i, Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon2
        .hash_password_into(password.as_bytes(), &NACL_SALT, key.as_mut())
        .map_err(|err| KeyfileError::Crypto(err.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_scheme_from_its_prefix() {
        assert_eq!(Encryption::detect(b"$NACL\x00\x01"), Encryption::Nacl);
        assert_eq!(
            Encryption::detect(b"$ANSIBLE_VAULT;1.1;AES256\n3061"),
            Encryption::AnsibleVault
        );
        assert_eq!(
            Encryption::detect(b"gAAAAABlZ1234"),
            Encryption::LegacyFernet
        );
        assert_eq!(
            Encryption::detect(br#"{"accountId":"0x00"}"#),
            Encryption::Unencrypted
        );
    }

    #[test]
    fn short_or_foreign_data_is_refused_before_key_derivation() {
        assert!(matches!(
            decrypt_nacl(b"$NACLshort", "pw"),
            Err(KeyfileError::Truncated { len: 10 })
        ));
        assert!(matches!(
            decrypt_nacl(b"{}", "pw"),
            Err(KeyfileError::NotNacl)
        ));
    }

    /// A cheap cost for tests of everything but the cost itself (the shipped cost is checked
    /// against Python-made files in `tests/it/nacl_vectors.rs`).
    const CHEAP: KdfCost = KdfCost {
        passes: 1,
        memory_kib: 64,
    };

    #[test]
    fn round_trips_and_refuses_wrong_passwords_and_tampering() {
        let sealed = encrypt_with_cost(b"{\"secretSeed\":null}", "pw", CHEAP).unwrap();
        assert!(sealed.starts_with(NACL_MAGIC));
        assert_eq!(sealed.len(), NACL_MAGIC.len() + NONCE_LEN + TAG_LEN + 19);
        assert_eq!(
            decrypt_with_cost(&sealed, "pw", CHEAP).unwrap().as_slice(),
            b"{\"secretSeed\":null}"
        );
        assert_eq!(
            decrypt_with_cost(&sealed, "pw!", CHEAP).unwrap_err(),
            KeyfileError::WrongPassword
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            decrypt_with_cost(&tampered, "pw", CHEAP).unwrap_err(),
            KeyfileError::WrongPassword
        );
        let again = encrypt_with_cost(b"{\"secretSeed\":null}", "pw", CHEAP).unwrap();
        assert_ne!(sealed, again, "each encryption draws a fresh nonce");
    }

    #[test]
    fn salt_is_bittensors_nacl_salt() {
        // Python: b"\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1"
        let python_literal: &[u8] = b"\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1";
        assert_eq!(NACL_SALT.as_slice(), python_literal);
    }
}
