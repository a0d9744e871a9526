//! A 32-byte public key, which is also a Substrate `AccountId32`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Ss58Error;
use crate::ss58;

/// An sr25519 (or ed25519) public key: the raw 32 bytes of an `AccountId32`.
///
/// Displays, parses and (de)serializes as its SS58 address with prefix 42.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The SS58 address with bittensor's prefix 42.
    pub fn to_ss58(&self) -> String {
        ss58::encode(&self.0, ss58::BITTENSOR_PREFIX)
    }

    /// Parses an SS58 address of any prefix (as Python's `ss58_decode` does by default).
    pub fn from_ss58(s: &str) -> Result<PublicKey, Ss58Error> {
        ss58::decode(s).map(|(account, _prefix)| PublicKey(account))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The `0x`-prefixed lowercase hex of the 32 bytes (the keyfiles' `publicKey`/`accountId`).
    pub fn to_hex(&self) -> String {
        crate::hex_text::to_0x_hex(&self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_ss58())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ss58())
    }
}

impl FromStr for PublicKey {
    type Err = Ss58Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_ss58(s)
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_ss58())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PublicKey::from_ss58(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";
    const HEX: &str = "0x625e25364c7b68e0a83065ccb40afed43f8fe933e669b24f3d69a57eddb3b715";

    #[test]
    fn ss58_hex_display_and_parse_agree() {
        let key: PublicKey = SS58.parse().unwrap();
        assert_eq!(key.to_hex(), HEX);
        assert_eq!(key.to_ss58(), SS58);
        assert_eq!(key.to_string(), SS58);
        assert_eq!(format!("{key:?}"), format!("PublicKey({SS58})"));
    }

    #[test]
    fn serde_uses_the_ss58_text() {
        let key = PublicKey::from_ss58(SS58).unwrap();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{SS58}\""));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<PublicKey>("\"not-an-address\"").is_err());
    }
}
