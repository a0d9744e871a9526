//! Streaming per sequence inside a batch: three streamed requests, one per streaming
//! protocol (legacy `StreamPrompting`, OpenAI Server-Sent Events, gRPC `PromptStream`), run
//! together in one batch of the engine on the tiny checkpoint, served by the real axon. Each
//! stream carries its own completion, equal to that request's answer alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::Method;
use prompting_btlm_backend::config::Config;
use prompting_btlm_backend::engine::{Engine, StepModel};
use prompting_btlm_backend::error::{BtlmError, Result};
use prompting_btlm_backend::kv_cache::Cache;
use prompting_btlm_backend::loader::LoadOptions;
use prompting_btlm_backend::model::{Btlm, Segment};
use prompting_btlm_backend::tokenizer::BtlmTokenizer;
use prompting_btlm_backend::weights::Checkpoint;
use prompting_btlm_backend::{BtlmArgs, BtlmMiner};
use prompting_keys::Keypair;
use prompting_miner::{DevMetagraph, Miner, MinerConfig, Pipeline, PromptRequest, Protocol};
use prompting_synapse::{StreamPrompting, Synapse};
use prompting_transport::axon::{self, AxonArgs, AxonState};
use prompting_transport::btauth::sign_request;
use prompting_transport::dendrite::{AxonTarget, Dendrite, StreamItem};
use prompting_transport::grpc::GrpcClient;
use serde_json::{Value, json};

/// Longest the test waits for anything.
const PATIENCE: Duration = Duration::from_secs(120);

fn tiny_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/btlm-backend/tests/fixtures/btlm-tiny")
}

fn load() -> (Btlm, BtlmTokenizer) {
    let dir = tiny_checkpoint();
    let cfg = Config::from_json(&std::fs::read_to_string(dir.join("config.json")).expect("cfg"))
        .expect("config");
    let ckpt = Checkpoint::open(&[dir.join("model.safetensors")]).expect("checkpoint");
    let model = Btlm::load(&cfg, &ckpt, &LoadOptions::default()).expect("model");
    let tokenizer = BtlmTokenizer::from_dir(&dir).expect("tokenizer");
    (model, tokenizer)
}

/// The tiny model, whose first step waits until the test releases it (so that every request
/// submitted meanwhile joins the batch at the next step boundary) and whose steps take a few
/// milliseconds (so that the streams interleave on the wire).
struct HeldFirstStep {
    inner: Btlm,
    release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl StepModel for HeldFirstStep {
    type Cache = Cache;

    fn context(&self) -> usize {
        StepModel::context(&self.inner)
    }

    fn kv_bytes_per_token(&self) -> usize {
        StepModel::kv_bytes_per_token(&self.inner)
    }

    fn new_cache(&self, positions: usize) -> Cache {
        StepModel::new_cache(&self.inner, positions)
    }

    fn step(&self, segments: &mut [Segment<'_, Cache>]) -> Result<Vec<Vec<f32>>> {
        let held = self.release.lock().expect("release").take();
        if let Some(rx) = held {
            rx.recv_timeout(PATIENCE)
                .map_err(|_| BtlmError::Engine("never released".into()))?;
        }
        std::thread::sleep(Duration::from_millis(5));
        StepModel::step(&self.inner, segments)
    }

    fn rows_independent(&self) -> bool {
        StepModel::rows_independent(&self.inner)
    }
}

/// The conversation of request `i`.
fn conversation(i: usize) -> (Vec<String>, Vec<String>) {
    let question = [
        "Write one sentence about the sea.",
        "Name three colours.",
        "What is the capital of France?",
    ][i];
    (
        vec!["system".into(), "user".into()],
        vec!["You are helpful.".into(), question.into()],
    )
}

fn now_ns() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    )
    .expect("nanoseconds fit i64")
}

/// Request 0 as a legacy `StreamPrompting` synapse: the text items.
async fn legacy_stream(addr: SocketAddr, key: Keypair, miner: String) -> Vec<String> {
    let dendrite = Dendrite::new(key).expect("dendrite");
    let (roles, messages) = conversation(0);
    let synapse = Synapse::new(StreamPrompting::new(roles, messages));
    let target = AxonTarget::new(addr, miner);
    let mut items = Box::pin(dendrite.call_stream(&target, synapse, PATIENCE));
    let mut pieces = Vec::new();
    while let Some(item) = items.next().await {
        match item {
            StreamItem::Text(text) => pieces.push(text),
            StreamItem::Done(response) => {
                assert_eq!(response.status_code, 200, "{:?}", response.failure);
            }
        }
    }
    pieces
}

/// Request 1 as OpenAI chat completions with `stream: true`: the content of each event.
async fn sse_stream(addr: SocketAddr, key: Keypair, miner: String) -> Vec<String> {
    let (roles, messages) = conversation(1);
    let messages: Vec<Value> = roles
        .iter()
        .zip(&messages)
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let path = "/v1/chat/completions";
    let body = serde_json::to_vec(&json!({"model": "btlm", "messages": messages, "stream": true}))
        .expect("json");
    let headers =
        sign_request(&key, &Method::POST, path, &body, Some(&miner), now_ns()).expect("sign");
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .headers(headers)
        .header("content-type", "application/json")
        .body(body)
        .timeout(PATIENCE)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .filter_map(|d| {
            let chunk: Value = serde_json::from_str(d).expect("chunk json");
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Request 2 over gRPC `PromptStream`: the chunks.
async fn grpc_stream(addr: SocketAddr, key: Keypair, miner: String) -> Vec<String> {
    let client = GrpcClient::connect(&addr.to_string(), key, miner)
        .await
        .expect("connect");
    let (roles, messages) = conversation(2);
    let mut chunks = client
        .prompt_stream(roles, messages, PATIENCE)
        .await
        .expect("stream");
    let mut pieces = Vec::new();
    while let Some(chunk) = chunks.next().await {
        pieces.push(chunk.expect("chunk"));
    }
    pieces
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_streams_its_own_sequence_of_one_batch() {
    let (model, tokenizer) = load();
    let args = BtlmArgs {
        max_length: 24,
        device: "cpu".into(),
        ..BtlmArgs::default()
    };
    // The answers alone, one at a time.
    let alone =
        BtlmMiner::new(model.clone(), tokenizer.clone(), &args, "btlm-tiny").expect("miner");
    let mut expected = Vec::new();
    for i in 0..3 {
        let (roles, messages) = conversation(i);
        let request = PromptRequest::new(roles, messages, "5Caller", Protocol::Legacy, PATIENCE);
        expected.push(alone.prompt(&request).await.expect("alone"));
    }
    drop(alone);

    let (release, held) = std::sync::mpsc::channel();
    let engine = Engine::start(
        HeldFirstStep {
            inner: model,
            release: Mutex::new(Some(held)),
        },
        tokenizer,
        prompting_btlm_backend::engine::EngineConfig {
            max_batch: 3,
            ..args.engine()
        },
    )
    .expect("engine");
    let miner = BtlmMiner::with_engine(engine.clone(), &args, "btlm-tiny").expect("miner");
    assert_eq!(miner.capacity(), Some(3));
    let pipeline = Pipeline::new(
        MinerConfig::default(),
        Arc::new(DevMetagraph::new()),
        Arc::new(miner),
    )
    .expect("pipeline");
    let axon_key = Keypair::from_mini_secret(&[7; 32]);
    let axon_hotkey = axon_key.ss58_address();
    let axon_args = AxonArgs {
        ip: [127, 0, 0, 1].into(),
        port: 0,
        ..AxonArgs::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = AxonState::new(Arc::new(axon_key), pipeline, &axon_args).expect("axon");
    let router = axon::router(Arc::new(state));
    tokio::spawn(axon::run(
        listener,
        router,
        axon_args.server_limits(),
        std::future::pending(),
    ));

    let key = |seed: u8| Keypair::from_mini_secret(&[seed; 32]);
    let legacy = tokio::spawn(legacy_stream(addr, key(1), axon_hotkey.clone()));
    let sse = tokio::spawn(sse_stream(addr, key(2), axon_hotkey.clone()));
    let grpc = tokio::spawn(grpc_stream(addr, key(3), axon_hotkey.clone()));
    // Release the first step once all three requests reached the engine.
    let t0 = Instant::now();
    loop {
        let stats = engine.stats();
        let arrived = stats.running.load(Ordering::Acquire) + stats.waiting.load(Ordering::Acquire);
        if arrived >= 3 {
            break;
        }
        assert!(t0.elapsed() < PATIENCE, "only {arrived} requests arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.send(()).expect("release");

    let legacy = legacy.await.expect("legacy joined");
    let sse = sse.await.expect("sse joined");
    let grpc = grpc.await.expect("grpc joined");
    assert_eq!(legacy.concat(), expected[0], "legacy StreamPrompting");
    assert_eq!(sse.concat(), expected[1], "Server-Sent Events");
    assert_eq!(grpc.concat(), expected[2], "gRPC PromptStream");
    // Events and gRPC messages keep the engine's pieces apart (the legacy body is raw text:
    // its network chunks may merge pieces).
    assert!(sse.len() > 1, "{sse:?}");
    assert!(grpc.len() > 1, "{grpc:?}");
    assert!(expected.iter().all(|e| !e.is_empty()));
    assert_ne!(expected[0], expected[1]);
    let stats = engine.stats();
    assert_eq!(stats.peak_batch.load(Ordering::Relaxed), 3, "one batch");
    assert_eq!(stats.completed.load(Ordering::Relaxed), 3);
}
