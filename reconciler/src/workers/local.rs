//! The local driver: workers are child processes, one folder per worker.
//!
//! `<runs dir>/<worker>/` holds `run.json` (what to do), `pid.json` (the
//! worker process: pid, start time), `stdout.log` / `stderr.log`, and, once
//! the worker is done, `result.json`. Each worker runs in its own process
//! group, so it outlives a Hadron restart; a new driver on the same runs
//! folder finds every run again from these files alone.
//!
//! Several installations may share one runs folder: `run.json` records the
//! installation a run belongs to, and a driver observes, cancels and prunes
//! only the runs of its own (a folder without a readable `run.json` is
//! no one's to judge, and is left alone too).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::error::WorkerError;
use super::proc::{ProcessId, signal_group, unix_now, write_atomic, write_new_atomic};
use super::run_dir::{AGENT_FILE, LOG_FILE, RESULT_FILE, RUN_FILE, WORKSPACE_DIR, run_is_locked};
use super::spec::{RunResult, RunSpec};
use super::{Driver, DriverError, Observation, WorkerState};
use crate::ids::{Installation, is_dns_label};
use crate::time::now_rfc3339;

/// The folder of the runs folder holding the agents' persistent homes (not
/// a DNS label, so never taken for a run).
pub const AGENT_HOMES_DIR: &str = ".agent-homes";

/// The name of the persistent home of run `worker`'s stage: its name with
/// attempt number 0 (`hadron-<request>-<stage>-<n>-<hash>`).
fn home_name_of(worker: &str) -> Option<String> {
    let (rest, hash) = worker.rsplit_once('-')?;
    let (head, attempt) = rest.rsplit_once('-')?;
    (!attempt.is_empty() && attempt.bytes().all(|b| b.is_ascii_digit())).then(|| format!("{head}-0-{hash}"))
}

/// `pid.json`: the worker process.
pub const PID_FILE: &str = "pid.json";

/// The program the driver starts for a worker; the path of `run.json` is
/// appended as the last argument.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Arguments before the `run.json` path.
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// `<exe> worker --run <run.json>`: the Hadron binary's worker entrypoint.
    pub fn hadron(exe: impl Into<PathBuf>) -> WorkerCommand {
        WorkerCommand { program: exe.into(), args: vec!["worker".into(), "--run".into()] }
    }

    /// Any program and arguments (tests use stand-in workers).
    pub fn new(program: impl Into<PathBuf>, args: impl IntoIterator<Item = impl Into<OsString>>) -> WorkerCommand {
        WorkerCommand { program: program.into(), args: args.into_iter().map(Into::into).collect() }
    }
}

type ExitHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs workers as local child processes. See the module documentation.
pub struct LocalDriver {
    runs_dir: PathBuf,
    command: WorkerCommand,
    wall_time_grace: Duration,
    stop_grace: Duration,
    lock: Mutex<()>,
    on_exit: Option<ExitHook>,
    /// Workers this driver started and has not reaped yet, with the moment
    /// the driver must stop them from outside (wall time plus grace).
    children: Arc<Mutex<BTreeMap<String, Option<Instant>>>>,
    /// Observations of finished runs: a result file is written once and
    /// never changes, so it is read once, not on every pass.
    finished: Mutex<BTreeMap<String, Observation>>,
    /// Names of Hadron's environment variables that agents may reference as secrets.
    agent_secrets: BTreeSet<String>,
    /// Whose runs this driver's are.
    installation: Installation,
    /// Run folders another installation's `run.json` claims: it never
    /// changes, so it is read once.
    foreign: Mutex<BTreeSet<String>>,
}

/// How often live workers without an exit notice (adopted after a restart,
/// or no exit hook) are observed.
const RECHECK_UNWATCHED: Duration = Duration::from_millis(250);

/// Variables a worker needs besides the agent's passthrough set and git's
/// transport settings ([`crate::git::GIT_TRANSPORT_ENV`]): the operator's git
/// config and the locale. Nothing else of Hadron's environment reaches a worker.
const WORKER_ENV: &[&str] = &[
    crate::git::OPERATOR_CONFIG_ENV,
    "LC_ALL",
    "LC_CTYPE",
    "RUST_BACKTRACE",
    crate::workers::sandbox::SANDBOX_ENV,
    crate::workers::sandbox::BWRAP_ENV,
    crate::workers::sandbox::READ_ONLY_ENV,
    crate::workers::sandbox::SHARED_ENV,
    crate::workers::agent::RELAY_ENV,
];

impl LocalDriver {
    /// A driver keeping its runs in `runs_dir` (created if missing) and
    /// starting workers with `command`.
    pub fn new(runs_dir: impl Into<PathBuf>, command: WorkerCommand) -> Result<LocalDriver, DriverError> {
        let runs_dir = runs_dir.into();
        std::fs::create_dir_all(&runs_dir).map_err(|e| DriverError::io(&runs_dir, e))?;
        let runs_dir = std::path::absolute(&runs_dir).map_err(|e| DriverError::io(&runs_dir, e))?;
        Ok(LocalDriver {
            runs_dir,
            command,
            wall_time_grace: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
            lock: Mutex::new(()),
            on_exit: None,
            children: Arc::default(),
            finished: Mutex::default(),
            agent_secrets: BTreeSet::new(),
            installation: Installation::default(),
            foreign: Mutex::default(),
        })
    }

    /// Runs the workers of `installation` (default: [`Installation::default`])
    /// and leaves other installations' runs in the same folder alone.
    pub fn with_installation(mut self, installation: Installation) -> Self {
        self.installation = installation;
        self
    }

    /// Lets agents reference these variables of Hadron's environment as
    /// secrets (`secretRef.name`); no other variable reaches a worker.
    pub fn with_agent_secrets(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.agent_secrets = names.into_iter().collect();
        self
    }

    /// How long past its `wall_time_secs` a worker may run (clone and push
    /// take time too) before the driver stops it. Default 120 s.
    pub fn with_wall_time_grace(mut self, grace: Duration) -> LocalDriver {
        self.wall_time_grace = grace;
        self
    }

    /// Time between SIGTERM and SIGKILL when stopping a worker. Default 10 s.
    pub fn with_stop_grace(mut self, grace: Duration) -> LocalDriver {
        self.stop_grace = grace;
        self
    }

    /// Calls `hook(worker)` whenever a worker this driver started exits, so
    /// the reconciler can run at once instead of at its next poll.
    pub fn with_exit_hook(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> LocalDriver {
        self.on_exit = Some(Arc::new(hook));
        self
    }

    /// The runs folder.
    pub fn runs_dir(&self) -> &Path {
        &self.runs_dir
    }

    /// The folder of one worker's run.
    pub fn run_dir(&self, worker: &str) -> PathBuf {
        self.runs_dir.join(worker)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `spec` with a home for the agent that persists across the attempts
    /// of its stage on its repo (`<runs>/.agent-homes/<installation>/<name>`,
    /// the name the worker's with attempt number 0), when the agent resumes
    /// sessions: the CLI keeps its sessions there.
    fn with_agent_home(&self, spec: &RunSpec) -> RunSpec {
        let mut spec = spec.clone();
        if spec.resume_command.is_some() {
            let name = crate::ids::worker_name(&self.installation, &spec.request, &spec.generation, &spec.stage, &spec.repo, 0);
            spec.agent_home = Some(self.homes_dir().join(name).display().to_string());
        }
        spec
    }

    /// This installation's folder of persistent agent homes.
    fn homes_dir(&self) -> PathBuf {
        self.runs_dir.join(AGENT_HOMES_DIR).join(self.installation.as_str())
    }

    /// Removes the persistent homes no run folder refers to any more (every
    /// attempt of their stage pruned) and untouched for `retention`.
    fn prune_homes(&self, retention: Duration) -> Result<(), DriverError> {
        let homes = self.homes_dir();
        let Ok(entries) = std::fs::read_dir(&homes) else { return Ok(()) };
        let runs: BTreeSet<String> = std::fs::read_dir(&self.runs_dir)
            .map_err(|e| DriverError::io(&self.runs_dir, e))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| home_name_of(&name))
            .collect();
        for entry in entries.filter_map(Result::ok) {
            let Ok(name) = entry.file_name().into_string() else { continue };
            let idle = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= retention));
            if runs.contains(&name) || !idle || !is_dns_label(&name) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DriverError::io(&path, e)),
            }
        }
        Ok(())
    }

    fn spawn(&self, spec: &RunSpec, dir: &Path) -> Result<(), DriverError> {
        let worker = &spec.worker;
        std::fs::create_dir_all(dir).map_err(|e| DriverError::io(dir, e))?;
        let run_json = dir.join(RUN_FILE);
        let spec = &self.with_agent_home(spec);
        let json = serde_json::to_vec_pretty(spec).map_err(|e| DriverError::io(&run_json, std::io::Error::other(e)))?;
        write_atomic(&run_json, &json).map_err(|e| DriverError::io(&run_json, e))?;
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new().create(true).append(true).open(&path).map_err(|e| DriverError::io(&path, e))
        };
        let stdout = open("stdout.log")?;
        let stderr = open("stderr.log")?;
        let mut cmd = Command::new(&self.command.program);
        // A clean environment: an agent can read its parent's environment
        // (/proc/$PPID/environ), so the worker holds nothing of Hadron's own
        // credentials, only the passthrough set and the secrets this run
        // references that the operator allowed.
        cmd.env_clear();
        for name in crate::workers::agent_env::passthrough_env()
            .chain(crate::git::GIT_TRANSPORT_ENV.iter().copied())
            .chain(WORKER_ENV.iter().copied())
        {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        for (_, source) in &spec.env {
            if let crate::workers::spec::EnvSource::Secret { name, .. } = source
                && self.agent_secrets.contains(name)
                && let Some(v) = std::env::var_os(name)
            {
                cmd.env(name, v);
            }
        }
        let mut child = cmd
            .args(&self.command.args)
            .arg(&run_json)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| DriverError::Spawn { worker: worker.clone(), source })?;
        let pid = child.id();
        // The child is not reaped yet, so /proc still has it even if it exited.
        let id = ProcessId::of(pid).unwrap_or(ProcessId { pid, start_time: 0, started_at: now_rfc3339(), started_at_unix: unix_now() });
        let pid_json = dir.join(PID_FILE);
        let recorded = serde_json::to_vec(&id)
            .map_err(std::io::Error::other)
            .and_then(|json| write_atomic(&pid_json, &json))
            .map_err(|e| DriverError::io(&pid_json, e));
        let hook = self.on_exit.clone();
        let name = worker.clone();
        let outside_deadline = spec.wall_time_secs.map(|secs| Instant::now() + Duration::from_secs(secs) + self.wall_time_grace);
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(worker.clone(), outside_deadline);
        let children = self.children.clone();
        std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                let _ = child.wait();
                children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&name);
                if let Some(hook) = hook {
                    hook(&name);
                }
            })
            .map_err(|source| DriverError::Spawn { worker: worker.clone(), source })?;
        recorded
    }

    fn read_spec(dir: &Path) -> Option<RunSpec> {
        serde_json::from_slice(&std::fs::read(dir.join(RUN_FILE)).ok()?).ok()
    }

    /// Refuses a run folder whose `run.json` names another installation;
    /// one without a readable `run.json` is nobody's yet.
    fn check_owner(&self, worker: &str, dir: &Path) -> Result<(), DriverError> {
        match Self::read_spec(dir) {
            Some(spec) if spec.installation != self.installation.as_str() => Err(self.foreign(worker, &spec.installation)),
            _ => Ok(()),
        }
    }

    fn foreign(&self, worker: &str, theirs: &str) -> DriverError {
        DriverError::ForeignWorker { worker: worker.to_owned(), theirs: theirs.to_owned(), ours: self.installation.to_string() }
    }

    fn read_pid(dir: &Path) -> Option<ProcessId> {
        serde_json::from_slice(&std::fs::read(dir.join(PID_FILE)).ok()?).ok()
    }

    fn read_agent(dir: &Path) -> Option<ProcessId> {
        serde_json::from_slice(&std::fs::read(dir.join(AGENT_FILE)).ok()?).ok()
    }

    /// Stops the worker's process group and its agent's, if they still run:
    /// SIGTERM, up to the stop grace, then SIGKILL.
    fn stop(&self, worker: &str, dir: &Path) -> Result<(), DriverError> {
        let groups: Vec<ProcessId> =
            [Self::read_pid(dir), Self::read_agent(dir)].into_iter().flatten().filter(ProcessId::is_alive).collect();
        if groups.is_empty() {
            return Ok(());
        }
        let signal = |sig| -> Result<(), DriverError> {
            for id in &groups {
                signal_group(id.pid, Some(sig)).map_err(|source| DriverError::Signal { worker: worker.to_owned(), source })?;
            }
            Ok(())
        };
        signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + self.stop_grace;
        while Instant::now() < deadline && groups.iter().any(ProcessId::is_alive) {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(Signal::SIGKILL)
    }

    /// Records a failed result unless the run already has one, and returns
    /// whichever result is there afterwards.
    fn record_failure(
        &self,
        spec_worker: &str,
        dir: &Path,
        error: &WorkerError,
        message: Option<String>,
    ) -> Result<RunResult, DriverError> {
        let started_at = Self::read_pid(dir).map(|p| p.started_at).unwrap_or_else(now_rfc3339);
        let mut result = RunResult::failed(spec_worker, error, &dir.join(LOG_FILE), &started_at);
        if let Some(message) = message {
            result.message = message;
        }
        let path = dir.join(RESULT_FILE);
        let json = serde_json::to_vec_pretty(&result).map_err(|e| DriverError::io(&path, std::io::Error::other(e)))?;
        write_new_atomic(&path, &json).map_err(|e| DriverError::io(&path, e))?;
        Ok(RunResult::read(&path).unwrap_or(result))
    }

    fn observe_one(&self, worker: &str, dir: &Path, spec: &RunSpec) -> Result<Observation, DriverError> {
        let pid = Self::read_pid(dir);
        let started_at = pid.as_ref().map(|p| p.started_at.clone());
        let run = Some(spec.identity());
        let observation = |state| Observation { worker: worker.to_owned(), state, started_at: started_at.clone(), run: run.clone() };
        if let Some(result) = RunResult::read(&dir.join(RESULT_FILE)) {
            return Ok(observation(WorkerState::Finished(result)));
        }
        let locked = run_is_locked(dir);
        let Some(pid) = pid else {
            if locked {
                return Ok(observation(WorkerState::Running));
            }
            return Ok(observation(WorkerState::Lost { reason: "NotStarted".to_owned() }));
        };
        if pid.is_alive() || locked {
            if let Some(limit) = spec.wall_time_secs {
                let allowed = limit.saturating_add(self.wall_time_grace.as_secs());
                if unix_now().saturating_sub(pid.started_at_unix) > allowed {
                    self.stop(worker, dir)?;
                    let message = format!(
                        "the worker ran longer than its wall-time limit of {limit} s plus a grace of {} s and was stopped by the driver",
                        self.wall_time_grace.as_secs()
                    );
                    let result = self.record_failure(worker, dir, &WorkerError::WallTimeExceeded(limit), Some(message))?;
                    return Ok(observation(WorkerState::Finished(result)));
                }
            }
            return Ok(observation(WorkerState::Running));
        }
        // It may have written its result between the first look and now.
        if let Some(result) = RunResult::read(&dir.join(RESULT_FILE)) {
            return Ok(observation(WorkerState::Finished(result)));
        }
        let reused = pid.is_reused();
        if !reused {
            // The leader is gone; processes it left in its group (and its
            // agent's group) go too. A reused pid is never signalled.
            let _ = signal_group(pid.pid, Some(Signal::SIGKILL));
        }
        if let Some(agent) = Self::read_agent(dir).filter(ProcessId::is_alive) {
            let _ = signal_group(agent.pid, Some(Signal::SIGKILL));
        }
        let reason = if reused { "PidReused" } else { "ProcessGone" };
        Ok(observation(WorkerState::Lost { reason: reason.to_owned() }))
    }
}

impl Driver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
    }

    fn recheck_after(&self, live: &[String]) -> Option<Duration> {
        if self.on_exit.is_none() {
            return Some(RECHECK_UNWATCHED);
        }
        let children = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut soonest: Option<Duration> = None;
        for worker in live {
            match children.get(worker) {
                // Adopted from an earlier start (not our child): no exit notice.
                None => return Some(RECHECK_UNWATCHED),
                Some(Some(at)) => {
                    let wait = at.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
                Some(None) => {}
            }
        }
        soonest
    }

    fn start(&self, spec: &RunSpec) -> Result<(), DriverError> {
        if !is_dns_label(&spec.worker) {
            return Err(DriverError::InvalidWorkerName(spec.worker.clone()));
        }
        if spec.installation != self.installation.as_str() {
            return Err(self.foreign(&spec.worker, &spec.installation));
        }
        let _guard = self.guard();
        let dir = self.run_dir(&spec.worker);
        self.check_owner(&spec.worker, &dir)?;
        if dir.join(PID_FILE).exists() || dir.join(RESULT_FILE).exists() || run_is_locked(&dir) {
            return Ok(());
        }
        self.spawn(spec, &dir)
    }

    fn observe(&self) -> Result<Vec<Observation>, DriverError> {
        let _guard = self.guard();
        let entries = std::fs::read_dir(&self.runs_dir).map_err(|e| DriverError::io(&self.runs_dir, e))?;
        let mut workers: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| is_dns_label(name))
            .collect();
        workers.sort();
        let mut finished = self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        finished.retain(|w, _| workers.binary_search(w).is_ok());
        let mut foreign = self.foreign.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        foreign.retain(|w| workers.binary_search(w).is_ok());
        let mut out = Vec::with_capacity(workers.len());
        for w in &workers {
            if let Some(known) = finished.get(w) {
                out.push(known.clone());
                continue;
            }
            if foreign.contains(w) {
                continue;
            }
            let dir = self.run_dir(w);
            // Without a readable run.json a folder is no one's to judge
            // (nothing was spawned in it): another driver may be making it.
            let Some(spec) = Self::read_spec(&dir) else { continue };
            if spec.installation != self.installation.as_str() {
                foreign.insert(w.clone());
                continue;
            }
            let observation = self.observe_one(w, &dir, &spec)?;
            if matches!(observation.state, WorkerState::Finished(_)) {
                finished.insert(w.clone(), observation.clone());
            }
            out.push(observation);
        }
        Ok(out)
    }

    fn cancel(&self, worker: &str) -> Result<(), DriverError> {
        if !is_dns_label(worker) {
            return Err(DriverError::InvalidWorkerName(worker.to_owned()));
        }
        let _guard = self.guard();
        let dir = self.run_dir(worker);
        if !dir.is_dir() {
            return Err(DriverError::UnknownWorker(worker.to_owned()));
        }
        self.check_owner(worker, &dir)?;
        self.stop(worker, &dir)?;
        self.record_failure(worker, &dir, &WorkerError::Cancelled, None)?;
        Ok(())
    }

    fn log_tail(&self, worker: &str, max_bytes: usize) -> Result<Option<String>, DriverError> {
        use std::io::{Read, Seek, SeekFrom};
        if !crate::ids::is_dns_label(worker) {
            return Err(DriverError::InvalidWorkerName(worker.to_owned()));
        }
        self.check_owner(worker, &self.run_dir(worker))?;
        let path = self.run_dir(worker).join(LOG_FILE);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DriverError::io(&path, e)),
        };
        // Only the tail is read: a log may be large.
        let len = file.metadata().map_err(|e| DriverError::io(&path, e))?.len();
        let from = len.saturating_sub(u64::try_from(max_bytes).unwrap_or(u64::MAX));
        file.seek(SeekFrom::Start(from)).map_err(|e| DriverError::io(&path, e))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(|e| DriverError::io(&path, e))?;
        Ok(Some(super::whole_lines(&text, from > 0)))
    }

    fn prune(&self, finished: &[String], retention: Duration) -> Result<usize, DriverError> {
        let _guard = self.guard();
        let mut removed = 0;
        for worker in finished.iter().filter(|w| is_dns_label(w)) {
            let dir = self.run_dir(worker);
            if self.check_owner(worker, &dir).is_err() {
                continue;
            }
            let result = dir.join(RESULT_FILE);
            let Ok(written) = std::fs::metadata(&result).and_then(|m| m.modified()) else { continue };
            if run_is_locked(&dir) {
                continue;
            }
            let expired = written.elapsed().is_ok_and(|age| age >= retention);
            let doomed: Vec<PathBuf> = if expired {
                vec![dir.clone()]
            } else {
                // A worker killed before it cleaned up leaves its clone behind.
                [WORKSPACE_DIR, "workspace.partial"].iter().map(|d| dir.join(d)).filter(|d| d.exists()).collect()
            };
            for path in doomed {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DriverError::io(&path, e)),
                }
            }
            removed += usize::from(expired);
        }
        self.prune_homes(retention)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_s_home_is_named_by_its_workers_and_kept_while_one_of_their_runs_is() {
        let name = crate::ids::worker_name(&Installation::default(), "r", "g", "s", "../a.git", 3);
        let home = crate::ids::worker_name(&Installation::default(), "r", "g", "s", "../a.git", 0);
        assert_eq!(home_name_of(&name).as_deref(), Some(home.as_str()));
        assert_eq!(home_name_of("nodash"), None);
        assert_eq!(home_name_of("a-b-c"), None, "no attempt number");

        let tmp = tempfile::tempdir().expect("tempdir");
        let driver = LocalDriver::new(tmp.path(), WorkerCommand::new("/bin/true", Vec::<String>::new())).expect("driver");
        let orphan = crate::ids::worker_name(&Installation::default(), "r", "g", "other", "../a.git", 0);
        let theirs = tmp.path().join(AGENT_HOMES_DIR).join("another").join(&orphan);
        for dir in [driver.homes_dir().join(&home), driver.homes_dir().join(&orphan), theirs.clone(), tmp.path().join(&name)] {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        driver.prune_homes(Duration::from_secs(3600)).expect("prune");
        assert!(driver.homes_dir().join(&orphan).exists(), "a home touched within the retention stays");
        driver.prune_homes(Duration::ZERO).expect("prune");
        assert!(driver.homes_dir().join(&home).exists(), "a run of its stage is still there");
        assert!(!driver.homes_dir().join(&orphan).exists(), "no run refers to it any more");
        assert!(theirs.exists(), "another installation's homes are left alone");
    }
}
