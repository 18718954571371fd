//! The run's result: building a [`RunResult`] from the outcome, and reading
//! and writing `result.json`.

use std::path::Path;

use super::error::WorkerError;
use super::proc::write_atomic;
use super::run_dir::{LOG_FILE, RESULT_FILE};
use super::spec::{Outcome, RunResult, RunSpec};
use super::usage::{Usage, UsageError, cap_summary};
use crate::time::now_rfc3339;

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
            unconfined: None,
            session_id: None,
        }
    }

    /// Reads a `result.json`, if there is a readable one.
    pub fn read(path: &Path) -> Option<RunResult> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Refuses the agent's usage report: the result becomes a failure with
    /// reason `InvalidUsageReport` (which the planner does not retry), and
    /// none of the report counts (its figures would overflow the sums or
    /// not fit the store).
    pub(super) fn refuse_usage(&mut self, error: &UsageError) {
        self.outcome = Outcome::Failed;
        self.reason = error.reason().to_owned();
        self.message = error.to_string();
        self.summary = String::new();
        self.pushed_commit = None;
        self.tokens_in = 0;
        self.tokens_out = 0;
        self.cost_usd = 0.0;
    }

    /// Writes this result to `path` atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, &json)
    }
}

/// A successful run.
pub(super) struct Done {
    pub(super) commit: String,
    pub(super) message: String,
}

/// Builds the result, writes it and returns it. The usage's summary (secrets
/// already redacted) and the message are cut to
/// [`SUMMARY_MAX_BYTES`](super::usage::SUMMARY_MAX_BYTES); a refused usage
/// report fails the run.
pub(super) fn finish(
    spec: &RunSpec,
    outcome: Result<Done, WorkerError>,
    usage: Option<Usage>,
    unconfined: Option<String>,
    run_dir: &Path,
    started_at: &str,
) -> RunResult {
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
            unconfined: None,
            session_id: None,
        },
        Err(error) => RunResult::failed(&spec.worker, error, &log_path, started_at),
    };
    result.unconfined = unconfined;
    // Agent-written: kept only in the shape Hadron accepts (the worker has
    // said in its log when it dropped one).
    result.session_id = usage.as_ref().and_then(|u| u.session_id.clone()).filter(|id| crate::ids::is_session_id(id));
    match usage {
        Some(Usage { invalid: Some(error), .. }) => result.refuse_usage(&error),
        Some(usage) => {
            result.tokens_in = usage.tokens_in;
            result.tokens_out = usage.tokens_out;
            result.cost_usd = usage.cost(spec.pricing.as_ref());
            result.summary = cap_summary(&usage.summary);
            result.refuse_insane_usage();
        }
        None => {}
    }
    result.message = cap_summary(&result.message);
    let _ = result.write(&run_dir.join(RESULT_FILE));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished_with_session(id: &str) -> RunResult {
        let dir = tempfile::tempdir().expect("a temporary run dir");
        let usage = Usage { session_id: Some(id.to_owned()), ..Usage::default() };
        let done = Done { commit: "0".repeat(40), message: "pushed".to_owned() };
        let result = finish(&super::super::spec::sample(), Ok(done), Some(usage), None, dir.path(), "2026-01-01T00:00:00Z");
        let written = RunResult::read(&dir.path().join(RESULT_FILE)).expect("result.json is written");
        assert_eq!(written, result, "result.json holds what is returned");
        result
    }

    #[test]
    fn a_session_id_reaches_result_json_only_in_the_accepted_shape() {
        let kept = finished_with_session("495cc7e5-d22e-4192-92ba-4ce2d14827a6");
        assert_eq!(kept.session_id.as_deref(), Some("495cc7e5-d22e-4192-92ba-4ce2d14827a6"));
        let json = serde_json::to_value(&kept).expect("json");
        assert_eq!(json["sessionId"], "495cc7e5-d22e-4192-92ba-4ce2d14827a6");
        for bad in ["--dangerous", "a b", "../../etc", &"a".repeat(129)] {
            assert_eq!(finished_with_session(bad).session_id, None, "{bad:?} is dropped");
        }
        let none = serde_json::to_value(finished_with_session("-x")).expect("json");
        assert!(none.get("sessionId").is_none(), "absent, not null: {none}");
    }
}
