//! Hadron's HTTP server (axum): the Gitea webhook, probes, metrics, a
//! read-only JSON API and a server-sent event stream.
//!
//! | route | what |
//! |---|---|
//! | `POST /hooks/gitea` | verify (size limit, HMAC-SHA256), record the delivery, send a [`Trigger`] |
//! | `GET /healthz` | 200 while the process answers (also on the probe listener) |
//! | `GET /readyz` | 200 once the store answers and the control repo was fetched, else 503 (also on the probe listener) |
//! | `GET /metrics` | Prometheus text format 0.0.4 ([`Metrics`]) (also on the probe listener) |
//! | `GET /api/v1/requests`, `GET /api/v1/requests/{name}` | request records from the store |
//! | `GET /api/v1/events` | one SSE `phase` event per [`PhaseChange`] sent by the loop |
//! | `GET /`, `GET /requests/{name}` | the dashboard: HTML from `templates/`, live over the event stream |
//!
//! The server does no reconcile work: it only verifies, records and triggers.
//! Error bodies are JSON `{ "error": reason, "message": … }`.
//!
//! Two listeners: the public one (everything above) and the probe listener
//! ([`probe_router`]: `/healthz`, `/readyz`, `/metrics` only), so that
//! nothing a client does on the public port can starve the probes. On the
//! public port, connections and event streams are limited per peer and in
//! total (see [`conn`] and `docs/http-limits.md`).

mod api;
pub mod conn;
mod dashboard;
mod error;
pub mod webhook;

/// The metrics the server renders live below both the server and the loop.
pub use crate::telemetry as metrics;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::{get, post};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};

pub use crate::forge::repo_full_name;
pub use crate::reconcile::trigger::Trigger;
pub use crate::telemetry::Metrics;
pub use api::{ApiRequest, LIST_MESSAGE_CHARS};
pub use error::ServerError;

use crate::reconcile::PhaseChange;
use crate::reconcile::dashboard_model::BoardCell;
use crate::store::Store;

/// Default limit of a webhook body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The webhook secret shared with Gitea. Never printed: `Debug` shows `***`.
#[derive(Clone)]
pub struct WebhookSecret(Arc<[u8]>);

impl WebhookSecret {
    /// Wraps `secret`; an empty secret is refused.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ServerError> {
        let bytes = secret.as_ref();
        if bytes.is_empty() {
            return Err(ServerError::EmptySecret);
        }
        Ok(Self(Arc::from(bytes)))
    }

    /// The secret's bytes, for computing the HMAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// Which repositories Hadron watches, as Gitea names them in payloads.
///
/// Repositories are compared by `owner/name`, case-insensitively (as Gitea
/// does). Targets may be given as `owner/name` or as clone URLs
/// (`https://host/owner/name.git`, `git@host:owner/name.git`): a URL matches by
/// its last two path segments, so the internal and public URL of the same
/// Gitea both match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRepoId {
    /// The control repo's `owner/name`.
    pub full_name: String,
    /// The control branch, e.g. `main`.
    pub branch: String,
    /// The watched target repos, as `owner/name` (lower case).
    pub targets: BTreeSet<String>,
    /// Whether every repository but the control repo counts as a target
    /// (the requests name their targets, and they change with every push;
    /// the loop ignores activity in repos it does not wait on).
    pub all_targets: bool,
}

impl ControlRepoId {
    /// The control repo `repo` (an `owner/name` or a clone URL) on `branch`, no targets.
    pub fn new(repo: &str, branch: &str) -> Self {
        Self { full_name: repo_full_name(repo), branch: branch.to_owned(), targets: BTreeSet::new(), all_targets: false }
    }

    /// Counts every repository but the control repo as a watched target.
    pub fn watching_all_targets(mut self) -> Self {
        self.all_targets = true;
        self
    }

    /// Adds a watched target repo (an `owner/name` or a clone URL).
    pub fn add_target(&mut self, repo: &str) {
        self.targets.insert(repo_full_name(repo));
    }

    /// Whether `full_name` (from a payload) is the control repo.
    pub fn is_control(&self, full_name: &str) -> bool {
        self.full_name.eq_ignore_ascii_case(full_name)
    }

    /// Whether `full_name` (from a payload) is a watched target repo.
    pub fn watches(&self, full_name: &str) -> bool {
        (self.all_targets && !self.is_control(full_name)) || self.targets.contains(&full_name.to_ascii_lowercase())
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ServerState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    webhook_secret: Option<WebhookSecret>,
    control: ControlRepoId,
    triggers: mpsc::Sender<Trigger>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    failing: Arc<std::sync::Mutex<Option<String>>>,
    events: broadcast::Sender<PhaseChange>,
    body_limit: usize,
    limits: Limits,
    relay_from: Option<String>,
    board: BoardCell,
    logs: LogSource,
    /// Set when the server shuts down, to end event streams.
    closing: watch::Sender<bool>,
    /// The event streams held open.
    streams: Arc<conn::Streams>,
}

/// How to build a [`ServerState`]; every field but the required ones has a default.
pub struct ServerConfig {
    /// The store.
    pub store: Store,
    /// The webhook secret; with none, every webhook is refused (401).
    pub webhook_secret: Option<WebhookSecret>,
    /// The control repo and the watched targets.
    pub control: ControlRepoId,
    /// Where triggers go (the reconcile loop).
    pub triggers: mpsc::Sender<Trigger>,
    /// The metrics (shared with the loop).
    pub metrics: Arc<Metrics>,
    /// Set by the loop once the control repo was fetched.
    pub ready: Arc<AtomicBool>,
    /// Set by the loop while passes keep failing (why), cleared by a good pass.
    pub failing: Arc<std::sync::Mutex<Option<String>>>,
    /// Phase events from the loop.
    pub events: broadcast::Sender<PhaseChange>,
    /// Largest webhook body accepted, in bytes.
    pub body_limit: usize,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// With several replicas (PostgreSQL): this replica's identity, and an
    /// accepted webhook's trigger is relayed to whichever replica leads.
    pub relay_from: Option<String>,
    /// What the dashboard shows (the loop rebuilds it).
    pub board: BoardCell,
    /// The driver, once the loop has one: the dashboard reads workers' logs through it.
    pub logs: LogSource,
}

/// Where the dashboard reads workers' logs: the leader's driver, set once it has one.
pub type LogSource = Arc<std::sync::OnceLock<Arc<dyn crate::workers::Driver>>>;

/// How long a client may take and how many may connect at once, so idle or
/// slow connections and held event streams cannot exhaust the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request line and headers, from the connection's start
    /// and again while a kept-alive connection waits for its next request.
    pub header_read_timeout: std::time::Duration,
    /// Time to send a webhook body once the headers are in.
    pub body_read_timeout: std::time::Duration,
    /// Connections open at once. At the limit, the oldest idle connection is
    /// closed to make room; when none is idle, the new one is refused (503).
    pub max_connections: usize,
    /// Connections of one peer (IP address) open at once; at the limit, as
    /// above among the peer's connections, refused with 429.
    pub max_connections_per_peer: usize,
    /// Event streams (`/api/v1/events`) open at once; more are refused (503).
    pub max_event_streams: usize,
    /// Event streams of one peer open at once; more are refused (429).
    pub max_event_streams_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: std::time::Duration::from_secs(10),
            body_read_timeout: std::time::Duration::from_secs(30),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_event_streams: DEFAULT_MAX_EVENT_STREAMS,
            max_event_streams_per_peer: DEFAULT_MAX_EVENT_STREAMS_PER_PEER,
        }
    }
}

impl Limits {
    /// The probe listener's: a kubelet or a load balancer asks a few times a
    /// minute, so few connections, and short timeouts.
    pub fn probes() -> Self {
        Limits {
            header_read_timeout: std::time::Duration::from_secs(5),
            body_read_timeout: std::time::Duration::from_secs(5),
            max_connections: 64,
            max_connections_per_peer: 64,
            max_event_streams: 0,
            max_event_streams_per_peer: 0,
        }
    }
}

/// Default of [`Limits::max_connections`] (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`Limits::max_connections_per_peer`] (`--max-connections-per-peer`).
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;
/// Default of [`Limits::max_event_streams`] (`--max-event-streams`).
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 512;
/// Default of [`Limits::max_event_streams_per_peer`] (`--max-event-streams-per-peer`).
pub const DEFAULT_MAX_EVENT_STREAMS_PER_PEER: usize = 32;
/// What a refused client is told to wait before trying again (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u64 = 5;

impl ServerConfig {
    /// A configuration with no secret, fresh metrics, not ready, a 1 MiB body limit
    /// and a new event channel (capacity 256).
    pub fn new(store: Store, control: ControlRepoId, triggers: mpsc::Sender<Trigger>) -> Self {
        Self {
            store,
            webhook_secret: None,
            control,
            triggers,
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(false)),
            failing: Arc::default(),
            events: broadcast::channel(256).0,
            body_limit: DEFAULT_BODY_LIMIT,
            limits: Limits::default(),
            relay_from: None,
            board: Arc::default(),
            logs: Arc::default(),
        }
    }
}

impl ServerState {
    /// The state of a server configured by `config`.
    pub fn new(config: ServerConfig) -> Self {
        let streams = conn::Streams::new(config.limits.max_event_streams, config.limits.max_event_streams_per_peer);
        Self {
            inner: Arc::new(Inner {
                store: config.store,
                webhook_secret: config.webhook_secret,
                control: config.control,
                triggers: config.triggers,
                metrics: config.metrics,
                ready: config.ready,
                failing: config.failing,
                events: config.events,
                body_limit: config.body_limit,
                limits: config.limits,
                relay_from: config.relay_from,
                board: config.board,
                logs: config.logs,
                closing: watch::channel(false).0,
                streams,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The webhook secret, if configured.
    pub fn webhook_secret(&self) -> Option<&WebhookSecret> {
        self.inner.webhook_secret.as_ref()
    }

    /// The control repo and watched targets.
    pub fn control(&self) -> &ControlRepoId {
        &self.inner.control
    }

    /// The trigger channel of the loop.
    pub fn triggers(&self) -> &mpsc::Sender<Trigger> {
        &self.inner.triggers
    }

    /// This replica's identity when triggers are relayed to the leader.
    pub fn relay_from(&self) -> Option<&str> {
        self.inner.relay_from.as_deref()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Whether the control repo was fetched at least once.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Why passes keep failing, while they do.
    pub fn failing(&self) -> Option<String> {
        self.inner.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The sender of phase events (the loop sends on it).
    pub fn events(&self) -> &broadcast::Sender<PhaseChange> {
        &self.inner.events
    }

    /// The webhook body limit in bytes.
    pub fn body_limit(&self) -> usize {
        self.inner.body_limit
    }

    /// Connection limits and timeouts.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The dashboard's board as the loop last built it.
    pub fn board(&self) -> Arc<crate::reconcile::dashboard_model::Board> {
        crate::reconcile::dashboard_model::current(&self.inner.board)
    }

    /// The driver, once the loop has one.
    pub fn driver(&self) -> Option<Arc<dyn crate::workers::Driver>> {
        self.inner.logs.get().cloned()
    }

    fn subscribe_events(&self) -> broadcast::Receiver<PhaseChange> {
        self.inner.events.subscribe()
    }

    /// The event streams held open, and their limits.
    pub fn streams(&self) -> &Arc<conn::Streams> {
        &self.inner.streams
    }

    fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Ends the event streams, so that a graceful shutdown does not wait on them.
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }
}

/// The probe listener's routes: what a kubelet, a load balancer or
/// Prometheus asks, on a port of their own.
pub fn probe_router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .fallback(api::not_found)
        .with_state(state)
}

/// `text` cut to at most `max` characters, with `…` in place of the rest:
/// what people and agents write is bounded where it is shown (pages, API
/// lists), whatever got through to the store.
pub fn shown(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// All routes of the server.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/hooks/gitea", post(webhook::gitea))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/api/v1/requests", get(api::list_requests))
        .route("/api/v1/requests/{name}", get(api::get_request))
        .route("/api/v1/events", get(api::events))
        .route("/", get(dashboard::index))
        .route("/requests/{name}", get(dashboard::request))
        .route("/assets/dashboard.css", get(dashboard::stylesheet))
        .route("/assets/dashboard.js", get(dashboard::script))
        .fallback(api::not_found)
        .with_state(state)
}

/// Binds `addr` and serves until `shutdown` completes (see [`serve_listener`]).
pub async fn serve(addr: SocketAddr, state: ServerState, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    let listener = bind(addr).await?;
    serve_listener(listener, state, shutdown).await
}

/// Binds a listening socket on `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr: addr.to_string(), source })
}

/// Serves every route on `listener` until `shutdown` completes, then stops
/// gracefully: no new connections, event streams end, requests in flight finish.
pub async fn serve_listener(
    listener: TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, webhooks = state.webhook_secret().is_some(), "HTTP server listening");
    }
    let app = router(state.clone());
    let limits = state.limits();
    serve_app(listener, app, limits, async move {
        shutdown.await;
        tracing::info!("HTTP server shutting down");
        state.close_streams();
    })
    .await
}

/// Serves the probe routes ([`probe_router`]) on `listener`, with the
/// limits of [`Limits::probes`], until `shutdown` completes.
pub async fn serve_probes(
    listener: TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "probe listener listening");
    }
    serve_app(listener, probe_router(state), Limits::probes(), shutdown).await
}

/// Refusals written at once, without waiting on the client, are at most
/// this many at a time; beyond, the answer is written if the socket takes it
/// and the connection closed.
const MAX_LINGERING_REFUSALS: usize = 64;

/// Accepts on `listener` and serves `app` on every connection the limits let
/// in, until `shutdown` completes. Accepting never waits on a client: a
/// connection beyond a limit makes room by closing an idle one, or is
/// refused with a one-line answer, and the loop goes on.
async fn serve_app(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let mut signal = std::pin::pin!(shutdown);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = conn::Connections::new(limits.max_connections, limits.max_connections_per_peer);
    let lingering = Arc::new(tokio::sync::Semaphore::new(MAX_LINGERING_REFUSALS));
    let mut refusals = RefusalLog::default();
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let peer = conn::peer_of(addr);
        let admitted = match connections.admit(peer) {
            Ok(admitted) => admitted,
            Err(scope) => {
                let error = match scope {
                    conn::Scope::Peer => ServerError::TooManyConnectionsFromPeer { peer, limit: limits.max_connections_per_peer },
                    conn::Scope::Total => ServerError::TooManyConnections { limit: limits.max_connections },
                };
                refusals.note(&error);
                refuse(stream, &error, &lingering);
                continue;
            }
        };
        if admitted.evicted_another {
            tracing::debug!(%peer, "connection limit reached: closed the oldest idle connection to make room");
        }
        let busy = admitted.busy.clone();
        let service = hyper::service::service_fn({
            let app = app.clone();
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                let guard = conn::Busy::new(&busy);
                request.extensions_mut().insert(conn::Peer(peer));
                let mut app = app.clone();
                async move {
                    let response = tower_service::Service::call(&mut app, request.map(axum::body::Body::new)).await?;
                    Ok::<_, std::convert::Infallible>(response.map(|inner| axum::body::Body::new(Tracked { inner, _busy: guard })))
                }
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    ended = &mut connection => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = admitted.evict.notified() => {
                        // Chosen while idle; a request that came in since is answered first.
                        if admitted.busy.load(Ordering::Acquire) == 0 {
                            tracing::debug!(%peer, "closing an idle connection to make room");
                            break;
                        }
                    }
                }
            }
            drop(admitted);
        });
    }
    // Requests in flight finish; event streams were told to end.
    graceful.shutdown().await;
    Ok(())
}

/// A response body that keeps its connection marked busy until it is sent.
struct Tracked {
    inner: axum::body::Body,
    _busy: conn::Busy,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers a connection the limits do not let in: the refusal as an HTTP
/// response, then closed. Written by a short task that waits for the client
/// to send its request (so the client reads the answer, not a reset), or,
/// with many refusals at once, written if the socket takes it and dropped.
fn refuse(stream: TcpStream, error: &ServerError, lingering: &Arc<tokio::sync::Semaphore>) {
    let answer = error.raw_response();
    match lingering.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    stream.write_all(&answer).await?;
                    stream.shutdown().await?;
                    let mut sink = [0u8; 4096];
                    let mut drained = 0;
                    while drained < 64 * 1024 {
                        match stream.read(&mut sink).await? {
                            0 => break,
                            n => drained += n,
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                drop(permit);
            });
        }
        Err(_) => {
            let _ = stream.try_write(&answer);
        }
    }
}

/// Refusals are logged once a minute with their count, not one line each
/// (a flood of them would flood the log too).
#[derive(Default)]
struct RefusalLog {
    since: Option<std::time::Instant>,
    count: u64,
}

impl RefusalLog {
    fn note(&mut self, error: &ServerError) {
        self.count += 1;
        let now = std::time::Instant::now();
        if self.since.is_none_or(|since| now.duration_since(since) >= std::time::Duration::from_secs(60)) {
            tracing::warn!(reason = error.reason(), refused = self.count, "{error} ({} refused in the last minute)", self.count);
            self.since = Some(now);
            self.count = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_from_urls_and_full_names() {
        assert_eq!(repo_full_name("Org/App"), "org/app");
        assert_eq!(repo_full_name("https://git.example.com/Org/App.git"), "org/app");
        assert_eq!(repo_full_name("http://gitea:3000/org/app/"), "org/app");
        assert_eq!(repo_full_name("git@git.example.com:org/app.git"), "org/app");
        assert_eq!(repo_full_name("https://user@host/sub/org/app.git"), "org/app");
    }

    #[test]
    fn secret_is_never_printed() {
        let s = WebhookSecret::new("hunter2").expect("non-empty");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(matches!(WebhookSecret::new(""), Err(ServerError::EmptySecret)));
    }
}
