//! Triggers that ask for a fetch: a file watch on local repositories, a poll for all.
//!
//! For a local source (plain path or `file://`) whose repository exists, the repository's
//! `refs/` folder (recursively) and its `packed-refs` file are watched with notify; events
//! that complete a ref update (a ref file renamed into place or removed, `packed-refs`
//! rewritten; never a `.lock` file) trigger at once, and what follows in the same burst
//! is coalesced into one more trigger once it is quiet ([`DEBOUNCE`], at most
//! [`MAX_DEBOUNCE`]), so a `git push` into a local bare repo triggers within
//! milliseconds and a push of several refs is still seen whole. Every source, local or not, is also polled every `poll_interval` as a
//! safety net. Sends use `try_send`: a full channel already holds a pending trigger, so
//! bursts coalesce. The background thread ends when the [`TriggerHandle`] is dropped or
//! the receiver is closed.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::Watcher;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::SourceConfig;

/// Quiet time after the last ref event of a burst before its trailing trigger.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Longest a continuous burst of events can delay its trailing trigger.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// How a source is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerMode {
    /// Ref changes are watched (and the poll interval is a safety net).
    Watch,
    /// Only polling on the interval.
    Poll,
}

enum Msg {
    RefsChanged,
    Stop,
}

/// Keeps the watcher and the trigger thread alive; dropping it stops both.
pub struct TriggerHandle {
    mode: TriggerMode,
    watcher: Option<notify::RecommendedWatcher>,
    control: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TriggerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerHandle").field("mode", &self.mode).finish()
    }
}

impl TriggerHandle {
    /// Whether refs are watched or only polled.
    pub fn mode(&self) -> TriggerMode {
        self.mode
    }
}

impl Drop for TriggerHandle {
    fn drop(&mut self) {
        self.watcher.take();
        // The thread may already have ended (receiver closed); then the send fails, fine.
        let _ = self.control.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Start following `cfg`: watch its refs if it is a local repository, and poll every
/// `cfg.poll_interval` in any case. Each trigger is a `()` on `tx`.
/// If the watch cannot be set up (repository not there yet, inotify limits), the handle
/// falls back to polling and says so in [`TriggerHandle::mode`].
pub fn spawn_triggers(cfg: &SourceConfig, tx: Sender<()>) -> TriggerHandle {
    let (control, events) = mpsc::channel::<Msg>();
    let watcher = cfg.local_path().filter(|_| cfg.watch).and_then(|path| refs_dir_of(&path)).and_then(|common_dir| {
        match watch_refs(&common_dir, control.clone()) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(
                    path = %common_dir.display(),
                    "cannot watch git refs, falling back to polling: {err}"
                );
                None
            }
        }
    });
    let mode = if watcher.is_some() { TriggerMode::Watch } else { TriggerMode::Poll };
    let interval = cfg.poll_interval.max(Duration::from_millis(10));
    let thread = std::thread::Builder::new().name("hadron-source-trigger".into()).spawn(move || trigger_loop(&events, &tx, interval));
    let thread = match thread {
        Ok(t) => Some(t),
        Err(err) => {
            tracing::error!("cannot start the source trigger thread: {err}");
            None
        }
    };
    TriggerHandle { mode, watcher, control, thread }
}

fn watch_refs(common_dir: &Path, control: mpsc::Sender<Msg>) -> notify::Result<notify::RecommendedWatcher> {
    let refs = common_dir.join("refs");
    let relevant = {
        let refs = refs.clone();
        // A `.lock` file is a ref update in progress; its rename into place
        // (or the removal of a ref) is the event that matters.
        move |p: &PathBuf| {
            let locked = p.extension().is_some_and(|e| e == "lock");
            !locked && (p.starts_with(&refs) || p.file_name().is_some_and(|n| n == "packed-refs"))
        }
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(&relevant) {
            let _ = control.send(Msg::RefsChanged);
        }
    })?;
    watcher.watch(&refs, notify::RecursiveMode::Recursive)?;
    watcher.watch(common_dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Returns `false` if the receiver is gone and the loop should end.
fn send(tx: &Sender<()>) -> bool {
    !matches!(tx.try_send(()), Err(TrySendError::Closed(())))
}

fn trigger_loop(events: &mpsc::Receiver<Msg>, tx: &Sender<()>, interval: Duration) {
    let mut next_poll = Instant::now() + interval;
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        match events.recv_timeout(wait) {
            Ok(Msg::RefsChanged) => {
                // Leading edge: a ref is in place, reconcile now.
                if !send(tx) {
                    return;
                }
                // Trailing edge: the rest of the burst (more refs of the same
                // push) is one more trigger once it is quiet.
                let burst_end = Instant::now() + MAX_DEBOUNCE;
                let mut more = false;
                while Instant::now() < burst_end {
                    let quiet = DEBOUNCE.min(burst_end.saturating_duration_since(Instant::now()));
                    match events.recv_timeout(quiet) {
                        Ok(Msg::RefsChanged) => more = true,
                        Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                    }
                }
                if more && !send(tx) {
                    return;
                }
                next_poll = Instant::now() + interval;
            }
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !send(tx) {
                    return;
                }
                next_poll = Instant::now() + interval;
            }
        }
    }
}

/// Is `path` the git directory or work tree of a git repository we can watch?
/// Returns the folder holding `refs/` and `packed-refs`.
fn refs_dir_of(path: &Path) -> Option<PathBuf> {
    let repo = crate::git::open(path).ok()?;
    Some(repo.common_dir().to_path_buf())
}
