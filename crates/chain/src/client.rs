//! The `Subtensor` facade: one connection, the reads and writes the miner needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prompting_metagraph::{Metagraph, NeuronInfo};
use subxt::config::PolkadotConfig;
use subxt::ext::scale_encode::EncodeAsType;
use subxt::ext::scale_value::{Composite, Value};
use subxt::tx::TxStatus;
use subxt::{OnlineClient, dynamic};
use tokio::task::JoinHandle;

use crate::args::SubtensorArgs;
use crate::axon_addr::encode_ip;
use crate::error::{ChainError, with_timeout};
use crate::neurons::{
    GET_NEURONS_LITE, NEURON_INFO_API, decode_neurons_lite, neurons_lite_output_type,
};
use crate::signer::{ExtrinsicSigner, SubxtSigner};

/// The pallet holding subtensor's calls.
pub const SUBTENSOR_PALLET: &str = "SubtensorModule";
/// `serve_axon`'s `protocol` for an HTTP axon (bittensor's axon protocol 4).
pub const AXON_PROTOCOL: u8 = 4;
/// The axon version published by bittensor 6.4.4 (`__version_as_int__`), which the text-prompting
/// miners ran with.
pub const AXON_VERSION: u32 = 644;
/// The `version_key` the text-prompting miner passed to `set_weights`.
pub const WEIGHTS_VERSION_KEY: u64 = 1;

/// What to publish with `serve_axon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeAxon {
    /// The subnet.
    pub netuid: u16,
    /// The external address validators should dial.
    pub external: SocketAddr,
    /// The axon version published.
    pub version: u32,
}

impl ServeAxon {
    /// Publishes `external` on `netuid` with the default version.
    pub fn new(netuid: u16, external: SocketAddr) -> Self {
        ServeAxon {
            netuid,
            external,
            version: AXON_VERSION,
        }
    }
}

/// What `serve_axon` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeOutcome {
    /// The chain already had this ip:port for the hotkey; nothing was submitted.
    AlreadyServed,
    /// The transaction was included in the block with this hash (hex).
    Included {
        /// Hash of the including block, `0x`-prefixed hex.
        block_hash: String,
    },
}

/// A connection to a subtensor node.
#[derive(Clone)]
pub struct Subtensor {
    api: OnlineClient<PolkadotConfig>,
    endpoint: String,
    call_timeout: Duration,
    _updater: Arc<AbortOnDrop>,
}

/// Stops the runtime-upgrade follower when the last client clone goes away.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Subtensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subtensor")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Connects to the endpoint `args` select, reading the runtime's metadata from the node.
pub async fn connect(args: &SubtensorArgs) -> Result<Subtensor, ChainError> {
    Subtensor::connect_to(args.endpoint(), args.connect_timeout(), args.call_timeout()).await
}

impl Subtensor {
    /// Connects to `endpoint` (`ws://` or `wss://`), within `connect_timeout`; later calls each
    /// get `call_timeout`.
    pub async fn connect_to(
        endpoint: &str,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Subtensor, ChainError> {
        let api = with_timeout("connecting to subtensor", connect_timeout, async {
            OnlineClient::<PolkadotConfig>::from_insecure_url(endpoint)
                .await
                .map_err(|e| ChainError::Connect {
                    endpoint: endpoint.to_string(),
                    reason: e.to_string(),
                })
        })
        .await?;
        let updater = api.updater();
        let endpoint_for_log = endpoint.to_string();
        let follower = tokio::spawn(async move {
            if let Err(e) = updater.perform_runtime_updates().await {
                tracing::warn!(endpoint = %endpoint_for_log, error = %e, "runtime upgrades are no longer followed");
            }
        });
        tracing::info!(
            endpoint,
            spec_version = api.runtime_version().spec_version,
            "connected to subtensor"
        );
        Ok(Subtensor {
            api,
            endpoint: endpoint.to_string(),
            call_timeout,
            _updater: Arc::new(AbortOnDrop(follower)),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The metagraph of `netuid` at the latest finalized block.
    pub async fn fetch_metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError> {
        with_timeout("fetching the metagraph", self.call_timeout, async {
            let block = self
                .api
                .blocks()
                .at_latest()
                .await
                .map_err(|e| ChainError::rpc("reading the latest block", e))?;
            let metadata = self.api.metadata();
            let output_ty = neurons_lite_output_type(&metadata)?;
            let args = self.encode_runtime_api_args(netuid)?;
            let bytes = self
                .api
                .runtime_api()
                .at(block.reference())
                .call_raw(
                    &format!("{NEURON_INFO_API}_{GET_NEURONS_LITE}"),
                    Some(&args),
                )
                .await
                .map_err(|e| ChainError::rpc("NeuronInfoRuntimeApi.get_neurons_lite", e))?;
            let neurons = decode_neurons_lite(metadata.types(), output_ty, &bytes)?;
            Ok(Metagraph::new(netuid, u64::from(block.number()), neurons))
        })
        .await
    }

    /// `netuid` encoded as the runtime API's parameter type says (a `u16` or a wrapper of it).
    fn encode_runtime_api_args(&self, netuid: u16) -> Result<Vec<u8>, ChainError> {
        let metadata = self.api.metadata();
        let method = metadata
            .runtime_api_trait_by_name(NEURON_INFO_API)
            .and_then(|api| api.method_by_name(GET_NEURONS_LITE))
            .ok_or_else(|| {
                ChainError::MissingInMetadata(format!(
                    "method {NEURON_INFO_API}.{GET_NEURONS_LITE}"
                ))
            })?;
        let mut out = Vec::new();
        for input in method.inputs() {
            if input.name != "netuid" {
                return Err(ChainError::MissingInMetadata(format!(
                    "{GET_NEURONS_LITE} taking only a netuid (it also takes `{}`)",
                    input.name
                )));
            }
            Value::u128(u128::from(netuid))
                .encode_as_type_to(input.ty, metadata.types(), &mut out)
                .map_err(|e| ChainError::Decode {
                    what: "the netuid argument",
                    reason: e.to_string(),
                })?;
        }
        Ok(out)
    }

    /// Fails with the start-up message when `hotkey` (SS58) is not registered on `netuid`;
    /// otherwise returns its neuron.
    pub async fn ensure_registered(
        &self,
        hotkey: &str,
        netuid: u16,
    ) -> Result<NeuronInfo, ChainError> {
        let metagraph = self.fetch_metagraph(netuid).await?;
        registered_neuron(&metagraph, hotkey).cloned()
    }

    /// Publishes the axon's address for the signer's hotkey, unless the chain already has it
    /// (the chain rate-limits `serve_axon`). Waits for inclusion and checks it dispatched.
    pub async fn serve_axon(
        &self,
        signer: &dyn ExtrinsicSigner,
        serve: &ServeAxon,
    ) -> Result<ServeOutcome, ChainError> {
        let metagraph = self.fetch_metagraph(serve.netuid).await?;
        let hotkey = signer.ss58();
        let neuron = registered_neuron(&metagraph, &hotkey)?;
        let wanted = serve.external.to_string();
        if neuron.axon.as_deref() == Some(wanted.as_str()) {
            tracing::info!(axon = %wanted, "axon already served on chain; not serving again");
            return Ok(ServeOutcome::AlreadyServed);
        }
        let (ip, ip_type) = encode_ip(serve.external.ip());
        let call = dynamic::tx(
            SUBTENSOR_PALLET,
            "serve_axon",
            Composite::named([
                ("netuid", Value::u128(u128::from(serve.netuid))),
                ("version", Value::u128(u128::from(serve.version))),
                ("ip", Value::u128(ip)),
                ("port", Value::u128(u128::from(serve.external.port()))),
                ("ip_type", Value::u128(u128::from(ip_type))),
                ("protocol", Value::u128(u128::from(AXON_PROTOCOL))),
                ("placeholder1", Value::u128(0)),
                ("placeholder2", Value::u128(0)),
            ]),
        );
        let block_hash = self.submit("serve_axon", &call, signer).await?;
        tracing::info!(axon = %wanted, block = %block_hash, "axon served on chain");
        Ok(ServeOutcome::Included { block_hash })
    }

    /// Sets the signer's weights on `netuid` (already scaled to `u16`, see
    /// [`crate::weights`]). Waits for inclusion and checks it dispatched; returns the block hash.
    pub async fn set_weights(
        &self,
        signer: &dyn ExtrinsicSigner,
        netuid: u16,
        dests: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<String, ChainError> {
        if dests.len() != weights.len() {
            return Err(ChainError::InvalidArgument(format!(
                "{} dests but {} weights",
                dests.len(),
                weights.len()
            )));
        }
        let list = |items: &[u16]| {
            Value::unnamed_composite(items.iter().map(|&x| Value::u128(u128::from(x))))
        };
        let call = dynamic::tx(
            SUBTENSOR_PALLET,
            "set_weights",
            Composite::named([
                ("netuid", Value::u128(u128::from(netuid))),
                ("dests", list(dests)),
                ("weights", list(weights)),
                ("version_key", Value::u128(u128::from(version_key))),
            ]),
        );
        self.submit("set_weights", &call, signer).await
    }

    /// Signs `call` with the hotkey, submits it, waits until a block includes it, and checks
    /// the block's events for a dispatch failure. Returns the block hash.
    async fn submit(
        &self,
        name: &'static str,
        call: &subxt::tx::DynamicPayload,
        signer: &dyn ExtrinsicSigner,
    ) -> Result<String, ChainError> {
        with_timeout(name, self.call_timeout, async {
            let mut progress = self
                .api
                .tx()
                .sign_and_submit_then_watch_default(call, &SubxtSigner(signer))
                .await
                .map_err(|e| ChainError::Rejected {
                    call: name,
                    reason: e.to_string(),
                })?;
            while let Some(status) = progress.next().await {
                let status = status.map_err(|e| ChainError::rpc(name, e))?;
                match status {
                    TxStatus::InBestBlock(in_block) | TxStatus::InFinalizedBlock(in_block) => {
                        in_block
                            .wait_for_success()
                            .await
                            .map_err(|e| ChainError::Rejected {
                                call: name,
                                reason: e.to_string(),
                            })?;
                        return Ok(format!("{:?}", in_block.block_hash()));
                    }
                    TxStatus::Error { message }
                    | TxStatus::Invalid { message }
                    | TxStatus::Dropped { message } => {
                        return Err(ChainError::Rejected {
                            call: name,
                            reason: message,
                        });
                    }
                    TxStatus::Validated | TxStatus::Broadcasted | TxStatus::NoLongerInBestBlock => {
                    }
                }
            }
            Err(ChainError::Rejected {
                call: name,
                reason: "the node stopped reporting the transaction's progress".into(),
            })
        })
        .await
    }
}

/// The neuron of `hotkey` in `metagraph`, or the start-up error telling to register it.
pub fn registered_neuron<'a>(
    metagraph: &'a Metagraph,
    hotkey: &str,
) -> Result<&'a NeuronInfo, ChainError> {
    metagraph
        .neuron(hotkey)
        .ok_or_else(|| ChainError::NotRegistered {
            hotkey: hotkey.to_string(),
            netuid: metagraph.netuid,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregistered_hotkey_gives_the_startup_message() {
        let neuron = NeuronInfo {
            uid: 4,
            hotkey: "5CfCr47V5Dte6bwxNBE8K9oNnQd9fiay6aDEEkgYtFv7w4Fq".into(),
            coldkey: String::new(),
            stake: 1.0,
            validator_permit: false,
            axon: None,
        };
        let metagraph = Metagraph::new(11, 7, vec![neuron.clone()]);
        assert_eq!(
            registered_neuron(&metagraph, &neuron.hotkey).expect("registered"),
            &neuron
        );
        let err = registered_neuron(
            &metagraph,
            "5H728gLgx4yuCSVEwGCAfLo3RtzTau9F6cTNqNJtrqqjACWq",
        )
        .expect_err("not registered");
        assert_eq!(
            err.to_string(),
            "Your hotkey 5H728gLgx4yuCSVEwGCAfLo3RtzTau9F6cTNqNJtrqqjACWq is not registered on \
             netuid 11. Please register the hotkey using `btcli subnets register` before trying again"
        );
    }
}
