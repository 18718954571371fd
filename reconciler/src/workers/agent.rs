//! Running the agent: its own process group with the prompt on standard
//! input, a clean environment, output copied (redacted) to the log, the
//! wall-time limit, and reading the usage it reports.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent_env::passthrough_env;
use super::error::WorkerError;
use super::log::Log;
use super::proc::{ProcessId, signal_group, stop_group, write_atomic};
use super::run_dir::{AGENT_FILE, REPORT_FILE};
use super::usage::Usage;
use super::worker::Worker;

/// Time the agent gets between SIGTERM and SIGKILL at the wall-time limit.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Most agent standard output kept in memory to look for a usage report.
const STDOUT_KEEP: usize = 8 << 20;

impl Worker<'_> {
    /// Runs the agent in its own process group, with the prompt on stdin,
    /// output copied (redacted) to the log, and the wall-time limit.
    /// Returns the exit status and the (tail of the) standard output.
    pub(super) fn run_agent(&self, argv: &[String], prompt_path: &Path) -> Result<(ExitStatus, String), (WorkerError, String)> {
        let s = self.spec;
        let report_path = self.run_dir.join(REPORT_FILE);
        if report_path.exists() {
            // A report from an earlier attempt must not be read as this one's.
            std::fs::remove_file(&report_path).map_err(|e| (WorkerError::io(&report_path, e), String::new()))?;
        }
        let stdin = File::open(prompt_path).map_err(|e| (WorkerError::io(prompt_path, e), String::new()))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir(&self.workspace).env_clear();
        for name in passthrough_env() {
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
        let mut child =
            cmd.spawn().map_err(|e| (WorkerError::AgentSpawnFailed { program: argv[0].clone(), detail: e.to_string() }, String::new()))?;
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
        // Wait for the exit without reaping (`waitid` with `WNOWAIT`), so the
        // group id stays reserved while we signal it; the reap happens below.
        let exited = exit_notice(pid);
        let waited = match deadline {
            Some((_, at)) => exited.recv_timeout(at.saturating_duration_since(Instant::now())).is_ok(),
            None => exited.recv().is_ok(),
        };
        if !waited
            && alive()
            && let Some((secs, _)) = deadline
        {
            self.log.line(&format!("wall-time limit of {secs} s reached; stopping the agent"));
            let _ = stop_group(pid, KILL_GRACE, alive);
            timed_out = Some(secs);
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

    pub(super) fn read_report(&self) -> Option<Usage> {
        let text = std::fs::read_to_string(self.run_dir.join(REPORT_FILE)).ok()?;
        Usage::from_report(&text)
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
