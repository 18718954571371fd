//! `hadron up`, `hadron approve`, `hadron ci-status`: the embedded default —
//! one process, SQLite, local child-process workers, control repo on a local
//! path — and the two things a person does to it by hand.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::model::Phase;
use crate::plan::PlanConfig;
use crate::reconcile::{self, Context, LoopConfig, PassReport, ReconcileError, seed, urls};
use crate::store::Store;
use crate::workers::{LocalDriver, WorkerCommand};

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
        let _ = writeln!(out, "seeded control repo {}", control.display());
        for (name, path) in &seeded.targets {
            let _ = writeln!(out, "seeded target repo  {name}: {}", path.display());
        }
    } else {
        let _ = writeln!(out, "reusing control repo {}", control.display());
    }
    let _ = writeln!(out, "clone it to ask for work:  git clone {} my-control", control.display());
    Ok(control)
}

/// `hadron up`.
pub async fn up(opts: UpOptions, out: &mut (dyn Write + Send)) -> Result<i32, UpError> {
    let data_dir = absolute(&opts.data_dir)?;
    std::fs::create_dir_all(&data_dir).map_err(|source| UpError::Io { path: data_dir.clone(), source })?;
    let control = control_repo(&opts.dir, &data_dir, out)?;
    let store = open_store(opts.database_url.as_deref(), &data_dir).await?;
    let _ = writeln!(out, "store: {}", store.location());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // A worker exit is a trigger, like a push.
    let exit_tx = tx.clone();
    let driver = LocalDriver::new(data_dir.join("runs"), WorkerCommand::hadron(opts.worker_program.clone()))
        .map_err(ReconcileError::from)?
        .with_exit_hook(move |_| {
            let _ = exit_tx.try_send(());
        });
    let driver = Arc::new(driver);
    let cfg = LoopConfig {
        control_url: control.to_string_lossy().into_owned(),
        branch: opts.branch.clone(),
        data_dir: data_dir.clone(),
        poll_interval: opts.poll_interval,
        plan: PlanConfig { backoff_base_ms: i64::try_from(opts.backoff_base.as_millis()).unwrap_or(10_000), ..PlanConfig::default() },
        driver_name: "local".into(),
    };
    let mut ctx = Context::new(cfg, store, driver)?;
    let _triggers = crate::source::spawn_triggers(&ctx.source_config(), tx);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
            }
        });
    }
    let _ = writeln!(out, "watching {} (branch {}); Ctrl-C stops (workers keep running and are adopted on restart)", control.display(), opts.branch);
    let mut last: Option<PassReport> = None;
    let exit_when_idle = opts.exit_when_idle;
    reconcile::run(&mut ctx, rx, |result| {
        match result {
            Ok(report) => {
                for c in &report.changes {
                    let from = c.from.map_or("new".to_owned(), |p| p.as_str().to_owned());
                    let stage = c.stage.as_ref().map(|s| format!(" [{s}]")).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{}  {:<24} {} -> {}{stage}  {}",
                        crate::time::rfc3339(crate::time::now()),
                        c.request,
                        from,
                        c.to.as_str(),
                        c.message
                    );
                }
                let idle = report.idle;
                last = Some(report.clone());
                if exit_when_idle && idle {
                    return false;
                }
            }
            Err(e) => {
                let _ = writeln!(out, "{}  pass failed [{}]: {e}", crate::time::rfc3339(crate::time::now()), e.reason());
            }
        }
        !stop.load(Ordering::SeqCst)
    })
    .await;
    if let Some(report) = last {
        summary(&report, &control, out);
    }
    Ok(0)
}

fn summary(report: &PassReport, control: &Path, out: &mut dyn Write) {
    let _ = writeln!(out, "\n{:<24} {:<20} {:<12} MESSAGE", "REQUEST", "PHASE", "STAGE");
    for (name, (phase, stage, message)) in &report.phases {
        let _ = writeln!(out, "{name:<24} {:<20} {:<12} {message}", phase.as_str(), stage.as_deref().unwrap_or("-"));
    }
    let waiting: Vec<&String> =
        report.phases.iter().filter(|(_, (p, _, _))| *p == Phase::WaitingForApproval).map(|(n, _)| n).collect();
    for name in waiting {
        let _ = writeln!(out, "approve with: hadron approve {name} <gate> --as <approver from hadron.yaml>");
    }
    let _ = writeln!(out, "status history: git -C {} log -p -- status/", control.display());
}

/// `hadron approve REQUEST GATE`: merges the approval branch into the
/// control repo's branch as the given person, with the `git` CLI.
pub fn approve(control: &str, branch: &str, request: &str, gate: &str, name: &str, email: &str, data_dir: &Path) -> Result<String, UpError> {
    let work = data_dir.join("approve");
    Ok(crate::gates::approve_as_person(control, branch, request, gate, &work, name, email)?)
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
    if !crate::model::validate::is_dns_label(request) {
        return Err(UpError::Usage(format!("`{request}` is not a request name")));
    }
    let url = urls::resolve(control, repo);
    let out = std::process::Command::new("git")
        .args(["ls-remote", "--", &url, &format!("refs/heads/hadron/{request}")])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|source| UpError::Io { path: PathBuf::from("git"), source })?;
    let head = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_owned();
    if head.len() != 40 {
        return Err(UpError::Usage(format!("{url} has no branch hadron/{request} yet: nothing to report CI for")));
    }
    let store = open_store(database_url, data_dir).await?;
    store.set_commit_status(repo, &head, context, state, crate::time::now()).await?;
    Ok(head)
}
