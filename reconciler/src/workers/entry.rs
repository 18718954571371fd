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
//!
//! The parts: [`run_dir`](super::run_dir) (file names, lock),
//! [`error`](super::error) ([`WorkerError`]), `result.rs` (`result.json`),
//! `log.rs` (`worker.log` and redaction), [`agent_env`](super::agent_env)
//! (the agent's environment and secrets), `worker.rs` (the state of a run),
//! `workspace.rs` (git), `template.rs` (prompt and command) and `agent.rs`
//! (the agent process). This file holds the entrypoint and the order of the
//! steps.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::adapters;
use super::agent_env::resolve_env;
use super::error::WorkerError;
use super::log::Log;
use super::result::{Done, finish};
use super::run_dir::{LOCK_FILE, LOG_FILE, PROMPT_FILE, RESULT_FILE, WORKSPACE_DIR, lock_run};
use super::spec::{Outcome, RunResult, RunSpec};
use super::usage::Usage;
use super::worker::Worker;
use crate::model::kinds::OutputFormat;
use crate::model::validate::{is_branch_name, is_dns_label};
use crate::time::now_rfc3339;

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
    run_worker_in(run_json, &run_dir)
}

/// [`run_worker`] as a Kubernetes Job runs it: the run spec is read from
/// `run_json` (a read-only Secret volume), the run's files (lock, log,
/// result, workspace) go in `work_dir` (an `emptyDir`; default: beside
/// `run_json`), and the result is
/// also written to `termination_log` (the container's termination
/// message, cut to 4 KiB), where the driver reads it.
pub fn run_worker_for_job(run_json: &Path, work_dir: Option<&Path>, termination_log: Option<&Path>) -> RunResult {
    let result = match work_dir {
        Some(dir) => {
            // An emptyDir exists already; a folder given by hand may not (an
            // error here shows as the lock's, with the path).
            let _ = std::fs::create_dir_all(dir);
            run_worker_in(run_json, dir)
        }
        None => run_worker(run_json),
    };
    if let Some(path) = termination_log
        && let Err(e) = std::fs::write(path, super::kubernetes::termination_message(&result))
    {
        eprintln!("could not write the termination message {}: {e}", path.display());
    }
    result
}

fn run_worker_in(run_json: &Path, run_dir: &Path) -> RunResult {
    let run_dir = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_owned());
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
                unconfined: None,
                session_id: None,
            };
        }
        Err(e) => {
            let result = RunResult::failed("", &WorkerError::io(&run_dir.join(LOCK_FILE), e), &log_path, &started_at);
            let _ = result.write(&result_path);
            return result;
        }
    };

    let spec: RunSpec =
        match std::fs::read(run_json).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
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
        Err(error) => return finish(&spec, Err(error), None, None, &run_dir, &started_at),
    };
    let log = match Log::open(&log_path, secrets) {
        Ok(log) => Arc::new(log),
        Err(e) => return finish(&spec, Err(WorkerError::io(&log_path, e)), None, None, &run_dir, &started_at),
    };
    log.line(&format!("worker {} (request {}, stage {}, attempt {})", spec.worker, spec.request, spec.stage, spec.attempt));
    let mut worker = Worker {
        spec: &spec,
        workspace: run_dir.join(WORKSPACE_DIR),
        run_dir: run_dir.clone(),
        log: log.clone(),
        env,
        usage: None,
        unconfined: None,
    };
    let outcome = worker.run();
    // The run is over: what worker.log held back of the output goes in now,
    // even if a process the agent left still holds its output open.
    log.flush_output();
    if let Err(e) = &outcome {
        log.line(&format!("failed [{}]: {e}", e.reason()));
    }
    let usage = worker.usage.take();
    let unconfined = worker.unconfined.take();
    let result = finish(&spec, outcome, usage.map(|u| redact_usage(&log, u)), unconfined, &run_dir, &started_at);
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

impl Worker<'_> {
    fn run(&mut self) -> Result<Done, WorkerError> {
        self.validate()?;
        let reused = self.prepare_workspace()?;
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
        if reused {
            // What an earlier attempt left; a fresh clone has nothing to clean.
            self.git_ok(["clean", "-q", "-ffdx"], WorkerError::GitFailed)?;
        }

        let prompt_path = self.run_dir.join(PROMPT_FILE);
        let prompt = self.render_prompt()?;
        std::fs::write(&prompt_path, prompt.as_bytes()).map_err(|e| WorkerError::io(&prompt_path, e))?;
        let argv = self.render_command(&prompt_path)?;

        let status = self.run_agent(&argv, &prompt_path);
        let (stdout, code) = match status {
            Ok((status, ref stdout)) => (stdout.clone(), status.code()),
            Err((_, ref stdout)) => (stdout.clone(), None),
        };
        self.usage = match self.spec.output {
            OutputFormat::Report => self.read_report().or_else(|| Usage::from_stdout(&stdout)),
            cli => adapters::read(cli, &stdout, code),
        };
        let status = match status {
            Ok((status, _)) => status,
            Err((e, _)) => return Err(e),
        };
        if let Some(usage) = &mut self.usage {
            match usage.session_id.take() {
                Some(id) if crate::ids::is_session_id(&id) => {
                    self.log.line(&format!("{} session {}", self.spec.output.as_str(), self.log.redact(&id)));
                    usage.session_id = Some(id);
                }
                Some(id) => self.log.line(&format!(
                    "{} printed a session id Hadron does not accept ({} characters; not a letter or digit followed by up to 127 of letters, digits and `._:-`); it is dropped, and a retry cannot resume that session",
                    self.spec.output.as_str(),
                    id.chars().count()
                )),
                None => {}
            }
        }
        if let Some(f) = self.usage.as_ref().and_then(|u| u.failure.as_ref()) {
            return Err(WorkerError::AgentReportedFailure {
                cli: f.cli,
                reason: self.log.redact(&f.reason),
                message: self.log.redact(&f.message),
                retryable: f.retryable,
            });
        }
        if !status.success() {
            let status = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => "failed".to_owned(),
            };
            return Err(WorkerError::AgentExitNonZero { status, log: self.run_dir.join(LOG_FILE).display().to_string() });
        }

        self.git_ok(["add", "-A"], WorkerError::GitFailed)?;
        let message_path = self.run_dir.join("commit-message.txt");
        std::fs::write(&message_path, self.commit_message()).map_err(|e| WorkerError::io(&message_path, e))?;
        let mut commit_args: Vec<OsString> = ["commit", "-q", "--no-verify", "-F"].map(OsString::from).into();
        commit_args.push(message_path.into_os_string());
        let committed = self.git(commit_args)?;
        if !committed.ok {
            // Asked only now (one git process less on the usual path): did
            // the commit fail because the agent changed nothing?
            if !self.git(["diff", "--cached", "--quiet"])?.ok {
                let said = if committed.stderr.trim().is_empty() { &committed.stdout } else { &committed.stderr };
                return Err(WorkerError::GitFailed(format!(
                    "committing the agent's change failed: {} (the whole run: {})",
                    self.log.redact(said.trim()),
                    self.run_dir.join(LOG_FILE).display()
                )));
            }
            if self.spec.require_change {
                return Err(WorkerError::NoChange);
            }
            let head = self.rev("HEAD")?.ok_or_else(|| WorkerError::GitFailed("no HEAD after checkout".to_owned()))?;
            self.log.line("the agent changed nothing; nothing to push");
            return Ok(Done { commit: head, message: "the agent changed nothing".to_owned() });
        }
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
}
