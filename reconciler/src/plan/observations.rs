//! Merging what was observed: the store's attempts, the driver's runs and
//! Hadron's own status files become one view per worker, with the actions
//! that bring the store up to date.

use std::collections::BTreeMap;

use super::{Action, Attempt, AttemptState, DriverRun, Observed, RunState};
use crate::time::{Millis, parse_rfc3339};

/// Attempts by worker name.
type ByWorker = BTreeMap<String, Attempt>;

/// Merges the store's attempts, the driver's runs and the last status files
/// into one view per worker, and the actions that bring the store up to date
/// (adopt unknown runs, record finished or lost ones).
pub(super) fn merge_observations(observed: &Observed, now: Millis, actions: &mut Vec<Action>) -> Vec<Attempt> {
    let mut by_worker: ByWorker = observed.attempts.iter().map(|a| (a.worker.clone(), a.clone())).collect();
    // A run directory whose worker was never spawned (a crash between
    // writing run.json and spawning) is intent, not a failed attempt: the
    // same attempt is started again under the same name.
    let started: Vec<&DriverRun> =
        observed.runs.iter().filter(|r| !(r.state == RunState::Lost && r.attempt.reason == "NotStarted")).collect();
    let driver: BTreeMap<&str, &DriverRun> = started.iter().map(|r| (r.attempt.worker.as_str(), *r)).collect();

    for run in started.iter().copied() {
        merge_run(&mut by_worker, run, now, actions);
    }
    // Intent recorded but the worker never started (a crash between the two):
    // forget the intent here, so the same attempt, under the same name, is
    // started again.
    by_worker.retain(|w, a| a.state != AttemptState::Pending || driver.contains_key(w.as_str()));
    // A Running attempt the driver no longer knows stopped reporting.
    for attempt in by_worker.values_mut() {
        if attempt.state == AttemptState::Running && !driver.contains_key(attempt.worker.as_str()) {
            *attempt = Attempt { state: AttemptState::Failed, reason: "WorkerLost".into(), finished_at: Some(now), ..attempt.clone() };
            actions.push(Action::Record(attempt.clone()));
        }
    }
    adopt_own_statuses(observed, &mut by_worker, actions);
    by_worker.into_values().collect()
}

/// One run the driver reports: adopted when the store does not know its
/// worker, recorded when it moved on from what the store knows.
fn merge_run(by_worker: &mut ByWorker, run: &DriverRun, now: Millis, actions: &mut Vec<Action>) {
    match by_worker.get_mut(&run.attempt.worker) {
        None => {
            let mut adopted = run.attempt.clone();
            if run.state == RunState::Lost {
                adopted.state = AttemptState::Failed;
                adopted.reason = "WorkerLost".into();
                adopted.finished_at.get_or_insert(now);
            }
            actions.push(Action::Adopt(adopted.clone()));
            by_worker.insert(adopted.worker.clone(), adopted);
        }
        Some(known) => {
            let updated = match run.state {
                RunState::Running if known.state == AttemptState::Pending => {
                    Some(Attempt { state: AttemptState::Running, started_at: run.attempt.started_at.or(known.started_at), ..known.clone() })
                }
                RunState::Finished if known.state.is_live() => Some(run.attempt.clone()),
                RunState::Lost if known.state.is_live() => {
                    Some(Attempt { state: AttemptState::Failed, reason: "WorkerLost".into(), finished_at: Some(now), ..known.clone() })
                }
                _ => None,
            };
            if let Some(updated) = updated {
                actions.push(Action::Record(updated.clone()));
                *known = updated;
            }
        }
    }
}

/// Finished attempts recorded only in Hadron's own status files (the run
/// records are gone but the store still vouches for the file): they still
/// count, so finished stages are not run again. A status file the store
/// cannot vouch for (hand-edited, or the store was lost) adds nothing: a
/// stage run again under its deterministic worker name finds its pushed
/// commit by the `Hadron-Worker:` trailer instead of running the agent.
fn adopt_own_statuses(observed: &Observed, by_worker: &mut ByWorker, actions: &mut Vec<Action>) {
    for (name, status) in observed.own_statuses.iter() {
        for result in &status.status.stages {
            if by_worker.contains_key(&result.worker) {
                continue;
            }
            let Some(state) = AttemptState::parse(&result.state).filter(|s| !s.is_live()) else { continue };
            let attempt = Attempt {
                worker: result.worker.clone(),
                request: name.clone(),
                generation: status.status.observed_generation.clone(),
                stage: result.name.clone(),
                repo: result.repo.clone(),
                attempt: result.attempt,
                agent: String::new(),
                state,
                started_at: result.started_at.as_deref().and_then(parse_rfc3339),
                finished_at: result.finished_at.as_deref().and_then(parse_rfc3339),
                cost_usd: result.cost_usd,
                // A status file records only the sum.
                tokens_in: result.tokens,
                tokens_out: 0,
                pushed_commit: result.pushed_commit.clone(),
                reason: "FromStatus".into(),
                summary: result.summary.clone(),
                unconfined: result.unconfined,
                session_id: result.session_id.clone().filter(|id| crate::ids::is_session_id(id)),
                resume_session: None,
            };
            actions.push(Action::Adopt(attempt.clone()));
            by_worker.insert(attempt.worker.clone(), attempt);
        }
    }
}
