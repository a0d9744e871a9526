//! A loopback subtensor stand-in: a JSON-RPC/WebSocket server on 127.0.0.1 answering the
//! legacy RPC methods subxt's default backend (and bittensor's client) use, with the real
//! finney metadata (spec 365), that behaves like the runtime where the miner can tell:
//!
//! - **blocks** are produced every `block_time` (or on demand); finality follows
//!   `finality_lag` blocks behind the best block. Reads take a block hash and answer from
//!   that block's state; `chain_getFinalizedHead` lags, `chain_getHeader()` is the best.
//! - **nonces** are per account and change only when a block includes a transaction;
//!   `system_accountNextIndex` adds the account's transactions waiting in the pool. A used
//!   nonce is refused in the pool (`1010`/`Transaction is outdated`), one already waiting in
//!   the pool is `1014 Priority is too low`, a gap makes it wait (`future`).
//! - **pool checks** of subtensor's transaction extension at spec 365 (commit bdd42c880,
//!   `transaction_extension.rs`): `serve_axon` runs `validate_serve_axon` (custom codes 10
//!   `HotKeyNotRegisteredInNetwork`, 11 `InvalidIpAddress` — 127.0.0.1, ::1, all-ones —,
//!   12 `ServingRateLimitExceeded`, 13 `InvalidPort`, 255 `BadRequest` for `InvalidIpType`),
//!   `set_weights` the stake threshold (1 `StakeAmountTooLow`); optionally the spec-425 check
//!   of the weights rate limit in the pool (6 `RateLimitExceeded`). Refusals answer the
//!   submission with JSON-RPC error 1010 `Invalid Transaction`, data `Custom error: N`.
//! - **dispatch** of `serve_axon` (stores the axon with its block) and `set_weights` (commit-
//!   reveal → `CommitRevealEnabled`, stake, version key, rate limit, permit, uids; success
//!   sets `LastUpdate`), with `ExtrinsicSuccess`/`ExtrinsicFailed` events per extrinsic.
//! - **storage** the client reads: `ServingRateLimit`, `WeightsSetRateLimit`,
//!   `CommitRevealWeightsEnabled`, `WeightsVersionKey`, `LastUpdate`, `Uids`, `Axons`,
//!   `StakeThreshold`, `System.Events`, `Timestamp.Now` (the host's time when the block was
//!   built, plus [`NodeConfig::clock_offset_ms`]); **runtime APIs** `get_neurons_lite`,
//!   `get_subnet_state`, `AccountNonceApi`.
//!
//! The node models one subnet, answered for whatever netuid is asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::server::{
    PendingSubscriptionSink, RpcModule, Server, ServerHandle, SubscriptionMessage,
};
use jsonrpsee::types::{ErrorObject, ErrorObjectOwned, Params};
use parity_scale_codec::{Compact, Encode};
use scale_info::TypeDef;
use serde_json::{Value as Json, json};
use subxt::config::PolkadotConfig;
use subxt::ext::scale_encode::EncodeAsType;
use subxt::ext::scale_value::{Composite, Primitive, Value, ValueDef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    Choice, METADATA_BYTES, TestNeuron, axon_value, build, encode_neurons, encode_subnet_state,
    metadata,
};

/// Genesis hash of the loopback chain.
pub const GENESIS: [u8; 32] = [0x99; 32];
/// Spec version the loopback runtime reports (the metadata's).
pub const SPEC_VERSION: u32 = 365;
/// Transaction version the loopback runtime reports.
pub const TX_VERSION: u32 = 1;
/// Number of the block the chain starts at (the genesis is block 0 and also exists).
pub const FIRST_HEAD: u32 = 4_000_000;

/// JSON-RPC code of a transaction the pool found invalid.
pub const POOL_INVALID_TX: i32 = 1010;
/// JSON-RPC code of a transaction with the nonce of one already in the pool.
pub const POOL_TOO_LOW_PRIORITY: i32 = 1014;

/// The subnet's hyperparameters (and the chain's stake threshold) the node enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// `ServingRateLimit` (runtime default 50).
    pub serving_rate_limit: u64,
    /// `WeightsSetRateLimit` (default 100).
    pub weights_rate_limit: u64,
    /// `CommitRevealWeightsEnabled` (default true).
    pub commit_reveal: bool,
    /// `WeightsVersionKey` (default 0).
    pub weights_version_key: u64,
    /// `StakeThreshold`, in rao of stake weight (default 0).
    pub stake_threshold: u64,
    /// Check the weights rate limit in the pool too (custom code 6), as spec 425's
    /// `CheckRateLimits` does; spec 365 checks it at dispatch only.
    pub weights_rate_limit_in_pool: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            serving_rate_limit: 50,
            weights_rate_limit: 100,
            commit_reveal: true,
            weights_version_key: 0,
            stake_threshold: 0,
            weights_rate_limit_in_pool: false,
        }
    }
}

/// How the node starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The subnet's neurons.
    pub neurons: Vec<TestNeuron>,
    /// Its rules.
    pub rules: Rules,
    /// Blocks between the best block and the finalized one.
    pub finality_lag: u32,
    /// Time between produced blocks; `None`: only [`NodeState::produce_block`] makes them.
    pub block_time: Option<Duration>,
    /// How far the blocks' author's clock is from this host's, in milliseconds (each
    /// block's `Timestamp.Now` is this host's time when it is built, plus this).
    pub clock_offset_ms: i64,
}

impl NodeConfig {
    /// `neurons` under the runtime's default rules, a block every 20 ms, finality 2 behind.
    pub fn new(neurons: Vec<TestNeuron>) -> Self {
        NodeConfig {
            neurons,
            rules: Rules::default(),
            finality_lag: 2,
            block_time: Some(Duration::from_millis(20)),
            clock_offset_ms: 0,
        }
    }

    /// Like [`NodeConfig::new`], on a subnet where `set_weights` is open: commit-reveal off
    /// (the runtime's default is on, which refuses plain weights).
    pub fn weights_open(neurons: Vec<TestNeuron>) -> Self {
        let mut config = NodeConfig::new(neurons);
        config.rules.commit_reveal = false;
        config
    }
}

/// The runtime state at one block.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub neurons: Vec<TestNeuron>,
    pub rules: Rules,
    pub nonces: HashMap<[u8; 32], u64>,
}

impl Runtime {
    fn nonce(&self, account: &[u8; 32]) -> u64 {
        self.nonces.get(account).copied().unwrap_or(0)
    }

    fn neuron(&self, hotkey: &[u8; 32]) -> Option<&TestNeuron> {
        self.neurons.iter().find(|n| &n.hotkey == hotkey)
    }

    fn neuron_mut(&mut self, hotkey: &[u8; 32]) -> Option<&mut TestNeuron> {
        self.neurons.iter_mut().find(|n| &n.hotkey == hotkey)
    }
}

/// One block of the loopback chain.
#[derive(Debug, Clone)]
pub struct Block {
    pub number: u32,
    pub hash: [u8; 32],
    pub parent: [u8; 32],
    /// Encoded extrinsics (with their length prefix), in order.
    pub extrinsics: Vec<Vec<u8>>,
    /// For each extrinsic, the `SubtensorModule` error its dispatch failed with, if any.
    pub outcomes: Vec<Option<&'static str>>,
    /// Encoded `System.Events`.
    pub events: Vec<u8>,
    /// The state after this block.
    pub state: Arc<Runtime>,
    /// `Timestamp.Now`: when its author built it, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A signed call as the node decodes it.
#[derive(Debug, Clone)]
pub struct Call {
    pub account: [u8; 32],
    pub nonce: u64,
    pub pallet: String,
    pub name: String,
    pub fields: Vec<(String, Value<u32>)>,
}

impl Call {
    fn uint(&self, name: &str) -> u128 {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| unsigned(v))
            .unwrap_or(0)
    }

    fn list(&self, name: &str) -> Vec<u128> {
        match self
            .fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v.value)
        {
            Some(ValueDef::Composite(items)) => items.values().filter_map(unsigned).collect(),
            _ => Vec::new(),
        }
    }
}

fn unsigned<T>(value: &Value<T>) -> Option<u128> {
    match &value.value {
        ValueDef::Primitive(Primitive::U128(n)) => Some(*n),
        ValueDef::Composite(c) if c.len() == 1 => c.values().next().and_then(unsigned),
        _ => None,
    }
}

/// A transaction waiting in the pool.
struct PoolTx {
    bytes: Vec<u8>,
    call: Call,
    updates: mpsc::UnboundedSender<Json>,
}

/// What happened to one submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Refused by the pool: the JSON-RPC error code and data.
    PoolRejected { code: i32, data: String },
    /// Waiting in the pool.
    Pending,
    /// Included in block `number`; `failure` is the dispatch error, if any.
    Included {
        number: u32,
        failure: Option<&'static str>,
    },
    /// Dropped from the pool when a block was built (no longer valid).
    Invalidated { data: String },
}

/// One submission, in order.
#[derive(Debug, Clone)]
pub struct Submission {
    pub bytes: Vec<u8>,
    pub call: Option<Call>,
    pub verdict: Verdict,
}

struct Chain {
    blocks: Vec<Block>,
    pool: Vec<PoolTx>,
    /// Included transactions waiting for finality: (block number, update channel).
    unfinalized: Vec<(u32, mpsc::UnboundedSender<Json>)>,
    submissions: Vec<Submission>,
}

/// What the node knows and has seen.
pub struct NodeState {
    pub metadata: subxt::Metadata,
    pub finality_lag: u32,
    /// [`NodeConfig::clock_offset_ms`], for the blocks built from now on (a test may
    /// change it: the author's clock set right).
    pub clock_offset_ms: AtomicI64,
    chain: Mutex<Chain>,
    /// Netuids asked for by `get_neurons_lite`, in order.
    pub netuids_asked: Mutex<Vec<u16>>,
    /// When set, `get_neurons_lite` answers with an RPC error.
    pub fail_runtime_api: AtomicBool,
    /// `get_neurons_lite` calls.
    pub runtime_api_calls: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn block_hash(number: u32) -> [u8; 32] {
    if number == 0 {
        return GENESIS;
    }
    let mut hash = [0xbb; 32];
    hash[..4].copy_from_slice(&number.to_be_bytes());
    hash
}

/// This host's time plus `offset_ms`, milliseconds since the Unix epoch (a block's
/// `Timestamp.Now`).
fn author_time(offset_ms: i64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    u64::try_from(now + offset_ms).unwrap_or(0)
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn rpc_error(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(-32000, message.into(), None::<()>)
}

fn invalid_tx(data: impl Into<String>) -> (i32, String) {
    (POOL_INVALID_TX, data.into())
}

fn custom(code: u8) -> (i32, String) {
    invalid_tx(format!("Custom error: {code}"))
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim_start_matches("0x"))
        .ok()?
        .try_into()
        .ok()
}

/// subtensor's `is_valid_ip_address(ip_type, addr, allow_zero = true)` (serving.rs).
fn valid_ip(ip_type: u8, ip: u128) -> bool {
    match ip_type {
        4 => ip < u128::from(u32::MAX) && ip != 0x7f00_0001,
        6 => ip != u128::MAX && ip != 1,
        _ => true,
    }
}

impl NodeState {
    fn new(config: &NodeConfig) -> Self {
        let state = Arc::new(Runtime {
            neurons: config.neurons.clone(),
            rules: config.rules.clone(),
            nonces: HashMap::new(),
        });
        let genesis = Block {
            number: 0,
            hash: GENESIS,
            parent: [0; 32],
            extrinsics: Vec::new(),
            outcomes: Vec::new(),
            events: Vec::new(),
            state: Arc::clone(&state),
            timestamp_ms: 0,
        };
        let head = Block {
            number: FIRST_HEAD,
            hash: block_hash(FIRST_HEAD),
            parent: block_hash(FIRST_HEAD - 1),
            extrinsics: Vec::new(),
            outcomes: Vec::new(),
            events: Vec::new(),
            state,
            timestamp_ms: author_time(config.clock_offset_ms),
        };
        NodeState {
            metadata: metadata(),
            finality_lag: config.finality_lag,
            clock_offset_ms: AtomicI64::new(config.clock_offset_ms),
            chain: Mutex::new(Chain {
                blocks: vec![genesis, head],
                pool: Vec::new(),
                unfinalized: Vec::new(),
                submissions: Vec::new(),
            }),
            netuids_asked: Mutex::new(Vec::new()),
            fail_runtime_api: AtomicBool::new(false),
            runtime_api_calls: AtomicUsize::new(0),
        }
    }

    /// Hashes of every block, for signature checks against the mortality checkpoint.
    pub fn block_hashes(&self) -> Vec<[u8; 32]> {
        lock(&self.chain).blocks.iter().map(|b| b.hash).collect()
    }

    /// Every extrinsic submitted, in order, whatever became of it.
    pub fn submitted(&self) -> Vec<Vec<u8>> {
        self.submissions().into_iter().map(|s| s.bytes).collect()
    }

    /// Every submission with its verdict.
    pub fn submissions(&self) -> Vec<Submission> {
        lock(&self.chain).submissions.clone()
    }

    /// The best block's number.
    pub fn best_number(&self) -> u32 {
        self.best().number
    }

    /// The finalized block's number.
    pub fn finalized_number(&self) -> u32 {
        self.finalized().number
    }

    /// The state at the best block.
    pub fn best_state(&self) -> Arc<Runtime> {
        Arc::clone(&self.best().state)
    }

    /// Changes the state of the best block (and so of every block built on it), as if the
    /// change had happened there.
    pub fn modify(&self, change: impl FnOnce(&mut Runtime)) {
        let mut chain = lock(&self.chain);
        let best = chain.blocks.last_mut().expect("the chain has blocks");
        change(Arc::make_mut(&mut best.state));
    }

    /// Replaces the subnet's neurons at the best block.
    pub fn set_neurons(&self, neurons: Vec<TestNeuron>) {
        self.modify(|rt| rt.neurons = neurons);
    }

    fn best(&self) -> Block {
        lock(&self.chain)
            .blocks
            .last()
            .cloned()
            .expect("the chain has blocks")
    }

    fn finalized(&self) -> Block {
        let chain = lock(&self.chain);
        let best = chain.blocks.last().expect("the chain has blocks").number;
        let number = best.saturating_sub(self.finality_lag).max(FIRST_HEAD);
        chain
            .blocks
            .iter()
            .find(|b| b.number == number)
            .cloned()
            .expect("finalized block exists")
    }

    fn block(&self, hash: Option<[u8; 32]>) -> Option<Block> {
        let chain = lock(&self.chain);
        match hash {
            None => chain.blocks.last().cloned(),
            Some(hash) => chain.blocks.iter().find(|b| b.hash == hash).cloned(),
        }
    }

    fn header_json(block: &Block) -> Json {
        json!({
            "parentHash": hex0x(&block.parent),
            "number": format!("0x{:x}", block.number),
            "stateRoot": hex0x(&[0x11; 32]),
            "extrinsicsRoot": hex0x(&[0x22; 32]),
            "digest": { "logs": [] },
        })
    }

    fn runtime_version_json() -> Json {
        json!({
            "specName": "node-subtensor",
            "implName": "node-subtensor",
            "authoringVersion": 1,
            "specVersion": SPEC_VERSION,
            "implVersion": 1,
            "apis": [],
            "transactionVersion": TX_VERSION,
            "stateVersion": 1,
        })
    }

    fn state_call(
        &self,
        method: &str,
        data: &[u8],
        at: Option<[u8; 32]>,
    ) -> Result<Vec<u8>, ErrorObjectOwned> {
        let metadata_version = u32::from(METADATA_BYTES[4]);
        let block = self.block(at).ok_or_else(|| rpc_error("unknown block"))?;
        let state = &block.state;
        let netuid_arg = || -> Result<u16, ErrorObjectOwned> {
            Ok(u16::from_le_bytes(
                data.try_into()
                    .map_err(|_| rpc_error("bad netuid argument"))?,
            ))
        };
        match method {
            "Metadata_metadata_versions" => Ok(vec![14u32, metadata_version].encode()),
            "Metadata_metadata_at_version" => {
                let asked = u32::from_le_bytes(
                    data.try_into()
                        .map_err(|_| rpc_error("bad version argument"))?,
                );
                let answer: Option<Vec<u8>> =
                    (asked == metadata_version).then(|| METADATA_BYTES.to_vec());
                Ok(answer.encode())
            }
            "Metadata_metadata" => Ok(METADATA_BYTES.to_vec().encode()),
            "NeuronInfoRuntimeApi_get_neurons_lite" => {
                self.runtime_api_calls.fetch_add(1, Ordering::SeqCst);
                let netuid = netuid_arg()?;
                lock(&self.netuids_asked).push(netuid);
                if self.fail_runtime_api.load(Ordering::SeqCst) {
                    return Err(rpc_error("loopback node: runtime API unavailable"));
                }
                Ok(encode_neurons(&self.metadata, &state.neurons))
            }
            "SubnetInfoRuntimeApi_get_subnet_state" => {
                let netuid = netuid_arg()?;
                if self.fail_runtime_api.load(Ordering::SeqCst) {
                    return Err(rpc_error("loopback node: runtime API unavailable"));
                }
                Ok(encode_subnet_state(&self.metadata, netuid, &state.neurons))
            }
            "AccountNonceApi_account_nonce" => {
                let account: [u8; 32] = data
                    .try_into()
                    .map_err(|_| rpc_error("bad account argument"))?;
                let ty = self
                    .metadata
                    .runtime_api_trait_by_name("AccountNonceApi")
                    .and_then(|api| api.method_by_name("account_nonce"))
                    .ok_or_else(|| rpc_error("no AccountNonceApi in metadata"))?
                    .output_ty();
                Value::u128(u128::from(state.nonce(&account)))
                    .encode_as_type(ty, self.metadata.types())
                    .map_err(|e| rpc_error(e.to_string()))
            }
            other => Err(rpc_error(format!("loopback node: no runtime API {other}"))),
        }
    }

    /// `SubtensorModule`/`System` storage at block `at`; `None` for absent entries.
    fn storage(&self, key: &[u8], at: Option<[u8; 32]>) -> Result<Option<Vec<u8>>, String> {
        let block = self.block(at).ok_or("unknown block")?;
        let root = |pallet: &str, entry: &str| {
            subxt::ext::subxt_core::storage::get_address_root_bytes(&subxt::dynamic::storage(
                pallet,
                entry,
                (),
            ))
        };
        if key == root("System", "Events") {
            return Ok(Some(block.events.clone()));
        }
        if key == root("Timestamp", "Now") {
            return Ok(Some(block.timestamp_ms.encode()));
        }
        let entry_ty = |entry: &str| -> u32 {
            self.metadata
                .pallet_by_name("SubtensorModule")
                .and_then(|p| p.storage())
                .and_then(|s| s.entry_by_name(entry))
                .expect("storage entry in metadata")
                .entry_type()
                .value_ty()
        };
        let encode = |entry: &str, value: Value| -> Result<Option<Vec<u8>>, String> {
            value
                .encode_as_type(entry_ty(entry), self.metadata.types())
                .map(Some)
                .map_err(|e| e.to_string())
        };
        let state = &block.state;
        let rules = &state.rules;
        if key == root("SubtensorModule", "StakeThreshold") {
            return encode("StakeThreshold", Value::u128(rules.stake_threshold.into()));
        }
        for entry in [
            "ServingRateLimit",
            "WeightsSetRateLimit",
            "CommitRevealWeightsEnabled",
            "WeightsVersionKey",
            "LastUpdate",
            "Uids",
            "Axons",
        ] {
            let prefix = root("SubtensorModule", entry);
            let Some(rest) = key.strip_prefix(prefix.as_slice()) else {
                continue;
            };
            // Identity-hashed netuid (2 bytes), then for double maps a Blake2_128Concat
            // hotkey (16 bytes of hash, then the 32-byte account).
            let hotkey: Option<[u8; 32]> = rest.get(18..50).and_then(|b| b.try_into().ok());
            return match entry {
                "ServingRateLimit" => encode(entry, Value::u128(rules.serving_rate_limit.into())),
                "WeightsSetRateLimit" => {
                    encode(entry, Value::u128(rules.weights_rate_limit.into()))
                }
                "CommitRevealWeightsEnabled" => encode(entry, Value::bool(rules.commit_reveal)),
                "WeightsVersionKey" => encode(entry, Value::u128(rules.weights_version_key.into())),
                "LastUpdate" => {
                    let n = state.neurons.iter().map(|n| n.uid + 1).max().unwrap_or(0);
                    let by_uid = (0..n).map(|uid| {
                        let last = state
                            .neurons
                            .iter()
                            .find(|x| x.uid == uid)
                            .map_or(0, |x| x.last_update);
                        Value::u128(last.into())
                    });
                    encode(entry, Value::unnamed_composite(by_uid))
                }
                "Uids" => match hotkey.and_then(|h| state.neuron(&h)) {
                    Some(n) => encode(entry, Value::u128(n.uid.into())),
                    None => Ok(None),
                },
                _ => match hotkey.and_then(|h| state.neuron(&h)) {
                    Some(n) if n.ip != 0 || n.axon_block != 0 => encode(entry, axon_value(n)),
                    _ => Ok(None),
                },
            };
        }
        Ok(None)
    }

    /// The account's next nonce: its nonce at the best block, then its pool transactions.
    fn next_index(&self, account: &[u8; 32]) -> u64 {
        let chain = lock(&self.chain);
        let best = chain.blocks.last().expect("the chain has blocks");
        let mut next = best.state.nonce(account);
        while chain
            .pool
            .iter()
            .any(|tx| &tx.call.account == account && tx.call.nonce == next)
        {
            next += 1;
        }
        next
    }

    fn decode_call(&self, bytes: &[u8]) -> Result<Call, String> {
        let extrinsics = subxt::ext::subxt_core::blocks::decode_from::<PolkadotConfig>(
            vec![bytes.to_vec()],
            self.metadata.clone(),
        )
        .map_err(|e| e.to_string())?;
        let ext = extrinsics.iter().next().ok_or("no extrinsic")?;
        let address = ext.address_bytes().ok_or("unsigned extrinsic")?;
        let account: [u8; 32] = address
            .get(1..)
            .and_then(|a| a.try_into().ok())
            .ok_or("address is not an account id")?;
        let nonce = ext
            .transaction_extensions()
            .and_then(|e| e.nonce())
            .ok_or("no nonce")?;
        let fields = match ext.field_values().map_err(|e| e.to_string())? {
            Composite::Named(fields) => fields,
            Composite::Unnamed(_) => Vec::new(),
        };
        Ok(Call {
            account,
            nonce,
            pallet: ext.pallet_name().map_err(|e| e.to_string())?.to_string(),
            name: ext.variant_name().map_err(|e| e.to_string())?.to_string(),
            fields,
        })
    }

    /// Subtensor's transaction-extension checks (spec 365), against `state` for a block
    /// numbered `number`: the pool's custom code, or `None` when valid.
    fn extension_check(state: &Runtime, number: u64, call: &Call) -> Option<u8> {
        if call.pallet != "SubtensorModule" {
            return None;
        }
        match call.name.as_str() {
            "serve_axon" => match state.neuron(&call.account) {
                None => Some(10),
                Some(neuron) => {
                    Self::serve_error(state, neuron, number, call).map(|error| match error {
                        "InvalidIpAddress" => 11,
                        "ServingRateLimitExceeded" => 12,
                        "InvalidPort" => 13,
                        _ => 255,
                    })
                }
            },
            "set_weights" => {
                let neuron = state.neuron(&call.account);
                let stake = neuron.map_or(0, TestNeuron::total_stake);
                if stake < state.rules.stake_threshold {
                    return Some(1);
                }
                let rules = &state.rules;
                match neuron {
                    Some(neuron)
                        if rules.weights_rate_limit_in_pool
                            && !rules.commit_reveal
                            && !Self::weights_rate_ok(rules, neuron, number) =>
                    {
                        Some(6)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// `validate_serve_axon` (serving.rs) for a registered hotkey.
    fn serve_error(
        state: &Runtime,
        neuron: &TestNeuron,
        number: u64,
        call: &Call,
    ) -> Option<&'static str> {
        let ip_type = u8::try_from(call.uint("ip_type")).unwrap_or(0);
        if ip_type != 4 && ip_type != 6 {
            return Some("InvalidIpType");
        }
        if !valid_ip(ip_type, call.uint("ip")) {
            return Some("InvalidIpAddress");
        }
        let limit = state.rules.serving_rate_limit;
        let last = neuron.axon_block;
        if !(limit == 0 || last == 0 || number.saturating_sub(last) >= limit) {
            return Some("ServingRateLimitExceeded");
        }
        if call.uint("port") == 0 {
            return Some("InvalidPort");
        }
        None
    }

    fn weights_rate_ok(rules: &Rules, neuron: &TestNeuron, number: u64) -> bool {
        neuron.last_update == 0
            || number.saturating_sub(neuron.last_update) >= rules.weights_rate_limit
    }

    /// Dispatches `call` in block `number`, changing `state`; the pallet error on failure.
    fn dispatch(state: &mut Runtime, number: u64, call: &Call) -> Result<(), &'static str> {
        if call.pallet != "SubtensorModule" {
            return Ok(());
        }
        match call.name.as_str() {
            "serve_axon" => {
                let neuron = state
                    .neuron(&call.account)
                    .ok_or("HotKeyNotRegisteredInNetwork")?;
                if let Some(error) = Self::serve_error(state, neuron, number, call) {
                    return Err(error);
                }
                let neuron = state.neuron_mut(&call.account).ok_or("NotRegistered")?;
                neuron.ip = call.uint("ip");
                neuron.port = u16::try_from(call.uint("port")).unwrap_or(0);
                neuron.ip_type = u8::try_from(call.uint("ip_type")).unwrap_or(0);
                neuron.protocol = u8::try_from(call.uint("protocol")).unwrap_or(0);
                neuron.axon_block = number;
                Ok(())
            }
            "set_weights" => {
                let rules = state.rules.clone();
                // dispatches.rs: set_weights refuses when commit-reveal is on.
                if rules.commit_reveal {
                    return Err("CommitRevealEnabled");
                }
                // weights.rs internal_set_weights, in its order.
                let dests = call.list("dests");
                let weights = call.list("weights");
                if dests.len() != weights.len() {
                    return Err("WeightVecNotEqualSize");
                }
                let neuron = state
                    .neuron(&call.account)
                    .ok_or("HotKeyNotRegisteredInSubNet")?;
                if neuron.total_stake() < rules.stake_threshold {
                    return Err("NotEnoughStakeToSetWeights");
                }
                let key = rules.weights_version_key;
                if !(key == 0 || call.uint("version_key") >= u128::from(key)) {
                    return Err("IncorrectWeightVersionKey");
                }
                if !Self::weights_rate_ok(&rules, neuron, number) {
                    return Err("SettingWeightsTooFast");
                }
                let own = u128::from(neuron.uid);
                let self_weight = weights.len() == 1 && dests.first() == Some(&own);
                if !self_weight && !neuron.validator_permit {
                    return Err("NeuronNoValidatorPermit");
                }
                let mut seen = dests.clone();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() != dests.len() {
                    return Err("DuplicateUids");
                }
                if dests
                    .iter()
                    .any(|d| !state.neurons.iter().any(|n| u128::from(n.uid) == *d))
                {
                    return Err("UidVecContainInvalidOne");
                }
                let neuron = state
                    .neuron_mut(&call.account)
                    .ok_or("HotKeyNotRegisteredInSubNet")?;
                neuron.last_update = number;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Pool admission of `bytes`: `Err((code, data))` when refused, else the decoded call
    /// and whether it waits for an earlier nonce (`future`).
    fn admit(&self, bytes: &[u8]) -> Result<(Call, bool), (i32, String)> {
        let call = self
            .decode_call(bytes)
            .map_err(|e| (1001, format!("Extrinsic has invalid format: {e}")))?;
        let chain = lock(&self.chain);
        let best = chain.blocks.last().expect("the chain has blocks");
        let state = &best.state;
        let nonce = state.nonce(&call.account);
        if call.nonce < nonce {
            return Err(invalid_tx("Transaction is outdated"));
        }
        if chain
            .pool
            .iter()
            .any(|tx| tx.call.account == call.account && tx.call.nonce == call.nonce)
        {
            return Err((
                POOL_TOO_LOW_PRIORITY,
                "Priority is too low: (0 vs 0)".into(),
            ));
        }
        if let Some(code) = Self::extension_check(state, u64::from(best.number) + 1, &call) {
            return Err(custom(code));
        }
        let mut expected = nonce;
        while chain
            .pool
            .iter()
            .any(|tx| tx.call.account == call.account && tx.call.nonce == expected)
        {
            expected += 1;
        }
        let future = call.nonce > expected;
        Ok((call, future))
    }

    fn record(&self, submission: Submission) {
        lock(&self.chain).submissions.push(submission);
    }

    fn set_verdict(chain: &mut Chain, bytes: &[u8], verdict: Verdict) {
        if let Some(s) = chain
            .submissions
            .iter_mut()
            .rev()
            .find(|s| s.bytes == bytes)
        {
            s.verdict = verdict;
        }
    }

    /// Builds the next block: includes every pool transaction whose nonce is due, in order
    /// (re-validating it first), dispatches it, then moves finality.
    pub fn produce_block(&self) {
        let mut chain = lock(&self.chain);
        let parent = chain.blocks.last().expect("the chain has blocks").clone();
        let number = parent.number + 1;
        let mut state = (*parent.state).clone();
        let mut extrinsics = Vec::new();
        let mut outcomes = Vec::new();
        let mut included_updates = Vec::new();
        loop {
            let due = chain
                .pool
                .iter()
                .position(|tx| tx.call.nonce == state.nonce(&tx.call.account));
            let Some(index) = due else { break };
            let tx = chain.pool.remove(index);
            if let Some(code) = Self::extension_check(&state, u64::from(number), &tx.call) {
                let data = format!("Custom error: {code}");
                let _ = tx.updates.send(json!("invalid"));
                Self::set_verdict(&mut chain, &tx.bytes, Verdict::Invalidated { data });
                continue;
            }
            *state.nonces.entry(tx.call.account).or_insert(0) += 1;
            let outcome = Self::dispatch(&mut state, u64::from(number), &tx.call).err();
            Self::set_verdict(
                &mut chain,
                &tx.bytes,
                Verdict::Included {
                    number,
                    failure: outcome,
                },
            );
            extrinsics.push(tx.bytes);
            outcomes.push(outcome);
            included_updates.push(tx.updates);
        }
        // Transactions whose nonce is now used are stale.
        let stale: Vec<usize> = (0..chain.pool.len())
            .filter(|&i| chain.pool[i].call.nonce < state.nonce(&chain.pool[i].call.account))
            .collect();
        for i in stale.into_iter().rev() {
            let tx = chain.pool.remove(i);
            let _ = tx.updates.send(json!("invalid"));
            let data = "Transaction is outdated".to_string();
            Self::set_verdict(&mut chain, &tx.bytes, Verdict::Invalidated { data });
        }
        let events = encode_events(&self.metadata, &outcomes);
        let block = Block {
            number,
            hash: block_hash(number),
            parent: parent.hash,
            extrinsics,
            outcomes,
            events,
            state: Arc::new(state),
            timestamp_ms: author_time(self.clock_offset_ms.load(Ordering::Relaxed)),
        };
        let hash = hex0x(&block.hash);
        chain.blocks.push(block);
        for updates in included_updates {
            let _ = updates.send(json!({ "inBlock": hash }));
            chain.unfinalized.push((number, updates));
        }
        let finalized = number.saturating_sub(self.finality_lag);
        let (done, waiting): (Vec<_>, Vec<_>) = chain
            .unfinalized
            .drain(..)
            .partition(|(n, _)| *n <= finalized);
        chain.unfinalized = waiting;
        for (n, updates) in done {
            let _ = updates.send(json!({ "finalized": hex0x(&block_hash(n)) }));
        }
    }

    /// Produces `n` blocks.
    pub fn produce_blocks(&self, n: u32) {
        for _ in 0..n {
            self.produce_block();
        }
    }
}

/// A running loopback node; stops when dropped.
pub struct LoopbackNode {
    pub url: String,
    pub state: Arc<NodeState>,
    handle: ServerHandle,
    producer: Option<JoinHandle<()>>,
}

impl Drop for LoopbackNode {
    fn drop(&mut self) {
        if let Some(producer) = self.producer.take() {
            producer.abort();
        }
        let _ = self.handle.stop();
    }
}

impl LoopbackNode {
    /// Starts a node on 127.0.0.1 with an ephemeral port, with `neurons` under the default
    /// rules (see [`NodeConfig::new`]).
    pub async fn start(neurons: Vec<TestNeuron>) -> LoopbackNode {
        Self::start_with(NodeConfig::new(neurons)).await
    }

    /// Starts a node with `config`.
    pub async fn start_with(config: NodeConfig) -> LoopbackNode {
        let state = Arc::new(NodeState::new(&config));
        let server = Server::builder()
            .build("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr: SocketAddr = server.local_addr().expect("local address");
        let handle = server.start(module(Arc::clone(&state)));
        let producer = config.block_time.map(|every| {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    state.produce_block();
                }
            })
        });
        LoopbackNode {
            url: format!("ws://{addr}"),
            state,
            handle,
            producer,
        }
    }

    /// Waits (up to `timeout`) until the best block is at least `number`.
    pub async fn wait_for_block(&self, number: u32, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.state.best_number() < number {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node did not reach block {number} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn optional_hash(params: &Params<'_>, index: usize) -> Result<Option<[u8; 32]>, ErrorObjectOwned> {
    let values: Vec<Json> = params.parse().unwrap_or_default();
    match values.get(index) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) => parse_hash(text)
            .map(Some)
            .ok_or_else(|| rpc_error("bad hash")),
        Some(_) => Err(rpc_error("bad hash")),
    }
}

fn module(state: Arc<NodeState>) -> RpcModule<Arc<NodeState>> {
    let mut m = RpcModule::new(state);
    m.register_method("chain_getBlockHash", |params, state, _| {
        let values: Vec<Json> = params.parse().unwrap_or_default();
        let block = match values.first() {
            None | Some(Json::Null) => Some(state.best()),
            Some(n) => {
                let n = n.as_u64().ok_or_else(|| rpc_error("bad number"))?;
                lock(&state.chain)
                    .blocks
                    .iter()
                    .find(|b| u64::from(b.number) == n)
                    .cloned()
            }
        };
        Ok::<_, ErrorObjectOwned>(block.map(|b| hex0x(&b.hash)))
    })
    .expect("register");
    m.register_method("chain_getFinalizedHead", |_, state, _| {
        hex0x(&state.finalized().hash)
    })
    .expect("register");
    m.register_method("chain_getHeader", |params, state, _| {
        let hash = optional_hash(&params, 0)?;
        Ok::<_, ErrorObjectOwned>(state.block(hash).map(|b| NodeState::header_json(&b)))
    })
    .expect("register");
    m.register_method("chain_getBlock", |params, state, _| {
        let hash = optional_hash(&params, 0)?;
        Ok::<_, ErrorObjectOwned>(state.block(hash).map(|b| {
            json!({
                "block": {
                    "header": NodeState::header_json(&b),
                    "extrinsics": b.extrinsics.iter().map(|e| hex0x(e)).collect::<Vec<_>>(),
                },
                "justifications": null,
            })
        }))
    })
    .expect("register");
    m.register_method("state_getRuntimeVersion", |_, _, _| {
        NodeState::runtime_version_json()
    })
    .expect("register");
    m.register_method("state_getMetadata", |_, _, _| hex0x(METADATA_BYTES))
        .expect("register");
    m.register_method("state_call", |params, state, _| {
        let (method, data): (String, String) = {
            let mut seq = params.sequence();
            let method = seq.next::<String>()?;
            let data = seq.next::<String>()?;
            (method, data)
        };
        let at = optional_hash(&params, 2)?;
        let data = hex::decode(data.trim_start_matches("0x")).map_err(|_| rpc_error("bad hex"))?;
        state
            .state_call(&method, &data, at)
            .map(|bytes| hex0x(&bytes))
    })
    .expect("register");
    m.register_method("state_getStorage", |params, state, _| {
        let key: String = params.sequence().next()?;
        let key = hex::decode(key.trim_start_matches("0x")).map_err(|_| rpc_error("bad hex"))?;
        let at = optional_hash(&params, 1)?;
        state
            .storage(&key, at)
            .map(|value| value.map(|bytes| hex0x(&bytes)))
            .map_err(rpc_error)
    })
    .expect("register");
    for name in ["system_accountNextIndex", "account_nextIndex"] {
        m.register_method(name, |params, state, _| {
            let address: String = params.one()?;
            let (account, _) = prompting_keys::ss58::decode(&address)
                .map_err(|e| rpc_error(format!("bad address: {e}")))?;
            Ok::<_, ErrorObjectOwned>(state.next_index(&account))
        })
        .expect("register");
    }
    m.register_subscription(
        "state_subscribeRuntimeVersion",
        "state_runtimeVersion",
        "state_unsubscribeRuntimeVersion",
        |_, pending: PendingSubscriptionSink, _, _| async move {
            let sink = pending.accept().await?;
            sink.send(SubscriptionMessage::from_json(
                &NodeState::runtime_version_json(),
            )?)
            .await?;
            sink.closed().await;
            SubscriptionResult::Ok(())
        },
    )
    .expect("register");
    m.register_subscription(
        "author_submitAndWatchExtrinsic",
        "author_extrinsicUpdate",
        "author_unwatchExtrinsic",
        |params, pending: PendingSubscriptionSink, state, _| async move {
            let Ok(text) = params.one::<String>() else {
                pending
                    .reject(rpc_error("expected one hex extrinsic"))
                    .await;
                return Ok(());
            };
            let Ok(bytes) = hex::decode(text.trim_start_matches("0x")) else {
                pending.reject(rpc_error("bad hex")).await;
                return Ok(());
            };
            let (call, future) = match state.admit(&bytes) {
                Ok(admitted) => admitted,
                Err((code, data)) => {
                    let call = state.decode_call(&bytes).ok();
                    state.record(Submission {
                        bytes,
                        call,
                        verdict: Verdict::PoolRejected {
                            code,
                            data: data.clone(),
                        },
                    });
                    let message = match code {
                        POOL_INVALID_TX => "Invalid Transaction".to_string(),
                        POOL_TOO_LOW_PRIORITY => data.clone(),
                        _ => "Extrinsic has invalid format".to_string(),
                    };
                    pending
                        .reject(ErrorObject::owned(code, message, Some(data)))
                        .await;
                    return Ok(());
                }
            };
            let (updates, mut receiver) = mpsc::unbounded_channel();
            {
                let mut chain = lock(&state.chain);
                chain.submissions.push(Submission {
                    bytes: bytes.clone(),
                    call: Some(call.clone()),
                    verdict: Verdict::Pending,
                });
                chain.pool.push(PoolTx {
                    bytes,
                    call,
                    updates,
                });
            }
            let sink = pending.accept().await?;
            let first = if future { "future" } else { "ready" };
            sink.send(SubscriptionMessage::from_json(&first)?).await?;
            while let Some(update) = receiver.recv().await {
                let last = update.get("finalized").is_some() || update == json!("invalid");
                sink.send(SubscriptionMessage::from_json(&update)?).await?;
                if last {
                    break;
                }
            }
            SubscriptionResult::Ok(())
        },
    )
    .expect("register");
    m
}

/// `System.Events` for a block whose extrinsic `i` succeeded (`outcomes[i] == None`) or
/// failed with the `SubtensorModule` error named `outcomes[i]`.
pub fn encode_events(metadata: &subxt::Metadata, outcomes: &[Option<&'static str>]) -> Vec<u8> {
    let events_ty = metadata
        .pallet_by_name("System")
        .and_then(|p| p.storage())
        .and_then(|s| s.entry_by_name("Events"))
        .expect("System.Events in metadata")
        .entry_type()
        .value_ty();
    let types = metadata.types();
    let TypeDef::Sequence(seq) = &types.resolve(events_ty).expect("events type").type_def else {
        panic!("System.Events is a sequence");
    };
    let pallet = metadata
        .pallet_by_name("SubtensorModule")
        .expect("SubtensorModule");
    let mut out = Compact(u32::try_from(outcomes.len()).expect("few extrinsics")).encode();
    for (index, failure) in outcomes.iter().enumerate() {
        let module_error = failure.map(|name| {
            let variant = pallet
                .error_variants()
                .and_then(|vs| vs.iter().find(|v| v.name == name))
                .unwrap_or_else(|| panic!("SubtensorModule has no error {name}"));
            (pallet.index(), variant.index)
        });
        let index = u128::try_from(index).expect("small index");
        let choose = move |name: &str| match name {
            "Phase" => Choice::Value(Value::variant(
                "ApplyExtrinsic",
                Composite::unnamed([Value::u128(index)]),
            )),
            "RuntimeEvent" => Choice::Variant("System"),
            "Event" => Choice::Variant(if module_error.is_some() {
                "ExtrinsicFailed"
            } else {
                "ExtrinsicSuccess"
            }),
            "DispatchError" => Choice::Variant("Module"),
            "ModuleError" => match module_error {
                Some((pallet, error)) => Choice::Value(Value::named_composite([
                    ("index", Value::u128(u128::from(pallet))),
                    (
                        "error",
                        Value::unnamed_composite(
                            [error, 0, 0, 0]
                                .into_iter()
                                .map(|b| Value::u128(u128::from(b))),
                        ),
                    ),
                ])),
                None => Choice::Default,
            },
            _ => Choice::Default,
        };
        build(seq.type_param.id, types, &choose)
            .encode_as_type_to(seq.type_param.id, types, &mut out)
            .expect("event record encodes");
    }
    out
}
