//! The run directory: the names of the files a worker and its driver share
//! in it, and the lock a live worker holds on it.

use std::path::Path;

/// `run.json`: the worker's instructions.
pub const RUN_FILE: &str = "run.json";
/// `result.json`: what the worker reports.
pub const RESULT_FILE: &str = "result.json";
/// `worker.log`: everything the worker did, secrets redacted.
pub const LOG_FILE: &str = "worker.log";
/// `prompt.md`: the rendered prompt.
pub const PROMPT_FILE: &str = "prompt.md";
/// `report.json`: where the agent may report usage (`HADRON_REPORT_FILE`).
pub const REPORT_FILE: &str = "agent-out/report.json";
/// `agent.json`: identity of the running agent's process group, so a driver
/// cancelling the worker can stop the agent too.
pub const AGENT_FILE: &str = "agent.json";
/// The folder the agent may write its report into (shown read-write in its sandbox).
pub const AGENT_OUT_DIR: &str = "agent-out";
/// The agent's private `/tmp` (its home is `home/` in it).
pub const AGENT_TMP_DIR: &str = "agent-tmp";
/// The egress proxy's Unix socket, for an agent with an allow list.
pub const PROXY_SOCKET: &str = "proxy.sock";
/// The target repo checkout inside the run dir.
pub const WORKSPACE_DIR: &str = "workspace";
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
