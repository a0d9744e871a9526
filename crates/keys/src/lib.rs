//! Bittensor identity, wire-compatible with Python `bittensor` / `bittensor-wallet`:
//!
//! - [`Keypair`]: sr25519 keys (schnorrkel, signing context `substrate`) from a 32-byte mini
//!   secret, a BIP-39 mnemonic (substrate-bip39) or a keyfile's 64-byte `privateKey`;
//! - [`verify`], [`verify_hex`], [`verify_ed25519`]: signature checks (each also accepts a
//!   signature over `<Bytes>` + message + `</Bytes>`, as Python does);
//! - [`PublicKey`] and [`ss58`]: account ids and their SS58 addresses (prefix 42 by default);
//! - [`keyfile`] and [`wallet`]: keyfile JSON, `$NACL` encryption and the on-disk wallet layout.
//!
//! ```
//! use prompting_keys::{Keypair, verify_hex};
//!
//! let keypair = Keypair::from_mini_secret(&[1u8; 32]);
//! let signature = keypair.sign_hex(b"nonce.dendrite.axon.uuid.hash");
//! assert_eq!(
//!     verify_hex(&keypair.ss58_address(), b"nonce.dendrite.axon.uuid.hash", &signature),
//!     Ok(true)
//! );
//! ```

mod error;
mod hex_text;
pub mod keyfile;
mod keypair;
mod mnemonic;
mod public_key;
pub mod ss58;
mod verify;
pub mod wallet;

pub use error::{KeyError, Ss58Error};
pub use keypair::{Keypair, SIGNING_CONTEXT};
pub use public_key::PublicKey;
pub use verify::{verify, verify_ed25519, verify_hex};
pub use wallet::Wallet;
