//! The Bittensor synapse protocol of text-prompting v2.1.6, wire-compatible with the
//! Python `bittensor` 6.x–10.x `Axon`/`Dendrite`: pure data and codecs, no network I/O.
//!
//! * [`Synapse<B>`]: the base fields (`name`, `timeout`, sizes, [`TerminalInfo`] of the
//!   dendrite and the axon, `computed_body_hash`) around a typed body `B:`[`SynapseBody`]
//!   ([`Prompting`], [`StreamPrompting`]); JSON codec ([`Synapse::from_json`],
//!   [`Synapse::to_json`]), header codec ([`Synapse::to_headers`], [`SynapseHeaders`]),
//!   body hash ([`Synapse::body_hash`]).
//! * [`PyStr`]: CPython 3.11's `repr()`/`str()`, which the body hash depends on.
//! * [`signing`]: the legacy signed-message strings.
//!
//! # Axon (server) side
//!
//! ```
//! use prompting_synapse::{Prompting, Synapse, SynapseHeaders};
//!
//! # let mut sent = Synapse::new(Prompting::new(vec!["user".into()], vec!["hi".into()]));
//! # let request = sent.to_request();
//! # let (header_pairs, body) = (request.headers, request.body.into_bytes());
//! let headers = SynapseHeaders::parse(header_pairs.iter().map(|(n, v)| (n, v)))?; // 400 on error
//! let mut synapse = Synapse::<Prompting>::from_request(&headers, &body)?; // 400 on error
//! synapse.verify_body_hash(headers.computed_body_hash.as_deref().unwrap_or(""))?;
//! let signed = synapse.request_signing_message("5MyOwnAxonHotkey"); // verify dendrite.signature over it
//! # let _ = signed;
//! synapse.body.completion = "hello".into();
//! let response = synapse.to_response(); // status 200, headers, JSON body
//! assert_eq!(response.status, 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dendrite (client) side
//!
//! ```
//! use prompting_synapse::{Prompting, Synapse, SynapseHeaders};
//!
//! let mut synapse = Synapse::new(Prompting::new(vec!["user".into()], vec!["hi".into()]));
//! synapse.timeout = 12.0;
//! synapse.dendrite.nonce = Some(1_795_303_299_506_817_297);
//! synapse.dendrite.hotkey = Some("5Dendrite".into());
//! synapse.dendrite.uuid = Some("49c892ca-e602-11f1-86a3-02fc00000001".into());
//! synapse.axon.hotkey = Some("5Axon".into());
//! synapse.computed_body_hash = synapse.body_hash();
//! let to_sign = synapse.request_signing_message("5Axon");
//! # let _ = to_sign;
//! // synapse.dendrite.signature = Some(format!("0x{}", hex(sign(to_sign))));
//! let request = synapse.to_request(); // POST request.path with request.headers + request.body
//! # let mut answer = synapse.clone();
//! # answer.body.completion = "hello".into();
//! # let reply = answer.to_response();
//! # let (status, reply_headers, reply_body) = (reply.status, reply.headers, reply.body);
//! let headers = SynapseHeaders::parse(reply_headers.iter().map(|(n, v)| (n, v)))?;
//! synapse.apply_response(status, &headers, reply_body.as_bytes())?;
//! assert_eq!(synapse.body.completion, "hello");
//! assert_eq!(synapse.dendrite.status_code, Some(200));
//! # let _ = request;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod body;
pub mod body_hash;
pub mod error;
pub mod headers;
mod lenient;
pub mod printable_table;
pub mod prompting;
pub mod python_repr;
pub mod signing;
pub mod synapse;
pub mod terminal;

pub use body::{RequiredField, SynapseBody};
pub use body_hash::{body_hash_of, sha3_256_hex};
pub use error::{BodyError, BodyHashMismatch, HeaderError};
pub use headers::SynapseHeaders;
pub use lenient::DEFAULT_TIMEOUT;
pub use prompting::{Prompting, PromptingBody, StreamPrompting};
pub use python_repr::{PyStr, is_python_printable};
pub use synapse::{RequestParts, ResponseParts, Synapse};
pub use terminal::TerminalInfo;
