//! gRPC (`prompting.v1.Miner`) served on the axon's port next to the legacy HTTP routes:
//! our `GrpcClient` against an axon with the echo miner — unary, streaming, the pipeline's
//! refusals, btauth/1 failures, deadlines — and HTTP/1.1 legacy calls on the same port.

use crate::common;

use std::time::{Duration, Instant};

use common::{AxonSetup, validator_key};
use futures::StreamExt;
use http::Method;
use prompting_keys::Keypair;
use prompting_synapse::{Prompting, Synapse};
use prompting_transport::btauth::sign_request;
use prompting_transport::dendrite::{AxonTarget, Dendrite};
use prompting_transport::grpc::proto::miner_client::MinerClient;
use prompting_transport::grpc::proto::{self, PromptRequest};
use prompting_transport::grpc::{GrpcClient, GrpcClientError, METHOD_PROMPT};
use prost::Message;
use tonic::Code;
use tonic::metadata::MetadataMap;

/// An axon whose router also serves gRPC; stops when dropped.
struct GrpcAxon {
    addr: std::net::SocketAddr,
    hotkey: String,
    _axon: common::TestAxon,
}

async fn start() -> GrpcAxon {
    let validator = validator_key().ss58_address();
    let axon = AxonSetup::new(&[&validator]).start().await;
    GrpcAxon {
        addr: axon.addr,
        hotkey: axon.state.hotkey().to_string(),
        _axon: axon,
    }
}

async fn client(axon: &GrpcAxon, keypair: Keypair) -> GrpcClient {
    GrpcClient::connect(&axon.addr.to_string(), keypair, axon.hotkey.clone())
        .await
        .expect("connect")
}

fn user(message: &str) -> (Vec<String>, Vec<String>) {
    (vec!["user".to_string()], vec![message.to_string()])
}

const FIVE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_get_the_completion() {
    let axon = start().await;
    let client = client(&axon, validator_key()).await;
    let completion = client
        .prompt(
            vec!["system".into(), "user".into()],
            vec!["Be brief.".into(), "héllo wörld".into()],
            FIVE,
        )
        .await
        .expect("completion");
    assert_eq!(completion, "echo: héllo wörld");

    // Sampling settings and the default timeout (0) are accepted.
    let completion = client
        .send(PromptRequest {
            roles: vec!["user".into()],
            messages: vec!["again".into()],
            timeout: 0.0,
            sampling: Some(proto::Sampling {
                max_tokens: Some(16),
                temperature: Some(0.5),
                top_p: None,
            }),
        })
        .await
        .expect("completion");
    assert_eq!(completion, "echo: again");

    let (roles, _) = user("x");
    let error = client
        .prompt(roles, Vec::new(), FIVE)
        .await
        .expect_err("no messages");
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");

    let (roles, messages) = user("raise");
    let error = client
        .prompt(roles, messages, FIVE)
        .await
        .expect_err("backend error");
    assert_eq!(error.code(), Some(Code::Internal), "{error}");
    assert!(error.to_string().contains("kaboom"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_get_the_chunks_in_order() {
    let axon = start().await;
    let client = client(&axon, validator_key()).await;
    let (roles, messages) = user("one two three");
    let chunks: Vec<String> = client
        .prompt_stream(roles, messages, FIVE)
        .await
        .expect("stream")
        .map(|chunk| chunk.expect("chunk"))
        .collect()
        .await;
    assert_eq!(chunks, ["echo: ", "one ", "two ", "three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_hotkeys_are_permission_denied() {
    let axon = start().await;
    let stranger = client(&axon, Keypair::from_mini_secret(&[7u8; 32])).await;
    let (roles, messages) = user("hi");
    let error = stranger
        .prompt(roles.clone(), messages.clone(), FIVE)
        .await
        .expect_err("unregistered");
    assert_eq!(error.code(), Some(Code::PermissionDenied), "{error}");

    let error = match stranger.prompt_stream(roles, messages, FIVE).await {
        Ok(_) => panic!("an unregistered hotkey got a stream"),
        Err(error) => error,
    };
    assert_eq!(error.code(), Some(Code::PermissionDenied), "{error}");

    // Refused before its signature is checked: a call whose signature does not verify is
    // still refused as unregistered, not as unauthenticated.
    let stranger = Keypair::from_mini_secret(&[7u8; 32]);
    let tampered = signed_as(&stranger, &axon, &request("hi", 5.0), request("pwned", 5.0));
    let status = raw_client(&axon)
        .await
        .prompt(tampered)
        .await
        .expect_err("unregistered");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "hotkey not registered");
}

/// A raw client, to send metadata of our own.
async fn raw_client(axon: &GrpcAxon) -> MinerClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", axon.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    MinerClient::new(channel)
}

fn signed(
    axon: &GrpcAxon,
    signed_body: &PromptRequest,
    sent: PromptRequest,
) -> tonic::Request<PromptRequest> {
    signed_as(&validator_key(), axon, signed_body, sent)
}

/// A call from `key` whose signature covers `signed_body` and that carries `sent`.
fn signed_as(
    key: &Keypair,
    axon: &GrpcAxon,
    signed_body: &PromptRequest,
    sent: PromptRequest,
) -> tonic::Request<PromptRequest> {
    let nonce = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    )
    .expect("nonce fits i64");
    let headers = sign_request(
        key,
        &Method::POST,
        METHOD_PROMPT,
        &signed_body.encode_to_vec(),
        Some(&axon.hotkey),
        nonce,
    )
    .expect("sign");
    tonic::Request::from_parts(
        MetadataMap::from_headers(headers),
        tonic::Extensions::default(),
        sent,
    )
}

fn request(message: &str, timeout: f64) -> PromptRequest {
    PromptRequest {
        roles: vec!["user".into()],
        messages: vec![message.into()],
        timeout,
        sampling: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_missing_auth_and_replays_are_unauthenticated() {
    let axon = start().await;
    let mut raw = raw_client(&axon).await;

    // Signed over another message than the one sent.
    let tampered = signed(&axon, &request("hi", 5.0), request("pwned", 5.0));
    let status = raw.prompt(tampered).await.expect_err("bad signature");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "signature does not verify against the claimed hotkey"
    );

    // No btauth/1 metadata at all.
    let status = raw
        .prompt(tonic::Request::new(request("hi", 5.0)))
        .await
        .expect_err("unsigned");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "missing or unsupported X-Bittensor-Version (expected '1')"
    );

    // A correctly signed call goes through once; the same metadata again is a replay.
    let good = signed(&axon, &request("hi", 5.0), request("hi", 5.0));
    let replay = tonic::Request::from_parts(
        good.metadata().clone(),
        tonic::Extensions::default(),
        request("hi", 5.0),
    );
    let response = raw.prompt(good).await.expect("signed call");
    assert_eq!(response.into_inner().completion, "echo: hi");
    let status = raw.prompt(replay).await.expect_err("replay");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "this nonce was already accepted from this hotkey"
    );

    // Signed for another miner.
    let other = Keypair::from_mini_secret(&[9u8; 32]).ss58_address();
    let client = GrpcClient::connect(&axon.addr.to_string(), validator_key(), other)
        .await
        .expect("connect");
    let (roles, messages) = user("hi");
    let error = client
        .prompt(roles, messages, FIVE)
        .await
        .expect_err("wrong receiver");
    assert_eq!(error.code(), Some(Code::Unauthenticated), "{error}");
    assert_eq!(
        error.to_string(),
        "gRPC status Unauthenticated: request was signed for a different receiving hotkey"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_are_deadline_exceeded_at_their_timeout() {
    let axon = start().await;
    let client = client(&axon, validator_key()).await;

    let (roles, messages) = user("sleep");
    let started = Instant::now();
    let error = client
        .prompt(roles.clone(), messages.clone(), Duration::from_millis(500))
        .await
        .expect_err("the echo miner sleeps 3 s");
    let elapsed = started.elapsed();
    assert_eq!(error.code(), Some(Code::DeadlineExceeded), "{error}");
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );

    let started = Instant::now();
    let error = client
        .prompt_stream(roles, messages, Duration::from_millis(500))
        .await
        .map(|_| ())
        .expect_err("no chunk before the deadline");
    assert_eq!(error.code(), Some(Code::DeadlineExceeded), "{error}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert!(matches!(error, GrpcClientError::Status(_)), "{error:?}");
}

/// One frame of a gRPC request body.
fn frame(message: &PromptRequest) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(encoded.len()).expect("small").to_be_bytes());
    body.extend_from_slice(&encoded);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_timeout_header_shortens_the_deadline() {
    let axon = start().await;
    // A plain HTTP/2 client, so that no client-side timer races the server's deadline.
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let message = request("sleep", 10.0);
    let authenticated = signed(&axon, &message, message.clone());
    let mut call = http2
        .post(format!("http://{}{METHOD_PROMPT}", axon.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m");
    for (name, value) in authenticated.metadata().clone().into_headers().iter() {
        call = call.header(name, value);
    }
    let started = Instant::now();
    let response = call.body(frame(&message)).send().await.expect("response");
    let elapsed = started.elapsed();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok()),
        Some("4"),
        "{response:?}"
    );
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");

    // An unparseable grpc-timeout is refused.
    let message = request("hi", 10.0);
    let authenticated = signed(&axon, &message, message.clone());
    let mut call = http2
        .post(format!("http://{}{METHOD_PROMPT}", axon.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "soon");
    for (name, value) in authenticated.metadata().clone().into_headers().iter() {
        call = call.header(name, value);
    }
    let response = call.body(frame(&message)).send().await.expect("response");
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok()),
        Some("3"),
        "{response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_cover_the_bytes_sent_in_any_valid_encoding() {
    let axon = start().await;
    // Fields out of order (messages before roles): valid protobuf that prost would never
    // produce, so the server must check the bytes it received, not a re-encoding.
    let mut encoded = Vec::new();
    for (field, text) in [(2u8, "hi"), (1, "user")] {
        encoded.push(field << 3 | 2);
        encoded.push(u8::try_from(text.len()).expect("short"));
        encoded.extend_from_slice(text.as_bytes());
    }
    let decoded = PromptRequest::decode(encoded.as_slice()).expect("valid protobuf");
    assert_eq!(decoded, request("hi", 0.0));
    assert_ne!(decoded.encode_to_vec(), encoded);

    let nonce = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    )
    .expect("nonce fits i64");
    let headers = sign_request(
        &validator_key(),
        &Method::POST,
        METHOD_PROMPT,
        &encoded,
        Some(&axon.hotkey),
        nonce,
    )
    .expect("sign");
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(encoded.len()).expect("small").to_be_bytes());
    body.extend_from_slice(&encoded);
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = http2
        .post(format!("http://{}{METHOD_PROMPT}", axon.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("response");
    assert_eq!(response.headers().get("grpc-status"), None, "{response:?}");
    let answer = response.bytes().await.expect("body");
    let message = answer.get(5..).expect("one response frame");
    let response = proto::PromptResponse::decode(message).expect("PromptResponse");
    assert_eq!(response.completion, "echo: hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_http1_and_grpc_share_the_port() {
    let axon = start().await;
    let client = client(&axon, validator_key()).await;
    let dendrite = Dendrite::builder(validator_key())
        .external_ip("127.0.0.1")
        .build()
        .expect("dendrite");
    let target = AxonTarget::new(axon.addr, axon.hotkey.clone());
    let legacy = Synapse::new(Prompting::new(
        vec!["user".into()],
        vec!["over http/1.1".into()],
    ));
    let (roles, messages) = user("over grpc");

    // At the same time, on the same port.
    let (legacy, grpc) = tokio::join!(
        dendrite.call(&target, legacy, FIVE),
        client.prompt(roles, messages, FIVE)
    );
    assert_eq!(
        (legacy.status_code, legacy.status_message.as_str()),
        (200, "Success"),
        "{legacy:?}"
    );
    assert_eq!(legacy.synapse.body.completion, "echo: over http/1.1");
    assert_eq!(grpc.expect("grpc completion"), "echo: over grpc");

    // The axon's other routes still answer over HTTP/1.1, and count gRPC calls.
    let metrics = reqwest::get(format!("http://{}/metrics", axon.addr))
        .await
        .expect("metrics");
    assert_eq!(metrics.version(), http::Version::HTTP_11);
    let text = metrics.text().await.expect("metrics text");
    assert!(
        text.lines()
            .any(|line| line.starts_with("prompting_requests_total{")
                && line.contains("protocol=\"grpc\"")
                && line.contains("route=\"Prompt\"")
                && line.contains("status=\"200\"")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("prompting_requests_total{")
                && line.contains("protocol=\"legacy\"")),
        "{text}"
    );
}
