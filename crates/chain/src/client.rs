//! The `Subtensor` facade: one connection, the reads and writes the miner needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prompting_metagraph::{Metagraph, NeuronInfo};
use subxt::backend::legacy::LegacyRpcMethods;
use subxt::backend::rpc::RpcClient;
use subxt::blocks::BlockRef;
use subxt::config::{DefaultExtrinsicParamsBuilder, PolkadotConfig};
use subxt::ext::scale_encode::EncodeAsType;
use subxt::ext::scale_value::{Composite, Value, ValueDef};
use subxt::tx::TxStatus;
use subxt::utils::{AccountId32, H256};
use subxt::{OnlineClient, dynamic};
use tokio::task::JoinHandle;

use crate::args::SubtensorArgs;
use crate::axon_addr::{encode_ip, unservable_reason};
use crate::error::{ChainError, with_timeout};
use crate::neurons::{
    GET_NEURONS_LITE, GET_SUBNET_STATE, NEURON_INFO_API, SUBNET_INFO_API, decode_neurons_lite,
    decode_subnet_state_stakes, neurons_lite_output_type, subnet_state_output_type,
};
use crate::rejection::Rejection;
use crate::signer::{ExtrinsicSigner, SubxtSigner};

/// The pallet holding subtensor's calls.
pub const SUBTENSOR_PALLET: &str = "SubtensorModule";

/// A storage entry: its pallet and name.
type Entry = (&'static str, &'static str);

/// The `SubtensorModule` entry `name`.
fn subtensor(name: &'static str) -> Entry {
    (SUBTENSOR_PALLET, name)
}

/// `serve_axon`'s `protocol` for an HTTP axon (bittensor's axon protocol 4).
pub const AXON_PROTOCOL: u8 = 4;
/// The axon version published by bittensor 6.4.4 (`__version_as_int__`), which the text-prompting
/// miners ran with.
pub const AXON_VERSION: u32 = 644;

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

    /// Refuses an address subtensor or validators would refuse (see
    /// [`unservable_reason`]), before anything is sent.
    pub fn check(&self) -> Result<(), ChainError> {
        match unservable_reason(self.external) {
            Some(why) => Err(ChainError::UnservableAddress {
                addr: self.external,
                why,
            }),
            None => Ok(()),
        }
    }
}

/// What `serve_axon` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeOutcome {
    /// The chain already had this ip:port for the hotkey; nothing was submitted.
    AlreadyServed,
    /// The address differs, but the hotkey served less than `ServingRateLimit` blocks ago:
    /// nothing was submitted (the pool would refuse it with `ServingRateLimitExceeded`).
    RateLimited {
        /// The best block when checked.
        best: u64,
        /// The first block that may include a new `serve_axon`.
        allowed_at: u64,
    },
    /// The transaction was included in the block with this hash (hex).
    Included {
        /// Hash of the including block, `0x`-prefixed hex.
        block_hash: String,
    },
}

/// What [`Subtensor::set_own_weights`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsOutcome {
    /// The subnet has commit-reveal on (`CommitRevealWeightsEnabled`): plain `set_weights`
    /// is refused there (`CommitRevealEnabled`), so nothing was submitted.
    CommitReveal,
    /// The hotkey set weights less than `WeightsSetRateLimit` blocks ago: nothing was
    /// submitted (the chain would refuse it with `SettingWeightsTooFast`).
    TooEarly {
        /// The best block when checked.
        best: u64,
        /// The first block that may include `set_weights`.
        allowed_at: u64,
    },
    /// Included in a block.
    Set {
        /// Hash of the including block, `0x`-prefixed hex.
        block_hash: String,
        /// The `version_key` sent.
        version_key: u64,
        /// The uid the weight was put on (the miner's own).
        uid: u16,
    },
}

/// A block of the best chain (the node's head, possibly not finalized yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BestBlock {
    /// Its number.
    pub number: u64,
    /// Its hash.
    pub hash: H256,
}

/// The subnet's hyperparameters that decide whether the miner's writes can succeed, read
/// from `SubtensorModule` storage (the names bittensor's `get_hyperparameter` reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetRules {
    /// `ServingRateLimit`: blocks between two `serve_axon` of one hotkey (0: none).
    pub serving_rate_limit: u64,
    /// `WeightsSetRateLimit`: blocks between two `set_weights` of one uid (0: none).
    pub weights_rate_limit: u64,
    /// `CommitRevealWeightsEnabled`: plain `set_weights` is refused when on.
    pub commit_reveal_weights: bool,
    /// `WeightsVersionKey`: the lowest `version_key` `set_weights` accepts (0: any).
    pub weights_version_key: u64,
}

/// The hotkey's own entries on the subnet, read from storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnNeuron {
    /// `Uids`: its uid.
    pub uid: u16,
    /// `LastUpdate[uid]`: the block of its last weights (0: never).
    pub last_update: u64,
    /// `Axons`: what it has published, if anything.
    pub axon: Option<AxonOnChain>,
}

/// An `AxonInfo` as stored on chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxonOnChain {
    /// Block of the last `serve_axon`.
    pub block: u64,
    /// The ip, as the chain encodes it.
    pub ip: u128,
    /// 4 or 6.
    pub ip_type: u8,
    /// The port.
    pub port: u16,
    /// The axon protocol.
    pub protocol: u8,
}

impl AxonOnChain {
    /// Whether this entry publishes `addr` with `protocol` (IPv4-mapped IPv6 addresses
    /// compare as the IPv4 address they are published as).
    pub fn publishes(&self, addr: SocketAddr, protocol: u8) -> bool {
        let (ip, ip_type) = encode_ip(addr.ip());
        self.ip == ip
            && self.ip_type == ip_type
            && self.port == addr.port()
            && self.protocol == protocol
    }
}

/// The first block that may include a call limited to one per `limit` blocks, given the last
/// one was included in block `last`, or `None` when nothing limits it: subtensor lets it
/// through when `limit == 0`, `last == 0` (never) or `current - last >= limit`, where
/// `current` is the block executing it.
pub fn next_allowed_block(last: u64, limit: u64) -> Option<u64> {
    (limit > 0 && last > 0).then(|| last.saturating_add(limit))
}

/// Whether a transaction sent when the best block is `best` can execute at `allowed_at` or
/// later: the earliest block that can include it is `best + 1` (the pool also validates
/// against `best + 1`).
fn allowed_now(best: u64, allowed_at: Option<u64>) -> bool {
    allowed_at.is_none_or(|at| best.saturating_add(1) >= at)
}

/// A connection to a subtensor node.
#[derive(Clone)]
pub struct Subtensor {
    api: OnlineClient<PolkadotConfig>,
    rpc: LegacyRpcMethods<PolkadotConfig>,
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
        let connect_error = |e: &dyn std::fmt::Display| ChainError::Connect {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        };
        let (api, rpc) = with_timeout("connecting to subtensor", connect_timeout, async {
            let client = RpcClient::from_insecure_url(endpoint)
                .await
                .map_err(|e| connect_error(&e))?;
            let api = OnlineClient::<PolkadotConfig>::from_rpc_client(client.clone())
                .await
                .map_err(|e| connect_error(&e))?;
            Ok((api, LegacyRpcMethods::new(client)))
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
            rpc,
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
    ///
    /// Neurons come from `NeuronInfoRuntimeApi.get_neurons_lite`; their `stake` is then
    /// replaced by `SubnetInfoRuntimeApi.get_subnet_state`'s stake weight at the same block
    /// when the runtime has it (see [`decode_subnet_state_stakes`] and `docs/chain.md`).
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
            let args = self.encode_netuid_arg(NEURON_INFO_API, GET_NEURONS_LITE, netuid)?;
            let runtime_api = self.api.runtime_api().at(block.reference());
            let bytes = runtime_api
                .call_raw(
                    &format!("{NEURON_INFO_API}_{GET_NEURONS_LITE}"),
                    Some(&args),
                )
                .await
                .map_err(|e| ChainError::rpc("NeuronInfoRuntimeApi.get_neurons_lite", e))?;
            let mut neurons = decode_neurons_lite(metadata.types(), output_ty, &bytes)?;
            if let Some(state_ty) = subnet_state_output_type(&metadata) {
                let args = self.encode_netuid_arg(SUBNET_INFO_API, GET_SUBNET_STATE, netuid)?;
                let bytes = runtime_api
                    .call_raw(
                        &format!("{SUBNET_INFO_API}_{GET_SUBNET_STATE}"),
                        Some(&args),
                    )
                    .await
                    .map_err(|e| ChainError::rpc("SubnetInfoRuntimeApi.get_subnet_state", e))?;
                if let Some(stakes) =
                    decode_subnet_state_stakes(metadata.types(), state_ty, &bytes, netuid)?
                {
                    apply_stake_weights(&mut neurons, &stakes);
                }
            }
            Ok(Metagraph::new(netuid, u64::from(block.number()), neurons))
        })
        .await
    }

    /// `netuid` encoded as the runtime API method's parameter type says (a `u16` or a
    /// wrapper of it).
    fn encode_netuid_arg(
        &self,
        api: &str,
        method_name: &str,
        netuid: u16,
    ) -> Result<Vec<u8>, ChainError> {
        let metadata = self.api.metadata();
        let method = metadata
            .runtime_api_trait_by_name(api)
            .and_then(|trait_| trait_.method_by_name(method_name))
            .ok_or_else(|| ChainError::MissingInMetadata(format!("method {api}.{method_name}")))?;
        let mut out = Vec::new();
        for input in method.inputs() {
            if input.name != "netuid" {
                return Err(ChainError::MissingInMetadata(format!(
                    "{method_name} taking only a netuid (it also takes `{}`)",
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

    /// The node's best block (its head, which finality follows a few blocks behind).
    pub async fn best_block(&self) -> Result<BestBlock, ChainError> {
        with_timeout("reading the best block", self.call_timeout, async {
            let hash = self
                .rpc
                .chain_get_block_hash(None)
                .await
                .map_err(|e| ChainError::rpc("chain_getBlockHash", e))?
                .ok_or_else(|| ChainError::rpc("chain_getBlockHash", "the node has no head"))?;
            let header = self
                .rpc
                .chain_get_header(Some(hash))
                .await
                .map_err(|e| ChainError::rpc("chain_getHeader", e))?
                .ok_or_else(|| ChainError::rpc("chain_getHeader", "no header for the head"))?;
            Ok(BestBlock {
                number: u64::from(header.number),
                hash,
            })
        })
        .await
    }

    /// The time block `at` was built at, as its author set it (`Timestamp.Now`,
    /// milliseconds since the Unix epoch).
    pub async fn block_time(&self, at: H256) -> Result<u64, ChainError> {
        with_timeout(
            "reading the block's time",
            self.call_timeout,
            self.storage_uint(at, ("Timestamp", "Now"), Vec::new()),
        )
        .await
    }

    /// The host's clock against the best block's time: `(skew in ms, block number)` (see
    /// [`crate::clock::skew_ms`]).
    pub async fn clock_skew(&self) -> Result<(i128, u64), ChainError> {
        let best = self.best_block().await?;
        let chain_ms = self.block_time(best.hash).await?;
        Ok((
            crate::clock::skew_ms(std::time::SystemTime::now(), chain_ms),
            best.number,
        ))
    }

    /// Reads `{pallet}.{name}(keys)` at `at`, or its default.
    async fn storage_value(
        &self,
        at: H256,
        (pallet, name): Entry,
        keys: Vec<Value>,
    ) -> Result<Value<u32>, ChainError> {
        let address = dynamic::storage(pallet, name, keys);
        let thunk = self
            .api
            .storage()
            .at(BlockRef::from_hash(at))
            .fetch_or_default(&address)
            .await
            .map_err(|e| ChainError::rpc("reading storage", format!("{pallet}.{name}: {e}")))?;
        thunk.to_value().map_err(|e| ChainError::Decode {
            what: "a storage value",
            reason: format!("{pallet}.{name}: {e}"),
        })
    }

    /// Reads the optional `{pallet}.{name}(keys)` at `at` (`None`: absent).
    async fn storage_option(
        &self,
        at: H256,
        (pallet, name): Entry,
        keys: Vec<Value>,
    ) -> Result<Option<Value<u32>>, ChainError> {
        let address = dynamic::storage(pallet, name, keys);
        let thunk = self
            .api
            .storage()
            .at(BlockRef::from_hash(at))
            .fetch(&address)
            .await
            .map_err(|e| ChainError::rpc("reading storage", format!("{pallet}.{name}: {e}")))?;
        thunk
            .map(|thunk| {
                thunk.to_value().map_err(|e| ChainError::Decode {
                    what: "a storage value",
                    reason: format!("{pallet}.{name}: {e}"),
                })
            })
            .transpose()
    }

    /// Reads `{pallet}.{name}(keys)` at `at` as an unsigned integer.
    async fn storage_uint(
        &self,
        at: H256,
        entry: Entry,
        keys: Vec<Value>,
    ) -> Result<u64, ChainError> {
        let value = self.storage_value(at, entry, keys).await?;
        crate::neurons::unsigned(&value)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or(ChainError::FieldType {
                ty: entry.0,
                field: entry.1,
                expected: "a u64",
            })
    }

    /// The subnet's serving and weights hyperparameters at block `at`.
    pub async fn subnet_rules(&self, netuid: u16, at: H256) -> Result<SubnetRules, ChainError> {
        with_timeout(
            "reading the subnet's hyperparameters",
            self.call_timeout,
            async {
                let key = || vec![Value::u128(u128::from(netuid))];
                let commit_reveal = self
                    .storage_value(at, subtensor("CommitRevealWeightsEnabled"), key())
                    .await?;
                let commit_reveal_weights = match commit_reveal.value {
                    ValueDef::Primitive(subxt::ext::scale_value::Primitive::Bool(b)) => b,
                    _ => {
                        return Err(ChainError::FieldType {
                            ty: SUBTENSOR_PALLET,
                            field: "CommitRevealWeightsEnabled",
                            expected: "a bool",
                        });
                    }
                };
                Ok(SubnetRules {
                    serving_rate_limit: self
                        .storage_uint(at, subtensor("ServingRateLimit"), key())
                        .await?,
                    weights_rate_limit: self
                        .storage_uint(at, subtensor("WeightsSetRateLimit"), key())
                        .await?,
                    commit_reveal_weights,
                    weights_version_key: self
                        .storage_uint(at, subtensor("WeightsVersionKey"), key())
                        .await?,
                })
            },
        )
        .await
    }

    /// The hotkey's uid, last weights block and published axon on `netuid` at block `at`,
    /// or `None` when it is not registered there.
    pub async fn own_neuron(
        &self,
        netuid: u16,
        hotkey: [u8; 32],
        at: H256,
    ) -> Result<Option<OwnNeuron>, ChainError> {
        with_timeout("reading the hotkey's neuron", self.call_timeout, async {
            let keys = || vec![Value::u128(u128::from(netuid)), Value::from_bytes(hotkey)];
            let Some(uid) = self.storage_option(at, subtensor("Uids"), keys()).await? else {
                return Ok(None);
            };
            let uid = crate::neurons::unsigned(&uid)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or(ChainError::FieldType {
                    ty: SUBTENSOR_PALLET,
                    field: "Uids",
                    expected: "a u16",
                })?;
            let last_updates = self
                .storage_value(
                    at,
                    subtensor("LastUpdate"),
                    vec![Value::u128(u128::from(netuid))],
                )
                .await?;
            let last_update = match &last_updates.value {
                ValueDef::Composite(items) => items
                    .values()
                    .nth(usize::from(uid))
                    .and_then(crate::neurons::unsigned)
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                _ => {
                    return Err(ChainError::FieldType {
                        ty: SUBTENSOR_PALLET,
                        field: "LastUpdate",
                        expected: "a list of blocks",
                    });
                }
            };
            let axon = self.storage_option(at, subtensor("Axons"), keys()).await?;
            let axon = axon.as_ref().map(axon_on_chain).transpose()?;
            Ok(Some(OwnNeuron {
                uid,
                last_update,
                axon,
            }))
        })
        .await
    }

    /// Publishes the axon's address for the signer's hotkey, unless the chain already has it.
    ///
    /// Before sending, checked against the chain's own rules at the best block: an address
    /// subtensor refuses ([`ServeAxon::check`]) is an error; an unregistered hotkey is
    /// [`ChainError::NotRegistered`]; the same ip:port is [`ServeOutcome::AlreadyServed`];
    /// a hotkey that served less than `ServingRateLimit` blocks ago gets
    /// [`ServeOutcome::RateLimited`] with the block it may serve at. Otherwise submits and
    /// waits for inclusion in a best block, checking that it dispatched.
    pub async fn serve_axon(
        &self,
        signer: &dyn ExtrinsicSigner,
        serve: &ServeAxon,
    ) -> Result<ServeOutcome, ChainError> {
        serve.check()?;
        let best = self.best_block().await?;
        let hotkey = signer.ss58();
        let own = self
            .own_neuron(serve.netuid, signer.account(), best.hash)
            .await?
            .ok_or_else(|| ChainError::NotRegistered {
                hotkey: hotkey.clone(),
                netuid: serve.netuid,
            })?;
        let wanted = serve.external;
        if let Some(axon) = own.axon {
            if axon.publishes(wanted, AXON_PROTOCOL) {
                tracing::info!(axon = %wanted, "axon already served on chain; not serving again");
                return Ok(ServeOutcome::AlreadyServed);
            }
            let rules = self.subnet_rules(serve.netuid, best.hash).await?;
            let allowed_at = next_allowed_block(axon.block, rules.serving_rate_limit);
            if !allowed_now(best.number, allowed_at) {
                let allowed_at = allowed_at.unwrap_or(best.number);
                return Ok(ServeOutcome::RateLimited {
                    best: best.number,
                    allowed_at,
                });
            }
        }
        let (ip, ip_type) = encode_ip(wanted.ip());
        let call = dynamic::tx(
            SUBTENSOR_PALLET,
            "serve_axon",
            Composite::named([
                ("netuid", Value::u128(u128::from(serve.netuid))),
                ("version", Value::u128(u128::from(serve.version))),
                ("ip", Value::u128(ip)),
                ("port", Value::u128(u128::from(wanted.port()))),
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

    /// Puts all of the signer's weight on its own uid on `netuid`, if the subnet lets a plain
    /// `set_weights` through now: reads the hyperparameters at the best block first, and
    /// skips (without sending) when commit-reveal is on or the hotkey set weights less than
    /// `WeightsSetRateLimit` blocks ago. `version_key` overrides the subnet's
    /// `WeightsVersionKey`.
    pub async fn set_own_weights(
        &self,
        signer: &dyn ExtrinsicSigner,
        netuid: u16,
        version_key: Option<u64>,
    ) -> Result<WeightsOutcome, ChainError> {
        let best = self.best_block().await?;
        let rules = self.subnet_rules(netuid, best.hash).await?;
        if rules.commit_reveal_weights {
            return Ok(WeightsOutcome::CommitReveal);
        }
        let own = self
            .own_neuron(netuid, signer.account(), best.hash)
            .await?
            .ok_or_else(|| ChainError::NotRegistered {
                hotkey: signer.ss58(),
                netuid,
            })?;
        let allowed_at = next_allowed_block(own.last_update, rules.weights_rate_limit);
        if !allowed_now(best.number, allowed_at) {
            return Ok(WeightsOutcome::TooEarly {
                best: best.number,
                allowed_at: allowed_at.unwrap_or(best.number),
            });
        }
        let version_key = version_key.unwrap_or(rules.weights_version_key);
        let (dests, weights) = crate::weights::self_weights(own.uid);
        let block_hash = self
            .set_weights(signer, netuid, &dests, &weights, version_key)
            .await?;
        Ok(WeightsOutcome::Set {
            block_hash,
            version_key,
            uid: own.uid,
        })
    }

    /// Sets the signer's weights on `netuid` (already scaled to `u16`, see
    /// [`crate::weights`]). Waits for inclusion and checks it dispatched; returns the block hash.
    /// Sends as is: see [`Subtensor::set_own_weights`] for the checks the chain would make.
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

    /// The signer's next nonce as the node sees it: its nonce at the best block plus its
    /// transactions already in the pool (`system_accountNextIndex`, what bittensor's
    /// `get_account_next_index` asks). subxt's default reads the nonce at the finalized
    /// block, which lags a few blocks behind inclusion and so reuses the nonce of a
    /// transaction that was just included ("Transaction is outdated").
    pub async fn next_nonce(&self, signer: &dyn ExtrinsicSigner) -> Result<u64, ChainError> {
        with_timeout(
            "reading the account's next nonce",
            self.call_timeout,
            async {
                self.rpc
                    .system_account_next_index(&AccountId32(signer.account()))
                    .await
                    .map_err(|e| ChainError::rpc("system_accountNextIndex", e))
            },
        )
        .await
    }

    /// Signs `call` with the hotkey (nonce from [`Subtensor::next_nonce`], mortal for 32
    /// blocks from the finalized head), submits it, waits until a block includes it, and
    /// checks the block's events for a dispatch failure. Returns the block hash.
    async fn submit(
        &self,
        name: &'static str,
        call: &subxt::tx::DynamicPayload,
        signer: &dyn ExtrinsicSigner,
    ) -> Result<String, ChainError> {
        let nonce = self.next_nonce(signer).await?;
        with_timeout(name, self.call_timeout, async {
            let rejected = |reason: Rejection| ChainError::Rejected { call: name, reason };
            let params = DefaultExtrinsicParamsBuilder::<PolkadotConfig>::new()
                .nonce(nonce)
                .build();
            let mut progress = self
                .api
                .tx()
                .sign_and_submit_then_watch(call, &SubxtSigner(signer), params)
                .await
                .map_err(|e| rejected(Rejection::from_subxt(&e)))?;
            while let Some(status) = progress.next().await {
                let status = status.map_err(|e| ChainError::rpc(name, e))?;
                match status {
                    TxStatus::InBestBlock(in_block) | TxStatus::InFinalizedBlock(in_block) => {
                        in_block
                            .wait_for_success()
                            .await
                            .map_err(|e| rejected(Rejection::from_subxt(&e)))?;
                        return Ok(format!("{:?}", in_block.block_hash()));
                    }
                    TxStatus::Error { message }
                    | TxStatus::Invalid { message }
                    | TxStatus::Dropped { message } => {
                        return Err(rejected(Rejection::Other(message)));
                    }
                    TxStatus::Validated | TxStatus::Broadcasted | TxStatus::NoLongerInBestBlock => {
                    }
                }
            }
            Err(rejected(Rejection::Other(
                "the node stopped reporting the transaction's progress".into(),
            )))
        })
        .await
    }
}

/// Replaces each neuron's stake by its stake weight from `get_subnet_state`.
fn apply_stake_weights(neurons: &mut [NeuronInfo], stakes: &[(String, f64)]) {
    let by_hotkey: std::collections::HashMap<&str, f64> =
        stakes.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    for neuron in neurons {
        if let Some(stake) = by_hotkey.get(neuron.hotkey.as_str()) {
            neuron.stake = *stake;
        }
    }
}

/// Reads a decoded `AxonInfo` by field name.
fn axon_on_chain<T>(value: &Value<T>) -> Result<AxonOnChain, ChainError> {
    use crate::neurons::{named, uint};
    const AXON: &str = "AxonInfo";
    let fields = named(value, AXON)?;
    let narrow = |field: &'static str, expected: &'static str| ChainError::FieldType {
        ty: AXON,
        field,
        expected,
    };
    Ok(AxonOnChain {
        block: u64::try_from(uint(fields, AXON, "block")?).map_err(|_| narrow("block", "a u64"))?,
        ip: uint(fields, AXON, "ip")?,
        ip_type: u8::try_from(uint(fields, AXON, "ip_type")?)
            .map_err(|_| narrow("ip_type", "a u8"))?,
        port: u16::try_from(uint(fields, AXON, "port")?).map_err(|_| narrow("port", "a u16"))?,
        protocol: u8::try_from(uint(fields, AXON, "protocol")?)
            .map_err(|_| narrow("protocol", "a u8"))?,
    })
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
            ..NeuronInfo::default()
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

    #[test]
    fn rate_limits_follow_the_chain_rule() {
        // Never served / no limit: always allowed.
        assert_eq!(next_allowed_block(0, 50), None);
        assert_eq!(next_allowed_block(10, 0), None);
        assert!(allowed_now(11, None));
        // Served at 100 with a limit of 50: block 150 may include the next one, so a
        // transaction sent on top of best block 149 passes and one on top of 148 does not.
        assert_eq!(next_allowed_block(100, 50), Some(150));
        assert!(allowed_now(149, Some(150)));
        assert!(!allowed_now(148, Some(150)));
        // The 100-block epoch on the 100-block weights limit: one block short is refused.
        assert!(!allowed_now(1098, next_allowed_block(1000, 100)));
        assert!(allowed_now(1099, next_allowed_block(1000, 100)));
    }

    #[test]
    fn mapped_ipv4_compares_as_published() {
        let on_chain = AxonOnChain {
            block: 7,
            ip: 0xcb00_7105,
            ip_type: 4,
            port: 8091,
            protocol: AXON_PROTOCOL,
        };
        let mapped: SocketAddr = "[::ffff:203.0.113.5]:8091".parse().expect("literal");
        let plain: SocketAddr = "203.0.113.5:8091".parse().expect("literal");
        assert!(on_chain.publishes(mapped, AXON_PROTOCOL));
        assert!(on_chain.publishes(plain, AXON_PROTOCOL));
        assert!(!on_chain.publishes("203.0.113.5:8092".parse().expect("literal"), 4));
        assert!(!on_chain.publishes(plain, 0));
    }
}
