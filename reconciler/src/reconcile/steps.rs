//! The steps of a pass and what each reports when it fails while the rest of
//! the pass goes on (fluxcd's habit: a failed fetch keeps the last good
//! artifact, a failed status publish leaves the workers watched).

use std::time::{Duration, Instant};

use super::ReconcileError;
use crate::backoff::Backoff;
use crate::status::writer::WriterError;

/// A step of a pass that can fail while the pass goes on, in the order
/// they run (observe and plan failing fail the pass: there is nothing to
/// go on with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Fetch the control repo and load the changed files.
    Fetch,
    /// Store intent, start and cancel workers, open approval branches.
    Execute,
    /// Pull requests and commit statuses on the forge.
    Forge,
    /// Commit and push `status/` files.
    Publish,
}

impl Step {
    /// Stable lower-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Fetch => "fetch",
            Step::Execute => "execute",
            Step::Forge => "forge",
            Step::Publish => "publish",
        }
    }
}

/// How long a failure is likely to last, as Flux types its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Retrying soon may work without anyone changing anything (network,
    /// a race with another pusher, local I/O).
    Transient,
    /// A person must change something first (a hook or branch protection
    /// declining Hadron's push, a missing branch, refused credentials):
    /// retried with a growing backoff, not every quarter second.
    Stalling,
}

/// A step that failed while the rest of the pass went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// Which step.
    pub step: Step,
    /// Stable reason string (`StatusPublishFailed` for the publish step).
    pub reason: String,
    /// What happened and where to look, for logs, `/readyz` and the terminal.
    pub message: String,
    /// How long it is likely to last.
    pub severity: Severity,
}

/// The reason a failed publish step is reported with; the cause's own
/// reason is in the message.
pub const STATUS_PUBLISH_FAILED: &str = "StatusPublishFailed";

/// The reason a failed fetch is reported with while the last good catalog is used.
pub const FETCH_FAILED: &str = "FetchFailed";

impl StepFailure {
    /// A publish failure: status files stay queued in the outbox.
    pub fn publish(err: &ReconcileError) -> StepFailure {
        StepFailure {
            step: Step::Publish,
            reason: STATUS_PUBLISH_FAILED.to_owned(),
            message: format!(
                "status files could not be pushed ({}): {err}; they stay queued and are pushed once the control repo accepts Hadron's commits; workers, plans and limits go on meanwhile",
                err.reason()
            ),
            severity: severity_of(err),
        }
    }

    /// A fetch failure: the pass goes on with the last good catalog.
    pub fn fetch(err: &ReconcileError) -> StepFailure {
        StepFailure {
            step: Step::Fetch,
            reason: FETCH_FAILED.to_owned(),
            message: format!(
                "the control repo could not be fetched ({}): {err}; the pass goes on with the last fetched revision",
                err.reason()
            ),
            severity: severity_of(err),
        }
    }

    /// The forge step failed; the status keeps the last pull-request links.
    pub fn forge(err: &ReconcileError) -> StepFailure {
        StepFailure {
            step: Step::Forge,
            reason: err.reason().to_owned(),
            message: format!("the forge step failed: {err}; pull requests and commit statuses are retried next pass"),
            severity: severity_of(err),
        }
    }

    /// An action of the execute step failed; the next pass retries it.
    pub fn execute(err: &ReconcileError, what: &str) -> StepFailure {
        StepFailure {
            step: Step::Execute,
            reason: err.reason().to_owned(),
            message: format!("{what} failed: {err}; the next pass retries it"),
            severity: severity_of(err),
        }
    }
}

/// Whether an error is likely to go away by itself.
pub fn severity_of(err: &ReconcileError) -> Severity {
    let stalling = match err {
        ReconcileError::Source(e) => !e.is_transient(),
        ReconcileError::Writer(e) => matches!(
            e,
            WriterError::Push { .. }
                | WriterError::Config { .. }
                | WriterError::PathOutsideStatus { .. }
                | WriterError::PathIsFolder { .. }
                | WriterError::InvalidRevision { .. }
        ),
        ReconcileError::Gate(e) => matches!(
            e,
            crate::gates::GateError::GitCommand { .. }
                | crate::gates::GateError::InvalidRemoteUrl(_)
                | crate::gates::GateError::BaseBranchMissing(_)
        ),
        ReconcileError::Forge(e) => !e.is_transient(),
        ReconcileError::Store(_) | ReconcileError::Driver(_) | ReconcileError::Join(_) | ReconcileError::LeaseLost(_) => false,
    };
    if stalling { Severity::Stalling } else { Severity::Transient }
}

/// When to try a failing thing again: transient failures after 250 ms
/// doubling per failure (at most 5 s), stalling ones after 1 s doubling per
/// failure (at most `cap`).
pub fn backoff(severity: Severity, failures: u32, cap: Duration) -> Duration {
    match severity {
        Severity::Transient => Backoff::new(Duration::from_millis(250), Duration::from_secs(5)).delay(failures),
        Severity::Stalling => Backoff::new(Duration::from_secs(1), cap.max(Duration::from_secs(1))).delay(failures),
    }
}

/// A side effect that is skipped while it keeps failing: tried again once
/// its backoff has passed, or at once after a trigger that may have fixed
/// it (a push to the control repo).
#[derive(Debug, Default)]
pub struct Retry {
    failures: u32,
    not_before: Option<Instant>,
}

impl Retry {
    /// Whether to try now.
    pub fn due(&self) -> bool {
        self.not_before.is_none_or(|at| Instant::now() >= at)
    }

    /// How long until the next try, while it backs off.
    pub fn wait(&self) -> Option<Duration> {
        self.not_before.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Try at the next pass, whatever the backoff said.
    pub fn now(&mut self) {
        self.not_before = None;
    }

    /// It worked.
    pub fn succeeded(&mut self) {
        *self = Retry::default();
    }

    /// It failed; returns how long until the next try.
    pub fn failed(&mut self, severity: Severity, cap: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(severity, self.failures, cap);
        self.not_before = Some(Instant::now() + wait);
        wait
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalling_failures_back_off_and_transient_ones_stay_quick() {
        let cap = Duration::from_secs(60);
        let stalling: Vec<u64> = (1..=8).map(|n| backoff(Severity::Stalling, n, cap).as_secs()).collect();
        assert_eq!(stalling, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(Severity::Transient, 1, cap), Duration::from_millis(250));
        assert_eq!(backoff(Severity::Transient, 3, cap), Duration::from_secs(1));
        assert_eq!(backoff(Severity::Transient, 100, cap), Duration::from_secs(5));
        assert_eq!(backoff(Severity::Stalling, 3, Duration::from_secs(2)), Duration::from_secs(2), "never beyond the cap");
    }

    #[test]
    fn a_declined_push_stalls_and_a_race_is_transient() {
        let declined = ReconcileError::Writer(WriterError::Push { branch: "main".into(), detail: "pre-receive hook declined".into() });
        let raced = ReconcileError::Writer(WriterError::PushRejected { branch: "main".into(), attempts: 10, detail: "fetch first".into() });
        assert_eq!(severity_of(&declined), Severity::Stalling);
        assert_eq!(severity_of(&raced), Severity::Transient);
        let failure = StepFailure::publish(&declined);
        assert_eq!(failure.reason, STATUS_PUBLISH_FAILED);
        assert!(failure.message.contains("PushFailed") && failure.message.contains("pre-receive hook declined"), "{}", failure.message);
    }

    #[test]
    fn a_retry_waits_its_backoff_and_a_trigger_cuts_it_short() {
        let mut retry = Retry::default();
        assert!(retry.due());
        retry.failed(Severity::Stalling, Duration::from_secs(60));
        assert!(!retry.due());
        assert_eq!(retry.failures(), 1);
        retry.now();
        assert!(retry.due());
        retry.succeeded();
        assert_eq!(retry.failures(), 0);
    }
}
