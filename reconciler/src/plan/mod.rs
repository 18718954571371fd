//! `plan(desired, observed, now) -> Plan`: the pure decision at the heart of
//! the reconciler. No I/O, no clock: everything it needs is passed in, so it
//! is unit- and property-tested.
//!
//! For every request it works out where the pipeline stands from what was
//! observed (attempts in the store, runs the driver reports, gate decisions,
//! CI states, the last status file) and says what to do next: start, retry
//! after backoff, cancel, adopt, mark lost, open an approval, or nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::worker_name;
use crate::model::kinds::{ChangeRequest, GateType, Phase, RequestStatus, Stage};
use crate::model::{DesiredState, Diagnostic};
use crate::time::{Millis, parse_rfc3339};

pub use crate::attempt::AttemptState;

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
    pub known_requests: BTreeMap<String, String>,
    /// Status files verified as Hadron's own (their content is what Hadron
    /// last published, by the digest kept in the store). Only these inform
    /// decisions; any other status file is output to overwrite, never input.
    pub own_statuses: BTreeMap<String, Arc<RequestStatus>>,
}

/// Tunables that are not part of the control repo.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Attempts per worker when neither request nor settings say (3).
    pub default_max_attempts: u32,
    /// Workers at once when settings do not say (4).
    pub default_max_workers: u32,
    /// First retry delay; doubles per attempt.
    pub backoff_base_ms: Millis,
    /// Longest retry delay.
    pub backoff_max_ms: Millis,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig { default_max_attempts: 3, default_max_workers: 4, backoff_base_ms: 10_000, backoff_max_ms: 300_000 }
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
}

/// The result of planning.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Every request, valid or invalid, by name.
    pub requests: BTreeMap<String, RequestView>,
    /// Requests deleted from the repo whose status file should go.
    pub deleted: Vec<String>,
    /// The earliest time something changes without a trigger (a backoff expiring).
    pub wake_at: Option<Millis>,
}

/// Backoff before attempt `next` (2, 3, …) with deterministic jitter of up
/// to ±20 % derived from the worker name, so planning stays pure.
pub fn backoff(cfg: &PlanConfig, next: u32, worker: &str) -> Millis {
    let exp = next.saturating_sub(2).min(20);
    let base = cfg.backoff_base_ms.saturating_mul(1 << exp).min(cfg.backoff_max_ms);
    let h = worker.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let jitter = i64::try_from(h % 401).unwrap_or(0) - 200; // -200..=200 per mille of 20 %
    base + base * jitter / 1000
}

/// Merges the store's attempts, the driver's runs and the last status files
/// into one view per worker, and the actions that bring the store up to date
/// (adopt unknown runs, record finished or lost ones).
fn merge_observations(observed: &Observed, now: Millis, actions: &mut Vec<Action>) -> Vec<Attempt> {
    let mut by_worker: BTreeMap<String, Attempt> = observed.attempts.iter().map(|a| (a.worker.clone(), a.clone())).collect();
    // A run directory whose worker was never spawned (a crash between
    // writing run.json and spawning) is intent, not a failed attempt: the
    // same attempt is started again under the same name.
    let started: Vec<&DriverRun> =
        observed.runs.iter().filter(|r| !(r.state == RunState::Lost && r.attempt.reason == "NotStarted")).collect();
    let driver: BTreeMap<&str, &DriverRun> = started.iter().map(|r| (r.attempt.worker.as_str(), *r)).collect();

    for run in started.iter().copied() {
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
                    RunState::Running if known.state == AttemptState::Pending => Some(Attempt {
                        state: AttemptState::Running,
                        started_at: run.attempt.started_at.or(known.started_at),
                        ..known.clone()
                    }),
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
    // Finished attempts recorded only in Hadron's own status files (the run
    // records are gone but the store still vouches for the file): they still
    // count, so finished stages are not run again. A status file the store
    // cannot vouch for (hand-edited, or the store was lost) adds nothing: a
    // stage run again under its deterministic worker name finds its pushed
    // commit by the `Hadron-Worker:` trailer instead of running the agent.
    for (name, status) in &observed.own_statuses {
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
            };
            actions.push(Action::Adopt(attempt.clone()));
            by_worker.insert(attempt.worker.clone(), attempt);
        }
    }
    by_worker.into_values().collect()
}

/// The plan. Pure: same inputs, same output.
pub fn plan(desired: &DesiredState, observed: &Observed, now: Millis, cfg: &PlanConfig) -> Plan {
    let mut out = Plan::default();
    let attempts = merge_observations(observed, now, &mut out.actions);

    let mut by_request: BTreeMap<&str, Vec<&Attempt>> = BTreeMap::new();
    for a in &attempts {
        by_request.entry(a.request.as_str()).or_default().push(a);
    }

    let mut candidates: Vec<(String, Option<u32>, Vec<Attempt>)> = Vec::new();
    let mut cancels: BTreeSet<String> = BTreeSet::new();
    let mut cancel = |out: &mut Plan, a: &Attempt, reason: &str| {
        if a.state.is_live() && cancels.insert(a.worker.clone()) {
            out.actions.push(Action::Cancel { worker: a.worker.clone(), reason: reason.to_owned() });
        }
    };

    // Deleted requests: cancel what runs, then forget.
    let known: BTreeSet<&str> = observed.known_requests.keys().map(String::as_str).chain(by_request.keys().copied()).collect();
    for name in known {
        if desired.requests.contains_key(name) || desired.invalid_requests.contains_key(name) {
            continue;
        }
        let mine = by_request.get(name).map(Vec::as_slice).unwrap_or_default();
        for a in mine {
            cancel(&mut out, a, "Deleted");
        }
        if mine.iter().all(|a| !a.state.is_live()) {
            out.actions.push(Action::Forget { request: name.to_owned() });
            if desired.statuses.contains_key(name) {
                out.deleted.push(name.to_owned());
            }
        }
    }

    // Invalid requests: cancel what runs; the status says why.
    for (name, diags) in &desired.invalid_requests {
        for a in by_request.get(name.as_str()).map(Vec::as_slice).unwrap_or_default() {
            cancel(&mut out, a, "Invalid");
        }
        out.requests.insert(name.clone(), invalid_view(name, diags));
    }

    // Valid requests, highest priority first for the limits.
    let mut order: Vec<&ChangeRequest> = desired.requests.values().map(|r| r.as_ref()).collect();
    order.sort_by(|a, b| b.spec.priority.cmp(&a.spec.priority).then_with(|| a.metadata.name.cmp(&b.metadata.name)));
    let max_workers = desired.settings.spec.limits.max_concurrent_workers.filter(|n| *n > 0).unwrap_or(cfg.default_max_workers);

    for request in order {
        let name = request.metadata.name.as_str();
        let generation = request.generation();
        let mine: Vec<&Attempt> = by_request.get(name).cloned().unwrap_or_default();
        let (current, old): (Vec<&Attempt>, Vec<&Attempt>) = mine.into_iter().partition(|a| a.generation == generation);
        for a in &old {
            cancel(&mut out, a, "SpecChanged");
        }
        let restarted = !old.is_empty() || observed.own_statuses.get(name).is_some_and(|s| s.status.observed_generation != generation);
        let agent = request.effective_agent(&desired.settings).unwrap_or_default().to_owned();
        let agent_limit = desired.agents.get(&agent).and_then(|a| a.spec.concurrency).filter(|n| *n > 0);
        let mut view = RequestView {
            name: name.to_owned(),
            generation: generation.clone(),
            phase: Phase::Pending,
            stage: None,
            reason: "Progressing".into(),
            message: String::new(),
            attempts: Vec::new(),
            work_branch: format!("hadron/{name}"),
        };
        let mut current_sorted: Vec<Attempt> = current.iter().map(|a| (*a).clone()).collect();
        let stages = request.effective_stages(&desired.settings);
        let stage_index = |s: &str| stages.iter().position(|x| x.name == s).unwrap_or(usize::MAX);
        current_sorted.sort_by(|a, b| (stage_index(&a.stage), &a.repo, a.attempt).cmp(&(stage_index(&b.stage), &b.repo, b.attempt)));
        view.attempts = current_sorted;

        // A terminal phase recorded for this generation stays terminal.
        if let Some(prev) = observed.own_statuses.get(name).filter(|s| s.status.observed_generation == generation)
            && matches!(prev.status.phase, Phase::Succeeded | Phase::Failed)
        {
            for a in &current {
                cancel(&mut out, a, "Terminal");
            }
            view.phase = prev.status.phase;
            view.stage = prev.status.stage.clone();
            view.reason = prev.status.conditions.iter().find(|c| c.condition_type == "Ready").map_or_else(
                || if prev.status.phase == Phase::Succeeded { "Succeeded".into() } else { "Failed".into() },
                |c| c.reason.clone(),
            );
            view.message = prev.status.message.clone();
            out.requests.insert(name.to_owned(), view);
            continue;
        }

        if request.spec.suspend {
            for a in &current {
                cancel(&mut out, a, "Suspended");
            }
            view.phase = Phase::Cancelled;
            view.reason = "Suspended".into();
            view.message = "suspended: no worker runs until `suspend` is false".into();
            out.requests.insert(name.to_owned(), view);
            continue;
        }

        // Budgets are reconciled state.
        if let Some(why) = budget_exceeded(request, desired, &current, now) {
            for a in &current {
                cancel(&mut out, a, "BudgetExceeded");
            }
            view.phase = Phase::Failed;
            view.reason = "BudgetExceeded".into();
            view.message = why;
            out.requests.insert(name.to_owned(), view);
            continue;
        }

        let max_attempts = desired.settings.spec.defaults.max_attempts.filter(|n| *n > 0).unwrap_or(cfg.default_max_attempts);
        let mut starts: Vec<Attempt> = Vec::new();
        let mut decided = false;
        let mut previous_commits: BTreeMap<&str, Option<String>> = BTreeMap::new();
        for stage in stages {
            view.stage = Some(stage.name.clone());
            match stage_state(request, stage, &generation, &agent, &current, max_attempts, now, cfg) {
                StageState::Done(commits) => {
                    previous_commits = commits;
                }
                StageState::Start(list) => {
                    starts = list;
                    view.phase = if current.iter().any(|a| a.state.is_live()) { Phase::Running } else { Phase::Pending };
                    view.message = format!("stage {} starting", stage.name);
                    decided = true;
                }
                StageState::Running { retry_at } => {
                    view.phase = Phase::Running;
                    view.message = match retry_at {
                        Some(at) if !current.iter().any(|a| a.state.is_live() && a.stage == stage.name) => {
                            out.wake_at = Some(out.wake_at.map_or(at, |w| w.min(at)));
                            format!("stage {}: a worker failed; retrying in {}s", stage.name, (at - now + 999) / 1000)
                        }
                        Some(at) => {
                            out.wake_at = Some(out.wake_at.map_or(at, |w| w.min(at)));
                            format!("stage {} running; a retry is scheduled", stage.name)
                        }
                        None => format!("stage {} running", stage.name),
                    };
                    decided = true;
                }
                StageState::Failed(why) => {
                    view.phase = Phase::Failed;
                    view.reason = "StageFailed".into();
                    view.message = why;
                    decided = true;
                }
            }
            if decided {
                break;
            }
            // The stage is done: gates after it.
            for gate in request.spec.gates.iter().filter(|g| g.after == stage.name) {
                let key = (name.to_owned(), gate.name.clone());
                match gate.gate_type {
                    GateType::Approval => match observed.approvals.get(&key).cloned().unwrap_or(ApprovalState::Waiting) {
                        ApprovalState::Approved { .. } => {}
                        other => {
                            let opened_for = approval_token(&generation, &other);
                            if observed.approval_branches.get(&key) != Some(&opened_for) {
                                let mut summary = summary_of(&view.attempts);
                                let reopen = matches!(other, ApprovalState::Rejected { .. });
                                if let ApprovalState::Rejected { by, why, .. } = &other {
                                    summary = format!("{summary}\nOpened again: the earlier merge by {by} did not count ({why}).");
                                }
                                out.actions.push(Action::OpenApproval {
                                    request: name.to_owned(),
                                    gate: gate.name.clone(),
                                    generation: generation.clone(),
                                    summary,
                                    opened_for,
                                    reopen,
                                });
                            }
                            view.phase = Phase::WaitingForApproval;
                            view.reason = "AwaitingApproval".into();
                            view.message = match other {
                                ApprovalState::Stale { given_for } => format!(
                                    "gate {}: the approval was given for generation {given_for}, but the request changed (now {generation}); merge the updated branch hadron/approve/{name}/{} to approve again",
                                    gate.name, gate.name
                                ),
                                ApprovalState::Rejected { by, why, .. } => format!(
                                    "gate {}: the approval merged by {by} does not count ({why}); an allowed approver must merge the re-opened branch hadron/approve/{name}/{}",
                                    gate.name, gate.name
                                ),
                                _ => format!(
                                    "gate {}: waiting for approval; merge branch hadron/approve/{name}/{} into main",
                                    gate.name, gate.name
                                ),
                            };
                            decided = true;
                        }
                    },
                    GateType::Ci => {
                        let mut states = Vec::new();
                        for repo in &request.spec.repos {
                            let commit = previous_commits.get(repo.url.as_str()).cloned().flatten();
                            let state = commit.and_then(|c| observed.ci.get(&(repo.url.clone(), c)).copied()).unwrap_or(CiState::Pending);
                            states.push((repo.url.as_str(), state));
                        }
                        if let Some((repo, _)) = states.iter().find(|(_, s)| *s == CiState::Failure) {
                            view.phase = Phase::Failed;
                            view.reason = "CIFailed".into();
                            view.message = format!("gate {}: CI failed on {repo}", gate.name);
                            decided = true;
                        } else if states.iter().any(|(_, s)| *s == CiState::Pending) {
                            view.phase = Phase::WaitingForCI;
                            view.reason = "AwaitingCI".into();
                            view.message = format!("gate {}: waiting for CI on the pushed heads", gate.name);
                            decided = true;
                        }
                    }
                }
                if decided {
                    break;
                }
            }
            if decided {
                break;
            }
        }
        if !decided {
            view.phase = Phase::Succeeded;
            view.reason = "Succeeded".into();
            view.message = match stages {
                [only] => format!("stage {} succeeded", only.name),
                all => format!("all {} stages succeeded", all.len()),
            };
        }
        if restarted && matches!(view.phase, Phase::Pending | Phase::Running) && view.attempts.is_empty() {
            view.message = format!("spec changed (now generation {generation}): the pipeline starts again; {}", view.message);
        }

        if !starts.is_empty() {
            candidates.push((name.to_owned(), agent_limit, starts));
        }
        out.requests.insert(name.to_owned(), view);
    }

    // Admit starts within the limits, in priority order. Live workers count
    // whatever their request, except those this plan cancels (the executor
    // cancels before it starts).
    let mut live_total = 0u32;
    let mut live_by_agent: BTreeMap<String, u32> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.state.is_live() && !cancels.contains(&a.worker)) {
        live_total += 1;
        *live_by_agent.entry(a.agent.clone()).or_default() += 1;
    }
    for (name, agent_limit, starts) in candidates {
        let mut admitted_any = false;
        for start in starts {
            let agent_live = live_by_agent.get(&start.agent).copied().unwrap_or(0);
            if live_total >= max_workers || agent_limit.is_some_and(|l| agent_live >= l) {
                continue;
            }
            live_total += 1;
            *live_by_agent.entry(start.agent.clone()).or_default() += 1;
            out.actions.push(Action::Start(start));
            admitted_any = true;
        }
        if let Some(view) = out.requests.get_mut(&name) {
            if admitted_any {
                view.phase = Phase::Running;
            } else if view.phase == Phase::Pending {
                view.message = format!("{}; waiting for a free worker slot", view.message);
            }
        }
    }
    out
}

enum StageState<'a> {
    /// Every repo succeeded: pushed commit per repo.
    Done(BTreeMap<&'a str, Option<String>>),
    /// Workers to start now.
    Start(Vec<Attempt>),
    /// Workers running, or a retry scheduled.
    Running { retry_at: Option<Millis> },
    /// A repo ran out of attempts.
    Failed(String),
}

#[allow(clippy::too_many_arguments)]
fn stage_state<'a>(
    request: &'a ChangeRequest,
    stage: &Stage,
    generation: &str,
    agent: &str,
    attempts: &[&Attempt],
    max_attempts: u32,
    now: Millis,
    cfg: &PlanConfig,
) -> StageState<'a> {
    let name = request.metadata.name.as_str();
    let mut done = BTreeMap::new();
    let mut starts = Vec::new();
    let mut running = false;
    let mut retry_at: Option<Millis> = None;
    for repo in &request.spec.repos {
        let latest = attempts.iter().filter(|a| a.stage == stage.name && a.repo == repo.url).max_by_key(|a| a.attempt);
        let next = |n: u32| Attempt {
            worker: worker_name(name, generation, &stage.name, &repo.url, n),
            request: name.to_owned(),
            generation: generation.to_owned(),
            stage: stage.name.clone(),
            repo: repo.url.clone(),
            attempt: n,
            agent: agent.to_owned(),
            state: AttemptState::Pending,
            started_at: None,
            finished_at: None,
            cost_usd: 0.0,
            tokens_in: 0,
            tokens_out: 0,
            pushed_commit: None,
            reason: String::new(),
            summary: String::new(),
        };
        match latest {
            None => starts.push(next(1)),
            Some(a) if a.state.is_live() => running = true,
            Some(a) if a.state == AttemptState::Succeeded => {
                done.insert(repo.url.as_str(), a.pushed_commit.clone());
            }
            // A cancelled attempt (suspend, then resume) is run again under a new number.
            Some(a) if a.state == AttemptState::Cancelled => starts.push(next(a.attempt.saturating_add(1))),
            Some(a) => {
                let failures =
                    attempts.iter().filter(|x| x.stage == stage.name && x.repo == repo.url && x.state == AttemptState::Failed).count();
                if u32::try_from(failures).unwrap_or(u32::MAX) >= max_attempts {
                    return StageState::Failed(format!(
                        "stage {} failed on {} after {failures} attempts: {} ({})",
                        stage.name, repo.url, a.summary, a.reason
                    ));
                }
                let n = a.attempt.saturating_add(1);
                let at = a.finished_at.unwrap_or(now).saturating_add(backoff(cfg, n, &a.worker));
                if now >= at {
                    starts.push(next(n));
                } else {
                    retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
                }
            }
        }
    }
    if !starts.is_empty() {
        StageState::Start(starts)
    } else if running || retry_at.is_some() {
        StageState::Running { retry_at }
    } else {
        StageState::Done(done)
    }
}

fn budget_exceeded(request: &ChangeRequest, desired: &DesiredState, attempts: &[&Attempt], now: Millis) -> Option<String> {
    let defaults = desired.settings.spec.defaults.budget.clone().unwrap_or_default();
    let own = request.spec.budget.clone().unwrap_or_default();
    let cost = total_cost(attempts.iter().copied());
    let tokens = total_tokens(attempts.iter().copied());
    let wall = wall_time(attempts.iter().copied(), now);
    if let Some(max) = own.max_cost_usd.or(defaults.max_cost_usd) {
        // `total_cost` is never NaN; a NaN limit allows nothing.
        if cost >= max || max.is_nan() {
            return Some(format!("budget exceeded: spent ${cost:.4} of maxCostUSD ${max:.4}"));
        }
    }
    if let Some(max) = own.max_tokens.or(defaults.max_tokens)
        && tokens >= max
    {
        return Some(format!("budget exceeded: used {tokens} of maxTokens {max}"));
    }
    if let Some(max) = own.max_wall_time.or(defaults.max_wall_time) {
        let max_ms = i64::try_from(max.as_duration().as_millis()).unwrap_or(i64::MAX);
        if wall >= max_ms {
            return Some(format!("budget exceeded: workers ran {}s of maxWallTime {max}", wall / 1000));
        }
    }
    None
}

/// Remaining wall-time budget in seconds for a new worker of `request`.
pub fn remaining_wall_secs(request: &ChangeRequest, desired: &DesiredState, attempts: &[Attempt], now: Millis) -> Option<u64> {
    let defaults = desired.settings.spec.defaults.budget.clone().unwrap_or_default();
    let max = request.spec.budget.as_ref().and_then(|b| b.max_wall_time.clone()).or(defaults.max_wall_time)?;
    let generation = request.generation();
    let used = wall_time(attempts.iter().filter(|a| a.request == request.metadata.name && a.generation == generation), now);
    let max_ms = i64::try_from(max.as_duration().as_millis()).unwrap_or(i64::MAX);
    Some(u64::try_from(max_ms.saturating_sub(used).max(1000) / 1000).unwrap_or(1))
}

/// Wall time the workers of `attempts` ran, in milliseconds (saturating).
fn wall_time<'a>(attempts: impl IntoIterator<Item = &'a Attempt>, now: Millis) -> Millis {
    attempts
        .into_iter()
        .filter_map(|a| a.started_at.map(|s| a.finished_at.unwrap_or(now).max(s).saturating_sub(s)))
        .fold(0, Millis::saturating_add)
}

/// What an approval branch must be opened for, given the gate's state: the
/// generation, or after a merge that did not count, the generation and that
/// merge's commit (so the branch is opened once more per rejected merge).
pub fn approval_token(generation: &str, state: &ApprovalState) -> String {
    match state {
        ApprovalState::Rejected { commit, .. } => format!("{generation} after {commit}"),
        _ => generation.to_owned(),
    }
}

fn summary_of(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .filter(|a| a.state == AttemptState::Succeeded)
        .map(|a| {
            // By characters: the commit may come from a hand-edited status file.
            let commit = a.pushed_commit.as_deref().map(|c| c.char_indices().nth(12).map_or(c, |(i, _)| &c[..i])).unwrap_or("-");
            format!("{} on {}: {} (commit {commit})", a.stage, a.repo, a.summary)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn invalid_view(name: &str, diags: &[Diagnostic]) -> RequestView {
    let first = diags.first();
    RequestView {
        name: name.to_owned(),
        generation: String::new(),
        phase: Phase::Invalid,
        stage: None,
        reason: first.map_or("Invalid".into(), |d| d.code.as_str().to_owned()),
        message: diags
            .iter()
            .map(|d| format!("{}:{}:{}: {} ({})", d.path, d.line, d.column, d.message, d.help))
            .collect::<Vec<_>>()
            .join("; "),
        attempts: Vec::new(),
        work_branch: format!("hadron/{name}"),
    }
}

/// Used by status rendering: the previous status of a request, if any.
pub fn previous<'a>(desired: &'a DesiredState, name: &str) -> Option<&'a RequestStatus> {
    desired.statuses.get(name).map(|s| s.as_ref())
}

#[cfg(test)]
mod tests;
