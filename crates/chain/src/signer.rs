//! Who signs the miner's transactions: its hotkey (sr25519).

use prompting_keys::ss58::{BITTENSOR_PREFIX, encode};
use subxt::config::PolkadotConfig;
use subxt::utils::{AccountId32, MultiSignature};

pub use prompting_keys::SIGNING_CONTEXT;

/// A hotkey able to sign transactions.
///
/// Implemented for the wallet's [`prompting_keys::Keypair`]; a remote or hardware signer can
/// implement it too.
pub trait ExtrinsicSigner: Send + Sync {
    /// The public key (account id) of the hotkey.
    fn account(&self) -> [u8; 32];
    /// An sr25519 signature (context `substrate`) over `payload`.
    fn sign(&self, payload: &[u8]) -> [u8; 64];

    /// SS58 address (prefix 42) of the hotkey.
    fn ss58(&self) -> String {
        encode(&self.account(), BITTENSOR_PREFIX)
    }
}

impl ExtrinsicSigner for prompting_keys::Keypair {
    fn account(&self) -> [u8; 32] {
        self.public_key().0
    }

    fn sign(&self, payload: &[u8]) -> [u8; 64] {
        prompting_keys::Keypair::sign(self, payload)
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

    #[test]
    fn signs_verifiably_and_encodes_ss58() {
        // The axon hotkey of the shared v6 vectors: seed 0x02 * 32.
        let keypair = prompting_keys::Keypair::from_mini_secret(&[2u8; 32]);
        let signer: &dyn ExtrinsicSigner = &keypair;
        assert_eq!(
            signer.ss58(),
            "5CfCr47V5Dte6bwxNBE8K9oNnQd9fiay6aDEEkgYtFv7w4Fq"
        );
        // subxt's own SS58 rendering of the account agrees.
        assert_eq!(AccountId32(signer.account()).to_string(), signer.ss58());
        let public = schnorrkel::PublicKey::from_bytes(&signer.account()).expect("public key");
        let signature =
            schnorrkel::Signature::from_bytes(&ExtrinsicSigner::sign(&keypair, b"payload"))
                .expect("64 bytes");
        assert!(
            public
                .verify_simple(SIGNING_CONTEXT, b"payload", &signature)
                .is_ok()
        );
        assert!(
            public
                .verify_simple(SIGNING_CONTEXT, b"other", &signature)
                .is_err()
        );
    }
}
