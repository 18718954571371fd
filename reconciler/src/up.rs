//! `hadron up`, `hadron approve`, `hadron ci-status`: the embedded default —
//! one process, SQLite, local child-process workers, control repo on a local
//! path — and the two things a person does to it by hand.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use crate::forge::{GiteaClient, GiteaConfig, RepoRef, TokenSource};
use crate::ids::Installation;
use crate::leader::{self, ElectionConfig, Elector, Leadership};
use crate::model::Phase;
use crate::plan::PlanConfig;
use crate::reconcile::forge_step::ForgeLink;
use crate::reconcile::steps::StepFailure;
use crate::reconcile::{self, Context, LoopConfig, PassReport, ReconcileError, Telemetry, urls};
use crate::redact::inert_for_terminal as inert;
use crate::seed;
use crate::server::{self, ControlRepoId, Metrics, ServerConfig, ServerState, Trigger, WebhookSecret};
use crate::store::{Backend, Store};
use crate::workers::kubernetes::JobTemplate;
use crate::workers::{Driver, KubernetesDriver, KubernetesOptions, LocalDriver, WorkerCommand};

/// Why `up` (or a helper command) could not run.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// Seeding the local repos failed.
    #[error("{0}")]
    Seed(#[from] seed::SeedError),
    /// The store could not be opened.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The loop could not be set up.
    #[error("{0}")]
    Reconcile(#[from] ReconcileError),
    /// The gate command failed.
    #[error("{0}")]
    Gate(#[from] crate::gates::GateError),
    /// Something else the user must fix.
    #[error("{0}")]
    Usage(String),
    /// The Gitea connection is misconfigured.
    #[error("{0}")]
    Forge(#[from] crate::forge::GiteaError),
    /// The HTTP server could not start.
    #[error("{0}")]
    Server(#[from] crate::server::ServerError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl UpError {
    /// Stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            UpError::Seed(e) => e.reason(),
            UpError::Store(e) => e.reason(),
            UpError::Reconcile(e) => e.reason(),
            UpError::Gate(e) => e.reason(),
            UpError::Usage(_) => "Usage",
            UpError::Forge(e) => e.reason(),
            UpError::Server(e) => e.reason(),
            UpError::Io { .. } => "Io",
        }
    }
}

/// Options of `hadron up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// A control-repo folder (seeded) or git repository (used as is).
    pub dir: PathBuf,
    /// Hadron's data dir (default `.hadron` in the current directory).
    pub data_dir: PathBuf,
    /// Control-repo branch.
    pub branch: String,
    /// Return once every request is terminal or waiting on a person.
    pub exit_when_idle: bool,
    /// Poll interval.
    pub poll_interval: Duration,
    /// `DATABASE_URL`, when set: PostgreSQL (or another SQLite file).
    pub database_url: Option<String>,
    /// The program that runs `worker --run` (normally this executable).
    pub worker_program: PathBuf,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Where the HTTP server listens (port 0: any free port, printed). None:
    /// [`DEFAULT_LISTEN`], or any free port when that one is taken.
    pub listen: Option<SocketAddr>,
    /// Where the probe listener (`/healthz`, `/readyz`, `/metrics`) listens.
    /// None: the HTTP server's host, port [`DEFAULT_PROBE_PORT`], or any
    /// free port (printed) when that one is taken.
    pub probe_listen: Option<SocketAddr>,
    /// Connection and event-stream limits of the HTTP server.
    pub http_limits: crate::server::Limits,
    /// Watch a local control repo's refs (pushes trigger at once).
    pub watch: bool,
    /// The forge, if any.
    pub forge: ForgeOptions,
    /// Where the webhook secret comes from (none: webhooks are refused).
    pub webhook_secret: Option<SecretSource>,
    /// Variables of Hadron's environment agents may name in `secretRef`.
    pub agent_secrets: Vec<String>,
    /// What is kept how long.
    pub retention: crate::reconcile::housekeeping::Retention,
    /// While workers run, the shortest time between two status commits.
    pub status_interval: Duration,
    /// With PostgreSQL, how long the leader lease lasts without renewal.
    pub lease_duration: Duration,
    /// The local driver's run directories (default: `runs/` in the data dir).
    pub runs_dir: Option<PathBuf>,
    /// Where workers run.
    pub driver: DriverOptions,
    /// The installation's name; `None`: derived from the control repo's URL and branch.
    pub installation: Option<Installation>,
}

/// Variables that hold Hadron's own credentials or configuration: never an agent's secret.
pub const RESERVED_SECRETS: &[&str] = &["DATABASE_URL", "GITEA_TOKEN", "HADRON_WEBHOOK_SECRET"];

/// Refuses an agent-secret allow-list that names one of Hadron's own credentials.
pub fn check_agent_secrets(allowed: &[String], own: &[&str]) -> Result<(), UpError> {
    for name in allowed {
        let reserved = RESERVED_SECRETS.contains(&name.as_str()) || own.contains(&name.as_str()) || name.starts_with("HADRON_");
        if reserved {
            return Err(UpError::Usage(format!(
                "--agent-secret {name} names one of Hadron's own credentials or settings; give the agent a variable of its own (e.g. AGENT_{name}) holding only what it needs"
            )));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(UpError::Usage(format!("--agent-secret `{name}` is not an environment variable name (letters, digits, `_`)")));
        }
    }
    Ok(())
}

/// Where a secret comes from: never the control repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// This environment variable.
    Env(String),
    /// This file (for example a mounted Kubernetes Secret), trimmed.
    File(PathBuf),
}

impl SecretSource {
    fn load(&self) -> Result<String, UpError> {
        let (from, value) = match self {
            SecretSource::Env(name) => (format!("environment variable {name}"), std::env::var(name).map_err(|e| e.to_string())),
            SecretSource::File(path) => (format!("file {}", path.display()), std::fs::read_to_string(path).map_err(|e| e.to_string())),
        };
        match value {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
            Ok(_) => {
                Err(UpError::Usage(format!("the webhook secret in {from} is empty; set it to the secret configured in the Gitea webhook")))
            }
            Err(why) => Err(UpError::Usage(format!(
                "the webhook secret could not be read from {from}: {why}; set it to the secret configured in the Gitea webhook"
            ))),
        }
    }
}

/// Where workers run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DriverOptions {
    /// Child processes of Hadron, one run directory each.
    #[default]
    Local,
    /// One Kubernetes Job per worker.
    Kubernetes {
        /// Namespace of the Jobs; default: the client's (the pod's own in a cluster).
        namespace: Option<String>,
        /// Image for agents that name none.
        image: String,
        /// Service account of the worker pods; default: the namespace's default.
        service_account: Option<String>,
        /// `activeDeadlineSeconds` of a Job whose run has no wall time.
        deadline_seconds: i64,
        /// Where the worker pods reach the git server (empty: the clone URL's host and port).
        git_egress: Vec<crate::workers::kubernetes::GitEgress>,
    },
}

/// Which forge Hadron talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeOptions {
    /// None: approvals are merges of local branches, CI statuses come from `hadron ci-status`.
    None,
    /// Gitea at `base_url`.
    Gitea {
        /// Web address, e.g. `https://gitea.example.com`.
        base_url: String,
        /// `owner/repo` of the control repo; default: from the control URL.
        repo: Option<String>,
        /// Where the API token comes from.
        token: TokenSource,
    },
}

fn absolute(p: &Path) -> Result<PathBuf, UpError> {
    std::path::absolute(p).map_err(|source| UpError::Io { path: p.to_owned(), source })
}

/// Opens the store: `DATABASE_URL` when given, else SQLite in the data dir.
pub async fn open_store(database_url: Option<&str>, data_dir: &Path) -> Result<Store, UpError> {
    Ok(match database_url.filter(|u| !u.is_empty()) {
        Some(url) => Store::connect(url).await?,
        None => Store::open_data_dir(data_dir).await?,
    })
}

/// The control repo `up` uses for `dir`: the folder itself when it is a git
/// repository, else the seeded bare repo under the data dir.
pub fn control_repo(dir: &Path, data_dir: &Path, out: &mut dyn Write) -> Result<PathBuf, UpError> {
    if seed::is_git_repo(dir) {
        return absolute(dir);
    }
    if !dir.is_dir() {
        return Err(UpError::Usage(format!("`{}` is not a folder; pass a control-repo folder such as example-repo", dir.display())));
    }
    let seeded = seed::seed(dir, data_dir)?;
    let control = absolute(&seeded.control)?;
    if seeded.created {
        let _ = writeln!(out, "seeded control repo {}", inert(&control.display().to_string()));
        for (name, path) in &seeded.targets {
            let _ = writeln!(out, "seeded target repo  {}: {}", inert(name), inert(&path.display().to_string()));
        }
    } else {
        let _ = writeln!(out, "reusing control repo {}", inert(&control.display().to_string()));
    }
    let _ = writeln!(out, "clone it to ask for work:  git clone {} my-control", inert(&control.display().to_string()));
    Ok(control)
}

/// `hadron up`: seeds a control-repo folder if needed, then runs Hadron on it.
pub async fn up(opts: UpOptions, out: &mut (dyn Write + Send)) -> Result<i32, UpError> {
    sandbox_warning(&opts.driver, out);
    let data_dir = absolute(&opts.data_dir)?;
    std::fs::create_dir_all(&data_dir).map_err(|source| UpError::Io { path: data_dir.clone(), source })?;
    let lock = lock_data_dir(&data_dir)?;
    let control = control_repo(&opts.dir, &data_dir, out)?;
    run(opts, control.to_string_lossy().into_owned(), data_dir, lock, out).await
}

/// `hadron serve`: runs Hadron on the control repo at `control_url` as it is.
pub async fn serve(opts: UpOptions, control_url: String, out: &mut (dyn Write + Send)) -> Result<i32, UpError> {
    sandbox_warning(&opts.driver, out);
    let data_dir = absolute(&opts.data_dir)?;
    std::fs::create_dir_all(&data_dir).map_err(|source| UpError::Io { path: data_dir.clone(), source })?;
    let lock = lock_data_dir(&data_dir)?;
    run(opts, control_url, data_dir, lock, out).await
}

/// The file in the data dir that one running `up` or `serve` holds locked.
pub const LOCK_FILE: &str = "hadron.lock";

/// The data dir's lock, held while `up` or `serve` runs (released by the
/// kernel when the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Locks `data_dir` for this process, or says which process holds it: the
/// SQLite store, the git clones and the run directories in it are one
/// process's own.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, UpError> {
    use nix::fcntl::{Flock, FlockArg};
    let path = data_dir.join(LOCK_FILE);
    let io = |source| UpError::Io { path: path.clone(), source };
    let file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            lock.set_len(0).map_err(io)?;
            (&*lock).write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io)?;
            Ok(DataDirLock(lock))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path).ok().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty());
            Err(UpError::Usage(format!(
                "another Hadron ({}) runs on the data dir {}: one process per data dir, since the SQLite store, the git clones and \
                 the run directories in it are its own. Stop that one (Ctrl-C or SIGTERM) or pass another --data-dir; to run \
                 several replicas, give each its own data dir and one shared PostgreSQL store (DATABASE_URL)",
                pid.map_or_else(|| "its process id is unknown".to_owned(), |p| format!("pid {p}")),
                data_dir.display()
            )))
        }
        Err((_, errno)) => Err(io(std::io::Error::from(errno))),
    }
}

/// The exit code of a replica that lost the leader lease: it stopped
/// acting, and a restart (Kubernetes restarts it) rejoins as a follower.
pub const LOST_LEASE_EXIT: i32 = 3;

/// While this replica leads: turns the triggers other replicas relay
/// (webhooks they took) into triggers of this loop. Its own relays are
/// skipped (the webhook reached this loop already). Ends when the loop's
/// queue is gone.
fn spawn_relay_listener(store: Store, identity: String, tx: mpsc::Sender<Trigger>) {
    tokio::spawn(async move {
        let mut listener = loop {
            match store.relay_listener().await {
                Ok(listener) => break listener,
                Err(e) => {
                    tracing::warn!(reason = e.reason(), "cannot listen for relayed webhooks: {e}; retrying (the poll is the safety net)");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        loop {
            match listener.next().await.map(|payload| (crate::reconcile::trigger::Relayed::from_payload(&payload), payload)) {
                Ok((None, payload)) => tracing::warn!(%payload, "ignored a notification that is not a relayed trigger"),
                Ok((Some(relayed), _)) if relayed.from == identity => {}
                Ok((Some(relayed), _)) => {
                    tracing::debug!(from = %relayed.from, trigger = relayed.trigger.kind(), "relayed trigger");
                    if tx.send(relayed.trigger).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(reason = e.reason(), "relayed webhooks: {e}; listening again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// Waits until this replica leads (returns its epoch) or is stopped
/// (`None`), saying who leads meanwhile. A follower is ready (`/readyz`):
/// it serves health, metrics, the read API and webhooks.
async fn await_leadership(
    lead_rx: &mut watch::Receiver<Leadership>,
    triggers: &mut mpsc::Receiver<Trigger>,
    mut stop: watch::Receiver<bool>,
    identity: &str,
    telemetry: &Telemetry,
    out: &mut (dyn Write + Send),
) -> Option<i64> {
    let _ = writeln!(out, "leader election: this replica is {}; the lease holder runs the loop", inert(identity));
    let _ = out.flush();
    loop {
        let now = lead_rx.borrow_and_update().clone();
        match now {
            Leadership::Leader { epoch } => {
                telemetry.metrics.set_leader(true, epoch);
                let _ = writeln!(out, "{}  leading (epoch {epoch})", crate::time::rfc3339(crate::time::now()));
                let _ = out.flush();
                return Some(epoch);
            }
            Leadership::Follower { leader } => {
                telemetry.ready.store(true, std::sync::atomic::Ordering::Release);
                telemetry.metrics.set_leader(false, leader.as_ref().map_or(0, |(_, e)| *e));
                let who = leader.map_or_else(|| "nobody yet".to_owned(), |(holder, epoch)| format!("{holder} (epoch {epoch})"));
                let _ = writeln!(
                    out,
                    "{}  following: the leader is {who}; taking over if its lease expires",
                    crate::time::rfc3339(crate::time::now())
                );
                let _ = out.flush();
            }
            Leadership::Unknown => {}
        }
        // Triggers (webhooks, polls, watch events) are dropped while
        // following: what they announce is in git and in the store, and
        // the first pass of a new leader fetches and reads it all. A full
        // queue would refuse webhooks instead.
        loop {
            tokio::select! {
                changed = lead_rx.changed() => if changed.is_err() { return None } else { break },
                _ = stop.wait_for(|s| *s) => return None,
                Some(trigger) = triggers.recv() => tracing::debug!(trigger = trigger.kind(), "following: trigger left to the leader"),
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The HTTP server's address when none is given.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// The probe listener's port when none is given (the one Kubernetes
/// controllers built with controller-runtime use for their probes).
pub const DEFAULT_PROBE_PORT: u16 = 8081;

/// Binds the probe listener: the address asked for, or the HTTP server's host
/// on [`DEFAULT_PROBE_PORT`] and, when that one is taken, any free port there.
async fn listen_probes(
    asked: Option<SocketAddr>,
    public: SocketAddr,
    out: &mut (dyn Write + Send),
) -> Result<tokio::net::TcpListener, UpError> {
    match asked {
        Some(addr) => server::bind(addr).await.map_err(|e| {
            UpError::Usage(format!(
                "{e}; pass --probe-listen 127.0.0.1:0 (or set HADRON_PROBE_LISTEN=127.0.0.1:0) to take any free port, or free {addr}"
            ))
        }),
        None => {
            let default = SocketAddr::new(public.ip(), DEFAULT_PROBE_PORT);
            match server::bind(default).await {
                Ok(listener) => Ok(listener),
                Err(e) => {
                    tracing::debug!(error = %e, "default probe address taken");
                    let _ = writeln!(out, "{default} is taken; probes use a free port instead (--probe-listen sets one)");
                    Ok(server::bind(SocketAddr::new(public.ip(), 0)).await?)
                }
            }
        }
    }
}

/// Binds the HTTP server: the address asked for, or the default and, when
/// that one is taken, any free port on loopback.
async fn listen(asked: Option<SocketAddr>, out: &mut (dyn Write + Send)) -> Result<tokio::net::TcpListener, UpError> {
    match asked {
        Some(addr) => server::bind(addr).await.map_err(|e| {
            UpError::Usage(format!(
                "{e}; pass --listen 127.0.0.1:0 (or set HADRON_LISTEN=127.0.0.1:0) to take any free port, or free {addr}"
            ))
        }),
        None => match server::bind(DEFAULT_LISTEN).await {
            Ok(listener) => Ok(listener),
            Err(e) => {
                tracing::debug!(error = %e, "default address taken");
                let _ = writeln!(out, "{DEFAULT_LISTEN} is taken (another hadron?); using a free port instead (--listen sets one)");
                let any = SocketAddr::new(DEFAULT_LISTEN.ip(), 0);
                Ok(server::bind(any).await?)
            }
        },
    }
}

/// The driver `opts` ask for; `on_exit` is called when a worker exits.
async fn make_driver(
    opts: &UpOptions,
    installation: &Installation,
    runs_dir: PathBuf,
    epoch: Option<i64>,
    on_exit: impl Fn(&str) + Send + Sync + 'static,
) -> Result<Arc<dyn Driver>, UpError> {
    Ok(match &opts.driver {
        DriverOptions::Local => Arc::new(
            LocalDriver::new(runs_dir, WorkerCommand::hadron(opts.worker_program.clone()))
                .map_err(ReconcileError::from)?
                .with_agent_secrets(opts.agent_secrets.iter().cloned())
                .with_installation(installation.clone())
                .with_exit_hook(on_exit),
        ),
        DriverOptions::Kubernetes { namespace, image, service_account, deadline_seconds, git_egress } => {
            let client = crate::workers::kubernetes::client().await.map_err(ReconcileError::from)?;
            let namespace = namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
            let mut template = JobTemplate::new(namespace, image.clone());
            template.service_account = service_account.clone();
            template.default_deadline_seconds = *deadline_seconds;
            template.git_egress = git_egress.clone();
            let mut k8s = KubernetesOptions::new(template);
            k8s.epoch = epoch;
            k8s.agent_secrets = opts.agent_secrets.iter().cloned().collect();
            k8s.on_exit = Some(Arc::new(on_exit));
            k8s.installation = installation.clone();
            Arc::new(KubernetesDriver::new(client, k8s))
        }
    })
}

/// The first line of `up` and `serve` when the local driver cannot confine
/// agents: why, and the fix. Nothing when it can (or workers are pods).
fn sandbox_warning(driver: &DriverOptions, out: &mut (dyn Write + Send)) {
    if let (DriverOptions::Local, Err(why)) = (driver, crate::workers::sandbox::Sandbox::probe()) {
        let _ = writeln!(
            out,
            "warning: agents will run UNCONFINED (they can read what this user can, Hadron's files included): {why}. \
             Their stages are marked `unconfined` in status files and on the dashboard; \
             `spec.workers.sandbox: required` in hadron.yaml refuses to run them instead."
        );
    }
}

/// One line on where workers run.
fn driver_line(driver: &DriverOptions, installation: &Installation) -> String {
    match driver {
        DriverOptions::Local => match crate::workers::sandbox::Sandbox::probe() {
            Ok(_) => "local processes, each agent in a bubblewrap sandbox".to_owned(),
            Err(_) => "local processes, agents UNCONFINED (see the first line)".to_owned(),
        },
        DriverOptions::Kubernetes { namespace, image, .. } => format!(
            "Kubernetes Jobs in namespace {} (default image {image}; `kubectl get jobs -l {}`)",
            namespace.as_deref().unwrap_or("of the service account"),
            crate::workers::kubernetes::selector(installation)
        ),
    }
}

async fn run(
    opts: UpOptions,
    control_url: String,
    data_dir: PathBuf,
    _lock: DataDirLock,
    out: &mut (dyn Write + Send),
) -> Result<i32, UpError> {
    let secret = match &opts.webhook_secret {
        Some(source) => Some(WebhookSecret::new(source.load()?)?),
        None => None,
    };
    let forge = match &opts.forge {
        ForgeOptions::None => None,
        ForgeOptions::Gitea { base_url, repo, token } => {
            if secret.is_none() {
                return Err(UpError::Usage(
                    "with --forge gitea a webhook secret is needed: set HADRON_WEBHOOK_SECRET or pass --webhook-secret-env/--webhook-secret-file"
                        .to_owned(),
                ));
            }
            let control = match repo {
                Some(r) => RepoRef::parse(r)?,
                None => RepoRef::parse(&crate::forge::repo_full_name(&control_url)).map_err(|_| {
                    UpError::Usage(format!("cannot tell the Gitea owner/repo of {control_url}; pass --gitea-repo OWNER/REPO"))
                })?,
            };
            let client = GiteaClient::new(GiteaConfig::new(base_url.clone(), token.clone(), control))?;
            Some(client)
        }
    };
    let own: Vec<&str> = match (&opts.forge, &opts.webhook_secret) {
        (ForgeOptions::Gitea { token: TokenSource::Env(name), .. }, Some(SecretSource::Env(secret))) => {
            vec![name.as_str(), secret.as_str()]
        }
        (ForgeOptions::Gitea { token: TokenSource::Env(name), .. }, _) => vec![name.as_str()],
        (_, Some(SecretSource::Env(secret))) => vec![secret.as_str()],
        _ => Vec::new(),
    };
    check_agent_secrets(&opts.agent_secrets, &own)?;
    let store = open_store(opts.database_url.as_deref(), &data_dir).await?;
    let _ = writeln!(out, "store: {}", inert(store.location()));
    let (tx, mut rx) = mpsc::channel::<Trigger>(256);
    // A worker exit is a trigger, like a push.
    let exit_tx = tx.clone();
    let runs_dir = match &opts.runs_dir {
        Some(dir) => absolute(dir)?,
        None => data_dir.join("runs"),
    };
    // Whose workers this Hadron's are: replicas of one installation share them.
    let installation = opts.installation.clone().unwrap_or_else(|| Installation::derived(&control_url, &opts.branch));
    let driver_name = match opts.driver {
        DriverOptions::Local => "local",
        DriverOptions::Kubernetes { .. } => "kubernetes",
    };
    let cfg = LoopConfig {
        control_url: control_url.clone(),
        branch: opts.branch.clone(),
        data_dir: data_dir.clone(),
        poll_interval: opts.poll_interval,
        plan: PlanConfig {
            backoff_base_ms: i64::try_from(opts.backoff_base.as_millis()).unwrap_or(10_000),
            installation: installation.clone(),
            ..PlanConfig::default()
        },
        driver_name: driver_name.into(),
        retention: opts.retention.clone(),
        status_interval: opts.status_interval,
    };
    let telemetry = Telemetry {
        metrics: Arc::new(Metrics::new()),
        ready: Arc::new(AtomicBool::new(false)),
        events: broadcast::channel(256).0,
        failing: Arc::default(),
        board: Arc::default(),
    };
    let forge_name = forge.as_ref().map(|c| c.control().to_string());

    // Watch and poll the control repo; each is a trigger for the loop.
    let (source_tx, mut source_rx) = mpsc::channel::<()>(16);
    let mut source_cfg = cfg.source_config();
    if !opts.watch {
        source_cfg = source_cfg.without_watch();
    }
    let _source_triggers = crate::source::spawn_triggers(&source_cfg, source_tx);
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while source_rx.recv().await.is_some() {
                if tx.send(Trigger::Poll).await.is_err() {
                    return;
                }
            }
        });
    }

    // `hadron ci-status` on this data dir triggers a pass at once.
    let _nudges = watch_nudges(&data_dir, tx.clone())?;

    // The HTTP server: on every replica, leader or not.
    let control_id = ControlRepoId::new(forge_name.as_deref().unwrap_or(&control_url), &opts.branch).watching_all_targets();
    let mut server_cfg = ServerConfig::new(store.clone(), control_id, tx.clone());
    server_cfg.webhook_secret = secret;
    server_cfg.metrics = telemetry.metrics.clone();
    server_cfg.ready = telemetry.ready.clone();
    server_cfg.failing = telemetry.failing.clone();
    server_cfg.events = telemetry.events.clone();
    server_cfg.board = telemetry.board.clone();
    let logs = server_cfg.logs.clone();
    // With PostgreSQL, replicas may share the store: this one's identity in
    // the lease, and webhooks it takes are relayed to whichever one leads.
    let identity = (store.backend() == Backend::Postgres).then(leader::identity);
    server_cfg.relay_from = identity.clone();
    server_cfg.limits = opts.http_limits;
    let listener = listen(opts.listen, out).await?;
    let addr = listener.local_addr().map_err(|e| UpError::Io { path: PathBuf::from("listening socket"), source: e })?;
    let probe_listener = listen_probes(opts.probe_listen, addr, out).await?;
    let probe_addr = probe_listener.local_addr().map_err(|e| UpError::Io { path: PathBuf::from("probe socket"), source: e })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server_state = ServerState::new(server_cfg);
    // The probes on a listener of their own: nothing on the public port starves them.
    {
        let mut stop = stop_rx.clone();
        tokio::spawn(server::serve_probes(probe_listener, server_state.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let server_task = {
        let mut stop = stop_rx.clone();
        tokio::spawn(server::serve_listener(listener, server_state, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            terminated().await;
            stop_tx.send_replace(true);
        });
    }
    let _ = writeln!(
        out,
        "serving http://{addr} (dashboard: open it in a browser; webhooks: POST /hooks/gitea; /healthz /readyz /metrics /api/v1/requests /api/v1/events)"
    );
    let _ = writeln!(out, "probes: http://{probe_addr}/healthz /readyz /metrics (a listener of their own)");
    match &forge_name {
        Some(repo) => {
            let _ = writeln!(out, "forge: gitea, control repo {}", inert(&repo.to_string()));
        }
        None => {
            let _ = writeln!(out, "forge: none (approve by merging hadron/approve/* branches; CI via `hadron ci-status`)");
        }
    }

    // With PostgreSQL, several replicas may share the store: the one that
    // holds the lease runs the loop, its writes fenced by the lease's epoch.
    // The check every side effect of the leader passes first (none with one replica).
    let mut lease = crate::leader::LeaseGuard::unguarded();
    let (store, leadership) = match identity {
        None => {
            telemetry.metrics.set_leader(true, 0);
            (store, None)
        }
        Some(identity) => {
            let election = ElectionConfig::new(identity.clone(), opts.lease_duration);
            let (lead_tx, mut lead_rx) = watch::channel(Leadership::Unknown);
            // The elector gives the lease up only once the loop has stopped
            // (its last writes are still the leader's).
            let (elector_stop, elector_stop_rx) = watch::channel(false);
            let elector = Elector::new(store.clone(), election);
            let guards = elector.guards();
            let elector = tokio::spawn(elector.run(lead_tx, elector_stop_rx));
            let Some(epoch) = await_leadership(&mut lead_rx, &mut rx, stop_rx.clone(), &identity, &telemetry, out).await else {
                elector_stop.send_replace(true);
                let _ = elector.await;
                stop_tx.send_replace(true);
                let _ = server_task.await;
                let _ = writeln!(out, "stopped before leading; nothing was done");
                return Ok(0);
            };
            // Webhooks other replicas take reach this loop too.
            spawn_relay_listener(store.clone(), identity.clone(), tx.clone());
            lease = guards(epoch);
            (store.fenced(&identity, epoch), Some((lead_rx, identity, epoch, elector_stop, elector)))
        }
    };

    // Workers are started and watched by the leader alone, its Jobs marked with its epoch.
    let epoch = leadership.as_ref().map(|(_, _, epoch, _, _)| *epoch);
    let driver = make_driver(&opts, &installation, runs_dir, epoch, move |_| {
        let _ = exit_tx.try_send(Trigger::WorkerExited);
    })
    .await?;
    let _ = writeln!(out, "workers: {}", inert(&driver_line(&opts.driver, &installation)));
    let _ =
        writeln!(out, "installation: {installation} (only its workers are adopted, cancelled and pruned here; --installation names it)");
    // The dashboard reads workers' logs through it.
    let _ = logs.set(driver.clone());
    let mut ctx = Context::new(cfg, store, driver)?.with_telemetry(telemetry.clone()).with_lease(lease);
    if let Some(client) = forge {
        ctx = ctx.with_forge(ForgeLink::new(client, opts.poll_interval));
    }
    // The loop stops on Ctrl-C or SIGTERM (after its pass), and the moment
    // the lease is lost (its pass cancelled where it stands).
    let (loop_stop_tx, loop_stop_rx) = watch::channel(false);
    let (lease_lost_tx, lease_lost_rx) = watch::channel(false);
    let lost = Arc::new(AtomicBool::new(false));
    {
        let mut stop = stop_rx.clone();
        let loop_stop_tx = loop_stop_tx.clone();
        let lost = lost.clone();
        let mut leadership = leadership.as_ref().map(|(rx, _, epoch, _, _)| (rx.clone(), *epoch));
        let metrics = telemetry.metrics.clone();
        tokio::spawn(async move {
            let lease_lost = async {
                match leadership.as_mut() {
                    Some((rx, epoch)) => {
                        let epoch = *epoch;
                        let now = rx.wait_for(|l| l.epoch() != Some(epoch)).await.map(|l| l.clone());
                        if let Ok(Leadership::Follower { leader }) = now {
                            metrics.set_leader(false, leader.map_or(epoch, |(_, e)| e));
                        } else {
                            metrics.set_leader(false, epoch);
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                () = lease_lost => {
                    lost.store(true, std::sync::atomic::Ordering::Release);
                    lease_lost_tx.send_replace(true);
                }
            }
            loop_stop_tx.send_replace(true);
        });
    }
    let _ = writeln!(
        out,
        "watching {} (branch {}); Ctrl-C or SIGTERM stops (workers keep running and are adopted on restart)",
        inert(&control_url),
        inert(&opts.branch)
    );
    let _ = out.flush();
    let mut last: Option<PassReport> = None;
    let exit_when_idle = opts.exit_when_idle;
    let local_forge = forge_name.is_none();
    reconcile::run(&mut ctx, rx, loop_stop_rx, lease_lost_rx, |result| {
        match result {
            Ok(report) => {
                for c in &report.changes {
                    let _ = writeln!(out, "{}", change_line(c, crate::time::now(), local_forge));
                }
                let before = last.as_ref().map_or(&[][..], |l| l.degraded.as_slice());
                for line in degraded_lines(before, &report.degraded, crate::time::now()) {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
                let idle = report.idle;
                last = Some(report.without_changes());
                if exit_when_idle && idle {
                    return false;
                }
            }
            Err(e) => {
                let _ =
                    writeln!(out, "{}  pass failed [{}]: {}", crate::time::rfc3339(crate::time::now()), e.reason(), inert(&e.to_string()));
                // Another replica leads now: stop at once, before the next round says so.
                if e.ends_leadership() {
                    lost.store(true, std::sync::atomic::Ordering::Release);
                    return false;
                }
            }
        }
        true
    })
    .await;
    let lost = lost.load(std::sync::atomic::Ordering::Acquire);
    if let Some((_, identity, epoch, elector_stop, elector)) = leadership {
        elector_stop.send_replace(true);
        let _ = elector.await;
        if lost {
            let _ = writeln!(
                out,
                "{}  lost the leader lease ({}, epoch {epoch}): stopped acting; exiting so that a restart rejoins as a follower (the new leader carries on)",
                crate::time::rfc3339(crate::time::now()),
                inert(&identity)
            );
            stop_tx.send_replace(true);
            let _ = server_task.await;
            return Ok(LOST_LEASE_EXIT);
        }
    }
    stop_tx.send_replace(true);
    match server_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(reason = e.reason(), error = %e, "HTTP server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
    }
    if let Some(report) = last {
        summary(&report, &control_url, out);
    }
    let _ = writeln!(out, "stopped; workers still running are adopted on the next start");
    Ok(0)
}

/// One line (two with a hint) for the `up` terminal: what changed for a
/// request and, when a person is waited on, what they do. Names, reason and
/// message are shown inert: an agent's summary or a hand-edited status
/// cannot move the cursor, clear the screen or start a line of its own.
pub fn change_line(c: &reconcile::PhaseChange, at: crate::time::Millis, local_forge: bool) -> String {
    let stage = c.stage.as_ref().map(|s| format!(" [{}]", inert(s))).unwrap_or_default();
    let reason = inert(&c.reason);
    let request = inert(&c.request);
    let from = c.from.map_or("new", |p| p.as_str());
    let phases = match c.from {
        _ if c.reason == "Deleted" => format!("{from} -> deleted"),
        Some(before) if before == c.to => format!("{}{stage} ({reason})", c.to.as_str()),
        _ => format!("{from} -> {}{stage}", c.to.as_str()),
    };
    let mut line = format!("{}  {request:<24} {phases}  {}", crate::time::rfc3339(at), inert(&c.message));
    if local_forge && c.to == Phase::WaitingForCI {
        line.push_str(&format!(
            "\n{:<22}report the CI result with: hadron ci-status {} <repo as in the request> success|failure",
            "", request
        ));
    }
    line
}

fn summary(report: &PassReport, control: &str, out: &mut dyn Write) {
    let _ = writeln!(out, "\n{:<24} {:<20} {:<12} MESSAGE", "REQUEST", "PHASE", "STAGE");
    for (name, view) in report.phases.iter() {
        let (name, stage, message) = (inert(name), inert(view.stage.as_deref().unwrap_or("-")), inert(&view.message));
        let _ = writeln!(out, "{name:<24} {:<20} {stage:<12} {message}", view.phase.as_str());
    }
    let waiting: Vec<&String> = report.phases.iter().filter(|(_, v)| v.phase == Phase::WaitingForApproval).map(|(n, _)| n).collect();
    for name in waiting {
        let _ = writeln!(out, "approve with: hadron approve {} <gate> --as <approver from hadron.yaml>", inert(name));
    }
    let control_text = inert(control);
    if Path::new(control).is_dir() {
        let _ = writeln!(out, "status history: git -C {control_text} log -p -- status/");
    } else {
        let _ = writeln!(out, "status history: git log -p -- status/ in a clone of {control_text}");
    }
}

/// `hadron approve REQUEST GATE`: merges the approval branch into the
/// control repo's branch as the given person, with the `git` CLI; with
/// `changes`, asking for those changes instead of approving.
#[allow(clippy::too_many_arguments)]
pub fn approve(
    control: &str,
    branch: &str,
    request: &str,
    gate: &str,
    name: &str,
    email: &str,
    changes: Option<&str>,
    data_dir: &Path,
) -> Result<String, UpError> {
    let work = data_dir.join("approve");
    Ok(crate::gates::approve_as_person(control, branch, request, gate, &work, name, email, changes)?)
}

/// `hadron ci-status REQUEST REPO STATE`: records a commit status on the
/// head of `hadron/REQUEST` in the target repo (as written in the request).
pub async fn ci_status(
    control: &str,
    request: &str,
    repo: &str,
    state: &str,
    context: &str,
    database_url: Option<&str>,
    data_dir: &Path,
) -> Result<String, UpError> {
    if !matches!(state, "success" | "failure" | "pending") {
        return Err(UpError::Usage(format!("state `{state}` is not one of success, failure, pending")));
    }
    if !crate::ids::is_dns_label(request) {
        return Err(UpError::Usage(format!("`{request}` is not a request name")));
    }
    let url = urls::resolve(control, repo);
    let git = crate::git::Git::nowhere(crate::git::Identity::default());
    let branch = format!("refs/heads/hadron/{request}");
    let out = git.run(["ls-remote", "--", crate::git::absolute_local(&url).as_str(), branch.as_str()]).map_err(|e| match e {
        crate::git::GitError::Unavailable { source } => UpError::Io { path: PathBuf::from("git"), source },
        other => UpError::Usage(other.to_string()),
    })?;
    if !out.success {
        let why = out.stderr.trim();
        return Err(UpError::Usage(format!(
            "target repo {url} (`{repo}` resolved against the control repo {control}) does not exist or cannot be read: {why}; \
             name the repo exactly as the request's spec.repos[].url does, e.g. ../demo-app.git"
        )));
    }
    let head = out.stdout.split_whitespace().next().unwrap_or("").to_owned();
    if head.len() != 40 {
        return Err(UpError::Usage(format!(
            "{url} has no branch hadron/{request} yet: no worker of `{request}` has pushed there, so there is nothing to report CI for"
        )));
    }
    let store = open_store(database_url, data_dir).await?;
    store.set_commit_status(repo, &head, context, state, crate::time::now()).await?;
    nudge(data_dir, "ci-status")?;
    Ok(head)
}

/// The terminal lines for steps that started or stopped failing between two
/// passes: each failure is shown once when it starts (with where to look)
/// and once when it is over, not once per pass.
pub fn degraded_lines(before: &[StepFailure], now: &[StepFailure], t: crate::time::Millis) -> Vec<String> {
    let at = crate::time::rfc3339(t);
    let key = |f: &StepFailure| (f.step, f.reason.clone());
    let mut lines = Vec::new();
    for f in now.iter().filter(|f| !before.iter().any(|b| key(b) == key(f))) {
        lines.push(format!("{at}  {} step failing [{}]: {}", f.step.as_str(), inert(&f.reason), inert(&f.message)));
    }
    for f in before.iter().filter(|b| !now.iter().any(|f| key(b) == key(f))) {
        lines.push(format!("{at}  {} step recovered [{}]", f.step.as_str(), inert(&f.reason)));
    }
    lines
}

/// Folder in the data dir that a running `hadron up`/`serve` watches: a
/// file written there by another command of the same data dir (such as
/// `hadron ci-status`) triggers a pass at once.
pub const NUDGE_DIR: &str = "nudge";

/// Tells a `hadron up` running on `data_dir` that something changed in its store.
pub fn nudge(data_dir: &Path, what: &str) -> Result<(), UpError> {
    let dir = data_dir.join(NUDGE_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| UpError::Io { path: dir.clone(), source })?;
    let file = dir.join(what);
    std::fs::write(&file, crate::time::rfc3339(crate::time::now())).map_err(|source| UpError::Io { path: file, source })
}

/// Watches the nudge folder of `data_dir`; every change sends [`Trigger::CiRecorded`].
/// The watch lasts as long as the returned watcher.
pub fn watch_nudges(data_dir: &Path, tx: mpsc::Sender<Trigger>) -> Result<notify::RecommendedWatcher, UpError> {
    use notify::Watcher;
    let dir = data_dir.join(NUDGE_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| UpError::Io { path: dir.clone(), source })?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| e.kind.is_create() || e.kind.is_modify()) {
            // A full channel already holds a pending trigger.
            let _ = tx.try_send(Trigger::CiRecorded);
        }
    })
    .map_err(|e| UpError::Io { path: dir.clone(), source: std::io::Error::other(e) })?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| UpError::Io { path: dir.clone(), source: std::io::Error::other(e) })?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::PhaseChange;
    use crate::reconcile::steps::{Severity, Step};

    /// A raw byte a terminal acts on, other than the line break between lines.
    fn raw_control(s: &str) -> Option<char> {
        s.chars().find(|c| c.is_control() && *c != '\n')
    }

    #[test]
    fn a_change_line_shows_an_agents_escapes_and_carriage_returns_as_text() {
        let change = PhaseChange {
            request: "add-login".to_owned(),
            from: Some(Phase::Running),
            to: Phase::WaitingForCI,
            stage: Some("implement\u{1b}[1A".to_owned()),
            reason: "Waiting\u{9b}2J".to_owned(),
            message: "stage done: \u{1b}]52;c;ZXZpbA==\u{7}\u{1b}[2J\r2026-01-01T00:00:00Z  ok: all good\nok: forged".to_owned(),
            revision: "r1".to_owned(),
        };
        let line = change_line(&change, 0, true);
        assert_eq!(raw_control(&line), None, "{line:?}");
        // Two lines: the change and Hadron's own hint; the agent's `\n` is shown, not obeyed.
        assert_eq!(line.lines().count(), 2, "{line}");
        assert!(line.lines().all(|l| !l.starts_with("ok:")), "{line}");
        assert!(line.contains("\\u{1b}]52;c;ZXZpbA==\\u{7}\\u{1b}[2J\\r2026-01-01T00:00:00Z  ok: all good\\nok: forged"), "{line}");
        assert!(line.contains("[implement\\u{1b}[1A]"), "{line}");
        assert!(line.lines().nth(1).is_some_and(|l| l.contains("hadron ci-status add-login")), "{line}");
    }

    #[test]
    fn degraded_lines_show_a_failing_steps_message_as_text() {
        let failure = StepFailure {
            step: Step::Forge,
            reason: "GiteaServerError".to_owned(),
            message: "500 from gitea: <html>\r\u{1b}[2Kok\u{7}".to_owned(),
            severity: Severity::Transient,
        };
        let lines = degraded_lines(&[], std::slice::from_ref(&failure), 0);
        assert_eq!(lines.len(), 1);
        assert_eq!(raw_control(&lines[0]), None, "{:?}", lines[0]);
        assert!(lines[0].ends_with("500 from gitea: <html>\\r\\u{1b}[2Kok\\u{7}"), "{}", lines[0]);
    }
}
