//! Who signs the miner's transactions: its hotkey (sr25519).

use subxt::config::PolkadotConfig;
use subxt::utils::{AccountId32, MultiSignature};

/// Signing context of substrate sr25519 signatures.
pub const SIGNING_CONTEXT: &[u8] = b"substrate";

/// A hotkey able to sign transactions.
///
/// Implemented for `schnorrkel::Keypair`; the wallet crate's key type plugs in through it.
pub trait ExtrinsicSigner: Send + Sync {
    /// The public key (account id) of the hotkey.
    fn account(&self) -> [u8; 32];
    /// An sr25519 signature (context `substrate`) over `payload`.
    fn sign(&self, payload: &[u8]) -> [u8; 64];

    /// SS58 address (prefix 42) of the hotkey.
    fn ss58(&self) -> String {
        AccountId32(self.account()).to_string()
    }
}

impl ExtrinsicSigner for schnorrkel::Keypair {
    fn account(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    fn sign(&self, payload: &[u8]) -> [u8; 64] {
        self.sign_simple(SIGNING_CONTEXT, payload).to_bytes()
    }
}

/// Adapts an [`ExtrinsicSigner`] to subxt's signer for subtensor's config.
pub(crate) struct SubxtSigner<'a>(pub(crate) &'a dyn ExtrinsicSigner);

impl subxt::tx::Signer<PolkadotConfig> for SubxtSigner<'_> {
    fn account_id(&self) -> AccountId32 {
        AccountId32(self.0.account())
    }

    fn sign(&self, signer_payload: &[u8]) -> MultiSignature {
        MultiSignature::Sr25519(self.0.sign(signer_payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schnorrkel::{ExpansionMode, MiniSecretKey};

    #[test]
    fn signs_verifiably_and_encodes_ss58() {
        // The axon hotkey of the shared v6 vectors: seed 0x02 * 32.
        let keypair = MiniSecretKey::from_bytes(&[2u8; 32])
            .expect("32 bytes")
            .expand_to_keypair(ExpansionMode::Ed25519);
        let signer: &dyn ExtrinsicSigner = &keypair;
        assert_eq!(
            signer.ss58(),
            "5CfCr47V5Dte6bwxNBE8K9oNnQd9fiay6aDEEkgYtFv7w4Fq"
        );
        let signature = signer.sign(b"payload");
        let signature = schnorrkel::Signature::from_bytes(&signature).expect("64 bytes");
        assert!(
            keypair
                .public
                .verify_simple(SIGNING_CONTEXT, b"payload", &signature)
                .is_ok()
        );
        assert!(
            keypair
                .public
                .verify_simple(SIGNING_CONTEXT, b"other", &signature)
                .is_err()
        );
    }
}
