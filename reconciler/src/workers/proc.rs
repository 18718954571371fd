//! Small process helpers shared by the worker entrypoint and the local
//! driver: process identity from `/proc` (to detect pid reuse), process-group
//! signals, atomic file writes and timestamps.

use crate::time::now_rfc3339;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process as recorded in `pid.json` / `agent.json`: its pid (also its
/// process-group id, since it was started as a group leader) and its start
/// time in clock ticks since boot, which tells a live process from a later
/// process that happens to get the same pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessId {
    /// Process id, equal to the process-group id.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_time: u64,
    /// When it was started, RFC 3339 UTC.
    pub started_at: String,
    /// When it was started, seconds since the Unix epoch.
    pub started_at_unix: u64,
}

/// Makes this process not dumpable (`PR_SET_DUMPABLE` 0): another process
/// of the same user, such as an agent run without the sandbox, can then no
/// longer read its `/proc/<pid>/environ` or `mem`, nor attach to it. Every
/// exec resets it, so each Hadron process calls this first.
pub fn not_dumpable() {
    let _ = nix::sys::prctl::set_dumpable(false);
}

/// What `/proc/<pid>/stat` says about a process.
struct Stat {
    state: char,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may contain spaces and parentheses, so
    // split after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Start time (clock ticks after boot) of a running process, if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

impl ProcessId {
    /// Records the identity of a process that was just started.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let start_time = start_time(pid)?;
        Some(ProcessId { pid, start_time, started_at: now_rfc3339(), started_at_unix: unix_now() })
    }

    /// Whether this very process still runs: same pid, same start time, and
    /// not a zombie waiting to be reaped.
    pub fn is_alive(&self) -> bool {
        match stat(self.pid) {
            Some(s) => s.start_time == self.start_time && s.state != 'Z' && s.state != 'X',
            None => false,
        }
    }

    /// Whether the pid now belongs to a different process.
    pub fn is_reused(&self) -> bool {
        matches!(stat(self.pid), Some(s) if s.start_time != self.start_time)
    }
}

/// Sends `signal` to process group `pgid`. Returns whether the group existed.
pub fn signal_group(pgid: u32, signal: Option<Signal>) -> Result<bool, Errno> {
    let Ok(raw) = i32::try_from(pgid) else { return Ok(false) };
    if raw <= 1 {
        // Never signal "every process" (0) or init (1) by mistake.
        return Ok(false);
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether any process (zombies included) is still in group `pgid`.
pub fn group_exists(pgid: u32) -> bool {
    matches!(signal_group(pgid, None), Ok(true))
}

/// Stops a process group: SIGTERM, up to `grace` for it to go, then SIGKILL.
/// `leader_alive` tells whether the group's leader still runs (so a zombie
/// leader waiting for its reaper does not hold up the SIGKILL).
pub fn stop_group(pgid: u32, grace: Duration, leader_alive: impl Fn() -> bool) -> Result<(), Errno> {
    if !signal_group(pgid, Some(Signal::SIGTERM))? {
        return Ok(());
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && leader_alive() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Members other than the leader may have ignored SIGTERM or outlived it.
    signal_group(pgid, Some(Signal::SIGKILL))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// synced, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Writes `bytes` to `path` atomically unless `path` already exists.
/// Returns whether this call created it. Two writers racing both see a
/// whole file and exactly one of them wins.
pub fn write_new_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let tmp = temp_beside(path);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn temp_beside(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{}.tmp", std::process::id(), rand::random::<u32>()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
