//! Bittensor's `computed_body_hash`: for each hashed field, `sha3_256_hex(str(value))`;
//! the hex digests are concatenated and hashed once more.

use sha3::{Digest, Sha3_256};

use crate::python_repr::PyStr;

/// The lower-case hex SHA3-256 of the UTF-8 bytes of `text` (bittensor's `get_hash`).
///
/// ```
/// use prompting_synapse::sha3_256_hex;
///
/// assert_eq!(
///     sha3_256_hex(""),
///     "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
/// );
/// ```
pub fn sha3_256_hex(text: &str) -> String {
    hex::encode(Sha3_256::digest(text.as_bytes()))
}

/// The body hash of the given field values, in order: `sha3(sha3(str(v1)) + sha3(str(v2)) + ...)`.
///
/// With no fields this is `sha3_256_hex("")`, what Python sends for a synapse without
/// hashed fields.
///
/// ```
/// use prompting_synapse::{body_hash_of, PyStr};
///
/// // The v6 `Dummy` synapse: input=21, text="hello", items=[1, 2].
/// let items = vec![1_i64, 2];
/// let fields: [&dyn PyStr; 3] = [&21_i64, &"hello".to_string(), &items];
/// assert_eq!(
///     body_hash_of(&fields),
///     "997bb8c9117bcc699627e63cbb88eb1668a863a6ddb6efa46d52b750e4cd04a4"
/// );
/// ```
pub fn body_hash_of(values: &[&dyn PyStr]) -> String {
    let joined: String = values
        .iter()
        .map(|value| sha3_256_hex(&value.py_str()))
        .collect();
    sha3_256_hex(&joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_message_list_hash_matches_python() {
        let messages: Vec<String> = Vec::new();
        assert_eq!(
            body_hash_of(&[&messages]),
            "a8ea28e4d52d34cdb5899a7d172856e378d786898fd92d0af8659a25bbee7098"
        );
    }

    #[test]
    fn no_fields_hashes_the_empty_string() {
        assert_eq!(
            body_hash_of(&[]),
            "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
    }
}
