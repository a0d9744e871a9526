//! Shared pieces of the transport integration tests: test miners, an axon on loopback, keys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prompting_keys::Keypair;
use prompting_miner::{
    Metagraph, MetagraphView, Miner, MinerConfig, MinerError, NeuronInfo, Pipeline, PromptRequest,
    SharedMetagraph, TextStream,
};
use prompting_testkit::RawHttp;
use prompting_transport::axon::{self, AxonArgs, AxonState};
use prompting_transport::btauth::BtAuthVerifier;
use prompting_transport::clock::Clock;
use prompting_transport::dendrite::legacy::PreparedRequest;
use tokio::sync::oneshot;

/// Mnemonics of the keys in `../shared/vectors/legacy/keys.json`.
pub const MINER_MNEMONIC: &str =
    "legal winner thank year wave sausage worth useful legal winner thank yellow";
pub const VALIDATOR_MNEMONIC: &str =
    "letter advice cage absurd amount doctor acoustic avoid letter advice cage above";
pub const COLDKEY_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

pub fn miner_key() -> Keypair {
    Keypair::from_mnemonic(MINER_MNEMONIC).expect("miner mnemonic")
}

pub fn validator_key() -> Keypair {
    Keypair::from_mnemonic(VALIDATOR_MNEMONIC).expect("validator mnemonic")
}

/// Answers `"echo: " + last message`; "sleep" sleeps 3 s first, "raise" fails, "stream"
/// streams the words of the last message one by one.
pub struct EchoMiner;

#[async_trait]
impl Miner for EchoMiner {
    fn name(&self) -> &str {
        "echo"
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        let last = request
            .messages
            .last()
            .ok_or_else(|| MinerError::BadRequest("no messages".into()))?;
        match last.as_str() {
            "sleep" => tokio::time::sleep(Duration::from_secs(3)).await,
            "raise" => return Err(MinerError::Backend("kaboom".into())),
            _ => {}
        }
        Ok(format!("echo: {last}"))
    }

    async fn prompt_stream(&self, request: &PromptRequest) -> Result<TextStream, MinerError> {
        let completion = self.prompt(request).await?;
        let chunks: Vec<Result<String, MinerError>> = completion
            .split_inclusive(' ')
            .map(|w| Ok(w.to_string()))
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

/// A metagraph where `validators` are registered validators with 1000 τ each.
pub fn metagraph(validators: &[&str]) -> Arc<SharedMetagraph> {
    let neurons = validators
        .iter()
        .enumerate()
        .map(|(uid, hotkey)| NeuronInfo {
            uid: uid as u16,
            hotkey: hotkey.to_string(),
            coldkey: String::new(),
            stake: 1000.0,
            validator_permit: true,
            axon: None,
            ..NeuronInfo::default()
        })
        .collect();
    Arc::new(SharedMetagraph::new(Metagraph::new(1, 100, neurons)))
}

/// A running axon on 127.0.0.1; stops when dropped.
pub struct TestAxon {
    pub addr: SocketAddr,
    pub state: Arc<AxonState>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestAxon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Options of a test axon.
pub struct AxonSetup {
    pub keypair: Keypair,
    pub metagraph: Arc<dyn MetagraphView>,
    pub miner: Arc<dyn Miner>,
    pub config: MinerConfig,
    pub args: AxonArgs,
    pub clock: Option<Arc<dyn Clock>>,
    /// The clock of the btauth/1 verifier (default: the system clock).
    pub btauth_clock: Option<Arc<dyn Clock>>,
}

impl AxonSetup {
    pub fn new(registered: &[&str]) -> Self {
        AxonSetup {
            keypair: miner_key(),
            metagraph: metagraph(registered),
            miner: Arc::new(EchoMiner),
            config: MinerConfig::default(),
            args: AxonArgs {
                ip: [127, 0, 0, 1].into(),
                port: 0,
                ..AxonArgs::default()
            },
            clock: None,
            btauth_clock: None,
        }
    }

    pub async fn start(self) -> TestAxon {
        let pipeline =
            Pipeline::new(self.config, self.metagraph, self.miner).expect("valid miner config");
        let listener = tokio::net::TcpListener::bind((self.args.ip, 0))
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut args = self.args.clone();
        args.port = addr.port();
        let mut state =
            AxonState::new(Arc::new(self.keypair), pipeline, &args).expect("valid axon args");
        if let Some(clock) = self.clock {
            state = state.with_clock(clock);
        }
        if let Some(clock) = self.btauth_clock {
            let config = args.btauth.config(state.hotkey().to_string());
            let verifier = BtAuthVerifier::with_clock(config, clock).expect("valid btauth args");
            state = state.with_btauth(verifier);
        }
        let state = Arc::new(state);
        let router = axon::router(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = state.server_limits();
        tokio::spawn(async move {
            let _ = axon::run(listener, router, limits, async {
                let _ = stopped.await;
            })
            .await;
        });
        TestAxon {
            addr,
            state,
            stop: Some(stop),
        }
    }
}

/// Sends a recorded request (its synapse headers and body, byte for byte) to `addr`.
pub async fn replay(addr: SocketAddr, raw_request: &str) -> (u16, Vec<(String, String)>, String) {
    let recorded = RawHttp::parse(raw_request.as_bytes());
    let path = recorded.target();
    let client = reqwest::Client::new();
    let mut request = client.post(format!("http://{addr}{path}"));
    for (name, value) in &recorded.headers {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host" | "content-length" | "connection" | "accept-encoding"
        ) {
            continue;
        }
        request = request.header(name, value);
    }
    let response = request
        .body(recorded.body.clone())
        .send()
        .await
        .expect("send to axon");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).to_string(),
            )
        })
        .collect();
    let body = response.text().await.expect("response body");
    (status, headers, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A key no metagraph registers (an outsider's).
pub fn stranger_key() -> Keypair {
    Keypair::from_mnemonic("zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong").expect("mnemonic")
}

/// Re-signs a prepared legacy request for another nonce (above what a dendrite's clock
/// gives: nonces are u64 on the wire).
pub fn with_nonce(request: &PreparedRequest, key: &Keypair, nonce: u64) -> PreparedRequest {
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("prepared request without {name}"))
    };
    let message = format!(
        "{nonce}.{}.{}.{}.{}",
        header("bt_header_dendrite_hotkey"),
        header("bt_header_axon_hotkey"),
        header("bt_header_dendrite_uuid"),
        header("computed_body_hash"),
    );
    let signature = key.sign_hex(message.as_bytes());
    let mut resigned = request.clone();
    for (name, value) in &mut resigned.headers {
        if name.eq_ignore_ascii_case("bt_header_dendrite_nonce") {
            *value = nonce.to_string();
        } else if name.eq_ignore_ascii_case("bt_header_dendrite_signature") {
            *value = signature.clone();
        }
    }
    resigned
}

/// Axon flags as an operator gives them (so a test of a new flag fails, not miscompiles,
/// where the flag does not exist).
pub fn axon_args(flags: &[&str]) -> AxonArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        axon: AxonArgs,
    }
    let mut argv = vec!["miner", "--axon.ip", "127.0.0.1", "--axon.port", "0"];
    argv.extend_from_slice(flags);
    match <Cli as clap::Parser>::try_parse_from(argv) {
        Ok(cli) => cli.axon,
        Err(err) => panic!("flags {flags:?}: {err}"),
    }
}
