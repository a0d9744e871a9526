//! The JSON of bittensor keyfiles.
//!
//! Secret files carry `accountId`, `publicKey`, `privateKey` (64-byte expanded secret; missing in
//! bittensor 6.x files), `secretSeed` (32-byte mini secret, or `null`), `secretPhrase` (or
//! `null`, or absent), `ss58Address` and `cryptoType` (1 = sr25519; absent in 6.x files).
//! Public files (`coldkeypub.txt`, `hotkeys/<name>pub.txt`) carry only the public fields.
//!
//! bittensor-wallet 4 writes compact JSON with its keys in hash-map order; we write one fixed
//! order (that of the reference miner hotkey) with the same compact formatting.

use serde::Deserialize;
use zeroize::Zeroizing;

use super::KeyfileError;
use crate::hex_text::{parse_fixed, to_0x_hex};
use crate::keypair::Keypair;
use crate::public_key::PublicKey;

/// `cryptoType` of sr25519 keys (substrate-interface `KeypairType.SR25519`).
pub const CRYPTO_TYPE_SR25519: u8 = 1;

#[derive(Deserialize)]
struct KeyfileFields {
    #[serde(rename = "accountId")]
    account_id: Option<String>,
    #[serde(rename = "publicKey")]
    public_key: Option<String>,
    #[serde(rename = "privateKey")]
    private_key: Option<Zeroizing<String>>,
    #[serde(rename = "secretSeed")]
    secret_seed: Option<Zeroizing<String>>,
    #[serde(rename = "secretPhrase")]
    secret_phrase: Option<Zeroizing<String>>,
    #[serde(rename = "ss58Address")]
    ss58_address: Option<String>,
    #[serde(rename = "cryptoType")]
    crypto_type: Option<u8>,
}

impl KeyfileFields {
    fn parse(data: &[u8]) -> Result<KeyfileFields, KeyfileError> {
        let fields: KeyfileFields =
            serde_json::from_slice(data).map_err(|err| KeyfileError::NotJson(err.to_string()))?;
        match fields.crypto_type {
            None | Some(CRYPTO_TYPE_SR25519) => Ok(fields),
            Some(other) => Err(KeyfileError::UnsupportedCryptoType(other)),
        }
    }

    /// The public key the file claims (all present public fields must agree).
    fn claimed_public(&self) -> Result<Option<PublicKey>, KeyfileError> {
        let mut claimed: Option<(PublicKey, &'static str)> = None;
        let candidates = [
            (
                "publicKey",
                self.public_key.as_deref().map(parse_hex_public),
            ),
            (
                "accountId",
                self.account_id.as_deref().map(parse_hex_public),
            ),
            (
                "ss58Address",
                self.ss58_address.as_deref().map(parse_ss58_public),
            ),
        ];
        for (field, parsed) in candidates {
            let Some(parsed) = parsed else { continue };
            let key = parsed.map_err(|reason| KeyfileError::InvalidField { field, reason })?;
            match claimed {
                Some((first, first_field)) if first != key => {
                    return Err(KeyfileError::Inconsistent {
                        field,
                        reason: format!("does not match {first_field}"),
                    });
                }
                Some(_) => {}
                None => claimed = Some((key, field)),
            }
        }
        Ok(claimed.map(|(key, _)| key))
    }
}

fn parse_hex_public(text: &str) -> Result<PublicKey, String> {
    parse_fixed::<32>(text, "public key")
        .map(PublicKey)
        .map_err(|err| err.to_string())
}

fn parse_ss58_public(text: &str) -> Result<PublicKey, String> {
    PublicKey::from_ss58(text).map_err(|err| err.to_string())
}

/// Reads the keypair of an (unencrypted) secret keyfile.
///
/// The key comes from `privateKey`, else `secretSeed`, else `secretPhrase`. Every other secret
/// and public field present must describe the same key, so a corrupt file is an error rather
/// than a different identity. (bittensor-wallet 4 writes the `secretSeed` of seed-made keys as
/// `"0x"` + raw bytes instead of hex; such a seed is ignored when `privateKey` is present.)
pub fn keypair_from_json(data: &[u8]) -> Result<Keypair, KeyfileError> {
    let fields = KeyfileFields::parse(data)?;
    let seed = fields
        .secret_seed
        .as_deref()
        .map(|text| parse_fixed::<32>(text, "secretSeed").map(Zeroizing::new));
    let phrase_keypair = match fields.secret_phrase.as_deref() {
        Some(phrase) => {
            Some(
                Keypair::from_mnemonic(phrase).map_err(|err| KeyfileError::InvalidField {
                    field: "secretPhrase",
                    reason: err.to_string(),
                })?,
            )
        }
        None => None,
    };

    let keypair = if let Some(private) = fields.private_key.as_deref() {
        let bytes = Zeroizing::new(parse_fixed::<64>(private, "privateKey").map_err(|err| {
            KeyfileError::InvalidField {
                field: "privateKey",
                reason: err.to_string(),
            }
        })?);
        Keypair::from_private_key(&bytes).map_err(|err| KeyfileError::InvalidField {
            field: "privateKey",
            reason: err.to_string(),
        })?
    } else if let Some(seed) = seed.as_ref() {
        let seed = seed.as_ref().map_err(|err| KeyfileError::InvalidField {
            field: "secretSeed",
            reason: err.to_string(),
        })?;
        Keypair::from_mini_secret(seed)
    } else if let Some(from_phrase) = phrase_keypair.as_ref() {
        from_phrase.clone()
    } else {
        return Err(KeyfileError::NoSecret);
    };

    let public = keypair.public_key();
    let usable_seed = match seed {
        Some(Ok(seed)) => {
            if Keypair::from_mini_secret(&seed).public_key() != public {
                return Err(KeyfileError::Inconsistent {
                    field: "secretSeed",
                    reason: "derives a different public key".to_owned(),
                });
            }
            Some(seed)
        }
        _ => None,
    };
    let phrase = match phrase_keypair {
        Some(from_phrase) => {
            if from_phrase.public_key() != public {
                return Err(KeyfileError::Inconsistent {
                    field: "secretPhrase",
                    reason: "derives a different public key".to_owned(),
                });
            }
            from_phrase
                .mnemonic()
                .map(|text| Zeroizing::new(text.to_owned()))
        }
        None => None,
    };
    if let Some(claimed) = fields.claimed_public()?
        && claimed != public
    {
        return Err(KeyfileError::Inconsistent {
            field: "publicKey",
            reason: format!("claims {claimed}, but the secret belongs to {public}"),
        });
    }
    let origin_seed = usable_seed.or_else(|| keypair.mini_secret().map(|s| Zeroizing::new(*s)));
    Ok(keypair.with_origin(origin_seed, phrase))
}

/// Reads the public key of a keyfile (public or secret, unencrypted).
///
/// Accepts `publicKey`, `accountId` or `ss58Address` (they must agree) and, as very old
/// bittensor wrote `coldkeypub.txt`, a bare SS58 address.
pub fn public_key_from_json(data: &[u8]) -> Result<PublicKey, KeyfileError> {
    let text = std::str::from_utf8(data)
        .map_err(|err| KeyfileError::NotJson(err.to_string()))?
        .trim();
    if !text.starts_with('{') {
        return PublicKey::from_ss58(text).map_err(|err| {
            KeyfileError::NotJson(format!("neither JSON nor an SS58 address ({err})"))
        });
    }
    KeyfileFields::parse(text.as_bytes())?
        .claimed_public()?
        .ok_or(KeyfileError::NoPublicKey)
}

/// The secret keyfile JSON of `keypair`, formatted as bittensor-wallet 4 writes it (compact,
/// `secretSeed`/`secretPhrase` omitted when unknown).
pub fn keypair_to_json(keypair: &Keypair) -> Zeroizing<String> {
    let public = keypair.public_key();
    let mut fields: Vec<(&str, Zeroizing<String>)> = vec![
        ("accountId", Zeroizing::new(json_string(&public.to_hex()))),
        (
            "privateKey",
            Zeroizing::new(json_string(&to_0x_hex(keypair.private_key().as_ref()))),
        ),
        ("publicKey", Zeroizing::new(json_string(&public.to_hex()))),
    ];
    if let Some(seed) = keypair.mini_secret() {
        fields.push(("secretSeed", Zeroizing::new(json_string(&to_0x_hex(seed)))));
    }
    fields.push((
        "ss58Address",
        Zeroizing::new(json_string(&public.to_ss58())),
    ));
    fields.push((
        "cryptoType",
        Zeroizing::new(CRYPTO_TYPE_SR25519.to_string()),
    ));
    if let Some(phrase) = keypair.mnemonic() {
        fields.push(("secretPhrase", Zeroizing::new(json_string(phrase))));
    }
    join_object(&fields)
}

/// The public keyfile JSON (`hotkeys/<name>pub.txt`, `coldkeypub.txt`) of `public`.
pub fn public_key_to_json(public: &PublicKey) -> String {
    let fields = [
        ("publicKey", Zeroizing::new(json_string(&public.to_hex()))),
        (
            "ss58Address",
            Zeroizing::new(json_string(&public.to_ss58())),
        ),
        (
            "cryptoType",
            Zeroizing::new(CRYPTO_TYPE_SR25519.to_string()),
        ),
        ("accountId", Zeroizing::new(json_string(&public.to_hex()))),
    ];
    join_object(&fields).to_string()
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn join_object(fields: &[(&str, Zeroizing<String>)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::from("{"));
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&json_string(name));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHRASE: &str =
        "legal winner thank year wave sausage worth useful legal winner thank yellow";
    const SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";
    const PUBLIC: &str = "0x625e25364c7b68e0a83065ccb40afed43f8fe933e669b24f3d69a57eddb3b715";
    const SEED: &str = "0x6fa2796b0071cac425d8a7851038318c2c37dcebfe4bae73197ce93e75909bd2";

    #[test]
    fn loads_from_seed_or_phrase_alone() {
        let from_seed = keypair_from_json(format!(r#"{{"secretSeed":"{SEED}"}}"#).as_bytes());
        assert_eq!(from_seed.unwrap().ss58_address(), SS58);
        let from_phrase = keypair_from_json(
            format!(r#"{{"secretPhrase":"{PHRASE}","secretSeed":null}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(from_phrase.ss58_address(), SS58);
        assert_eq!(from_phrase.mnemonic(), Some(PHRASE));
    }

    #[test]
    fn written_json_reads_back_with_all_origins() {
        let keypair = Keypair::from_mnemonic(PHRASE).unwrap();
        let json = keypair_to_json(&keypair);
        let back = keypair_from_json(json.as_bytes()).unwrap();
        assert_eq!(back.public_key(), keypair.public_key());
        assert_eq!(back.mnemonic(), Some(PHRASE));
        assert_eq!(back.mini_secret(), keypair.mini_secret());
        assert_eq!(
            public_key_from_json(json.as_bytes()).unwrap(),
            keypair.public_key()
        );
    }

    #[test]
    fn mismatching_fields_are_reported_not_trusted() {
        let other = Keypair::from_mini_secret(&[5u8; 32]);
        let wrong_public = format!(
            r#"{{"secretSeed":"{SEED}","publicKey":"{}"}}"#,
            other.public_key().to_hex()
        );
        assert!(matches!(
            keypair_from_json(wrong_public.as_bytes()),
            Err(KeyfileError::Inconsistent {
                field: "publicKey",
                ..
            })
        ));
        let wrong_phrase = format!(
            r#"{{"secretSeed":"0x{}","secretPhrase":"{PHRASE}"}}"#,
            "05".repeat(32)
        );
        assert!(matches!(
            keypair_from_json(wrong_phrase.as_bytes()),
            Err(KeyfileError::Inconsistent {
                field: "secretPhrase",
                ..
            })
        ));
        let public_disagreement = format!(
            r#"{{"publicKey":"{PUBLIC}","ss58Address":"{}"}}"#,
            other.ss58_address()
        );
        assert!(matches!(
            public_key_from_json(public_disagreement.as_bytes()),
            Err(KeyfileError::Inconsistent {
                field: "ss58Address",
                ..
            })
        ));
    }

    #[test]
    fn bad_json_missing_secrets_and_other_crypto_types_are_errors() {
        assert!(matches!(
            keypair_from_json(b"{not json"),
            Err(KeyfileError::NotJson(_))
        ));
        assert!(matches!(
            keypair_from_json(format!(r#"{{"publicKey":"{PUBLIC}"}}"#).as_bytes()),
            Err(KeyfileError::NoSecret)
        ));
        assert!(matches!(
            keypair_from_json(format!(r#"{{"secretSeed":"{SEED}","cryptoType":0}}"#).as_bytes()),
            Err(KeyfileError::UnsupportedCryptoType(0))
        ));
        assert!(matches!(
            keypair_from_json(br#"{"secretSeed":"0x1234"}"#),
            Err(KeyfileError::InvalidField {
                field: "secretSeed",
                ..
            })
        ));
        assert!(matches!(
            public_key_from_json(b"{}"),
            Err(KeyfileError::NoPublicKey)
        ));
    }

    #[test]
    fn raw_byte_seed_of_bittensor_wallet_4_is_ignored_beside_private_key() {
        // bittensor-wallet 4.1.1 writes create_from_seed(0x02*32) with this secretSeed.
        let keypair = Keypair::from_mini_secret(&[2u8; 32]);
        let json = format!(
            r#"{{"privateKey":"{}","secretSeed":"0x{}","publicKey":"{}"}}"#,
            to_0x_hex(keypair.private_key().as_ref()),
            "\\u0002".repeat(32),
            keypair.public_key().to_hex()
        );
        let loaded = keypair_from_json(json.as_bytes()).unwrap();
        assert_eq!(loaded.public_key(), keypair.public_key());
        assert_eq!(loaded.mini_secret(), None);
    }

    #[test]
    fn bare_ss58_public_files_are_accepted() {
        assert_eq!(
            public_key_from_json(format!("{SS58}\n").as_bytes())
                .unwrap()
                .to_ss58(),
            SS58
        );
    }
}
