//! Checking a legacy request's signature and nonce like bittensor's `default_verify`.

use prompting_synapse::Synapse;

use super::nonce_table::NonceClaim;
use super::{Legacy, PromptSynapse};
use crate::caller_class::ClassifyCaller;

/// Checks the dendrite's signature and nonce against this axon's own hotkey (not the one the
/// headers name). Returns the caller's hotkey, or bittensor's reason for refusing (the
/// answer says `Not Verified with error: {reason}`).
pub(super) fn verify<B: PromptSynapse>(
    legacy: &Legacy,
    synapse: &Synapse<B>,
) -> Result<String, String> {
    let state = &legacy.edge;
    let hotkey = synapse
        .dendrite
        .hotkey
        .as_deref()
        .filter(|h| !h.is_empty())
        .ok_or("Missing dendrite hotkey")?;
    let nonce = synapse.dendrite.nonce.ok_or("Missing Nonce")?;
    let claim = NonceClaim {
        hotkey,
        uuid: synapse.dendrite.uuid.as_deref().unwrap_or("None"),
        nonce,
        dendrite_version: synapse.dendrite.version,
        timeout_seconds: synapse.timeout,
        class: state.pipeline.class_of(hotkey),
    };
    // The nonce table counts in unsigned nanoseconds; a clock before 1970 reads as 0.
    let now = u128::try_from(state.clock.now_ns()).unwrap_or(0);
    legacy
        .nonces
        .check(&claim, now)
        .map_err(|e| e.to_string())?;
    let signature = synapse
        .dendrite
        .signature
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or("Missing Signature")?;
    let message = synapse.request_signing_message(&state.hotkey);
    match prompting_keys::verify_hex(hotkey, message.as_bytes(), signature) {
        Ok(true) => {}
        Ok(false) => return Err(format!("Signature mismatch with {message} and {signature}")),
        Err(err) => return Err(format!("Invalid signature: {err}")),
    }
    legacy
        .nonces
        .record(&claim, now)
        .map_err(|e| e.to_string())?;
    Ok(hotkey.to_string())
}
