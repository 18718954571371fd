//! The `hadron` command: a thin layer over the library.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hadron::cli::{self, Format};
use hadron::redact::inert_for_terminal as inert;
use hadron::up::{self, UpOptions};

/// Hadron: a git-driven reconciler for AI-agent change requests.
///
/// People commit `requests/<name>.yaml` to a control repo; Hadron runs agents
/// on the target repos stage by stage and commits the outcome back as
/// `status/<name>.yaml`.
#[derive(Parser)]
#[command(name = "hadron", version, about, long_about)]
struct Cli {
    /// How log lines on stderr are written: `text` for people, `json` (one object per line, with the
    /// current span and the list of spans) for log collectors. RUST_LOG filters them (default: warn).
    #[arg(long, global = true, env = "HADRON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// One line of text per event, its spans in front.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`), `target`, and the
    /// current `span` and all `spans` with their fields.
    Json,
}

/// Logs go to stderr (stdout is for the output people read), filtered by RUST_LOG.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
    // A second subscriber cannot be set; the first one stays, which is fine.
    let _ = match format {
        // Colours only for a person at a terminal, never into a log file.
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&io::stderr())).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).with_current_span(true).with_span_list(true).try_init(),
    };
}

/// Where Hadron keeps its state, shared by the commands that need it.
#[derive(clap::Args, Clone)]
struct DataArgs {
    /// Hadron's data dir: mirror, writer clone, run directories, SQLite store.
    #[arg(long, env = "HADRON_DATA_DIR", default_value = ".hadron")]
    data_dir: PathBuf,
    /// PostgreSQL (`postgres://…`) or SQLite URL of the store; default: SQLite in the data dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// The HTTP server and the forge, shared by `up` and `serve`.
///
/// The forge connection is deliberately not read from the control repo:
/// whoever can commit there must not be able to point Hadron's token at
/// another server.
#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Address of the HTTP server (webhooks, health, metrics, API); port 0 picks a free port.
    ///
    /// Default: 127.0.0.1:8080, or a free port (printed) when that one is taken, so two
    /// projects can run `hadron up` side by side. An address given here must be free.
    #[arg(long, env = "HADRON_LISTEN", value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Address of the probe listener: `/healthz`, `/readyz` and `/metrics` on a port of their
    /// own, so that clients of the public port (held event streams, slow or idle connections)
    /// can never starve a liveness probe. Point Kubernetes probes and Prometheus here.
    ///
    /// Default: the host of --listen, port 8081, or a free port (printed) when that one is
    /// taken. An address given here must be free.
    #[arg(long, alias = "probe-addr", env = "HADRON_PROBE_LISTEN", value_name = "ADDR")]
    probe_listen: Option<std::net::SocketAddr>,
    /// Connections the HTTP server keeps open at once. At the limit the oldest idle one (no
    /// request in flight) is closed to make room; when all are busy, a new one is answered 503
    /// with Retry-After.
    #[arg(long, env = "HADRON_MAX_CONNECTIONS", value_name = "N",
          default_value_t = hadron::server::DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one)]
    max_connections: usize,
    /// Connections one client address keeps open at once; beyond, as for --max-connections but
    /// among that address's connections, and answered 429. Behind a reverse proxy every client
    /// has the proxy's address: raise it to --max-connections there.
    #[arg(long, env = "HADRON_MAX_CONNECTIONS_PER_PEER", value_name = "N",
          default_value_t = hadron::server::DEFAULT_MAX_CONNECTIONS_PER_PEER, value_parser = at_least_one)]
    max_connections_per_peer: usize,
    /// Event streams (`/api/v1/events`, one per open dashboard tab) served at once; more are
    /// answered 503 with Retry-After (the dashboard then works without live updates).
    #[arg(long, env = "HADRON_MAX_EVENT_STREAMS", value_name = "N",
          default_value_t = hadron::server::DEFAULT_MAX_EVENT_STREAMS)]
    max_event_streams: usize,
    /// Event streams one client address holds at once; more are answered 429 with Retry-After.
    /// Behind a reverse proxy, raise it to --max-event-streams.
    #[arg(long, env = "HADRON_MAX_EVENT_STREAMS_PER_PEER", value_name = "N",
          default_value_t = hadron::server::DEFAULT_MAX_EVENT_STREAMS_PER_PEER)]
    max_event_streams_per_peer: usize,
    /// Do not watch a local control repo's refs; rely on webhooks and polling.
    #[arg(long)]
    no_watch: bool,
    /// The forge: `none` (approvals are merges of local branches) or `gitea`.
    #[arg(long, env = "HADRON_FORGE", value_enum, default_value_t = ForgeKind::None)]
    forge: ForgeKind,
    /// Gitea web address, e.g. `https://gitea.example.com` (with --forge gitea).
    #[arg(long, env = "HADRON_GITEA_URL")]
    gitea_url: Option<String>,
    /// `owner/repo` of the control repo on Gitea; default: the last two parts of the control URL.
    #[arg(long, env = "HADRON_GITEA_REPO")]
    gitea_repo: Option<String>,
    /// Environment variable holding the Gitea API token.
    #[arg(long, env = "HADRON_GITEA_TOKEN_ENV", default_value = "GITEA_TOKEN")]
    gitea_token_env: String,
    /// File holding the Gitea API token (instead of --gitea-token-env), e.g. a mounted Secret.
    #[arg(long, env = "HADRON_GITEA_TOKEN_FILE")]
    gitea_token_file: Option<PathBuf>,
    /// Environment variable holding the webhook secret (as set in Gitea's webhook).
    #[arg(long, env = "HADRON_WEBHOOK_SECRET_ENV", default_value = "HADRON_WEBHOOK_SECRET")]
    webhook_secret_env: String,
    /// File holding the webhook secret (instead of --webhook-secret-env).
    #[arg(long, env = "HADRON_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// An environment variable of Hadron that agents may name as a secret (`secretRef.name`);
    /// repeat, or comma-separate in HADRON_AGENT_SECRETS.
    ///
    /// Workers start from a clean environment: only PATH, HOME, locale and proxy settings and
    /// the secrets listed here (when a run references them) reach them. Hadron's own
    /// credentials (the Gitea token, the webhook secret, DATABASE_URL, HADRON_*) are refused.
    #[arg(long = "agent-secret", env = "HADRON_AGENT_SECRETS", value_delimiter = ',', value_name = "NAME")]
    agent_secrets: Vec<String>,
    /// Hours the run directory of a finished worker (result.json, worker.log) is kept once its
    /// result is recorded and published; its workspace clone goes at once. 0: removed at once.
    #[arg(long, env = "HADRON_RUN_RETENTION_HOURS", default_value_t = 168, value_name = "HOURS")]
    run_retention_hours: u64,
    /// Days the event log (the store's audit trail of every request) and CI results are kept; 0 keeps them forever.
    #[arg(long, env = "HADRON_EVENT_RETENTION_DAYS", default_value_t = 90, value_name = "DAYS")]
    event_retention_days: u64,
    /// Seconds between housekeeping sweeps (old run directories, published outbox entries, store
    /// keys of deleted requests, events past retention).
    #[arg(long, env = "HADRON_HOUSEKEEPING_SECONDS", default_value_t = 600, value_name = "SECONDS")]
    housekeeping_seconds: u64,
    /// While workers run, at most one status commit per this many milliseconds: progress in
    /// between goes into the next commit together (and shows at once in the terminal, the event
    /// stream and the API). What asks a person to act (a stall, a gate, a failure) and anything
    /// once no worker runs is committed at once. 0: a commit per pass.
    #[arg(long, env = "HADRON_STATUS_INTERVAL_MS", default_value_t = 1000, value_name = "MS")]
    status_interval_ms: u64,
    /// With PostgreSQL: seconds the leader lease lasts without renewal. Several replicas may
    /// share one database; the one holding the lease runs the loop, the others serve health,
    /// metrics, the read API and webhooks and take over once it expires. The leader renews every
    /// 2/15 of this and stops acting (exits) when it could not renew for 10/15 of it.
    #[arg(long, env = "HADRON_LEASE_SECONDS", default_value_t = 15, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_seconds: u64,
    /// Folder of the local driver's run directories (one per worker); default: `runs/` in the
    /// data dir. Replicas on one host may share it: a new leader then finds the workers the last
    /// one started (they outlive it) and waits for them instead of starting them again.
    #[arg(long, env = "HADRON_RUNS_DIR", value_name = "DIR")]
    runs_dir: Option<PathBuf>,
    /// Where workers run: `local` (child processes of this Hadron) or `kubernetes` (one
    /// `batch/v1` Job per worker, in a cluster with the pod's service account, else with the
    /// kubeconfig).
    #[arg(long, env = "HADRON_DRIVER", value_enum, default_value_t = DriverKind::Local)]
    driver: DriverKind,
    /// With --driver kubernetes: namespace of the worker Jobs; default: the service account's
    /// own namespace in a cluster, else the kubeconfig context's.
    #[arg(long, env = "HADRON_NAMESPACE", value_name = "NS")]
    namespace: Option<String>,
    /// With --driver kubernetes: image of the workers whose agent names no `image` (Hadron's
    /// image plus the agent's CLI); its entrypoint must be `hadron`.
    #[arg(long, env = "HADRON_WORKER_IMAGE", value_name = "IMAGE")]
    worker_image: Option<String>,
    /// With --driver kubernetes: service account of the worker pods (its token is not mounted);
    /// default: the namespace's `default`.
    #[arg(long, env = "HADRON_WORKER_SERVICE_ACCOUNT", value_name = "NAME")]
    worker_service_account: Option<String>,
    /// With --driver kubernetes: `activeDeadlineSeconds` of a worker Job whose request has no
    /// wall-time budget (with one: the budget plus 5 minutes for clone and push).
    #[arg(long, env = "HADRON_WORKER_DEADLINE_SECONDS", default_value_t = 14_400, value_name = "SECONDS",
          value_parser = clap::value_parser!(i64).range(1..))]
    worker_deadline_seconds: i64,
    /// With --driver kubernetes: where worker pods may reach the git server, as `CIDR:PORT`,
    /// `ADDRESS:PORT` or `namespace/NAME:PORT` (an in-cluster Gitea); repeat, or comma-separate
    /// in HADRON_WORKER_GIT_EGRESS. Default: the clone URL's host and port (a hostname: that
    /// port on public addresses only).
    #[arg(long = "worker-git-egress", env = "HADRON_WORKER_GIT_EGRESS", value_delimiter = ',', value_name = "RULE")]
    worker_git_egress: Vec<hadron::workers::kubernetes::GitEgress>,
    /// Name of this installation (a DNS-1123 label), on every worker, Job, Secret and run
    /// directory it makes; default: the control repo's name and a hash of its URL and branch.
    /// Installations sharing a Kubernetes namespace or a --runs-dir never adopt, cancel or prune
    /// each other's workers; replicas of one installation must share it (the same --repo and
    /// --branch do). Changing it orphans the workers running under the old one.
    #[arg(long, env = "HADRON_INSTALLATION", value_name = "NAME", value_parser = installation_name)]
    installation: Option<hadron::ids::Installation>,
}

/// An installation name given on the command line.
fn installation_name(text: &str) -> Result<hadron::ids::Installation, String> {
    hadron::ids::Installation::named(text).map_err(|e| e.to_string())
}

/// Where workers run.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum DriverKind {
    /// Child processes of Hadron, with run directories on its disk.
    Local,
    /// Kubernetes Jobs, one per worker.
    Kubernetes,
}

/// Which forge Hadron talks to.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum ForgeKind {
    /// No forge: the local flow.
    None,
    /// Gitea through its REST API.
    Gitea,
}

/// A count of at least 1 (a server that takes no connection serves nothing).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl ServeArgs {
    fn http_limits(&self) -> hadron::server::Limits {
        hadron::server::Limits {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            max_event_streams: self.max_event_streams,
            max_event_streams_per_peer: self.max_event_streams_per_peer,
            ..hadron::server::Limits::default()
        }
    }

    fn driver(&self) -> Result<up::DriverOptions, String> {
        Ok(match self.driver {
            DriverKind::Local => up::DriverOptions::Local,
            DriverKind::Kubernetes => up::DriverOptions::Kubernetes {
                namespace: self.namespace.clone(),
                image: self.worker_image.clone().ok_or("--driver kubernetes needs --worker-image (or HADRON_WORKER_IMAGE)")?,
                service_account: self.worker_service_account.clone(),
                deadline_seconds: self.worker_deadline_seconds,
                git_egress: self.worker_git_egress.clone(),
            },
        })
    }

    fn forge(&self) -> Result<up::ForgeOptions, String> {
        Ok(match self.forge {
            ForgeKind::None => up::ForgeOptions::None,
            ForgeKind::Gitea => up::ForgeOptions::Gitea {
                base_url: self.gitea_url.clone().ok_or("--forge gitea needs --gitea-url (or HADRON_GITEA_URL)")?,
                repo: self.gitea_repo.clone(),
                token: match &self.gitea_token_file {
                    Some(f) => hadron::forge::TokenSource::File(f.clone()),
                    None => hadron::forge::TokenSource::Env(self.gitea_token_env.clone()),
                },
            },
        })
    }

    fn retention(&self) -> hadron::reconcile::housekeeping::Retention {
        hadron::reconcile::housekeeping::Retention {
            runs: Duration::from_secs(self.run_retention_hours.saturating_mul(3600)),
            events: (self.event_retention_days > 0).then(|| Duration::from_secs(self.event_retention_days.saturating_mul(86_400))),
            interval: Duration::from_secs(self.housekeeping_seconds.max(1)),
        }
    }

    fn webhook_secret(&self) -> Option<up::SecretSource> {
        match &self.webhook_secret_file {
            Some(f) => Some(up::SecretSource::File(f.clone())),
            // Webhooks are taken only when the variable is set (the forge requires it).
            None => std::env::var_os(&self.webhook_secret_env).map(|_| up::SecretSource::Env(self.webhook_secret_env.clone())),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run Hadron on a control repo: seed local repos if needed, then reconcile.
    ///
    /// DIR is a control-repo folder such as `example-repo` (seeded once into
    /// bare repos under the data dir, with one target repo per `targets/<name>/`)
    /// or a git repository used as it is. Prints a line per phase change.
    /// Running it again in the same directory reuses the data dir and loses
    /// nothing pushed to the seeded repos.
    Up {
        /// Control-repo folder or git repository.
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Branch of the control repo.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Return once every request is terminal or waiting on a person, with a summary.
        #[arg(long)]
        exit_when_idle: bool,
        /// Fetch the control repo at least this often (seconds); pushes to a local repo trigger at once.
        #[arg(long, default_value_t = 60)]
        poll_seconds: u64,
        /// First retry delay of a failed worker (milliseconds); doubles per attempt.
        #[arg(long, default_value_t = 10_000)]
        backoff_ms: u64,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run Hadron as a service on a control repo given by URL (no seeding).
    ///
    /// Fetches REPO (an https/ssh URL or a path), reconciles on every
    /// webhook, file-watch event or poll, and serves webhooks, health,
    /// metrics and the JSON API. With `--forge gitea` it opens approval PRs,
    /// target PRs and commit statuses through the Gitea API. SIGTERM lets
    /// the running pass finish; workers keep running and are adopted on the
    /// next start.
    Serve {
        /// Control repo URL or path.
        #[arg(long, env = "HADRON_REPO")]
        repo: String,
        #[command(flatten)]
        data: DataArgs,
        /// Branch of the control repo.
        #[arg(long, env = "HADRON_BRANCH", default_value = "main")]
        branch: String,
        /// Fetch the control repo at least this often (seconds).
        #[arg(long, env = "HADRON_POLL_SECONDS", default_value_t = 60)]
        poll_seconds: u64,
        /// First retry delay of a failed worker (milliseconds); doubles per attempt.
        #[arg(long, default_value_t = 10_000)]
        backoff_ms: u64,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run one worker (started by a driver, not by people): `--run <run.json>`.
    ///
    /// Clones the target repo, checks out `hadron/<request>`, renders the
    /// prompt, runs the agent, commits and pushes, and writes `result.json`
    /// beside run.json. Exit status 0 when the stage succeeded, 1 otherwise.
    Worker {
        /// The run description written by the driver.
        #[arg(long)]
        run: PathBuf,
        /// Where the run's files go (lock, log, result.json, workspace); default: beside `--run`.
        /// A Kubernetes Job mounts the run description read-only and gives an `emptyDir` here.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// Also write the result (JSON, cut to 4 KiB) to this file: the container's termination
        /// message (`/dev/termination-log`), where the Kubernetes driver reads it.
        #[arg(long, value_name = "FILE")]
        termination_log: Option<PathBuf>,
    },
    /// Inside an agent's sandbox (started by a worker, not by people): listens on `--listen` and
    /// carries each connection to the worker's egress proxy at `--socket`, while it runs the agent.
    #[command(hide = true)]
    SandboxRelay {
        /// The proxy's Unix socket.
        #[arg(long)]
        socket: PathBuf,
        /// Loopback address to listen on, e.g. 127.0.0.1:3128.
        #[arg(long)]
        listen: String,
        /// The agent's command.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Approve a gate as a person would: merge `hadron/approve/<request>/<gate>`.
    ///
    /// Clones the control repo, merges the approval branch into the branch
    /// with `git merge --no-ff` as the given person, and pushes. The person
    /// must be an approver in hadron.yaml and not the requester.
    Approve {
        /// Request name.
        request: String,
        /// Gate name.
        gate: String,
        /// Control repo (default: the one `hadron up` seeded in the data dir).
        #[arg(long)]
        control: Option<String>,
        /// Branch of the control repo.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Approver's name (the merge's committer).
        #[arg(long = "as")]
        name: String,
        /// Approver's email.
        #[arg(long)]
        email: Option<String>,
        /// Ask for changes instead of approving: the stage before the gate
        /// runs again with this feedback (Markdown) in the agent's prompt,
        /// then the gate asks again. E.g. --changes "Rename x to count".
        #[arg(long, value_name = "FEEDBACK")]
        changes: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Record a CI result for a `ci` gate: the commit status of `hadron/<request>`'s head.
    ///
    /// Run it where `hadron up` runs (or with the same `--data-dir`): the result goes into
    /// that store, and a running `hadron up` reacts at once. REPO is written as in the
    /// request's `spec.repos[].url` (e.g. `../demo-app.git`); a repo that does not exist,
    /// or has no `hadron/<request>` branch yet, is refused.
    CiStatus {
        /// Request name.
        request: String,
        /// Target repo URL as written in the request (e.g. `../demo-app.git`).
        repo: String,
        /// `success`, `failure` or `pending`.
        state: String,
        /// Status context.
        #[arg(long, default_value = "hadron/local")]
        context: String,
        /// Control repo (default: the one `hadron up` seeded in the data dir).
        #[arg(long)]
        control: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Check a control repo folder: YAML syntax, fields, names, references.
    ///
    /// Prints `path:line:col: error[Code]: message` with a `help:` line per
    /// problem and a summary. Exit status: 0 when clean (warnings allowed),
    /// 1 when any error, 2 when the folder cannot be read.
    Validate {
        /// The control repo folder (a checkout or any folder with hadron.yaml,
        /// agents/, requests/ …).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// `text` for people, `json` for CI and editors.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Preview what Hadron would do if this control repo were merged.
    ///
    /// Reads the folder as it is (uncommitted files included) and compares it with REV
    /// (default: HEAD when DIR is in a git repository) and with what Hadron observed (the
    /// `status/` files): requests created, restarted (a new generation: which fields changed,
    /// which approvals no longer count, which running workers are cancelled), cancelled
    /// (deleted or suspended), resumed, unchanged; validation errors as `validate` prints
    /// them; for each request that starts, its stages, gates, repos and budget. Exit status
    /// as `validate`: 0, 1 when any error, 2 when something cannot be read.
    Plan {
        /// The control repo folder (a checkout, e.g. of a pull request's branch).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The revision the change would be merged onto, e.g. `origin/main` for a pull request.
        #[arg(long, value_name = "REV")]
        against: Option<String>,
        /// `text` for people, `json` for CI and bots.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write the JSON Schema of every kind (for editors and CI).
    Schema {
        /// Folder to write `<kind>.schema.json` files into.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
        /// Write nothing; exit 1 when a file there is missing or stale.
        #[arg(long)]
        check: bool,
    },
}

fn default_control(control: Option<String>, data_dir: &std::path::Path) -> String {
    control.unwrap_or_else(|| {
        let seeded = data_dir.join("repos/control.git");
        std::path::absolute(&seeded).unwrap_or(seeded).to_string_lossy().into_owned()
    })
}

#[allow(clippy::too_many_arguments)]
fn run_service(
    dir: PathBuf,
    repo: Option<String>,
    data: DataArgs,
    branch: String,
    exit_when_idle: bool,
    poll_seconds: u64,
    backoff_ms: u64,
    serve: &ServeArgs,
) -> i32 {
    if std::env::args_os().any(|a| a.to_string_lossy().starts_with("--webhook-secret-file")) {
        eprintln!(
            "warning: --webhook-secret-file on the command line names the secret's file in /proc/<pid>/cmdline, \
             which every local user can read; set HADRON_WEBHOOK_SECRET_FILE instead"
        );
    }
    let (forge, driver) = match serve.forge().and_then(|f| Ok((f, serve.driver()?))) {
        Ok(both) => both,
        Err(e) => {
            eprintln!("error[Usage]: {}", inert(&e.to_string()));
            return 2;
        }
    };
    let opts = UpOptions {
        dir,
        data_dir: data.data_dir,
        branch,
        exit_when_idle,
        poll_interval: Duration::from_secs(poll_seconds.max(1)),
        database_url: data.database_url,
        worker_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hadron")),
        backoff_base: Duration::from_millis(backoff_ms),
        listen: serve.listen,
        probe_listen: serve.probe_listen,
        http_limits: serve.http_limits(),
        watch: !serve.no_watch,
        forge,
        webhook_secret: serve.webhook_secret(),
        agent_secrets: serve.agent_secrets.clone(),
        retention: serve.retention(),
        status_interval: Duration::from_millis(serve.status_interval_ms),
        lease_duration: Duration::from_secs(serve.lease_seconds),
        runs_dir: serve.runs_dir.clone(),
        driver,
        installation: serve.installation.clone(),
    };
    let mut stdout = io::stdout();
    let result = match repo {
        Some(repo) => runtime().block_on(up::serve(opts, repo, &mut stdout)),
        None => runtime().block_on(up::up(opts, &mut stdout)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error[{}]: {}", e.reason(), inert(&e.to_string()));
            2
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("because a tokio runtime starts on any supported OS")
}

/// The long-running commands run with at most two glibc heap arenas
/// (`MALLOC_ARENA_MAX=2`): by default every thread that allocates may get
/// an arena of its own, up to 8 per core (the tokio workers, the threads
/// that parse and render 10,000 files at once, the SQLite thread), and each
/// keeps what was freed in it. At 10,000 requests the first pass peaked at
/// ~170 MB RSS with the default and ~140 MB with two arenas, in the same
/// time (one arena was ~30 % slower).
///
/// They also keep glibc's mmap threshold at its initial 128 KiB
/// (`MALLOC_MMAP_THRESHOLD_=131072`): by default each large block freed
/// raises the threshold to its size (up to 32 MiB), so that after a first
/// pass the large buffers of every later pass (a plan's maps, a status
/// commit's file list) come from the heap and what they leave between
/// long-lived objects stays resident. With the threshold fixed they are
/// mapped and given back when freed: at 10,000 requests, peak RSS 2–3 MiB
/// lower after the first pass and 4–5 MiB lower while idle, the first
/// pass as fast.
///
/// Both must be set before the first allocation and the project forbids
/// `unsafe` (no `mallopt`), so the process replaces itself once, same pid
/// and arguments, with the variables set. A value already in the
/// environment is kept as it is.
fn with_glibc_heap_settings(args: &Cli) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const VARS: [(&str, &str); 2] = [("MALLOC_ARENA_MAX", "2"), ("MALLOC_MMAP_THRESHOLD_", "131072")];
        let missing: Vec<(&str, &str)> = VARS.into_iter().filter(|(var, _)| std::env::var_os(var).is_none()).collect();
        if !matches!(args.command, Command::Up { .. } | Command::Serve { .. }) || missing.is_empty() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut argv = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        if let Some(arg0) = argv.next() {
            cmd.arg0(arg0);
        }
        // Returns only when the exec failed: go on as we are.
        let _ = cmd.args(argv).envs(missing).exec();
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = args;
}

fn main() -> ExitCode {
    // Not dumpable: another process of the same user (an unconfined agent)
    // cannot read this one's /proc/<pid>/environ or mem, nor ptrace it.
    // Reset by every exec, so each Hadron process (workers too) sets it.
    hadron::workers::proc::not_dumpable();
    let args = Cli::parse();
    with_glibc_heap_settings(&args);
    if !matches!(args.command, Command::Worker { .. } | Command::SandboxRelay { .. }) {
        init_logging(args.log_format);
    }
    let code = match args.command {
        Command::Up { dir, data, branch, exit_when_idle, poll_seconds, backoff_ms, serve } => {
            run_service(dir, None, data, branch, exit_when_idle, poll_seconds, backoff_ms, &serve)
        }
        Command::Serve { repo, data, branch, poll_seconds, backoff_ms, serve } => {
            run_service(PathBuf::new(), Some(repo), data, branch, false, poll_seconds, backoff_ms, &serve)
        }
        Command::Worker { run, work_dir, termination_log } => {
            let result = hadron::workers::entry::run_worker_for_job(&run, work_dir.as_deref(), termination_log.as_deref());
            i32::from(result.outcome != hadron::workers::spec::Outcome::Succeeded)
        }
        Command::SandboxRelay { socket, listen, argv } => match hadron::workers::egress::relay_and_run(&socket, &listen, &argv) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error[{}]: {}", e.reason(), inert(&e.to_string()));
                127
            }
        },
        Command::Approve { request, gate, control, branch, name, email, changes, data } => {
            let control = default_control(control, &data.data_dir);
            let email = email.unwrap_or_else(|| format!("{name}@localhost"));
            match up::approve(&control, &branch, &request, &gate, &name, &email, changes.as_deref(), &data.data_dir) {
                Ok(commit) => {
                    println!(
                        "{} {}/{} as {}: merge commit {} pushed to {}",
                        if changes.is_some() { "asked for changes to" } else { "approved" },
                        inert(&request),
                        inert(&gate),
                        inert(&name),
                        inert(&commit),
                        inert(&branch)
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error[{}]: {}", e.reason(), inert(&e.to_string()));
                    1
                }
            }
        }
        Command::CiStatus { request, repo, state, context, control, data } => {
            let control = default_control(control, &data.data_dir);
            match runtime().block_on(up::ci_status(
                &control,
                &request,
                &repo,
                &state,
                &context,
                data.database_url.as_deref(),
                &data.data_dir,
            )) {
                Ok(head) => {
                    println!(
                        "recorded {} ({}) for {} at {}; a hadron up running on this data dir reacts at once",
                        inert(&state),
                        inert(&context),
                        inert(&repo),
                        inert(&head)
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error[{}]: {}", e.reason(), inert(&e.to_string()));
                    1
                }
            }
        }
        Command::Validate { dir, format } => cli::validate(&dir, format, &mut io::stdout(), &mut io::stderr()),
        Command::Plan { dir, against, format } => cli::plan(&dir, against.as_deref(), format, &mut io::stdout(), &mut io::stderr()),
        Command::Schema { out, check } => match cli::schema(&out, check, &mut io::stdout()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error[{}]: {}", e.reason(), inert(&e.to_string()));
                2
            }
        },
    };
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}
