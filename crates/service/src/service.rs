//! The miner process: wallet, metagraph source, axon, chain tasks, shutdown.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use prompting_chain::axon_addr::unservable_reason;
use prompting_chain::{ServeAxon, Subtensor, SyncOptions, SyncStatus, spawn_sync};
use prompting_keys::Keypair;
use prompting_keys::wallet::WalletError;
use prompting_miner::metagraph::NeuronInfo;
use prompting_miner::{
    DevMetagraph, MetagraphView, Miner, Pipeline, SharedMetagraph, StaticMetagraph,
};
use prompting_transport::api_key::API_KEY_CALLER;
use prompting_transport::axon::{self, AxonArgs, AxonState};
use prompting_transport::edge::Metrics;
use prompting_transport::server::shutdown_signal;
use tokio::net::TcpSocket;

use prompting_keys::wallet::{DEFAULT_HOTKEY_NAME, DEFAULT_WALLET_NAME};

use crate::args::{CommonArgs, WalletArgs};
use crate::error::ServiceError;

/// Where the pipeline learns who is registered.
enum Source {
    /// `--dev`: everyone is a validator.
    Dev,
    /// `--metagraph.file`.
    File(Arc<SharedMetagraph>),
    /// The chain, refreshed in the background.
    Chain {
        subtensor: Subtensor,
        shared: Arc<SharedMetagraph>,
    },
}

/// A miner ready to serve: settings checked, hotkey loaded, port bound, metagraph read (and,
/// on a chain, registration checked). Built by [`Service::prepare`], before the backend is
/// (possibly slowly) loaded, so that those failures come first; then [`Service::run`].
///
/// The port is bound by `prepare` but listens only from `run` on, once the backend is
/// loaded: until then a connection is refused at once (as by the Python miner, which starts
/// its axon after loading the model) rather than accepted into the kernel's backlog and
/// answered only after the load.
pub struct Service {
    args: CommonArgs,
    keypair: Arc<Keypair>,
    /// The bound (not yet listening) socket, unless `--miner.no_start_axon`.
    axon: Option<(TcpSocket, SocketAddr)>,
    source: Source,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("hotkey", &self.keypair.ss58_address())
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl CommonArgs {
    /// Checks the settings; the first problem is the error. The external-address rule is
    /// checked apart ([`CommonArgs::validate_publishing`]), after the wallet.
    pub fn validate(&self) -> Result<(), ServiceError> {
        self.axon
            .validate()
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        self.miner
            .validate()
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        self.axon
            .openai_api
            .validate()
            .map_err(|e| ServiceError::Config(format!("invalid --openai_api.key: {e}")))?;
        if self.no_start_axon && !self.uses_chain() {
            return Err(ServiceError::Config(
                "--miner.no_start_axon leaves nothing to do without a chain (it was given with \
                 --dev, --miner.mock_subtensor or --metagraph.file)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The axon can be published on chain: publishing needs an address others can reach,
    /// so binding 0.0.0.0 or :: needs `--axon.external_ip` (or `--miner.no_serve`).
    pub fn validate_publishing(&self) -> Result<(), ServiceError> {
        if self.publishes_axon() {
            let ip = self.axon.external_ip.unwrap_or(self.axon.ip);
            if ip.is_unspecified() {
                return Err(ServiceError::Config(format!(
                    "--axon.external_ip is needed to publish the axon on chain when it binds \
                     {ip} (or pass --miner.no_serve)"
                )));
            }
            // The port is only known once bound; judge the ip with a placeholder port.
            let port = self.axon.external_port.unwrap_or(self.axon.port).max(1);
            if let Some(why) = unservable_reason(SocketAddr::new(ip, port)) {
                return Err(ServiceError::Config(format!(
                    "cannot publish the axon at {ip} on chain: {why}; set --axon.external_ip to \
                     the address validators can reach (or pass --miner.no_serve)"
                )));
            }
        }
        Ok(())
    }

    /// Whether the axon's address is published on chain: on a chain, with the axon started,
    /// without `--miner.no_serve`.
    pub fn publishes_axon(&self) -> bool {
        self.uses_chain() && !self.no_start_axon && !self.subtensor.no_serve
    }

    /// Whether the metagraph comes from the chain (neither `--dev`, the mock subtensor nor
    /// `--metagraph.file`).
    pub fn uses_chain(&self) -> bool {
        !self.dev && !self.mock() && self.metagraph_file.is_none()
    }

    /// The address to bind: `--axon.ip` and `--axon.port`, except that `--dev` without an
    /// explicit `--axon.ip` binds 127.0.0.1.
    pub fn bind_addr(&self) -> SocketAddr {
        let ip = if self.dev && !self.axon_ip_given {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.axon.ip
        };
        SocketAddr::new(ip, self.axon.port)
    }
}

/// Connections the kernel queues for the axon before it accepts them (as tokio's
/// `TcpListener::bind`).
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr` that does not listen yet: the port is taken (a port in use by a
/// listening socket fails here), but connections are refused until it listens. Address reuse
/// is on (as for tokio's `TcpListener::bind`), so a restart is not refused for the previous
/// run's connections in TIME_WAIT; two sockets bound this way to one port both bind, and the
/// second to listen fails then.
fn bind_unlistening(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Builds the tokio runtime of a miner binary: multi-threaded, with `--axon.max_workers`
/// worker threads when set (one per core otherwise).
pub fn runtime(args: &CommonArgs) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("miner-worker");
    if let Some(workers) = args.axon.max_workers {
        builder.worker_threads(workers);
    }
    builder.build()
}

/// Prepares the service with `args` and runs it with `backend` until SIGINT/SIGTERM.
pub async fn run(args: CommonArgs, backend: Arc<dyn Miner>) -> Result<(), ServiceError> {
    Service::prepare(args).await?.run(backend).await
}

impl Service {
    /// Checks the settings, loads the hotkey (creating it under `--dev`), checks the address
    /// to publish, binds the port (unless `--miner.no_start_axon`; it listens only from
    /// [`Service::run`] on) and reads the metagraph:
    /// from `--metagraph.file`, or from the chain after checking the hotkey is registered;
    /// `--dev` and the mock subtensor trust every caller.
    pub async fn prepare(args: CommonArgs) -> Result<Service, ServiceError> {
        args.validate()?;
        if args.dev {
            tracing::warn!(
                "--dev: DEVELOPMENT MODE, no chain. EVERY CALLER IS TREATED AS A REGISTERED \
                 VALIDATOR; never use this on a real network."
            );
        } else if args.mock() {
            tracing::warn!(
                "--miner.mock_subtensor: no chain. EVERY CALLER IS TREATED AS A REGISTERED \
                 VALIDATOR; never use this on a real network."
            );
        }
        let keypair = Arc::new(load_hotkey(&args)?);
        args.validate_publishing()?;
        let axon = if args.no_start_axon {
            tracing::info!(
                "--miner.no_start_axon: no axon; only the chain duties run (the axon is not \
                 published)"
            );
            None
        } else {
            let bind = args.bind_addr();
            let socket =
                bind_unlistening(bind).map_err(|error| ServiceError::Bind { addr: bind, error })?;
            let local_addr = socket
                .local_addr()
                .map_err(|error| ServiceError::Bind { addr: bind, error })?;
            Some((socket, local_addr))
        };
        let source = if args.dev || args.mock() {
            Source::Dev
        } else if let Some(path) = &args.metagraph_file {
            let shared = StaticMetagraph::shared(path).map_err(ServiceError::Metagraph)?;
            let snapshot = shared.load();
            tracing::info!(
                file = %path.display(),
                neurons = snapshot.neurons().len(),
                netuid = snapshot.netuid,
                "metagraph read from file (not refreshed)"
            );
            if snapshot.neuron(&keypair.ss58_address()).is_none() {
                tracing::warn!(
                    hotkey = %keypair.ss58_address(),
                    "the miner's own hotkey is not in the metagraph file"
                );
            }
            Source::File(Arc::new(shared))
        } else {
            chain_source(&args, &keypair).await?
        };
        Ok(Service {
            args,
            keypair,
            axon,
            source,
        })
    }

    /// The address the axon is bound to (it listens from [`Service::run`] on); `None` with
    /// `--miner.no_start_axon`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.axon.as_ref().map(|(_, addr)| *addr)
    }

    /// Whether [`Service::run`] serves an axon; when false (`--miner.no_start_axon`), call
    /// [`Service::run_without_axon`] instead, without loading a backend.
    pub fn starts_axon(&self) -> bool {
        self.axon.is_some()
    }

    /// The hotkey the axon signs with.
    pub fn hotkey(&self) -> &Keypair {
        &self.keypair
    }

    /// Listens and serves `backend` until SIGINT or SIGTERM, then drains in-flight requests.
    /// Call it once the backend is loaded: connections are refused until then.
    pub async fn run(self, backend: Arc<dyn Miner>) -> Result<(), ServiceError> {
        self.run_until(backend, shutdown_signal()).await
    }

    /// With `--miner.no_start_axon`: runs the chain duties until SIGINT or SIGTERM.
    pub async fn run_without_axon(self) -> Result<(), ServiceError> {
        self.run_without_axon_until(shutdown_signal()).await
    }

    /// With `--miner.no_start_axon`: runs the chain duties (metagraph refresh, weights)
    /// until `shutdown` resolves. Serves nothing; refuses when an axon was prepared.
    pub async fn run_without_axon_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServiceError> {
        if self.axon.is_some() {
            return Err(ServiceError::Config(
                "run_without_axon is for --miner.no_start_axon; this service has an axon".into(),
            ));
        }
        let Service {
            args,
            keypair,
            source,
            ..
        } = self;
        let sync_task = match source {
            Source::Chain { subtensor, shared } => {
                let signer: Arc<Keypair> = Arc::clone(&keypair);
                let (task, _status) = spawn_sync(
                    subtensor,
                    shared,
                    signer,
                    SyncOptions::from_args(&args.subtensor),
                );
                Some(task)
            }
            Source::Dev | Source::File(_) => None,
        };
        tracing::info!(
            "running the chain duties only as hotkey {}",
            keypair.ss58_address()
        );
        shutdown.await;
        if let Some(task) = sync_task {
            task.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Listens (logging "serving on") and serves `backend` until `shutdown` resolves, then
    /// drains in-flight requests (up to
    /// `--axon.shutdown_grace`). On a chain, starts the background chain duties: the
    /// metagraph refresh, publishing the axon (unless `--miner.no_serve`; a refusal or a
    /// serving rate limit is a warning and retried, never fatal), and with
    /// `--miner.set_weights` the weights (see `prompting_chain::sync`).
    pub async fn run_until(
        self,
        backend: Arc<dyn Miner>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServiceError> {
        let Service {
            args,
            keypair,
            axon,
            source,
        } = self;
        let Some((socket, local_addr)) = axon else {
            return Err(ServiceError::Config(
                "--miner.no_start_axon: there is no axon to serve the backend on".into(),
            ));
        };
        let miner_name = backend.name().to_string();
        let (metagraph, chain): (Arc<dyn MetagraphView>, _) = match source {
            Source::Dev => (Arc::new(DevMetagraph::new()), None),
            Source::File(shared) => (shared, None),
            Source::Chain { subtensor, shared } => (shared.clone(), Some((subtensor, shared))),
        };
        let pipeline = Pipeline::new(args.miner.clone(), metagraph, backend)
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        let axon_args = AxonArgs {
            ip: local_addr.ip(),
            port: local_addr.port(),
            ..args.axon.clone()
        };
        let mut state = AxonState::new(Arc::clone(&keypair), pipeline, &axon_args)
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        // Listen before the chain duties publish the axon.
        let listener = socket
            .listen(LISTEN_BACKLOG)
            .map_err(|error| ServiceError::Bind {
                addr: local_addr,
                error,
            })?;

        let mut sync_task = None;
        if let Some((subtensor, shared)) = chain {
            let serve = (!args.subtensor.no_serve).then(|| {
                let external = SocketAddr::new(
                    args.axon.external_ip.unwrap_or(local_addr.ip()),
                    args.axon.external_port.unwrap_or(local_addr.port()),
                );
                ServeAxon::new(args.subtensor.netuid, external)
            });
            let signer: Arc<Keypair> = Arc::clone(&keypair);
            let (task, status) = spawn_sync(
                subtensor,
                Arc::clone(&shared),
                signer,
                SyncOptions {
                    serve,
                    ..SyncOptions::from_args(&args.subtensor)
                },
            );
            register_chain_metrics(
                state.metrics_mut(),
                &shared,
                &status,
                keypair.ss58_address(),
            );
            sync_task = Some(task);
        }

        if args.axon.openai_api.enabled() {
            log_api_keys(&args);
        }
        let state = Arc::new(state);
        let router = axon::router(Arc::clone(&state));
        tracing::info!(
            "serving on {local_addr} as hotkey {} (miner: {miner_name})",
            keypair.ss58_address()
        );
        tracing::info!(
            "query it with: {}",
            dendrite_command(local_addr, &args.wallet, &keypair.ss58_address())
        );
        let served = axon::run(listener, router, state.server_limits(), shutdown).await;
        if let Some(task) = sync_task {
            task.abort();
        }
        served.map_err(ServiceError::Serve)?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Says that `/v1/*` takes `--openai_api.key` bearer keys (how many, never which), and warns
/// when the blacklist will refuse their caller.
fn log_api_keys(args: &CommonArgs) {
    let keys = args.axon.openai_api.keys.len();
    tracing::info!(
        "/v1/* also accepts `Authorization: Bearer <key>` with {keys} --openai_api.key key(s); \
         their caller is `{API_KEY_CALLER}`"
    );
    let blacklist = &args.miner.blacklist;
    let trusted = args.dev || args.mock() || blacklist.allow_non_registered;
    if !trusted && !blacklist.whitelist.iter().any(|k| k == API_KEY_CALLER) {
        tracing::warn!(
            "callers with an --openai_api.key are not registered on the subnet, so the \
             blacklist refuses them (403): add `--miner.blacklist.whitelist {API_KEY_CALLER}` \
             to serve them"
        );
    }
}

/// The chain duties' figures on `/metrics`, read at each scrape: the metagraph's age and
/// block, the miner's own uid, stake, rank, trust, consensus, incentive and emission (what the
/// epoch line logs; absent while the hotkey is not in the metagraph), and the weights set.
fn register_chain_metrics(
    metrics: &mut Metrics,
    shared: &Arc<SharedMetagraph>,
    status: &Arc<SyncStatus>,
    hotkey: String,
) {
    let age = Arc::clone(status);
    metrics.add_gauge_source(
        "metagraph_age_seconds",
        "Seconds since the metagraph was last refreshed from the chain",
        Arc::new(move || age.snapshot().age().map(|age| age.as_secs_f64())),
    );
    let clock = Arc::clone(status);
    metrics.add_gauge_source(
        "clock_skew_seconds",
        "This host's clock minus the chain's best block time at the last metagraph refresh \
         (0-12 s on a synced host; validators' requests are refused as stale past ~16 s)",
        Arc::new(move || clock.snapshot().clock_skew_ms.map(|ms| ms as f64 / 1e3)),
    );
    let block = Arc::clone(shared);
    metrics.add_gauge_source(
        "metagraph_block",
        "Block of the metagraph last read from the chain",
        Arc::new(move || Some(block.load().block as f64)),
    );
    type Figure = fn(&NeuronInfo) -> f64;
    let figures: [(&str, &str, Figure); 7] = [
        ("neuron_uid", "The miner's uid on the subnet", |n| {
            f64::from(n.uid)
        }),
        (
            "neuron_stake",
            "The miner's stake weight, in alpha (bittensor's metagraph.S)",
            |n| n.stake,
        ),
        (
            "neuron_rank",
            "The miner's rank (metagraph.R), 0 to 1",
            |n| n.rank,
        ),
        (
            "neuron_trust",
            "The miner's trust (metagraph.T), 0 to 1",
            |n| n.trust,
        ),
        (
            "neuron_consensus",
            "The miner's consensus (metagraph.C), 0 to 1",
            |n| n.consensus,
        ),
        (
            "neuron_incentive",
            "The miner's incentive (metagraph.I), 0 to 1",
            |n| n.incentive,
        ),
        (
            "neuron_emission",
            "The miner's emission per tempo, in alpha (metagraph.E)",
            |n| n.emission,
        ),
    ];
    for (name, help, figure) in figures {
        let shared = Arc::clone(shared);
        let hotkey = hotkey.clone();
        metrics.add_gauge_source(
            name,
            help,
            Arc::new(move || shared.load().neuron(&hotkey).map(figure)),
        );
    }
    let weights = Arc::clone(status);
    metrics.add_counter_source(
        "weights_set",
        "Weights set on chain by this miner (successful extrinsics, --miner.set_weights), by extrinsic",
        "extrinsic",
        Arc::new(move || vec![("set_weights", weights.snapshot().weights_set_total)]),
    );
}

/// A command that queries the axon at `local_addr` signed by the wallet of `wallet` (the
/// miner's own hotkey), ready to paste into a POSIX shell: the `dendrite` binary next to this
/// one when it exists, else `cargo run --release --bin dendrite --`.
pub fn dendrite_command(local_addr: SocketAddr, wallet: &WalletArgs, hotkey: &str) -> String {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("dendrite")))
        .filter(|path| path.is_file());
    let program = match beside {
        Some(path) => shell_quote(&path.display().to_string()),
        None => "cargo run --release --bin dendrite --".to_string(),
    };
    let ip = match local_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let target = SocketAddr::new(ip, local_addr.port());
    let mut words = vec![program];
    let wallet_path = prompting_keys::wallet::expand_home(&wallet.path);
    words.extend([
        "--wallet.path".to_string(),
        shell_quote(&wallet_path.display().to_string()),
    ]);
    if wallet.name != DEFAULT_WALLET_NAME {
        words.extend(["--wallet.name".to_string(), shell_quote(&wallet.name)]);
    }
    if wallet.hotkey != DEFAULT_HOTKEY_NAME {
        words.extend(["--wallet.hotkey".to_string(), shell_quote(&wallet.hotkey)]);
    }
    words.extend([
        "--axon".to_string(),
        shell_quote(&target.to_string()),
        "--axon.hotkey".to_string(),
        shell_quote(hotkey),
        shell_quote("What is the capital of France?"),
    ]);
    words.join(" ")
}

/// `word` quoted for a POSIX shell when it needs to be.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The hotkey: loaded, or under `--dev` created first when missing.
fn load_hotkey(args: &CommonArgs) -> Result<Keypair, ServiceError> {
    let wallet = args.wallet.wallet();
    if args.dev {
        let status = wallet
            .create_hotkey_if_missing()
            .map_err(ServiceError::Wallet)?;
        let keypair = status.keypair();
        if status.was_created() {
            tracing::warn!(
                hotkey = %keypair.ss58_address(),
                file = %wallet.hotkey_path().display(),
                "--dev: created a new development hotkey"
            );
        } else {
            tracing::info!(
                hotkey = %keypair.ss58_address(),
                file = %wallet.hotkey_path().display(),
                "--dev: using the existing hotkey"
            );
        }
        return Ok(status.into_keypair());
    }
    wallet.load_hotkey().map_err(|e| match e {
        WalletError::NotFound { path } => ServiceError::MissingHotkey {
            path,
            name: wallet.name.clone(),
            hotkey: wallet.hotkey.clone(),
        },
        other => ServiceError::Wallet(other),
    })
}

/// Connects to subtensor, reads the metagraph and checks the hotkey is registered.
async fn chain_source(args: &CommonArgs, keypair: &Keypair) -> Result<Source, ServiceError> {
    let netuid = args.subtensor.netuid;
    let subtensor = prompting_chain::connect(&args.subtensor)
        .await
        .map_err(|e| ServiceError::chain("connecting", e))?;
    let metagraph = subtensor
        .fetch_metagraph(netuid)
        .await
        .map_err(|e| ServiceError::chain("reading the metagraph", e))?;
    let hotkey = keypair.ss58_address();
    let neuron = prompting_chain::registered_neuron(&metagraph, &hotkey)
        .map_err(|e| ServiceError::chain("checking registration", e))?;
    tracing::info!(
        netuid,
        uid = neuron.uid,
        block = metagraph.block,
        neurons = metagraph.neurons().len(),
        "hotkey registered"
    );
    Ok(Source::Chain {
        subtensor,
        shared: Arc::new(SharedMetagraph::new(metagraph)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/tmp/wallets"), "/tmp/wallets");
        assert_eq!(shell_quote("127.0.0.1:8091"), "127.0.0.1:8091");
        assert_eq!(shell_quote("[::1]:8091"), "'[::1]:8091'");
        assert_eq!(shell_quote("my wallet"), "'my wallet'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_dendrite_command_targets_loopback_and_names_the_wallet() {
        let wallet = WalletArgs {
            path: "/tmp/my wallets".into(),
            name: "miner".into(),
            hotkey: DEFAULT_HOTKEY_NAME.into(),
        };
        let command = dendrite_command("0.0.0.0:8091".parse().expect("addr"), &wallet, "5Hot");
        assert!(
            command.ends_with(
                " --wallet.path '/tmp/my wallets' --wallet.name miner --axon 127.0.0.1:8091 \
                 --axon.hotkey 5Hot 'What is the capital of France?'"
            ),
            "{command}"
        );
        let command = dendrite_command("[::]:9".parse().expect("addr"), &wallet, "5Hot");
        assert!(command.contains(" --axon '[::1]:9' "), "{command}");
    }
}
