//! Workers: the `Driver` trait, the local driver, the Kubernetes driver,
//! and the `hadron worker` entrypoint that both drivers run.
//!
//! A driver starts a worker for a [`RunSpec`], reports what each worker is
//! doing ([`Observation`]) and cancels workers. Workers carry deterministic
//! names, so starting one twice is a no-op and a restarted Hadron finds its
//! workers again from the driver alone.

pub mod adapters;
pub mod agent;
pub mod agent_env;
pub mod egress;
pub mod entry;
pub mod error;
pub mod kubernetes;
pub mod local;
mod log;
pub mod proc;
mod result;
pub mod run_dir;
pub mod sandbox;
pub mod spec;
mod template;
pub mod usage;
mod worker;
mod workspace;
mod workspace_size;

pub use entry::run_worker;
pub use error::WorkerError;
pub use kubernetes::{KubernetesDriver, KubernetesOptions};
pub use local::{LocalDriver, WorkerCommand};
pub use spec::{RunResult, RunSpec};

/// What a driver sees of one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Worker name.
    pub worker: String,
    /// Running, finished with a result, or lost.
    pub state: WorkerState,
    /// When the worker was started (RFC 3339 UTC), when known.
    pub started_at: Option<String>,
    /// Which run the worker is (from its `run.json` or its Job's labels),
    /// when readable: lets the reconciler adopt a run its store does not know.
    pub run: Option<spec::RunIdentity>,
}

/// The state of one worker.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per live or just-finished worker, read once; boxing would cost every reader a pointer chase for nothing"
)]
pub enum WorkerState {
    /// The worker process runs.
    Running,
    /// The worker finished (or was cancelled or stopped at its wall time)
    /// and left this result.
    Finished(RunResult),
    /// The worker is gone without a result: killed, crashed, the machine
    /// restarted, or it was never started. `reason` is CamelCase
    /// (`ProcessGone`, `PidReused`, `NotStarted`).
    Lost {
        /// Why it counts as lost.
        reason: String,
    },
}

/// Errors of a driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The worker name is not a DNS-1123 label, so it cannot name a run.
    #[error("invalid worker name `{0}`")]
    InvalidWorkerName(String),
    /// No such worker was ever started.
    #[error("unknown worker `{0}`")]
    UnknownWorker(String),
    /// The worker (its run spec, run directory or Job) belongs to another
    /// Hadron installation: this driver leaves it alone.
    #[error(
        "worker `{worker}` belongs to installation `{theirs}`, not to this Hadron's (`{ours}`); it is left alone (two installations share the namespace or runs folder: see docs/architecture.md, Installations)"
    )]
    ForeignWorker {
        /// Worker name.
        worker: String,
        /// The installation it belongs to (empty: one from before installations existed).
        theirs: String,
        /// This driver's installation.
        ours: String,
    },
    /// The worker process could not be started.
    #[error("cannot start worker `{worker}`: {source}")]
    Spawn {
        /// Worker name.
        worker: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A file of the driver's state could not be read or written.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A signal could not be sent.
    #[error("cannot signal worker `{worker}`: {source}")]
    Signal {
        /// Worker name.
        worker: String,
        /// OS error.
        source: nix::errno::Errno,
    },
    /// The Kubernetes API refused or failed a call.
    #[error("cannot {op} `{worker}` in namespace {namespace}: {source}{}", kubernetes_hint(source))]
    Kubernetes {
        /// What was attempted, e.g. `create job`.
        op: &'static str,
        /// The worker (or object) concerned.
        worker: String,
        /// The namespace.
        namespace: String,
        /// The client's error.
        source: Box<kube::Error>,
    },
    /// No Kubernetes client could be configured.
    #[error("cannot reach Kubernetes: {0}; run inside a cluster (a service account) or set KUBECONFIG")]
    KubernetesConfig(String),
    /// The watcher has not listed the Jobs yet, so nothing can be said of them.
    #[error(
        "the Jobs in namespace {namespace} were not listed within {} s (API server unreachable, or no permission to list/watch jobs); nothing is taken as gone meanwhile",
        waited.as_secs()
    )]
    KubernetesNotSynced {
        /// The namespace.
        namespace: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
}

/// What to do about an API error, where Hadron can tell.
fn kubernetes_hint(e: &kube::Error) -> &'static str {
    match kubernetes_code(e) {
        Some(403) => {
            " (Hadron's service account lacks a permission: see the Role in charts/hadron or docs/operations.md \"Running on Kubernetes\")"
        }
        Some(422) => " (the API server refused the object: a bad image name, resource quantity or secret reference in agents/)",
        _ => "",
    }
}

fn kubernetes_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

impl DriverError {
    /// Stable CamelCase reason for status conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DriverError::InvalidWorkerName(_) => "InvalidWorkerName",
            DriverError::UnknownWorker(_) => "UnknownWorker",
            DriverError::ForeignWorker { .. } => "ForeignWorker",
            DriverError::Spawn { .. } => "SpawnFailed",
            DriverError::Io { .. } => "DriverIo",
            DriverError::Signal { .. } => "SignalFailed",
            DriverError::Kubernetes { source, .. } => match kubernetes_code(source) {
                Some(403) => "KubernetesForbidden",
                Some(404) => "KubernetesNotFound",
                Some(409) => "KubernetesConflict",
                Some(422) => "KubernetesInvalid",
                Some(_) => "KubernetesApi",
                None => "KubernetesUnreachable",
            },
            DriverError::KubernetesConfig(_) => "KubernetesConfig",
            DriverError::KubernetesNotSynced { .. } => "KubernetesNotSynced",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> DriverError {
        DriverError::Io { path: path.display().to_string(), source }
    }
}

/// Runs workers somewhere: local processes or Kubernetes Jobs. Every method
/// is idempotent, and a new driver of the same installation on the same
/// backing store (a runs folder, a namespace) sees the workers an earlier
/// one started. A driver starts, reports, cancels and prunes only the
/// workers of its own installation ([`crate::ids::Installation`]): another
/// installation's, on the same backing store, are not its to touch.
pub trait Driver: Send + Sync {
    /// Short name of the driver for logs and metrics (`local`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Starts the worker `spec.worker` unless it was already started
    /// (running or finished): then it does nothing.
    fn start(&self, spec: &RunSpec) -> Result<(), DriverError>;

    /// Every worker the driver knows, with its state. Also enforces each
    /// worker's wall-time limit from outside (a hung worker is stopped and
    /// reported as failed with `WallTimeExceeded`).
    fn observe(&self) -> Result<Vec<Observation>, DriverError>;

    /// How soon the driver must be observed again while the `live` workers
    /// run and nothing triggers a pass: `None` when it reports each of
    /// their exits (a trigger) and has no deadline of theirs to enforce.
    /// The default, for a driver without exit notices, is a quarter second.
    fn recheck_after(&self, live: &[String]) -> Option<std::time::Duration> {
        let _ = live;
        Some(std::time::Duration::from_millis(250))
    }

    /// Stops the worker and records a `Cancelled` result unless it already
    /// has a result.
    fn cancel(&self, worker: &str) -> Result<(), DriverError>;

    /// Frees what the finished workers `finished` left behind (their
    /// results are recorded in the store and published): bulky leftovers at
    /// once, the whole record once its result is older than `retention`.
    /// Unknown or still live workers are skipped. Returns how many records
    /// were removed entirely.
    fn prune(&self, finished: &[String], retention: std::time::Duration) -> Result<usize, DriverError>;

    /// The last `max_bytes` (at most) of a worker's log, for people to read
    /// (the dashboard); `None` when the driver has none for it.
    fn log_tail(&self, worker: &str, max_bytes: usize) -> Result<Option<String>, DriverError> {
        let _ = (worker, max_bytes);
        Ok(None)
    }
}

/// The last `max_bytes` (at most) of `text`, from the first whole line in them.
pub fn tail_of(text: &[u8], max_bytes: usize) -> String {
    let start = text.len().saturating_sub(max_bytes);
    whole_lines(&text[start..], start > 0)
}

/// `text` as a string, without its first (partial) line when `cut` says it
/// starts in the middle of one.
pub fn whole_lines(text: &[u8], cut: bool) -> String {
    let text = if cut { text.iter().position(|b| *b == b'\n').map_or(text, |i| &text[i + 1..]) } else { text };
    String::from_utf8_lossy(text).into_owned()
}
