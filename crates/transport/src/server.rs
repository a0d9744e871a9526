//! The HTTP server loop under every transport: one TCP port, HTTP/1.1 and HTTP/2 (h2c, for
//! gRPC) on the same socket, with the limits an operator sets and a graceful shutdown that
//! drains in-flight requests.
//!
//! # Every connection makes progress or goes
//!
//! A connection holds one of `--axon.max_connections` slots. It must deliver its first
//! request within `--axon.read_timeout` of being accepted (first byte, protocol detection,
//! the HTTP/2 preface, the request head: a socket that stalls anywhere there is closed). It
//! may then stay open between requests for `--axon.idle_timeout`. While it has requests in
//! flight it is busy, up to a request's longest life (`--axon.max_request_timeout` plus twice
//! the read timeout, for reading the body and writing the answer to a slow reader).
//!
//! When every slot is taken, a new connection does not wait while an idle one exists: the
//! idle connection of the lowest-ranked caller gives way (oldest idle first among equals).
//! Handlers rank a connection by the best authenticated caller seen on it
//! ([`ConnectionHandle::rank_caller`]): sockets that never sent a signed request rank
//! lowest, a registered validator's kept-alive connection ranks by its stake. Only when
//! every connection is busy does the new one wait (in the kernel's accept queue).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::Service;

use prompting_miner::log_limit::LogLimiter;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Time a new connection has to deliver its first request, and a client to send any
    /// request head.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open without a request in flight.
    pub idle_timeout: Duration,
    /// Longest time one request may keep its connection busy (body, handler, answer).
    pub request_lifetime: Duration,
    /// Time in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Shortest time between two log lines of the same kind an outsider can cause.
    pub log_interval: Duration,
    /// Where the server's counters go (`/metrics`); `None`: nowhere.
    pub stats: Option<Arc<ConnectionStats>>,
}

/// The limits as the connection tasks use them.
struct Limits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    request_lifetime: Duration,
    shutdown_grace: Duration,
    /// "connection ended with an error" (any client can end its connection badly).
    error_log: LogLimiter,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_lifetime: Duration::from_secs(320),
            shutdown_grace: Duration::from_secs(30),
            log_interval: Duration::from_secs(10),
            stats: None,
        }
    }
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete first request within the read timeout.
    NoFirstRequest,
    /// Idle longer than the idle timeout.
    Idle,
    /// Idle, and its slot went to a new connection at the connection limit.
    GaveWay,
    /// A request kept it busy longer than a request may live.
    RequestTooLong,
}

impl CloseReason {
    /// Every reason, in a stable order.
    pub const ALL: [CloseReason; 4] = [
        CloseReason::NoFirstRequest,
        CloseReason::Idle,
        CloseReason::GaveWay,
        CloseReason::RequestTooLong,
    ];

    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::NoFirstRequest => "no_first_request",
            CloseReason::Idle => "idle",
            CloseReason::GaveWay => "gave_way",
            CloseReason::RequestTooLong => "request_too_long",
        }
    }
}

/// Counters of the server loop, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    accepted: AtomicU64,
    open: AtomicU64,
    accept_errors: AtomicU64,
    closed: [AtomicU64; 4],
}

impl ConnectionStats {
    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Failed `accept()` calls (out of file descriptors and the like).
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    /// Connections the server closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].load(Ordering::Relaxed)
    }

    fn count_close(&self, reason: CloseReason) {
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// What the server knows of one connection.
struct ConnState {
    id: u64,
    accepted_at: Instant,
    inner: Mutex<ConnInner>,
    /// Something changed that may move the connection's deadline.
    changed: Notify,
    /// The registry's: told when the connection becomes idle (a waiting new connection
    /// may take its slot).
    registry_changed: Arc<Notify>,
}

struct ConnInner {
    /// Requests in flight: sequence number → start.
    active: BTreeMap<u64, Instant>,
    next_seq: u64,
    /// Whether a request has arrived.
    served: bool,
    /// When it last had no request in flight (accept time before the first request).
    idle_since: Instant,
    /// The best caller rank seen on it.
    rank: u64,
    /// Chosen to give way: close as soon as it is idle.
    evicted: bool,
}

impl ConnState {
    fn new(id: u64, now: Instant, registry_changed: Arc<Notify>) -> ConnState {
        ConnState {
            id,
            accepted_at: now,
            inner: Mutex::new(ConnInner {
                active: BTreeMap::new(),
                next_seq: 0,
                served: false,
                idle_since: now,
                rank: 0,
                evicted: false,
            }),
            changed: Notify::new(),
            registry_changed,
        }
    }

    fn begin(self: &Arc<Self>) -> RequestGuard {
        let mut inner = self.inner.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.served = true;
        inner.active.insert(seq, Instant::now());
        RequestGuard {
            conn: Arc::clone(self),
            seq,
        }
    }

    /// When the connection must next be looked at, and what is wrong if that time passes.
    fn deadline(&self, limits: &Limits) -> (Instant, CloseReason) {
        let inner = self.inner.lock();
        if let Some(oldest) = inner.active.values().min() {
            (
                *oldest + limits.request_lifetime,
                CloseReason::RequestTooLong,
            )
        } else if !inner.served {
            (
                self.accepted_at + limits.header_read_timeout,
                CloseReason::NoFirstRequest,
            )
        } else {
            (inner.idle_since + limits.idle_timeout, CloseReason::Idle)
        }
    }

    /// Whether the connection was chosen to give way and has nothing in flight.
    fn must_give_way(&self) -> bool {
        let inner = self.inner.lock();
        inner.evicted && inner.active.is_empty()
    }
}

/// Marks a request in flight on its connection until dropped (with the answer's body).
struct RequestGuard {
    conn: Arc<ConnState>,
    seq: u64,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut inner = self.conn.inner.lock();
        inner.active.remove(&self.seq);
        let idle = inner.active.is_empty();
        if idle {
            inner.idle_since = Instant::now();
        }
        drop(inner);
        self.conn.changed.notify_one();
        if idle {
            self.conn.registry_changed.notify_one();
        }
    }
}

/// The connection a request came on, for handlers (an extension of every request).
#[derive(Clone)]
pub struct ConnectionHandle(Arc<ConnState>);

impl ConnectionHandle {
    /// Records that an authenticated caller of `rank` used this connection: at the
    /// connection limit, idle connections of lower rank give way first.
    pub fn rank_caller(&self, rank: u64) {
        let mut inner = self.0.inner.lock();
        inner.rank = inner.rank.max(rank);
    }
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.0.id)
            .finish_non_exhaustive()
    }
}

/// The open connections and their slots.
struct Registry {
    capacity: usize,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    /// A connection closed or became idle.
    changed: Arc<Notify>,
}

impl Registry {
    /// A slot for a new connection: a free one, or the one of the idle connection that
    /// ranks lowest (oldest idle first), which is told to close. `None` when all are busy.
    fn admit(&self, stats: &ConnectionStats) -> Option<Arc<ConnState>> {
        let mut conns = self.conns.lock();
        if conns.len() >= self.capacity {
            let victim = conns
                .values()
                .filter_map(|conn| {
                    let inner = conn.inner.lock();
                    (inner.active.is_empty() && !inner.evicted)
                        .then(|| (inner.rank, inner.idle_since, Arc::clone(conn)))
                })
                .min_by_key(|(rank, idle_since, _)| (*rank, *idle_since))
                .map(|(_, _, conn)| conn)?;
            conns.remove(&victim.id);
            victim.inner.lock().evicted = true;
            victim.changed.notify_one();
            stats.count_close(CloseReason::GaveWay);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState::new(
            id,
            Instant::now(),
            Arc::clone(&self.changed),
        ));
        conns.insert(id, Arc::clone(&conn));
        Some(conn)
    }

    fn remove(&self, id: u64) {
        self.conns.lock().remove(&id);
        self.changed.notify_one();
    }
}

/// The router behind one connection: counts its requests in flight (until the answer's
/// body is done) and hands handlers a [`ConnectionHandle`].
#[derive(Clone)]
struct Tracked {
    router: Router,
    conn: Arc<ConnState>,
    peer: SocketAddr,
}

impl<B> Service<Request<B>> for Tracked
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let guard = self.conn.begin();
        request.extensions_mut().insert(PeerAddr(self.peer));
        request
            .extensions_mut()
            .insert(ConnectionHandle(Arc::clone(&self.conn)));
        let answer = self.router.call(request.map(Body::new));
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// An answer's body that keeps its request counted in flight until it is dropped.
struct GuardedBody {
    body: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Time an idle or evicted connection gets to close by itself (HTTP/2 GOAWAY) before it is
/// dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits up
/// to `limits.shutdown_grace` for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let stats = limits.stats.clone().unwrap_or_default();
    let registry = Arc::new(Registry {
        capacity: limits.max_connections.max(1),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        changed: Arc::new(Notify::new()),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's minimum read buffer is 8 KiB; the buffer bounds the request head.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let accept_log = LogLimiter::new(limits.log_interval);
    let limits = Arc::new(Limits {
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        request_lifetime: limits.request_lifetime,
        shutdown_grace: limits.shutdown_grace,
        error_log: LogLimiter::new(limits.log_interval),
    });
    let (stop, stopping) = watch::channel(false);
    let tasks = Arc::new(AtomicU64::new(0));

    tokio::pin!(shutdown);
    'accept: loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = accept_log.admit() {
                        tracing::warn!(error = %err, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let conn = loop {
            if let Some(conn) = registry.admit(&stats) {
                break conn;
            }
            // Every connection is busy: wait for one to finish or go idle.
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                _ = registry.changed.notified() => {}
            }
        };
        let _ = stream.set_nodelay(true);
        let task = ConnectionTask {
            conn,
            stream,
            peer,
            router: router.clone(),
            builder: Arc::clone(&builder),
            limits: Arc::clone(&limits),
            registry: Arc::clone(&registry),
            stats: Arc::clone(&stats),
            stopping: stopping.clone(),
        };
        let tasks = Arc::clone(&tasks);
        tasks.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            task.run().await;
            tasks.fetch_sub(1, Ordering::AcqRel);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let deadline = Instant::now() + limits.shutdown_grace;
    while tasks.load(Ordering::Acquire) > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(grace = ?limits.shutdown_grace, "shutdown grace period over; closing remaining connections");
            return Ok(());
        }
        tokio::select! {
            _ = registry.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    tracing::info!("all connections drained");
    Ok(())
}

/// One accepted connection and what it needs to be served.
struct ConnectionTask {
    conn: Arc<ConnState>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    registry: Arc<Registry>,
    stats: Arc<ConnectionStats>,
    stopping: watch::Receiver<bool>,
}

impl ConnectionTask {
    async fn run(self) {
        let ConnectionTask {
            conn,
            stream,
            peer,
            router,
            builder,
            limits,
            registry,
            stats,
            mut stopping,
        } = self;
        stats.open.fetch_add(1, Ordering::Relaxed);
        let service = TowerToHyperService::new(Tracked {
            router,
            conn: Arc::clone(&conn),
            peer,
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        tokio::pin!(connection);
        // Once closing: when to stop waiting for the connection to end by itself.
        let mut closing: Option<Instant> = None;
        loop {
            if closing.is_none() && conn.must_give_way() {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            let (deadline, reason) = conn.deadline(&limits);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result
                        && let Some(suppressed) = limits.error_log.admit()
                    {
                        tracing::debug!(%peer, error = %err, suppressed, "connection ended with an error");
                    }
                    break;
                }
                _ = conn.changed.notified() => {}
                _ = tokio::time::sleep_until(deadline), if closing.is_none() => {
                    // The deadline may have moved since it was read.
                    let (now_deadline, now_reason) = conn.deadline(&limits);
                    if now_deadline <= Instant::now() && now_reason == reason {
                        stats.count_close(reason);
                        if reason == CloseReason::RequestTooLong {
                            break;
                        }
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + CLOSE_GRACE);
                    }
                }
                _ = stopping.changed(), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + limits.shutdown_grace);
                }
                _ = tokio::time::sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => break,
            }
        }
        registry.remove(conn.id);
        stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The remote address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
