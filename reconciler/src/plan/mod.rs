//! `plan(desired, observed, now) -> Plan`: the pure decision at the heart of
//! the reconciler. No I/O, no clock: everything it needs is passed in, so it
//! is unit- and property-tested.
//!
//! For every request it works out where the pipeline stands from what was
//! observed (attempts in the store, runs the driver reports, gate decisions,
//! CI states, the last status file) and says what to do next: start, retry
//! after backoff, cancel, adopt, mark lost, open an approval, or nothing.
//!
//! This file holds the types and [`plan`], which runs the steps in order:
//! `observations` merges what was observed into one attempt per worker;
//! `requests` plans each request (deleted, invalid, valid), asking `budget`
//! whether it is over its budget and `stages` where its pipeline stands;
//! `limits` admits the workers to start within the limits. With
//! [`plan_incremental`], `memo` hands back what an earlier pass planned for
//! each valid request whose inputs did not change (the loop's dirty set),
//! and only the others are planned again.

mod budget;
mod limits;
mod memo;
mod observations;
pub mod preview;
mod requests;
mod stages;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::Installation;
use crate::model::DesiredState;
use crate::model::kinds::{ChangeRequest, Phase, RequestStatus};
use crate::time::Millis;

pub use crate::attempt::AttemptState;
pub use budget::{remaining_spend, remaining_wall_secs};
pub use memo::PlanMemo;

/// One attempt as the store (or a status file, or the driver) knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Deterministic worker name.
    pub worker: String,
    /// Request name.
    pub request: String,
    /// Spec generation.
    pub generation: String,
    /// Stage name.
    pub stage: String,
    /// Repo URL as written in the request.
    pub repo: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Agent that runs it (for per-agent concurrency).
    pub agent: String,
    /// Where it stands.
    pub state: AttemptState,
    /// Start time.
    pub started_at: Option<Millis>,
    /// Finish time.
    pub finished_at: Option<Millis>,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Input tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// Commit pushed to `hadron/<request>`.
    pub pushed_commit: Option<String>,
    /// Stable reason of the outcome (`Completed`, `AgentExitNonZero`, `WorkerLost` …).
    pub reason: String,
    /// What the agent said.
    pub summary: String,
    /// The agent ran without the sandbox (shown, never decided on).
    pub unconfined: bool,
    /// The agent CLI's session id the attempt recorded (already checked
    /// by the worker as [`is_session_id`](crate::ids::is_session_id)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// For an attempt to start: the session of the failed attempt before it
    /// that the agent continues (its `spec.resume`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session: Option<String>,
}

/// A pending attempt with nothing spent and no result: what the fields a
/// builder does not name start as (`Attempt { worker, …, ..Attempt::default() }`).
impl Default for Attempt {
    fn default() -> Self {
        Attempt {
            worker: String::new(),
            request: String::new(),
            generation: String::new(),
            stage: String::new(),
            repo: String::new(),
            attempt: 1,
            agent: String::new(),
            state: AttemptState::Pending,
            started_at: None,
            finished_at: None,
            cost_usd: 0.0,
            tokens_in: 0,
            tokens_out: 0,
            pushed_commit: None,
            reason: String::new(),
            summary: String::new(),
            unconfined: false,
            session_id: None,
            resume_session: None,
        }
    }
}

impl Attempt {
    /// Tokens, input plus output (saturating: reports are not trusted to be small).
    pub fn tokens(&self) -> u64 {
        self.tokens_in.saturating_add(self.tokens_out)
    }
}

/// Sum of the tokens of `attempts`, saturating at `u64::MAX`.
pub fn total_tokens<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> u64 {
    attempts.into_iter().fold(0, |sum, a| sum.saturating_add(a.tokens()))
}

/// Sum of the cost of `attempts` in USD. A cost that is not a number counts
/// as infinite and a negative one as zero, so no report can lower the sum
/// or hide it from a budget check; the sum saturates at infinity.
pub fn total_cost<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> f64 {
    attempts.into_iter().map(|a| if a.cost_usd.is_nan() { f64::INFINITY } else { a.cost_usd.max(0.0) }).fold(0.0, |sum, c| sum + c)
}

/// What the driver reports about a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// The process or Job is alive.
    Running,
    /// It finished; the attempt carries the result.
    Finished,
    /// It is gone without a result.
    Lost,
}

/// One run the driver knows, with the attempt fields its records give.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverRun {
    /// The attempt, as reconstructed from the run's own records.
    pub attempt: Attempt,
    /// Alive, finished or lost.
    pub state: RunState,
}

/// What is known about an approval gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalState {
    /// No approval in `main` yet.
    Waiting,
    /// Approved for this generation by an allowed approver.
    Approved {
        /// Who approved.
        by: String,
        /// The revision of the work approved (0: the stage's first result).
        revision: u32,
    },
    /// An allowed approver asked for changes to revision `revision` of the
    /// work: the stage before the gate runs again with the feedback.
    ChangesRequested {
        /// Who asked.
        by: String,
        /// The revision the changes are asked of.
        revision: u32,
        /// What to change (Markdown, from the approval file).
        feedback: String,
        /// The commit that brought the decision onto the base branch.
        commit: String,
    },
    /// An approval exists but for another generation.
    Stale {
        /// The generation it was given for.
        given_for: String,
    },
    /// The approval was merged by someone not allowed to approve.
    Rejected {
        /// Who merged it.
        by: String,
        /// Why it does not count.
        why: String,
        /// The commit that brought the approval file (empty when unknown).
        commit: String,
    },
}

/// Combined commit status of a pushed head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiState {
    /// Every required check passed.
    Success,
    /// A required check failed.
    Failure,
    /// Not reported yet, or still running.
    Pending,
}

/// Everything observed, gathered by the loop before planning.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Attempts the store knows (all requests, all generations).
    pub attempts: Vec<Attempt>,
    /// Runs the driver reports.
    pub runs: Vec<DriverRun>,
    /// Approval gates: (request, gate) → state for the current generation.
    pub approvals: BTreeMap<(String, String), ApprovalState>,
    /// Approval branches already open: (request, gate) → generation.
    pub approval_branches: BTreeMap<(String, String), String>,
    /// CI states by (repo URL as written, commit).
    pub ci: BTreeMap<(String, String), CiState>,
    /// Requests the store knows (to notice deletions): name → generation.
    /// The loop lists only those without a valid request in the control
    /// repo (a request that has one is not deleted).
    pub known_requests: BTreeMap<String, String>,
    /// Status files verified as Hadron's own (their content is what Hadron
    /// last published, by the digest kept in the store). Only these inform
    /// decisions; any other status file is output to overwrite, never input.
    pub own_statuses: Arc<BTreeMap<String, Arc<RequestStatus>>>,
}

/// Tunables that are not part of the control repo.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanConfig {
    /// Attempts per worker when neither request nor settings say (3).
    pub default_max_attempts: u32,
    /// Workers at once when settings do not say (4).
    pub default_max_workers: u32,
    /// First retry delay; doubles per attempt.
    pub backoff_base_ms: Millis,
    /// Longest retry delay.
    pub backoff_max_ms: Millis,
    /// The installation whose workers this plan names (see [`Installation`]).
    pub installation: Installation,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            default_max_attempts: 3,
            default_max_workers: 4,
            backoff_base_ms: 10_000,
            backoff_max_ms: 300_000,
            installation: Installation::default(),
        }
    }
}

/// Something to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record intent, then start this worker (idempotent by worker name).
    Start(Attempt),
    /// Stop a live worker.
    Cancel {
        /// Worker name.
        worker: String,
        /// Stable reason (`SpecChanged`, `Suspended`, `Deleted`, `BudgetExceeded`, `Invalid`).
        reason: String,
    },
    /// The driver runs a worker the store does not know: record it.
    Adopt(Attempt),
    /// The driver's record of a run changed (finished, lost): record it.
    Record(Attempt),
    /// Open (or update) the approval branch of a gate.
    OpenApproval {
        /// Request name.
        request: String,
        /// Gate name.
        gate: String,
        /// Generation being approved.
        generation: String,
        /// The revision of the work being approved (0: the first result).
        revision: u32,
        /// Results so far, for the approver.
        summary: String,
        /// What the branch is opened for, recorded once it is: the
        /// generation, or after a merge that did not count, the generation
        /// and that merge (see [`approval_token`]).
        opened_for: String,
        /// Open it again although the base branch already holds an approval
        /// for this generation (that approval did not count).
        reopen: bool,
    },
    /// Forget a deleted request once nothing of it runs.
    Forget {
        /// Request name.
        request: String,
    },
}

impl Action {
    /// The request, stage and worker the action is about (empty when none),
    /// for log spans.
    pub fn subject(&self) -> (&str, &str, &str) {
        match self {
            Action::Start(a) | Action::Adopt(a) | Action::Record(a) => (&a.request, &a.stage, &a.worker),
            Action::Cancel { worker, .. } => ("", "", worker),
            Action::OpenApproval { request, gate, .. } => (request, gate, ""),
            Action::Forget { request } => (request, "", ""),
        }
    }

    /// What the action does, in a few words, for logs and step failures.
    pub fn describe(&self) -> String {
        match self {
            Action::Start(a) => format!("starting worker {} ({}/{})", a.worker, a.request, a.stage),
            Action::Cancel { worker, reason } => format!("cancelling worker {worker} ({reason})"),
            Action::Adopt(a) => format!("adopting worker {}", a.worker),
            Action::Record(a) => format!("recording worker {} as {}", a.worker, a.state.as_str()),
            Action::OpenApproval { request, gate, .. } => format!("opening approval branch hadron/approve/{request}/{gate}"),
            Action::Forget { request } => format!("forgetting deleted request {request}"),
        }
    }
}

/// Where one request stands after planning.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestView {
    /// Request name.
    pub name: String,
    /// Current spec generation (empty for an invalid request).
    pub generation: String,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Stage running or last run.
    pub stage: Option<String>,
    /// Stable CamelCase reason for the phase.
    pub reason: String,
    /// One human sentence.
    pub message: String,
    /// Attempts of the current generation, in pipeline order.
    pub attempts: Vec<Attempt>,
    /// Branch holding the agent's commits.
    pub work_branch: String,
    /// The latest round of changes an approver asked for, if any.
    pub revision: Option<Revision>,
}

/// A round of changes asked at an approval gate: shown in the status file
/// and the dashboard, and, while `running`, given to the agent as
/// `{{feedback}}` by every start of `stage`.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// The gate the changes were asked at.
    pub gate: String,
    /// The stage that runs again (the gate's `after`).
    pub stage: String,
    /// Which revision this is (1 for the first round of changes).
    pub number: u32,
    /// The most the gate allows.
    pub max: u32,
    /// Who asked.
    pub by: String,
    /// What to change.
    pub feedback: String,
    /// Whether the stage is running for it now (false once its result is
    /// back at the gate, or when no revision is left).
    pub running: bool,
}

/// The result of planning.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Every request, valid or invalid, by name (shared: a request planned
    /// in an earlier pass from the same inputs keeps its view).
    pub requests: BTreeMap<String, Arc<RequestView>>,
    /// Requests deleted from the repo whose status file should go.
    pub deleted: Vec<String>,
    /// The earliest time something changes without a trigger (a backoff expiring).
    pub wake_at: Option<Millis>,
}

impl Plan {
    /// The workers that run once this plan is carried out: those still
    /// live and those it starts.
    pub fn live_workers(&self) -> usize {
        self.requests.values().flat_map(|v| v.attempts.iter()).filter(|a| a.state.is_live()).count()
            + self.actions.iter().filter(|a| matches!(a, Action::Start(_))).count()
    }
}

/// Backoff before attempt `next` (2, 3, …) with deterministic jitter of up
/// to ±20 % derived from the worker name, so planning stays pure.
pub fn backoff(cfg: &PlanConfig, next: u32, worker: &str) -> Millis {
    let ms = |m: Millis| std::time::Duration::from_millis(u64::try_from(m.max(0)).unwrap_or(0));
    let policy = crate::backoff::Backoff::new(ms(cfg.backoff_base_ms), ms(cfg.backoff_max_ms));
    // Attempt 2 follows the first failure.
    let delay = crate::backoff::spread_by_key(policy.delay(next.saturating_sub(1)), worker, 20);
    Millis::try_from(delay.as_millis()).unwrap_or(Millis::MAX)
}

/// The plan. Pure: same inputs, same output.
pub fn plan(desired: &DesiredState, observed: &Observed, now: Millis, cfg: &PlanConfig) -> Plan {
    plan_incremental(desired, observed, now, cfg, &mut PlanMemo::default())
}

/// The plan, planning again only the valid requests whose inputs changed
/// since `memo` kept them (see [`PlanMemo`]); the others keep what was
/// planned for them. The same plan as [`plan`] for the same inputs,
/// whatever the memo holds.
pub fn plan_incremental(desired: &DesiredState, observed: &Observed, now: Millis, cfg: &PlanConfig, memo: &mut PlanMemo) -> Plan {
    let mut draft = requests::Draft::default();
    let attempts = observations::merge_observations(observed, now, &mut draft.plan.actions);
    let mut by_request = requests::ByRequest::new();
    for a in &attempts {
        by_request.entry(a.request.as_str()).or_default().push(a);
    }
    let inputs = requests::Inputs { desired, observed, now, cfg };
    requests::forget_deleted(&inputs, &by_request, &mut draft);
    requests::mark_invalid(&inputs, &by_request, &mut draft);

    // Valid requests, highest priority first for the limits.
    let mut order: Vec<&Arc<ChangeRequest>> = desired.requests.values().collect();
    order.sort_by(|a, b| b.spec.priority.cmp(&a.spec.priority).then_with(|| a.metadata.name.cmp(&b.metadata.name)));
    memo.begin(desired, cfg);
    let index = memo::Index::new(observed);
    let mut candidates = Vec::new();
    for request in order {
        let name = request.metadata.name.as_str();
        let mine = by_request.get(name).map(Vec::as_slice).unwrap_or_default();
        let key = memo::RequestInputs { request, index: &index, mine, observed };
        if let Some(planned) = memo.reuse(&key) {
            candidates.extend(draft.take(name, planned));
            continue;
        }
        let (mut planned, wake_at) = requests::plan_request(&inputs, request, mine.to_vec());
        // A live worker's wall time and a scheduled retry's countdown move
        // with the clock: such a request is planned again every pass.
        let timed = wake_at.is_some() || mine.iter().any(|a| a.state.is_live() || (a.started_at.is_some() && a.finished_at.is_none()));
        memo.keep(&key, &mut planned, timed);
        if let Some(at) = wake_at {
            draft.plan.wake_at = Some(draft.plan.wake_at.map_or(at, |w| w.min(at)));
        }
        candidates.extend(draft.take(name, planned));
    }
    memo.retain(desired);

    let max_workers = desired.settings.spec.limits.max_concurrent_workers.filter(|n| *n > 0).unwrap_or(cfg.default_max_workers);
    let requests::Draft { mut plan, cancelled } = draft;
    limits::admit(&attempts, &cancelled, candidates, max_workers, &mut plan);
    plan
}

/// What an approval branch must be opened for, given the gate's state: the
/// generation, or after a merge that did not count, the generation and that
/// merge's commit (so the branch is opened once more per rejected merge).
pub fn approval_token(generation: &str, revision: u32, state: &ApprovalState) -> String {
    let base = if revision == 0 { generation.to_owned() } else { format!("{generation} r{revision}") };
    match state {
        ApprovalState::Rejected { commit, .. } => format!("{base} after {commit}"),
        // Changes asked of this very revision and none left: the branch is
        // opened again so that the person can still approve it.
        ApprovalState::ChangesRequested { commit, revision: asked, .. } if *asked == revision => format!("{base} after {commit}"),
        _ => base,
    }
}

/// The revision an approval branch was opened for, read back from its
/// [`approval_token`] (0 when the token names none).
pub fn token_revision(token: &str) -> u32 {
    token.split_whitespace().find_map(|part| part.strip_prefix('r')?.parse().ok()).unwrap_or(0)
}

/// The revision of `stage`'s work that a gate after it reviews, from the
/// attempts of `request`'s `generation`: the one every repo has reached
/// (0 for the stage's first result; one more per round of changes).
pub fn gate_revision<'a>(
    attempts: impl Iterator<Item = &'a Attempt> + Clone,
    request: &ChangeRequest,
    generation: &str,
    stage: &str,
) -> u32 {
    let name = &request.metadata.name;
    request
        .spec
        .repos
        .iter()
        .map(|r| {
            let n = attempts
                .clone()
                .filter(|a| {
                    &a.request == name
                        && a.generation == generation
                        && a.stage == stage
                        && a.repo == r.url
                        && a.state == AttemptState::Succeeded
                })
                .count();
            u32::try_from(n).unwrap_or(u32::MAX)
        })
        .min()
        .unwrap_or(0)
        .saturating_sub(1)
}

/// Used by status rendering: the previous status of a request, if any.
pub fn previous<'a>(desired: &'a DesiredState, name: &str) -> Option<&'a RequestStatus> {
    desired.statuses.get(name).map(|s| s.as_ref())
}

#[cfg(test)]
mod tests;
