//! The `hadron worker --run <run.json>` entrypoint, shared by every driver.
//!
//! It clones (or re-fetches) the target repo into `<run dir>/workspace`,
//! checks out the work branch, renders the prompt, runs the agent command
//! with a wall-time limit, commits what the agent changed, pushes without
//! force (rebasing onto a branch that moved), and writes `result.json`.
//!
//! Untrusted text (title, description, the prompt) reaches the agent only
//! through the prompt file, its standard input and the environment, never
//! its argument list; git gets no untrusted text at all except validated
//! branch names after fixed prefixes and the commit message through a file.
//! Secret values are resolved from the worker's own environment, passed to
//! the agent, and replaced by `***` in everything written to `worker.log`.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::proc::{ProcessId, now_rfc3339, signal_group, stop_group, write_atomic};
use super::spec::{EnvSource, Outcome, RunResult, RunSpec};
use super::usage::Usage;
use crate::model::validate::{is_branch_name, is_dns_label};

/// `run.json`: the worker's instructions.
pub const RUN_FILE: &str = "run.json";
/// `result.json`: what the worker reports.
pub const RESULT_FILE: &str = "result.json";
/// `worker.log`: everything the worker did, secrets redacted.
pub const LOG_FILE: &str = "worker.log";
/// `prompt.md`: the rendered prompt.
pub const PROMPT_FILE: &str = "prompt.md";
/// `report.json`: where the agent may report usage (`HADRON_REPORT_FILE`).
pub const REPORT_FILE: &str = "report.json";
/// `agent.json`: identity of the running agent's process group, so a driver
/// cancelling the worker can stop the agent too.
pub const AGENT_FILE: &str = "agent.json";
/// The target repo checkout inside the run dir.
pub const WORKSPACE_DIR: &str = "workspace";

/// How many times a rejected push is retried after rebasing.
const PUSH_ATTEMPTS: u32 = 4;
/// Time the agent gets between SIGTERM and SIGKILL at the wall-time limit.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Most agent standard output kept in memory to look for a usage report.
const STDOUT_KEEP: usize = 8 << 20;
/// Environment variables of the worker passed through to the agent; the
/// rest of the worker's environment (which may hold other secrets) is not.
pub const PASSTHROUGH_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "SHELL", "TERM", "HTTP_PROXY", "HTTPS_PROXY",
    "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR",
];

/// Why a worker run failed. [`WorkerError::reason`] becomes `RunResult::reason`.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// `run.json` is missing, unreadable or asks for something invalid.
    #[error("invalid run spec: {0}")]
    InvalidRunSpec(String),
    /// A secret the agent needs is not in the worker's environment.
    #[error(
        "secret `{secret}` for the agent's variable `{variable}` is not available to the worker: \
         the operator must allow it (`hadron up|serve --agent-secret {secret}` or HADRON_AGENT_SECRETS) and set it in Hadron's environment"
    )]
    SecretMissing {
        /// The agent's variable.
        variable: String,
        /// Where the value should have come from.
        secret: String,
    },
    /// The target repo could not be cloned or fetched.
    #[error("cannot clone or fetch the target repo: {0}")]
    CloneFailed(String),
    /// Neither the work branch nor the base branch exists on the remote.
    #[error("the base branch `{0}` does not exist on the remote")]
    BaseBranchMissing(String),
    /// The prompt or a command element does not render.
    #[error("template error: {0}")]
    TemplateFailed(String),
    /// The agent command could not be started.
    #[error("cannot start the agent `{program}`: {detail}")]
    AgentSpawnFailed {
        /// Program name.
        program: String,
        /// OS error.
        detail: String,
    },
    /// The agent exited with a non-zero status or was killed by a signal.
    #[error("the agent {status}; see {log}")]
    AgentExitNonZero {
        /// `exited with code N` or `was killed by signal N`.
        status: String,
        /// Log file.
        log: String,
    },
    /// The agent ran past its wall-time limit and was killed.
    #[error("the agent ran longer than its wall-time limit of {0} s and was killed")]
    WallTimeExceeded(u64),
    /// The agent changed nothing although the stage requires a change.
    #[error("the agent changed no file and the stage requires a change")]
    NoChange,
    /// A local git step (checkout, commit, rebase) failed.
    #[error("git failed: {0}")]
    GitFailed(String),
    /// The push was rejected and retrying did not help.
    #[error("push failed: {0}")]
    PushFailed(String),
    /// A file in the run dir could not be written or read.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The run was cancelled (written by a driver).
    #[error("cancelled")]
    Cancelled,
}

impl WorkerError {
    /// Stable CamelCase reason for status conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::InvalidRunSpec(_) => "InvalidRunSpec",
            WorkerError::SecretMissing { .. } => "SecretMissing",
            WorkerError::CloneFailed(_) => "CloneFailed",
            WorkerError::BaseBranchMissing(_) => "BaseBranchMissing",
            WorkerError::TemplateFailed(_) => "TemplateFailed",
            WorkerError::AgentSpawnFailed { .. } => "AgentSpawnFailed",
            WorkerError::AgentExitNonZero { .. } => "AgentExitNonZero",
            WorkerError::WallTimeExceeded(_) => "WallTimeExceeded",
            WorkerError::NoChange => "NoChange",
            WorkerError::GitFailed(_) => "GitFailed",
            WorkerError::PushFailed(_) => "PushFailed",
            WorkerError::Io { .. } => "Io",
            WorkerError::Cancelled => "Cancelled",
        }
    }

    fn io(path: &Path, source: std::io::Error) -> WorkerError {
        WorkerError::Io { path: path.display().to_string(), source }
    }
}

impl RunResult {
    /// A failed result for `worker` with the error's reason and message.
    pub fn failed(worker: &str, error: &WorkerError, log_path: &Path, started_at: &str) -> RunResult {
        RunResult {
            worker: worker.to_owned(),
            outcome: Outcome::Failed,
            reason: error.reason().to_owned(),
            message: error.to_string(),
            pushed_commit: None,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            summary: String::new(),
            log_path: log_path.display().to_string(),
            started_at: started_at.to_owned(),
            finished_at: now_rfc3339(),
        }
    }

    /// Reads a `result.json`, if there is a readable one.
    pub fn read(path: &Path) -> Option<RunResult> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes this result to `path` atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, &json)
    }
}

/// The lock a live worker holds on its run directory for its whole life.
pub const LOCK_FILE: &str = "worker.lock";

/// Takes the run directory's lock; `Ok(None)` when another process holds it.
/// A driver probing the lock holds it for an instant only, so the worker
/// retries for a while before it concludes that another worker runs.
pub fn lock_run(run_dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(run_dir.join(LOCK_FILE))?;
    for _ in 0..200 {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether a live worker holds the run directory's lock. Probes with a
/// shared lock, released at once.
pub fn run_is_locked(run_dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(run_dir.join(LOCK_FILE)) else { return false };
    matches!(file.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// Runs the worker described by `run_json` and writes `result.json` beside it.
///
/// Effectively once: when `result.json` already holds this worker's result it
/// is returned as is; when the remote work branch already has a commit with
/// the trailer `Hadron-Worker: <worker>` (an earlier run pushed and crashed
/// before writing its result) that commit is reported and the agent does not
/// run again.
pub fn run_worker(run_json: &Path) -> RunResult {
    let run_dir = match run_json.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let run_dir = std::path::absolute(&run_dir).unwrap_or(run_dir);
    let result_path = run_dir.join(RESULT_FILE);
    let log_path = run_dir.join(LOG_FILE);
    let started_at = now_rfc3339();

    // One worker per run directory: a second process started for the same
    // run (a driver that crashed between spawning and recording the pid)
    // finds the lock held and leaves without doing anything.
    let _lock = match lock_run(&run_dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return RunResult {
                worker: String::new(),
                outcome: Outcome::Failed,
                reason: "AlreadyRunning".to_owned(),
                message: format!("another worker holds {}", run_dir.join(LOCK_FILE).display()),
                pushed_commit: None,
                tokens_in: 0,
                tokens_out: 0,
                cost_usd: 0.0,
                summary: String::new(),
                log_path: log_path.display().to_string(),
                started_at: started_at.clone(),
                finished_at: started_at,
            };
        }
        Err(e) => {
            let result = RunResult::failed("", &WorkerError::io(&run_dir.join(LOCK_FILE), e), &log_path, &started_at);
            let _ = result.write(&result_path);
            return result;
        }
    };

    let spec: RunSpec = match std::fs::read(run_json)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            let error = WorkerError::InvalidRunSpec(format!("{}: {e}", run_json.display()));
            let result = RunResult::failed("", &error, &log_path, &started_at);
            let _ = result.write(&result_path);
            return result;
        }
    };
    if let Some(done) = RunResult::read(&result_path).filter(|r| r.worker == spec.worker) {
        return done;
    }

    let (env, secrets) = match resolve_env(&spec) {
        Ok(resolved) => resolved,
        Err(error) => return finish(&spec, Err(error), None, &run_dir, &started_at),
    };
    let log = match Log::open(&log_path, secrets) {
        Ok(log) => Arc::new(log),
        Err(e) => return finish(&spec, Err(WorkerError::io(&log_path, e)), None, &run_dir, &started_at),
    };
    log.line(&format!("worker {} (request {}, stage {}, attempt {})", spec.worker, spec.request, spec.stage, spec.attempt));
    let mut worker = Worker { spec: &spec, workspace: run_dir.join(WORKSPACE_DIR), run_dir: run_dir.clone(), log: log.clone(), env, usage: None };
    let outcome = worker.run();
    if let Err(e) = &outcome {
        log.line(&format!("failed [{}]: {e}", e.reason()));
    }
    let usage = worker.usage.take();
    let result = finish(&spec, outcome, usage.map(|u| redact_usage(&log, u)), &run_dir, &started_at);
    log.line(&format!("result: {:?} {} {}", result.outcome, result.reason, result.pushed_commit.as_deref().unwrap_or("")));
    // The result is written and the work pushed: the workspace (a clone of
    // the target repo) is not needed again. A retry is a new attempt with a
    // run directory of its own.
    match std::fs::remove_dir_all(&worker.workspace) {
        Ok(()) => log.line("workspace removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log.line(&format!("could not remove the workspace {}: {e}", worker.workspace.display())),
    }
    result
}

fn redact_usage(log: &Log, mut usage: Usage) -> Usage {
    usage.summary = log.redact(&usage.summary);
    usage
}

/// Builds the result, writes it and returns it.
fn finish(spec: &RunSpec, outcome: Result<Done, WorkerError>, usage: Option<Usage>, run_dir: &Path, started_at: &str) -> RunResult {
    let log_path = run_dir.join(LOG_FILE);
    let mut result = match &outcome {
        Ok(done) => RunResult {
            worker: spec.worker.clone(),
            outcome: Outcome::Succeeded,
            reason: "Completed".to_owned(),
            message: done.message.clone(),
            pushed_commit: Some(done.commit.clone()),
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            summary: String::new(),
            log_path: log_path.display().to_string(),
            started_at: started_at.to_owned(),
            finished_at: now_rfc3339(),
        },
        Err(error) => RunResult::failed(&spec.worker, error, &log_path, started_at),
    };
    if let Some(usage) = usage {
        result.tokens_in = usage.tokens_in;
        result.tokens_out = usage.tokens_out;
        result.cost_usd = usage.cost(spec.pricing.as_ref());
        result.summary = usage.summary;
        result.refuse_insane_usage();
    }
    let _ = result.write(&run_dir.join(RESULT_FILE));
    result
}

/// The agent's own environment variables.
type AgentEnv = Vec<(String, OsString)>;

/// Resolves the agent's environment: literal values as they are, secrets
/// from the worker's own environment. Returns the variables and the secret
/// values (for redaction).
fn resolve_env(spec: &RunSpec) -> Result<(AgentEnv, Vec<String>), WorkerError> {
    let mut env = Vec::new();
    let mut secrets = Vec::new();
    for (name, source) in &spec.env {
        match source {
            EnvSource::Value(v) => env.push((name.clone(), OsString::from(v))),
            EnvSource::Secret { name: secret, .. } => match std::env::var_os(secret) {
                Some(value) if !value.is_empty() => {
                    secrets.push(value.to_string_lossy().into_owned());
                    env.push((name.clone(), value));
                }
                _ => return Err(WorkerError::SecretMissing { variable: name.clone(), secret: secret.clone() }),
            },
        }
    }
    Ok((env, secrets))
}

/// A successful run.
struct Done {
    commit: String,
    message: String,
}

/// `worker.log`, with every secret value replaced by `***`.
struct Log {
    file: Mutex<File>,
    secrets: Vec<String>,
}

impl Log {
    fn open(path: &Path, mut secrets: Vec<String>) -> std::io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // Longest first, so a secret containing another is fully replaced.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(Log { file: Mutex::new(file), secrets })
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if !s.is_empty() && out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    fn write(&self, text: &str) {
        let text = self.redact(text);
        if let Ok(mut f) = self.file.lock() {
            let _ = f.write_all(text.as_bytes());
        }
    }

    fn line(&self, text: &str) {
        self.write(&format!("[{}] {text}\n", now_rfc3339()));
    }
}


/// What a git command printed.
struct GitOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

struct Worker<'a> {
    spec: &'a RunSpec,
    run_dir: PathBuf,
    workspace: PathBuf,
    log: Arc<Log>,
    env: AgentEnv,
    usage: Option<Usage>,
}

impl Worker<'_> {
    fn run(&mut self) -> Result<Done, WorkerError> {
        self.validate()?;
        self.prepare_workspace()?;
        let work_branch = self.spec.work_branch.clone();
        let remote_work = format!("refs/remotes/origin/{work_branch}");
        let work_exists = self.rev(&remote_work)?.is_some();
        if work_exists && let Some(commit) = self.commit_of_this_worker(&remote_work)? {
            self.log.line(&format!("the remote branch already has commit {commit} of this worker; not running the agent again"));
            self.usage = self.read_report().or(self.usage.take());
            return Ok(Done { commit, message: "already pushed by an earlier run of this worker".to_owned() });
        }
        let start = if work_exists {
            remote_work
        } else {
            let base = format!("refs/remotes/origin/{}", self.spec.base_branch);
            if self.rev(&base)?.is_none() {
                return Err(WorkerError::BaseBranchMissing(self.spec.base_branch.clone()));
            }
            base
        };
        self.git_ok(["checkout", "-q", "-f", "-B", work_branch.as_str(), start.as_str(), "--"], WorkerError::GitFailed)?;
        self.git_ok(["clean", "-q", "-ffdx"], WorkerError::GitFailed)?;

        let prompt_path = self.run_dir.join(PROMPT_FILE);
        let prompt = self.render_prompt()?;
        std::fs::write(&prompt_path, prompt.as_bytes()).map_err(|e| WorkerError::io(&prompt_path, e))?;
        let argv = self.render_command(&prompt_path)?;

        let status = self.run_agent(&argv, &prompt_path);
        let stdout = match status {
            Ok((_, ref stdout)) | Err((_, ref stdout)) => stdout.clone(),
        };
        self.usage = self.read_report().or_else(|| Usage::from_stdout(&stdout));
        let status = match status {
            Ok((status, _)) => status,
            Err((e, _)) => return Err(e),
        };
        if !status.success() {
            let status = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => "failed".to_owned(),
            };
            return Err(WorkerError::AgentExitNonZero { status, log: self.run_dir.join(LOG_FILE).display().to_string() });
        }

        self.git_ok(["add", "-A"], WorkerError::GitFailed)?;
        let unchanged = self.git(["diff", "--cached", "--quiet"])?.ok;
        if unchanged {
            if self.spec.require_change {
                return Err(WorkerError::NoChange);
            }
            let head = self.rev("HEAD")?.ok_or_else(|| WorkerError::GitFailed("no HEAD after checkout".to_owned()))?;
            self.log.line("the agent changed nothing; nothing to push");
            return Ok(Done { commit: head, message: "the agent changed nothing".to_owned() });
        }
        let message_path = self.run_dir.join("commit-message.txt");
        std::fs::write(&message_path, self.commit_message()).map_err(|e| WorkerError::io(&message_path, e))?;
        let mut commit_args: Vec<OsString> = ["commit", "-q", "--no-verify", "-F"].map(OsString::from).into();
        commit_args.push(message_path.into_os_string());
        self.git_ok(commit_args, WorkerError::GitFailed)?;
        self.push()
    }

    fn validate(&self) -> Result<(), WorkerError> {
        let s = self.spec;
        let bad = |what: &str| Err(WorkerError::InvalidRunSpec(what.to_owned()));
        if !is_dns_label(&s.worker) {
            return bad("the worker name is not a DNS-1123 label");
        }
        if !is_branch_name(&s.work_branch) || !is_branch_name(&s.base_branch) {
            return bad("the work or base branch is not a valid branch name");
        }
        if s.clone_url.is_empty() || s.clone_url.starts_with('-') || s.clone_url.chars().any(char::is_control) {
            return bad("the clone URL is empty or not a URL");
        }
        if s.command.is_empty() {
            return bad("the agent command is empty");
        }
        Ok(())
    }

    /// Runs git in the workspace (or the run dir before the clone).
    fn git_in<I, S>(&self, dir: &Path, args: I) -> Result<GitOut, WorkerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown: Vec<String> = args.iter().map(|a| crate::redact::url_credentials(&a.to_string_lossy())).collect();
        self.log.line(&format!("$ git {}", shown.join(" ")));
        let (name, email) = &self.spec.git_author;
        let out = crate::git::Git::in_dir(dir, crate::git::Identity::new(name.clone(), email.clone()))
            .run(&args)
            .map_err(|e| WorkerError::GitFailed(e.to_string()))?;
        let (stdout, stderr) = (out.stdout, out.stderr);
        if !stdout.is_empty() {
            self.log.write(&stdout);
        }
        if !stderr.is_empty() {
            self.log.write(&stderr);
        }
        Ok(GitOut { ok: out.success, stdout, stderr })
    }

    fn git<I, S>(&self, args: I) -> Result<GitOut, WorkerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.git_in(&self.workspace, args)
    }

    /// Runs git and maps a non-zero exit to `error(stderr)`.
    fn git_ok<I, S>(&self, args: I, error: fn(String) -> WorkerError) -> Result<String, WorkerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.git(args)?;
        if out.ok { Ok(out.stdout.trim().to_owned()) } else { Err(error(self.log.redact(out.stderr.trim()))) }
    }

    /// The commit a ref points at, if it exists.
    fn rev(&self, name: &str) -> Result<Option<String>, WorkerError> {
        let out = self.git(["rev-parse", "--verify", "--quiet", &format!("{name}^{{commit}}")])?;
        Ok(if out.ok { Some(out.stdout.trim().to_owned()) } else { None })
    }

    /// Clones into `workspace` (through a temporary folder, so a crash never
    /// leaves a half clone), or fetches when an earlier attempt cloned.
    fn prepare_workspace(&self) -> Result<(), WorkerError> {
        if self.workspace.join(".git").is_dir() {
            let fetched = self.git(["fetch", "-q", "--prune", "origin"])?;
            if fetched.ok {
                return Ok(());
            }
            self.log.line("fetch into the existing workspace failed; cloning again");
            std::fs::remove_dir_all(&self.workspace).map_err(|e| WorkerError::io(&self.workspace, e))?;
        }
        let partial = self.run_dir.join("workspace.partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| WorkerError::io(&partial, e))?;
        }
        let args: Vec<OsString> = vec![
            "clone".into(),
            "-q".into(),
            "--no-checkout".into(),
            "--".into(),
            self.spec.clone_url.clone().into(),
            partial.clone().into_os_string(),
        ];
        let out = self.git_in(&self.run_dir, args)?;
        if !out.ok {
            return Err(WorkerError::CloneFailed(self.log.redact(out.stderr.trim())));
        }
        std::fs::rename(&partial, &self.workspace).map_err(|e| WorkerError::io(&self.workspace, e))
    }

    /// The newest commit on `branch` whose message has this worker's trailer.
    fn commit_of_this_worker(&self, branch: &str) -> Result<Option<String>, WorkerError> {
        // The worker name is a validated DNS label: no regex metacharacters.
        let grep = format!("--grep=^Hadron-Worker: {}$", self.spec.worker);
        let out = self.git(["log", "-1", "--format=%H", "-E", grep.as_str(), branch, "--"])?;
        let commit = out.stdout.trim();
        Ok(if out.ok && !commit.is_empty() { Some(commit.to_owned()) } else { None })
    }

    fn render_prompt(&self) -> Result<String, WorkerError> {
        handlebars()
            .render_template(&self.spec.prompt_template, &prompt_data(self.spec))
            .map_err(|e| WorkerError::TemplateFailed(format!("prompt: {}", render_error(&e))))
    }

    fn render_command(&self, prompt_path: &Path) -> Result<Vec<String>, WorkerError> {
        let data = command_data(self.spec, prompt_path, &self.workspace);
        let hb = handlebars();
        self.spec
            .command
            .iter()
            .enumerate()
            .map(|(i, element)| {
                hb.render_template(element, &data)
                    .map_err(|e| WorkerError::TemplateFailed(format!("command element {i}: {}", render_error(&e))))
            })
            .collect()
    }

    /// Runs the agent in its own process group, with the prompt on stdin,
    /// output copied (redacted) to the log, and the wall-time limit.
    /// Returns the exit status and the (tail of the) standard output.
    fn run_agent(&self, argv: &[String], prompt_path: &Path) -> Result<(ExitStatus, String), (WorkerError, String)> {
        let s = self.spec;
        let report_path = self.run_dir.join(REPORT_FILE);
        if report_path.exists() {
            // A report from an earlier attempt must not be read as this one's.
            std::fs::remove_file(&report_path).map_err(|e| (WorkerError::io(&report_path, e), String::new()))?;
        }
        let stdin = File::open(prompt_path).map_err(|e| (WorkerError::io(prompt_path, e), String::new()))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir(&self.workspace).env_clear();
        for name in PASSTHROUGH_ENV {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HADRON_PROMPT_FILE", prompt_path)
            .env("HADRON_REPORT_FILE", &report_path)
            .env("HADRON_REQUEST", &s.request)
            .env("HADRON_STAGE", &s.stage)
            .env("HADRON_WORKER", &s.worker)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        self.log.line(&format!("$ agent {} ({} more arguments)", argv[0], argv.len() - 1));
        let mut child = cmd.spawn().map_err(|e| {
            (WorkerError::AgentSpawnFailed { program: argv[0].clone(), detail: e.to_string() }, String::new())
        })?;
        let pid = child.id();
        let identity = ProcessId::of(pid);
        if let Some(id) = &identity {
            let path = self.run_dir.join(AGENT_FILE);
            if let Ok(json) = serde_json::to_vec(id) {
                let _ = write_atomic(&path, &json);
            }
        }
        let (tx, rx) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
        if let Some(out) = child.stdout.take() {
            spawn_reader(out, true, self.log.clone(), tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(err, false, self.log.clone(), tx.clone());
        }
        drop(tx);

        let alive = || identity.as_ref().is_some_and(ProcessId::is_alive);
        let deadline = s.wall_time_secs.map(|secs| (secs, Instant::now() + Duration::from_secs(secs)));
        let mut timed_out = None;
        // Poll without reaping, so the group id stays reserved while we
        // signal it; the reap happens below.
        while alive() {
            if let Some((secs, at)) = deadline
                && Instant::now() >= at
            {
                self.log.line(&format!("wall-time limit of {secs} s reached; stopping the agent"));
                let _ = stop_group(pid, KILL_GRACE, alive);
                timed_out = Some(secs);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Background processes the agent left behind go with it. The leader
        // is not reaped yet, so the group id cannot have been reused.
        let _ = signal_group(pid, Some(nix::sys::signal::Signal::SIGKILL));
        let status = child.wait();
        let _ = std::fs::remove_file(self.run_dir.join(AGENT_FILE));

        let mut stdout = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        for _ in 0..2 {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok((true, bytes)) => stdout = bytes,
                Ok((false, _)) => {}
                Err(_) => {
                    self.log.line("the agent's output is still held open by a detached process; not waiting for it");
                    break;
                }
            }
        }
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        if let Some(secs) = timed_out {
            return Err((WorkerError::WallTimeExceeded(secs), stdout));
        }
        match status {
            Ok(status) => {
                self.log.line(&format!("agent finished: {status}"));
                Ok((status, stdout))
            }
            Err(e) => Err((WorkerError::AgentSpawnFailed { program: argv[0].clone(), detail: e.to_string() }, stdout)),
        }
    }

    fn read_report(&self) -> Option<Usage> {
        let text = std::fs::read_to_string(self.run_dir.join(REPORT_FILE)).ok()?;
        Usage::from_report(&text)
    }

    fn commit_message(&self) -> String {
        let s = self.spec;
        let title = s.title.split_whitespace().collect::<Vec<_>>().join(" ");
        let title = if title.is_empty() { format!("Hadron: {}", s.request) } else { title };
        format!("{title}\n\nStage: {}\nHadron-Request: {}\nHadron-Worker: {}\n", s.stage, s.request, s.worker)
    }

    /// Pushes HEAD to the work branch without force. A rejection because the
    /// branch moved is met by fetching, rebasing onto it and trying again.
    fn push(&self) -> Result<Done, WorkerError> {
        let branch = &self.spec.work_branch;
        let refspec = format!("HEAD:refs/heads/{branch}");
        let remote = format!("refs/remotes/origin/{branch}");
        let mut last_error = String::new();
        for attempt in 1..=PUSH_ATTEMPTS {
            let out = self.git(["push", "-q", "origin", refspec.as_str()])?;
            if out.ok {
                let head = self.rev("HEAD")?.ok_or_else(|| WorkerError::GitFailed("no HEAD after commit".to_owned()))?;
                let message = if attempt == 1 { "pushed".to_owned() } else { format!("pushed after {} rebase(s)", attempt - 1) };
                return Ok(Done { commit: head, message });
            }
            last_error = self.log.redact(out.stderr.trim());
            if !self.git(["fetch", "-q", "--prune", "origin"])?.ok {
                break;
            }
            let Some(tip) = self.rev(&remote)? else { break };
            if self.git(["merge-base", "--is-ancestor", tip.as_str(), "HEAD"])?.ok {
                // The branch did not move under us: the rejection is something else.
                break;
            }
            self.log.line(&format!("the branch moved to {tip}; rebasing (attempt {attempt})"));
            if !self.git(["rebase", "-q", tip.as_str()])?.ok {
                let _ = self.git(["rebase", "--abort"]);
                return Err(WorkerError::PushFailed(format!(
                    "{branch} moved and the agent's change does not rebase cleanly onto {tip}"
                )));
            }
        }
        Err(WorkerError::PushFailed(last_error))
    }
}

/// The data a prompt template renders with: every name of
/// [`PROMPT_VARIABLES`](crate::model::template_vars::PROMPT_VARIABLES), always present (strict mode fails on a missing one).
fn prompt_data(s: &RunSpec) -> serde_json::Value {
    json!({
        "request": s.request,
        "title": s.title,
        "description": s.description,
        "stage": s.stage,
        "repo": s.repo,
        "branch": s.work_branch,
        "previousStages": s.previous_stages,
    })
}

/// The data a command element renders with: every name of
/// [`COMMAND_VARIABLES`](crate::model::template_vars::COMMAND_VARIABLES), always present (`model` is empty when unset).
fn command_data(s: &RunSpec, prompt_path: &Path, workspace: &Path) -> serde_json::Value {
    json!({
        "promptFile": prompt_path.display().to_string(),
        "workspace": workspace.display().to_string(),
        "request": s.request,
        "stage": s.stage,
        "repo": s.repo,
        "model": s.model.clone().unwrap_or_default(),
    })
}

/// A render error in one line: what failed and where in the template.
fn render_error(e: &handlebars::RenderError) -> String {
    let mut text = match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(path)) => {
            format!("the template uses `{{{{{path}}}}}`, which Hadron does not pass (`hadron validate` names the variables)")
        }
        handlebars::RenderErrorReason::HelperNotFound(name) => {
            format!("the template calls the helper `{name}`, which does not exist")
        }
        other => other.to_string(),
    };
    if let (Some(line), Some(column)) = (e.line_no, e.column_no) {
        text.push_str(&format!(" (template line {line}, column {column})"));
    }
    text
}

/// A registry that renders strictly (a name missing from the data is an
/// error, not an empty string) and does not HTML-escape.
fn handlebars() -> handlebars::Handlebars<'static> {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb
}

/// Copies one output stream of the agent into the log, line by line, and
/// sends what it read (standard output only, its tail) when the stream ends.
fn spawn_reader<R: Read + Send + 'static>(stream: R, is_stdout: bool, log: Arc<Log>, tx: std::sync::mpsc::Sender<(bool, Vec<u8>)>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut kept = Vec::new();
        let mut line = Vec::new();
        let tag = if is_stdout { "out" } else { "err" };
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    log.write(&format!("[agent {tag}] {}{}", text, if text.ends_with('\n') { "" } else { "\n" }));
                    if is_stdout {
                        kept.extend_from_slice(&line);
                        if kept.len() > STDOUT_KEEP {
                            kept.drain(..kept.len() - STDOUT_KEEP);
                        }
                    }
                }
            }
        }
        let _ = tx.send((is_stdout, kept));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(crate::redact::url_credentials("https://bot:s3cret@gitea.example.com/a/b.git"), "https://***@gitea.example.com/a/b.git");
        assert_eq!(crate::redact::url_credentials("https://gitea.example.com/a@b.git"), "https://gitea.example.com/a@b.git");
        assert_eq!(crate::redact::url_credentials("/srv/git/app.git"), "/srv/git/app.git");
    }

    fn spec() -> RunSpec {
        RunSpec {
            worker: "hadron-fix-implement-1-abcd".into(),
            request: "fix".into(),
            generation: "0011223344556677".into(),
            stage: "implement".into(),
            attempt: 1,
            repo: "../app.git".into(),
            clone_url: "/srv/git/app.git".into(),
            base_branch: "main".into(),
            work_branch: "hadron/fix".into(),
            title: "Fix it".into(),
            description: String::new(),
            prompt_template: crate::reconcile::execute::DEFAULT_PROMPT.into(),
            previous_stages: vec![],
            command: vec!["agent".into(), "{{promptFile}}".into()],
            model: None,
            env: vec![],
            require_change: true,
            pricing: None,
            wall_time_secs: None,
            git_author: ("Hadron".into(), "hadron@example.com".into()),
        }
    }

    fn keys(value: &serde_json::Value) -> std::collections::BTreeSet<&str> {
        value.as_object().expect("because the data is a JSON object").keys().map(String::as_str).collect()
    }

    #[test]
    fn render_data_has_exactly_the_validated_variables() {
        use crate::model::template_vars::{COMMAND_VARIABLES, PROMPT_VARIABLES};
        let s = spec();
        assert_eq!(keys(&prompt_data(&s)), PROMPT_VARIABLES.iter().copied().collect());
        let data = command_data(&s, Path::new("/run/prompt.md"), Path::new("/run/workspace"));
        assert_eq!(keys(&data), COMMAND_VARIABLES.iter().copied().collect());
        assert_eq!(data["model"], "", "an unset model is an empty string, not a missing key");
    }

    #[test]
    fn the_shipped_prompt_renders_strictly_with_and_without_optional_parts() {
        let mut s = spec();
        let plain = handlebars().render_template(&s.prompt_template, &prompt_data(&s)).expect("renders with no description and no earlier stage");
        assert!(plain.contains("Task: Fix it") && !plain.contains("Earlier stages"), "{plain}");
        s.description = "Details.".into();
        s.previous_stages = vec![crate::workers::spec::PreviousStage {
            name: "implement".into(),
            repo: "../app.git".into(),
            summary: "wrote it".into(),
        }];
        let full = handlebars().render_template(&s.prompt_template, &prompt_data(&s)).expect("renders with everything");
        assert!(full.contains("Details.") && full.contains("- implement on ../app.git: wrote it"), "{full}");
    }

    #[test]
    fn a_misspelt_variable_fails_to_render_instead_of_vanishing() {
        let data = command_data(&spec(), Path::new("/run/prompt.md"), Path::new("/run/workspace"));
        let e = handlebars().render_template("--file={{promptFil}}", &data).expect_err("strict mode refuses a missing variable");
        let text = render_error(&e);
        assert!(text.contains("`{{promptFil}}`") && text.contains("hadron validate"), "{text}");
        // `if` tolerates a missing argument even in strict mode; `hadron
        // validate` (UnknownTemplateVariable) is what catches `{{#if titel}}`.
        let lenient = handlebars().render_template("{{#if titel}}x{{/if}}", &prompt_data(&spec())).expect("if is lenient");
        assert_eq!(lenient, "");
        let ok = handlebars().render_template("{{promptFile}} {{model}}", &data).expect("known variables render");
        assert_eq!(ok, "/run/prompt.md ");
    }

    #[test]
    fn reasons_are_stable() {
        assert_eq!(WorkerError::NoChange.reason(), "NoChange");
        assert_eq!(WorkerError::WallTimeExceeded(1).reason(), "WallTimeExceeded");
        assert_eq!(WorkerError::SecretMissing { variable: "A".into(), secret: "B".into() }.reason(), "SecretMissing");
    }
}
