//! Which SS58 addresses bittensor's `sp_core.verify` decodes.
//!
//! `bittensor_core` (sp-core 37 with ss58-registry 1.51.0) accepts an address only when its
//! prefix is registered in that registry (or is the default, 42) and is not one of the two
//! reserved prefixes 46 and 47. Any other prefix is a `ValueError`, which `http_auth.verify`
//! reports as a malformed request. The table below is that set, read off the running
//! `bittensor_core` by trying every prefix (the interop test re-derives it).

use prompting_keys::{PublicKey, ss58};

/// The SS58 prefixes bittensor 11.3.0 accepts in a hotkey address, ascending.
pub const ACCEPTED_SS58_PREFIXES: [u16; 146] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 63, 65, 66, 67, 68, 69, 71, 72, 73, 77, 78, 81, 88, 89, 90, 92, 93,
    98, 99, 100, 101, 105, 110, 113, 117, 126, 128, 129, 131, 136, 137, 172, 252, 255, 268, 420,
    440, 666, 777, 789, 995, 1110, 1221, 1222, 1284, 1285, 1328, 1337, 1516, 1985, 2007, 2009,
    2021, 2024, 2032, 2092, 2106, 2112, 2199, 2206, 2207, 2254, 3333, 4450, 5234, 5845, 6094, 7007,
    7013, 7306, 7391, 8866, 8883, 8886, 8888, 9072, 9807, 9935, 10041, 11330, 11331, 11486, 11820,
    12155, 12191, 12850, 13116, 14697, 14998,
];

/// The public key of `address` when bittensor would decode it: valid base58, length and
/// checksum, and an accepted prefix.
pub(crate) fn decode_hotkey(address: &str) -> Option<PublicKey> {
    let (account, prefix) = ss58::decode(address).ok()?;
    ACCEPTED_SS58_PREFIXES
        .binary_search(&prefix)
        .ok()
        .map(|_| PublicKey(account))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: [u8; 32] = [7u8; 32];

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(ACCEPTED_SS58_PREFIXES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn registered_prefixes_decode_and_others_do_not() {
        for prefix in [0, 2, 42, 63, 255, 14998] {
            let address = ss58::encode(&ACCOUNT, prefix);
            assert_eq!(
                decode_hotkey(&address),
                Some(PublicKey(ACCOUNT)),
                "{prefix}"
            );
        }
        for prefix in [46, 47, 59, 64, 16383] {
            let address = ss58::encode(&ACCOUNT, prefix);
            assert_eq!(decode_hotkey(&address), None, "{prefix}");
        }
    }

    #[test]
    fn broken_addresses_do_not_decode() {
        let good = ss58::encode(&ACCOUNT, 42);
        let mut broken = good.clone();
        broken.pop();
        broken.push(if good.ends_with('Z') { 'Y' } else { 'Z' });
        for address in ["", "5Fake", broken.as_str(), "0x0707"] {
            assert_eq!(decode_hotkey(address), None, "{address:?}");
        }
    }
}
