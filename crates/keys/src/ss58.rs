//! SS58 addresses of 32-byte account ids: `base58(prefix || account || checksum)`, where the
//! checksum is the first two bytes of `blake2b-512("SS58PRE" || prefix || account)`.
//!
//! Prefixes 0..=63 take one byte; 64..=16383 take two bytes (the "full" format). Bittensor
//! uses prefix [`BITTENSOR_PREFIX`] (42, the generic Substrate format).

use blake2::{Blake2b512, Digest};

use crate::error::Ss58Error;

/// The SS58 prefix bittensor addresses use (42, generic Substrate).
pub const BITTENSOR_PREFIX: u16 = 42;

/// The largest prefix SS58 can encode.
pub const MAX_PREFIX: u16 = 16383;

const CHECKSUM_LEN: usize = 2;
const ACCOUNT_LEN: usize = 32;

/// Encodes a 32-byte account id with `prefix`.
///
/// # Panics
/// Panics when `prefix` is above [`MAX_PREFIX`]; use [`try_encode`] for untrusted prefixes.
pub fn encode(public: &[u8; 32], prefix: u16) -> String {
    match try_encode(public, prefix) {
        Ok(address) => address,
        Err(err) => panic!("{err}"),
    }
}

/// Encodes a 32-byte account id with `prefix`, refusing prefixes above [`MAX_PREFIX`].
pub fn try_encode(public: &[u8; 32], prefix: u16) -> Result<String, Ss58Error> {
    let mut data = prefix_bytes(prefix)?;
    data.extend_from_slice(public);
    let checksum = checksum(&data);
    data.extend_from_slice(&checksum);
    Ok(bs58::encode(data).into_string())
}

/// Decodes an address into its account id and prefix, checking length and checksum.
pub fn decode(s: &str) -> Result<([u8; 32], u16), Ss58Error> {
    let data = bs58::decode(s)
        .into_vec()
        .map_err(|err| Ss58Error::InvalidBase58(err.to_string()))?;
    let first = *data.first().ok_or(Ss58Error::InvalidLength(0))?;
    let (prefix, prefix_len) = match first {
        0..=63 => (u16::from(first), 1),
        64..=127 => {
            let second = *data.get(1).ok_or(Ss58Error::InvalidLength(data.len()))?;
            let lower = (first << 2) | (second >> 6);
            let upper = second & 0b0011_1111;
            (u16::from(lower) | (u16::from(upper) << 8), 2)
        }
        _ => return Err(Ss58Error::ReservedPrefix(first)),
    };
    if data.len() != prefix_len + ACCOUNT_LEN + CHECKSUM_LEN {
        return Err(Ss58Error::InvalidLength(data.len()));
    }
    let (body, found) = data.split_at(prefix_len + ACCOUNT_LEN);
    if checksum(body) != found {
        return Err(Ss58Error::BadChecksum);
    }
    let mut account = [0u8; ACCOUNT_LEN];
    account.copy_from_slice(&body[prefix_len..]);
    Ok((account, prefix))
}

fn prefix_bytes(prefix: u16) -> Result<Vec<u8>, Ss58Error> {
    match prefix {
        0..=63 => Ok(vec![prefix as u8]),
        64..=MAX_PREFIX => {
            let first = (((prefix & 0b0000_0000_1111_1100) as u8) >> 2) | 0b0100_0000;
            let second = ((prefix >> 8) as u8) | (((prefix & 0b11) as u8) << 6);
            Ok(vec![first, second])
        }
        _ => Err(Ss58Error::PrefixOutOfRange(prefix)),
    }
}

fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Blake2b512::new();
    hasher.update(b"SS58PRE");
    hasher.update(data);
    let digest = hasher.finalize();
    [digest[0], digest[1]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    const ALICE_HEX: &str = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";

    fn alice() -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(ALICE_HEX, &mut out).unwrap();
        out
    }

    #[test]
    fn encodes_and_decodes_the_well_known_alice_address() {
        assert_eq!(encode(&alice(), BITTENSOR_PREFIX), ALICE);
        assert_eq!(decode(ALICE), Ok((alice(), 42)));
    }

    #[test]
    fn polkadot_and_kusama_prefixes() {
        // Alice on Polkadot (0) and Kusama (2), as subkey prints them.
        assert_eq!(
            encode(&alice(), 0),
            "15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5"
        );
        assert_eq!(
            encode(&alice(), 2),
            "HNZata7iMYWmk5RvZRTiAsSDhV8366zq2YGb3tLH5Upf74F"
        );
    }

    #[test]
    fn two_byte_prefixes_match_python_scalecodec() {
        // scalecodec.utils.ss58.ss58_encode(ALICE_HEX, 255 / 16383).
        let cases = [
            (255, "yGHXkYLYqxijLKKfd9Q2CB9shRVu8rPNBS53wvwGTutYg4zTg"),
            (16383, "yNa8JpqfFB3q8A29rCwSgxvdU94ufJw2yKKxDgznS5m1PoFvn"),
        ];
        for (prefix, address) in cases {
            assert_eq!(encode(&alice(), prefix), address);
            assert_eq!(decode(address), Ok((alice(), prefix)));
        }
    }

    #[test]
    fn rejects_a_bad_checksum() {
        let mut chars: Vec<char> = ALICE.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'Y' { 'Z' } else { 'Y' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(decode(&tampered), Err(Ss58Error::BadChecksum));
    }

    #[test]
    fn rejects_bad_base58_and_lengths() {
        assert!(matches!(
            decode("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQ0"),
            Err(Ss58Error::InvalidBase58(_))
        ));
        assert_eq!(decode(""), Err(Ss58Error::InvalidLength(0)));
        assert_eq!(
            decode(&ALICE[..ALICE.len() - 2]),
            Err(Ss58Error::InvalidLength(34))
        );
        let too_long = bs58::encode([42u8; 40]).into_string();
        assert_eq!(decode(&too_long), Err(Ss58Error::InvalidLength(40)));
    }

    #[test]
    fn rejects_reserved_first_bytes_and_large_prefixes() {
        let reserved = bs58::encode([200u8; 35]).into_string();
        assert_eq!(decode(&reserved), Err(Ss58Error::ReservedPrefix(200)));
        assert_eq!(
            try_encode(&alice(), 16384),
            Err(Ss58Error::PrefixOutOfRange(16384))
        );
    }

    proptest! {
        #[test]
        fn any_account_and_prefix_round_trips(account in any::<[u8; 32]>(), prefix in 0u16..=MAX_PREFIX) {
            let address = encode(&account, prefix);
            prop_assert_eq!(decode(&address), Ok((account, prefix)));
        }
    }
}
