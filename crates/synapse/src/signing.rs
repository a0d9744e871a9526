//! The messages the legacy (bittensor 6.x–10.x) protocol signs with sr25519.
//!
//! Python builds them with f-strings, so a missing (`None`) part prints as `None`; the
//! `*_of` helpers on [`crate::Synapse`] reproduce that.

/// The message a dendrite signs for a request and an axon verifies:
/// `"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{computed_body_hash}"`, where `uuid` is
/// the dendrite's UUID and `axon_hotkey` the hotkey of the axon being called (an axon
/// verifies with its *own* hotkey, not the one in the headers).
///
/// ```
/// use prompting_synapse::signing::request_message;
///
/// assert_eq!(
///     request_message("757512466505", "5Dendrite", "5Axon", "23b4-uuid", "997bb8c9"),
///     "757512466505.5Dendrite.5Axon.23b4-uuid.997bb8c9"
/// );
/// ```
pub fn request_message(
    nonce: &str,
    dendrite_hotkey: &str,
    axon_hotkey: &str,
    dendrite_uuid: &str,
    computed_body_hash: &str,
) -> String {
    format!("{nonce}.{dendrite_hotkey}.{axon_hotkey}.{dendrite_uuid}.{computed_body_hash}")
}

/// The message an axon signs into `bt_header_axon_signature` of its response:
/// `"{axon_nonce}.{dendrite_hotkey}.{axon_hotkey}.{axon_uuid}"` (no body hash).
///
/// ```
/// use prompting_synapse::signing::axon_message;
///
/// assert_eq!(
///     axon_message("1795303299411995329", "5Dendrite", "5Axon", "4890-uuid"),
///     "1795303299411995329.5Dendrite.5Axon.4890-uuid"
/// );
/// ```
pub fn axon_message(
    axon_nonce: &str,
    dendrite_hotkey: &str,
    axon_hotkey: &str,
    axon_uuid: &str,
) -> String {
    format!("{axon_nonce}.{dendrite_hotkey}.{axon_hotkey}.{axon_uuid}")
}

/// Python's f-string rendering of an optional value: the value, or `None`.
pub(crate) fn or_none<T: ToString>(value: Option<&T>) -> String {
    value.map_or_else(|| "None".to_string(), ToString::to_string)
}
