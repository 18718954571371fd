//! Planning each request: deleted ones are cancelled and forgotten, invalid
//! ones cancelled, and each valid one gets its view and the workers it
//! would start (admitted later, within the limits).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::budget::budget_exceeded;
use super::limits::Candidate;
use super::memo::{Planned, Starts};
use super::stages::{self, Pipeline};
use super::{Action, Attempt, Observed, Plan, PlanConfig, RequestView};
use crate::model::kinds::{ChangeRequest, Phase, Stage};
use crate::model::{DesiredState, Diagnostic};
use crate::time::Millis;

/// The merged attempts by request name.
pub(super) type ByRequest<'a> = BTreeMap<&'a str, Vec<&'a Attempt>>;

/// What planning reads: the desired and observed state, the time and the tunables.
pub(super) struct Inputs<'a> {
    /// What the control repo asks for.
    pub desired: &'a DesiredState,
    /// What the store, the driver, the gates and CI say.
    pub observed: &'a Observed,
    /// The time of the pass.
    pub now: Millis,
    /// Tunables.
    pub cfg: &'a PlanConfig,
}

/// The plan being made, with the workers it cancels (each once).
#[derive(Default)]
pub(super) struct Draft {
    /// The plan so far.
    pub plan: Plan,
    /// Workers cancelled so far.
    pub cancelled: BTreeSet<String>,
}

impl Draft {
    /// Cancels `a` for `reason` if it is live and not cancelled yet.
    fn cancel(&mut self, a: &Attempt, reason: &str) {
        if a.state.is_live() && self.cancelled.insert(a.worker.clone()) {
            self.plan.actions.push(Action::Cancel { worker: a.worker.clone(), reason: reason.to_owned() });
        }
    }

    /// Adds what was planned for valid request `name` (now or in an earlier
    /// pass): its view and actions (each worker cancelled once); returns the
    /// workers it would start, for the limits.
    pub(super) fn take(&mut self, name: &str, planned: Planned) -> Option<Candidate> {
        for action in planned.actions {
            if let Action::Cancel { worker, .. } = &action
                && !self.cancelled.insert(worker.clone())
            {
                continue;
            }
            self.plan.actions.push(action);
        }
        self.plan.requests.insert(name.to_owned(), planned.view);
        planned.starts.map(|(agent_limit, starts)| Candidate { request: name.to_owned(), agent_limit, starts })
    }
}

/// Deleted requests (known to the store or running, gone from the repo):
/// cancel what runs, then forget them once nothing runs.
pub(super) fn forget_deleted(inputs: &Inputs, by_request: &ByRequest, draft: &mut Draft) {
    let (desired, observed) = (inputs.desired, inputs.observed);
    let known: BTreeSet<&str> = observed.known_requests.keys().map(String::as_str).chain(by_request.keys().copied()).collect();
    for name in known {
        if desired.requests.contains_key(name) || desired.invalid_requests.contains_key(name) {
            continue;
        }
        let mine = by_request.get(name).map(Vec::as_slice).unwrap_or_default();
        for a in mine {
            draft.cancel(a, "Deleted");
        }
        if mine.iter().all(|a| !a.state.is_live()) {
            draft.plan.actions.push(Action::Forget { request: name.to_owned() });
            if desired.statuses.contains_key(name) {
                draft.plan.deleted.push(name.to_owned());
            }
        }
    }
}

/// Invalid requests: cancel what runs; the status says why.
pub(super) fn mark_invalid(inputs: &Inputs, by_request: &ByRequest, draft: &mut Draft) {
    for (name, diags) in &inputs.desired.invalid_requests {
        for a in by_request.get(name.as_str()).map(Vec::as_slice).unwrap_or_default() {
            draft.cancel(a, "Invalid");
        }
        draft.plan.requests.insert(name.clone(), Arc::new(invalid_view(name, diags)));
    }
}

/// One valid request, planned on its own: cancels the workers of older
/// generations, decides its view, and says which workers it would start,
/// if any, and when it must be planned again at the latest (a retry due).
pub(super) fn plan_request(inputs: &Inputs, request: &ChangeRequest, mine: Vec<&Attempt>) -> (Planned, Option<Millis>) {
    let mut draft = Draft::default();
    let (view, starts) = decide(inputs, request, mine, &mut draft);
    let Draft { plan, .. } = draft;
    (Planned { view: Arc::new(view), actions: plan.actions, starts }, plan.wake_at)
}

/// The view of one valid request and the workers it would start (with its
/// agent's limit); its actions and wake-up time go into `draft`.
fn decide(inputs: &Inputs, request: &ChangeRequest, mine: Vec<&Attempt>, draft: &mut Draft) -> (RequestView, Option<Starts>) {
    let (desired, observed) = (inputs.desired, inputs.observed);
    let name = request.metadata.name.as_str();
    let generation = request.generation();
    let (current, old): (Vec<&Attempt>, Vec<&Attempt>) = mine.into_iter().partition(|a| a.generation == generation);
    for a in &old {
        draft.cancel(a, "SpecChanged");
    }
    let restarted = !old.is_empty() || observed.own_statuses.get(name).is_some_and(|s| s.status.observed_generation != generation);
    let agent = request.effective_agent(&desired.settings).unwrap_or_default().to_owned();
    let agent_limit = desired.agents.get(&agent).and_then(|a| a.spec.concurrency).filter(|n| *n > 0);
    let stages = request.effective_stages(&desired.settings);
    let mut view = new_view(name, &generation, &current, stages);

    if let Some(halt) = halted(inputs, request, &generation, &current) {
        for a in &current {
            draft.cancel(a, halt.cancel);
        }
        view.phase = halt.phase;
        view.stage = halt.stage;
        view.reason = halt.reason;
        view.message = halt.message;
        return (view, None);
    }

    let pipeline = Pipeline {
        request,
        generation: &generation,
        agent: &agent,
        resume: desired.agents.get(&agent).is_some_and(|a| a.spec.resume.is_some()),
        current: &current,
        max_attempts: desired.settings.spec.defaults.max_attempts.filter(|n| *n > 0).unwrap_or(inputs.cfg.default_max_attempts),
        now: inputs.now,
        cfg: inputs.cfg,
        observed,
    };
    let step = stages::next_step(&pipeline, stages, &view.attempts, &mut draft.plan);
    view.stage = step.stage;
    view.phase = step.decision.phase;
    view.reason = step.decision.reason.to_owned();
    view.message = step.decision.message;
    view.revision = step.revision;
    // A stage that failed for good ends the request in this very pass: the
    // workers still running on its other repos stop now, as they would in
    // the next pass (which reads the terminal phase back), so their slots
    // are free for others at once.
    if matches!(view.phase, Phase::Succeeded | Phase::Failed) {
        for a in &current {
            draft.cancel(a, "Terminal");
        }
    }
    if restarted && matches!(view.phase, Phase::Pending | Phase::Running) && view.attempts.is_empty() {
        view.message = format!("spec changed (now generation {generation}): the pipeline starts again; {}", view.message);
    }
    (view, (!step.starts.is_empty()).then_some((agent_limit, step.starts)))
}

/// A valid request's view before deciding: pending, with the attempts of
/// the current generation in pipeline order.
fn new_view(name: &str, generation: &str, current: &[&Attempt], stages: &[Stage]) -> RequestView {
    let mut attempts: Vec<Attempt> = current.iter().map(|a| (*a).clone()).collect();
    let stage_index = |s: &str| stages.iter().position(|x| x.name == s).unwrap_or(usize::MAX);
    attempts.sort_by(|a, b| (stage_index(&a.stage), &a.repo, a.attempt).cmp(&(stage_index(&b.stage), &b.repo, b.attempt)));
    RequestView {
        name: name.to_owned(),
        generation: generation.to_owned(),
        phase: Phase::Pending,
        stage: None,
        reason: "Progressing".into(),
        message: String::new(),
        attempts,
        work_branch: format!("hadron/{name}"),
        revision: None,
    }
}

/// Why a request runs nothing in this pass, whatever its pipeline says,
/// and what its view shows then.
struct Halt {
    /// The reason its live workers are cancelled with.
    cancel: &'static str,
    /// Lifecycle phase.
    phase: Phase,
    /// Stage to show.
    stage: Option<String>,
    /// Stable CamelCase reason.
    reason: String,
    /// One human sentence.
    message: String,
}

/// A terminal phase recorded for this generation, a suspended request, or
/// a budget spent: the request halts (checked in that order).
fn halted(inputs: &Inputs, request: &ChangeRequest, generation: &str, current: &[&Attempt]) -> Option<Halt> {
    let name = request.metadata.name.as_str();
    // A terminal phase recorded for this generation stays terminal.
    if let Some(prev) = inputs.observed.own_statuses.get(name).filter(|s| s.status.observed_generation == generation)
        && matches!(prev.status.phase, Phase::Succeeded | Phase::Failed)
    {
        return Some(Halt {
            cancel: "Terminal",
            phase: prev.status.phase,
            stage: prev.status.stage.clone(),
            reason: prev.status.conditions.iter().find(|c| c.condition_type == "Ready").map_or_else(
                || if prev.status.phase == Phase::Succeeded { "Succeeded".into() } else { "Failed".into() },
                |c| c.reason.clone(),
            ),
            message: prev.status.message.clone(),
        });
    }
    if request.spec.suspend {
        return Some(Halt {
            cancel: "Suspended",
            phase: Phase::Cancelled,
            stage: None,
            reason: "Suspended".into(),
            message: "suspended: no worker runs until `suspend` is false".into(),
        });
    }
    // Budgets are reconciled state.
    budget_exceeded(request, inputs.desired, current, inputs.now).map(|why| Halt {
        cancel: "BudgetExceeded",
        phase: Phase::Failed,
        stage: None,
        reason: "BudgetExceeded".into(),
        message: why,
    })
}

/// The view of an invalid request: its diagnostics, one after the other.
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
        revision: None,
    }
}
