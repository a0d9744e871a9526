//! A loopback subtensor stand-in: a JSON-RPC/WebSocket server on 127.0.0.1 answering the
//! legacy RPC methods subxt's default backend uses, with the real finney metadata.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::server::{
    PendingSubscriptionSink, RpcModule, Server, ServerHandle, SubscriptionMessage,
};
use jsonrpsee::types::{ErrorObject, ErrorObjectOwned, Params};
use parity_scale_codec::{Compact, Encode};
use scale_info::{PortableRegistry, TypeDef};
use serde_json::{Value as Json, json};
use subxt::ext::scale_encode::EncodeAsType;
use subxt::ext::scale_value::{Composite, Value, ValueDef};

use super::{METADATA_BYTES, metadata};

/// Genesis hash of the loopback chain.
pub const GENESIS: [u8; 32] = [0x99; 32];
/// Spec version the loopback runtime reports.
pub const SPEC_VERSION: u32 = 325;
/// Transaction version the loopback runtime reports.
pub const TX_VERSION: u32 = 1;
/// Number of the block the chain starts at (the genesis is block 0 and also exists).
pub const FIRST_HEAD: u32 = 4_000_000;

/// One block of the loopback chain.
#[derive(Debug, Clone)]
pub struct Block {
    pub number: u32,
    pub hash: [u8; 32],
    pub parent: [u8; 32],
    /// Encoded extrinsics (with their length prefix), as submitted.
    pub extrinsics: Vec<Vec<u8>>,
    /// Encoded `System.Events`.
    pub events: Vec<u8>,
}

/// What the node knows and has seen.
pub struct NodeState {
    pub metadata: subxt::Metadata,
    /// The `get_neurons_lite` answer (SCALE) served for any netuid.
    pub neurons_lite: Mutex<Vec<u8>>,
    /// Netuids asked for, in order.
    pub netuids_asked: Mutex<Vec<u16>>,
    /// When set, `get_neurons_lite` answers with an RPC error.
    pub fail_runtime_api: AtomicBool,
    /// When set, the next included extrinsic fails with this `SubtensorModule` error.
    pub fail_next_extrinsic: Mutex<Option<&'static str>>,
    /// Every extrinsic submitted, encoded with its length prefix.
    pub submitted: Mutex<Vec<Vec<u8>>>,
    pub blocks: Mutex<Vec<Block>>,
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

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn rpc_error(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(-32000, message.into(), None::<()>)
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim_start_matches("0x"))
        .ok()?
        .try_into()
        .ok()
}

impl NodeState {
    fn new(neurons_lite: Vec<u8>) -> Self {
        let genesis = Block {
            number: 0,
            hash: GENESIS,
            parent: [0; 32],
            extrinsics: Vec::new(),
            events: Vec::new(),
        };
        let head = Block {
            number: FIRST_HEAD,
            hash: block_hash(FIRST_HEAD),
            parent: block_hash(FIRST_HEAD - 1),
            extrinsics: Vec::new(),
            events: Vec::new(),
        };
        NodeState {
            metadata: metadata(),
            neurons_lite: Mutex::new(neurons_lite),
            netuids_asked: Mutex::new(Vec::new()),
            fail_runtime_api: AtomicBool::new(false),
            fail_next_extrinsic: Mutex::new(None),
            submitted: Mutex::new(Vec::new()),
            blocks: Mutex::new(vec![genesis, head]),
            runtime_api_calls: AtomicUsize::new(0),
        }
    }

    /// Hashes of every block, for signature checks against the mortality checkpoint.
    pub fn block_hashes(&self) -> Vec<[u8; 32]> {
        lock(&self.blocks).iter().map(|b| b.hash).collect()
    }

    pub fn submitted(&self) -> Vec<Vec<u8>> {
        lock(&self.submitted).clone()
    }

    pub fn set_neurons_lite(&self, bytes: Vec<u8>) {
        *lock(&self.neurons_lite) = bytes;
    }

    fn head(&self) -> Block {
        lock(&self.blocks)
            .last()
            .cloned()
            .expect("the chain has blocks")
    }

    fn block(&self, hash: Option<[u8; 32]>) -> Option<Block> {
        let blocks = lock(&self.blocks);
        match hash {
            None => blocks.last().cloned(),
            Some(hash) => blocks.iter().find(|b| b.hash == hash).cloned(),
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

    fn state_call(&self, method: &str, data: &[u8]) -> Result<Vec<u8>, ErrorObjectOwned> {
        let metadata_version = u32::from(METADATA_BYTES[4]);
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
                let netuid = u16::from_le_bytes(
                    data.try_into()
                        .map_err(|_| rpc_error("bad netuid argument"))?,
                );
                lock(&self.netuids_asked).push(netuid);
                if self.fail_runtime_api.load(Ordering::SeqCst) {
                    return Err(rpc_error("loopback node: runtime API unavailable"));
                }
                Ok(lock(&self.neurons_lite).clone())
            }
            "AccountNonceApi_account_nonce" => {
                let account: [u8; 32] = data
                    .try_into()
                    .map_err(|_| rpc_error("bad account argument"))?;
                let nonce = self.nonce_of(&account);
                let ty = self
                    .metadata
                    .runtime_api_trait_by_name("AccountNonceApi")
                    .and_then(|api| api.method_by_name("account_nonce"))
                    .ok_or_else(|| rpc_error("no AccountNonceApi in metadata"))?
                    .output_ty();
                Value::u128(u128::from(nonce))
                    .encode_as_type(ty, self.metadata.types())
                    .map_err(|e| rpc_error(e.to_string()))
            }
            other => Err(rpc_error(format!("loopback node: no runtime API {other}"))),
        }
    }

    /// Signed extrinsics submitted by `account` so far (its next nonce).
    fn nonce_of(&self, account: &[u8; 32]) -> u64 {
        let submitted = lock(&self.submitted);
        let from_account = submitted.iter().filter(|bytes| {
            subxt::ext::subxt_core::blocks::decode_from::<subxt::config::PolkadotConfig>(
                vec![bytes.to_vec()],
                self.metadata.clone(),
            )
            .ok()
            .and_then(|exts| exts.iter().next())
            .and_then(|ext| {
                ext.address_bytes()
                    .map(|a| a.get(1..) == Some(&account[..]))
            })
            .unwrap_or(false)
        });
        from_account.count() as u64
    }

    /// Includes `extrinsic` in a new block, with a success or failure event for it.
    fn include(&self, extrinsic: Vec<u8>) -> [u8; 32] {
        lock(&self.submitted).push(extrinsic.clone());
        let failure = lock(&self.fail_next_extrinsic).take();
        let events = encode_events(&self.metadata, failure);
        let mut blocks = lock(&self.blocks);
        let parent = blocks.last().expect("the chain has blocks").clone();
        let number = parent.number + 1;
        let block = Block {
            number,
            hash: block_hash(number),
            parent: parent.hash,
            extrinsics: vec![extrinsic],
            events,
        };
        let hash = block.hash;
        blocks.push(block);
        hash
    }
}

/// A running loopback node; stops when dropped.
pub struct LoopbackNode {
    pub url: String,
    pub state: Arc<NodeState>,
    handle: ServerHandle,
}

impl Drop for LoopbackNode {
    fn drop(&mut self) {
        let _ = self.handle.stop();
    }
}

impl LoopbackNode {
    /// Starts a node on 127.0.0.1 with an ephemeral port, serving `neurons_lite`.
    pub async fn start(neurons_lite: Vec<u8>) -> LoopbackNode {
        let state = Arc::new(NodeState::new(neurons_lite));
        let server = Server::builder()
            .build("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr: SocketAddr = server.local_addr().expect("local address");
        let handle = server.start(module(Arc::clone(&state)));
        LoopbackNode {
            url: format!("ws://{addr}"),
            state,
            handle,
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
            None | Some(Json::Null) => Some(state.head()),
            Some(n) => {
                let n = n.as_u64().ok_or_else(|| rpc_error("bad number"))?;
                lock(&state.blocks)
                    .iter()
                    .find(|b| u64::from(b.number) == n)
                    .cloned()
            }
        };
        Ok::<_, ErrorObjectOwned>(block.map(|b| hex0x(&b.hash)))
    })
    .expect("register");
    m.register_method("chain_getFinalizedHead", |_, state, _| {
        hex0x(&state.head().hash)
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
        let data = hex::decode(data.trim_start_matches("0x")).map_err(|_| rpc_error("bad hex"))?;
        state.state_call(&method, &data).map(|bytes| hex0x(&bytes))
    })
    .expect("register");
    m.register_method("state_getStorage", |params, state, _| {
        let key: String = params.sequence().next()?;
        let key = hex::decode(key.trim_start_matches("0x")).map_err(|_| rpc_error("bad hex"))?;
        let events_key = subxt::ext::subxt_core::storage::get_address_bytes(
            &subxt::dynamic::storage("System", "Events", ()),
            &state.metadata,
        )
        .map_err(|e| rpc_error(e.to_string()))?;
        if key != events_key {
            return Ok::<_, ErrorObjectOwned>(None);
        }
        let hash = optional_hash(&params, 1)?;
        Ok(state.block(hash).map(|b| hex0x(&b.events)))
    })
    .expect("register");
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
            let sink = pending.accept().await?;
            sink.send(SubscriptionMessage::from_json(&"ready")?).await?;
            let hash = state.include(bytes);
            sink.send(SubscriptionMessage::from_json(
                &json!({ "inBlock": hex0x(&hash) }),
            )?)
            .await?;
            sink.send(SubscriptionMessage::from_json(
                &json!({ "finalized": hex0x(&hash) }),
            )?)
            .await?;
            SubscriptionResult::Ok(())
        },
    )
    .expect("register");
    m
}

/// Builds a value of type `ty` with zeros, empty lists and first variants, except where
/// `choose` names a variant (by the type's last path segment) or gives a whole value.
fn build(ty: u32, types: &PortableRegistry, choose: &dyn Fn(&str) -> Choice) -> Value {
    let t = types.resolve(ty).expect("type in registry");
    let name = t.path.segments.last().map(String::as_str).unwrap_or("");
    let chosen = choose(name);
    if let Choice::Value(v) = chosen {
        return v;
    }
    let fields_value = |fields: &[scale_info::Field<scale_info::form::PortableForm>]| {
        if fields.iter().all(|f| f.name.is_some()) && !fields.is_empty() {
            Composite::named(fields.iter().map(|f| {
                (
                    f.name.clone().expect("named"),
                    build(f.ty.id, types, choose),
                )
            }))
        } else {
            Composite::unnamed(fields.iter().map(|f| build(f.ty.id, types, choose)))
        }
    };
    match &t.type_def {
        TypeDef::Composite(c) => Value {
            value: ValueDef::Composite(fields_value(&c.fields)),
            context: (),
        },
        TypeDef::Variant(v) => {
            let variant = match chosen {
                Choice::Variant(wanted) => v
                    .variants
                    .iter()
                    .find(|var| var.name == wanted)
                    .expect("chosen variant exists"),
                _ => v.variants.first().expect("enum has variants"),
            };
            Value::variant(variant.name.clone(), fields_value(&variant.fields))
        }
        TypeDef::Sequence(_) => Value::unnamed_composite([]),
        TypeDef::Array(a) => {
            Value::unnamed_composite((0..a.len).map(|_| build(a.type_param.id, types, choose)))
        }
        TypeDef::Tuple(tuple) => {
            Value::unnamed_composite(tuple.fields.iter().map(|f| build(f.id, types, choose)))
        }
        TypeDef::Primitive(scale_info::TypeDefPrimitive::Bool) => Value::bool(false),
        TypeDef::Primitive(scale_info::TypeDefPrimitive::Str) => Value::string(""),
        TypeDef::Primitive(_) | TypeDef::Compact(_) => Value::u128(0),
        TypeDef::BitSequence(_) => Value::unnamed_composite([]),
    }
}

/// How [`build`] fills one type.
enum Choice {
    Default,
    Variant(&'static str),
    Value(Value),
}

/// `System.Events` for a block holding one extrinsic (index 0) that succeeded, or failed with
/// the `SubtensorModule` error named `failure`.
pub fn encode_events(metadata: &subxt::Metadata, failure: Option<&'static str>) -> Vec<u8> {
    let events_ty = metadata
        .pallet_by_name("System")
        .and_then(|p| p.storage())
        .and_then(|s| s.entry_by_name("Events"))
        .expect("System.Events in metadata")
        .entry_type()
        .value_ty();
    let module_error = failure.map(|name| {
        let pallet = metadata
            .pallet_by_name("SubtensorModule")
            .expect("SubtensorModule");
        let variant = pallet
            .error_variants()
            .and_then(|vs| vs.iter().find(|v| v.name == name))
            .expect("error variant exists");
        (pallet.index(), variant.index)
    });
    let choose = move |name: &str| match name {
        "Phase" => Choice::Variant("ApplyExtrinsic"),
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
    let types = metadata.types();
    // A Vec<EventRecord> with one record.
    let TypeDef::Sequence(seq) = &types.resolve(events_ty).expect("events type").type_def else {
        panic!("System.Events is a sequence");
    };
    let record = build(seq.type_param.id, types, &choose);
    let mut out = Compact(1u32).encode();
    record
        .encode_as_type_to(seq.type_param.id, types, &mut out)
        .expect("event record encodes");
    out
}
