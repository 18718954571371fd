//! Running the agent: its own process group with the prompt on standard
//! input, a clean environment, output copied (redacted) to the log, the
//! wall-time limit, and reading the usage it reports.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::adapters::Meter;
use super::agent_env::passthrough_env;
use super::egress::{self, AllowList, EgressLog};
use super::error::WorkerError;
use super::log::Log;
use super::proc::{ProcessId, signal_group, stop_group, write_atomic};
use super::run_dir::{AGENT_FILE, AGENT_OUT_DIR, AGENT_TMP_DIR, PROXY_SOCKET, REPORT_FILE};
use super::sandbox::{self, Sandbox, SandboxLayout};
use super::spec::{SandboxMode, WorkerNetwork};
use super::usage::Usage;
use super::worker::Worker;
use super::workspace_size::{self, DEFAULT_MAX_WORKSPACE_BYTES};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Most lines the egress proxy writes to the log for one agent.
const EGRESS_LINES: usize = 200;
/// How often the workspace is measured while the agent runs.
const SIZE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Hadron's binary for the relay inside the sandbox, when the worker is not
/// Hadron's own binary (tests run the worker in process).
pub const RELAY_ENV: &str = "HADRON_RELAY_BINARY";

fn network_word(network: &WorkerNetwork) -> String {
    match network {
        WorkerNetwork::None => "none".to_owned(),
        WorkerNetwork::Host => "host".to_owned(),
        WorkerNetwork::Allow(list) => format!("allow {}", list.join(",")),
    }
}

/// Time the agent gets between SIGTERM and SIGKILL at the wall-time limit.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Most agent standard output kept in memory to look for a usage report.
const STDOUT_KEEP: usize = 8 << 20;

impl Worker<'_> {
    /// Runs the agent in its own process group, with the prompt on stdin,
    /// output copied (redacted) to the log, and the wall-time limit.
    /// Returns the exit status and the (tail of the) standard output.
    pub(super) fn run_agent(&mut self, argv: &[String], prompt_path: &Path) -> Result<(ExitStatus, String), (WorkerError, String)> {
        let s = self.spec;
        let report_path = self.run_dir.join(REPORT_FILE);
        if report_path.exists() {
            // A report from an earlier attempt must not be read as this one's.
            std::fs::remove_file(&report_path).map_err(|e| (WorkerError::io(&report_path, e), String::new()))?;
        }
        let out_dir = self.run_dir.join(AGENT_OUT_DIR);
        let tmp_dir = self.run_dir.join(AGENT_TMP_DIR);
        // A home that persists across the stage's attempts (an agent that
        // resumes sessions, on the local driver), else one of this run's own.
        let home = s.agent_home.as_deref().map(std::path::PathBuf::from);
        for dir in [&out_dir, &tmp_dir.join("home")].into_iter().chain(home.as_ref()) {
            std::fs::create_dir_all(dir).map_err(|e| (WorkerError::io(dir, e), String::new()))?;
        }
        let confinement = self.confinement().map_err(|e| (e, String::new()))?;
        let stdin = File::open(prompt_path).map_err(|e| (WorkerError::io(prompt_path, e), String::new()))?;
        let (program, args) = match &confinement {
            Some(sandbox) => {
                let socket = self.run_dir.join(PROXY_SOCKET);
                let relay = std::env::var_os(RELAY_ENV).map(std::path::PathBuf::from).or_else(|| std::env::current_exe().ok());
                let allow_list = matches!(s.network, WorkerNetwork::Allow(_));
                if allow_list {
                    let log = self.log.clone();
                    // A refusal is one Hadron line; an agent that asks again
                    // and again does not get to grow the log with them.
                    let lines = std::sync::atomic::AtomicUsize::new(0);
                    let said: EgressLog = Arc::new(move |line: &str| {
                        let n = lines.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n < EGRESS_LINES {
                            log.line(line);
                        } else if n == EGRESS_LINES {
                            log.line(&format!("network: more than {EGRESS_LINES} connections; the rest are not logged"));
                        }
                    });
                    egress::serve_proxy(&socket, AllowList::new(s.network.endpoints()), said)
                        .map_err(|e| (WorkerError::io(&socket, std::io::Error::other(e.to_string())), String::new()))?;
                }
                let program = sandbox::program_outside_system(&argv[0]);
                let layout = SandboxLayout {
                    workspace: &self.workspace,
                    prompt: prompt_path,
                    report_dir: &out_dir,
                    tmp: &tmp_dir,
                    network: &s.network,
                    proxy_socket: allow_list.then_some(socket.as_path()),
                    program: program.as_deref(),
                    relay: relay.as_deref().filter(|_| allow_list),
                    home: home.as_deref(),
                };
                let (bwrap, args) = sandbox.command(&layout, argv);
                (bwrap.into_os_string(), args)
            }
            None => (argv[0].clone().into(), argv[1..].iter().map(Into::into).collect()),
        };
        let mut cmd = Command::new(&program);
        cmd.args(&args).current_dir(&self.workspace).env_clear();
        for name in passthrough_env() {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        if confinement.is_some() {
            // Inside the sandbox the agent's home and temporary folder are
            // its own (set by the sandbox); the worker's are not shown.
            cmd.env_remove("HOME").env_remove("TMPDIR");
        } else if let Some(home) = &home {
            cmd.env("HOME", home);
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
        let confined = if confinement.is_some() { "confined" } else { "UNCONFINED" };
        self.log.line(&format!(
            "$ agent {} ({} more arguments, {confined}, network {})",
            argv[0],
            argv.len() - 1,
            network_word(&s.network)
        ));
        let budget = s.max_workspace_bytes.unwrap_or(DEFAULT_MAX_WORKSPACE_BYTES);
        let mut watched = vec![self.workspace.clone(), tmp_dir.clone(), out_dir.clone()];
        // What the persistent home holds from earlier attempts is not this one's.
        let mut before: Vec<&Path> = vec![&self.workspace];
        before.extend(home.as_deref());
        let baseline = workspace_size::measure(&before).bytes;
        watched.extend(home.clone());
        // No single file of the agent's may outgrow the whole budget: the
        // kernel stops the write (SIGXFSZ) before the disk fills. The
        // limit is set for the spawn only (the child inherits it).
        let fsize = Resource::RLIMIT_FSIZE;
        let old_fsize = getrlimit(fsize).ok();
        if let Some((_, hard)) = old_fsize {
            let _ = setrlimit(fsize, budget.saturating_add(baseline).min(hard), hard);
        }
        let spawned = cmd.spawn();
        if let Some((soft, hard)) = old_fsize {
            let _ = setrlimit(fsize, soft, hard);
        }
        let mut child =
            spawned.map_err(|e| (WorkerError::AgentSpawnFailed { program: argv[0].clone(), detail: e.to_string() }, String::new()))?;
        let pid = child.id();
        let identity = ProcessId::of(pid);
        if let Some(id) = &identity {
            let path = self.run_dir.join(AGENT_FILE);
            if let Ok(json) = serde_json::to_vec(id) {
                let _ = write_atomic(&path, &json);
            }
        }
        let (tx, rx) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
        // A streaming CLI's usage is read as it prints it when the request
        // has a token or cost budget left to enforce.
        let meter = (Meter::streams(s.output) && (s.max_tokens.is_some() || s.max_cost_usd.is_some()))
            .then(|| Arc::new(std::sync::Mutex::new(Meter::new(s.output))));
        if let Some(out) = child.stdout.take() {
            match &meter {
                Some(meter) => spawn_reader(Metered { inner: out, meter: meter.clone() }, true, self.log.clone(), tx.clone()),
                None => spawn_reader(out, true, self.log.clone(), tx.clone()),
            }
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(err, false, self.log.clone(), tx.clone());
        }
        drop(tx);

        let alive = || identity.as_ref().is_some_and(ProcessId::is_alive);
        let deadline = s.wall_time_secs.map(|secs| (secs, Instant::now() + Duration::from_secs(secs)));
        let mut timed_out = None;
        let mut too_large = None;
        let mut over_budget = None;
        // Wait for the exit without reaping (`waitid` with `WNOWAIT`), so the
        // group id stays reserved while we signal it; the reap happens below.
        // Meanwhile the workspace is measured every second.
        let exited = exit_notice(pid);
        loop {
            let wait = match deadline {
                Some((_, at)) => at.saturating_duration_since(Instant::now()).min(SIZE_CHECK_EVERY),
                None => SIZE_CHECK_EVERY,
            };
            if exited.recv_timeout(wait).is_ok() {
                break;
            }
            if let Some(why) = meter.as_ref().and_then(|m| self.over_budget(m)) {
                self.log.line(&format!("the agent {why}; stopping it"));
                let _ = stop_group(pid, KILL_GRACE, alive);
                over_budget = Some(why);
                break;
            }
            let roots: Vec<&Path> = watched.iter().map(|p| p.as_path()).collect();
            let usage = workspace_size::measure(&roots);
            if usage.bytes.saturating_sub(baseline) > budget {
                self.log.line(&format!("the workspace outgrew its budget of {}; stopping the agent", workspace_size::human(budget)));
                let _ = stop_group(pid, KILL_GRACE, alive);
                too_large = Some(usage);
                break;
            }
            if let Some((secs, at)) = deadline
                && Instant::now() >= at
            {
                if alive() {
                    self.log.line(&format!("wall-time limit of {secs} s reached; stopping the agent"));
                    let _ = stop_group(pid, KILL_GRACE, alive);
                    timed_out = Some(secs);
                }
                break;
            }
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
        let _ = std::fs::remove_file(self.run_dir.join(PROXY_SOCKET));
        if let Some(secs) = timed_out {
            return Err((WorkerError::WallTimeExceeded(secs), stdout));
        }
        if let Some(why) = over_budget {
            return Err((WorkerError::BudgetExceeded(why), stdout));
        }
        // Once more now that it has stopped: what it left is what a push takes.
        let usage = too_large.unwrap_or_else(|| workspace_size::measure(&watched.iter().map(|p| p.as_path()).collect::<Vec<_>>()));
        let written = usage.bytes.saturating_sub(baseline);
        if written > budget {
            let bases: Vec<&Path> = watched.iter().map(|p| p.as_path()).collect();
            let error = WorkerError::WorkspaceTooLarge {
                written: workspace_size::human(written),
                limit: workspace_size::human(budget),
                biggest: workspace_size::describe(&usage.biggest, &bases),
            };
            return Err((error, stdout));
        }
        match status {
            Ok(status) => {
                self.log.line(&format!("agent finished: {status}"));
                Ok((status, stdout))
            }
            Err(e) => Err((WorkerError::AgentSpawnFailed { program: argv[0].clone(), detail: e.to_string() }, stdout)),
        }
    }

    /// The sandbox the agent runs in, or `None` when it runs unconfined
    /// (recorded, and said in the log and the result); an error when the
    /// settings require a sandbox this machine cannot make.
    fn confinement(&mut self) -> Result<Option<Sandbox>, WorkerError> {
        if std::env::var(sandbox::SANDBOX_ENV).is_ok_and(|v| v == sandbox::SANDBOX_POD) {
            // A Kubernetes worker pod: the pod is the sandbox.
            return Ok(None);
        }
        match Sandbox::probe() {
            Ok(sandbox) => Ok(Some(sandbox)),
            Err(why) if self.spec.sandbox == SandboxMode::Required => Err(WorkerError::SandboxUnavailable(why.to_string())),
            Err(why) => {
                self.log.line(&format!("warning: the agent runs UNCONFINED: {why}"));
                self.unconfined = Some(why.to_string());
                Ok(None)
            }
        }
    }

    /// Why the agent's spending so far crosses the request's remaining
    /// budget, if it does.
    fn over_budget(&self, meter: &std::sync::Mutex<Meter>) -> Option<String> {
        let (tokens, cost) = meter.lock().ok()?.spent(self.spec.pricing.as_ref());
        if let Some(max) = self.spec.max_tokens
            && tokens > max
        {
            return Some(format!("used {tokens} tokens, over the {max} left of the request's maxTokens"));
        }
        match self.spec.max_cost_usd {
            Some(max) if cost > max => Some(format!("spent ${cost:.4}, over the ${max:.4} left of the request's maxCostUSD")),
            _ => None,
        }
    }

    pub(super) fn read_report(&self) -> Option<Usage> {
        Usage::read_report_file(&self.run_dir.join(REPORT_FILE))
    }
}

/// A channel that receives `()` once child `pid` has exited; the child is
/// left to be reaped by its owner (`waitid` with `WNOWAIT`).
fn exit_notice(pid: u32) -> std::sync::mpsc::Receiver<()> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    std::thread::spawn(move || {
        // Exited, or not our child any more (reaped): either way, gone.
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {}
        let _ = tx.send(());
    });
    rx
}

/// A stream whose bytes a [`Meter`] reads on their way to the log.
struct Metered<R> {
    inner: R,
    meter: Arc<std::sync::Mutex<Meter>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut meter) = self.meter.lock() {
            meter.feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// Copies one output stream of the agent into the log (bounded: see
/// `Log::copy_output`), and sends the tail it kept (standard output only) when the stream ends.
fn spawn_reader<R: Read + Send + 'static>(stream: R, is_stdout: bool, log: Arc<Log>, tx: std::sync::mpsc::Sender<(bool, Vec<u8>)>) {
    std::thread::spawn(move || {
        let kept = log.copy_output(stream, if is_stdout { "out" } else { "err" }, if is_stdout { STDOUT_KEEP } else { 0 });
        let _ = tx.send((is_stdout, kept));
    });
}
