//! Fault points: where the HA tests freeze a leader, as a stopped VM or a
//! long pause would, at the worst moments for its side effects.
//!
//! Inert unless `HADRON_FAULT_STOP` names a point (`<point>` or
//! `<point>@<n>`, the n-th time the point is reached; several separated by
//! commas). On reaching it, the process prints one line to standard output,
//! `fault: stopping at <point> (pid <pid>, child <pid>)`, stops the child
//! it names (a git command in flight) and then itself with `SIGSTOP`. A
//! `SIGCONT` to both goes on from there. Each point fires once per process.
//!
//! The points are [`POINTS`]; each is placed immediately before the lease
//! check that guards its effect, or, for the git commands of the status
//! writer, once the command runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// The environment variable that arms fault points.
pub const ENV: &str = "HADRON_FAULT_STOP";

/// The points there are.
pub const POINTS: &[&str] = &[
    // The status writer's `git push` of a status commit, running.
    "status-push",
    // The status writer's `git fetch` of the control branch, running.
    "status-fetch",
    // The execute step, before it cancels a worker.
    "worker-cancel",
    // The execute step, before it starts a worker (its intent is stored).
    "worker-start",
    // The execute step, before it pushes an approval branch.
    "approval-push",
    // The Gitea client, before a write (POST, PATCH, PUT, DELETE).
    "gitea-write",
];

/// Armed points: how many times each is still passed before it fires.
fn armed() -> &'static Mutex<BTreeMap<String, u32>> {
    static ARMED: OnceLock<Mutex<BTreeMap<String, u32>>> = OnceLock::new();
    ARMED.get_or_init(|| Mutex::new(std::env::var(ENV).map(|v| parse(&v)).unwrap_or_default()))
}

/// `status-push@2,worker-cancel` → {status-push: 1, worker-cancel: 0}
/// (unknown points are ignored, with a line on standard error).
fn parse(value: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (point, nth) = match item.split_once('@') {
            Some((p, n)) => (p, n.parse::<u32>().unwrap_or(1).max(1)),
            None => (item, 1),
        };
        if POINTS.contains(&point) {
            out.insert(point.to_owned(), nth - 1);
        } else {
            eprintln!("{ENV}: unknown fault point {point:?} ignored (known: {})", POINTS.join(", "));
        }
    }
    out
}

/// Whether `point` fires now (counting this passage).
fn fires(point: &str) -> bool {
    let mut armed = armed().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match armed.get_mut(point) {
        Some(0) => {
            armed.remove(point);
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

/// Whether any point is armed (so callers can skip work otherwise).
pub fn any_armed() -> bool {
    !armed().lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
}

/// Reaches `point`: when it fires, stops `child` (if any) and this process.
pub fn reach(point: &str, child: Option<u32>) {
    if !fires(point) {
        return;
    }
    let me = std::process::id();
    let mut stdout = std::io::stdout().lock();
    let _ = match child {
        Some(c) => writeln!(stdout, "fault: stopping at {point} (pid {me}, child {c})"),
        None => writeln!(stdout, "fault: stopping at {point} (pid {me})"),
    };
    let _ = stdout.flush();
    drop(stdout);
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Some(c) = child.and_then(|c| i32::try_from(c).ok()) {
        let _ = kill(Pid::from_raw(c), Signal::SIGSTOP);
    }
    let _ = kill(Pid::this(), Signal::SIGSTOP);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_with_their_counts_and_unknown_ones_are_dropped() {
        let parsed = parse("status-push@3, worker-cancel,,nowhere@2, gitea-write@0");
        assert_eq!(parsed.get("status-push"), Some(&2));
        assert_eq!(parsed.get("worker-cancel"), Some(&0));
        assert_eq!(parsed.get("gitea-write"), Some(&0), "@0 means the first time");
        assert!(!parsed.contains_key("nowhere"));
        assert!(parse("").is_empty());
    }

    #[test]
    fn an_unarmed_point_never_fires() {
        // The test process has no HADRON_FAULT_STOP: reaching a point is a no-op.
        assert!(std::env::var(ENV).is_err(), "run the unit tests without {ENV}");
        reach("status-push", None);
        assert!(!any_armed());
    }
}
