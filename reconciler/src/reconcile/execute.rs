//! Step 5, execute: each action as store transaction (intent) → side
//! effect → store (result). A failed action is logged and retried on the
//! next pass; it never stops the other requests.

use crate::ids::Installation;
use crate::model::DesiredState;
use crate::model::kinds::{AgentNetwork, ChangeRequest, NetworkMode, SandboxPolicy, parse_quantity};
use crate::plan::{self, Action, Attempt, AttemptState, Observed, Plan};
use crate::store::{self, AttemptUpdate, NewAttempt, NewEvent, RequestRecord};
use crate::time::Millis;
use crate::workers::spec::{EnvSource, PreviousStage, RunSpec, SandboxMode, WorkerNetwork};

use super::steps::StepFailure;
use super::{Context, ReconcileError, urls};

/// The prompt template shipped with Hadron (`templates/prompt.md.hbs`).
pub const DEFAULT_PROMPT: &str = include_str!("../../../templates/prompt.md.hbs");

/// Author of the commits workers make in target repos.
pub const WORKER_AUTHOR: (&str, &str) = ("hadron-agent", "hadron-agent@localhost");

fn event(t: Millis, request: &str, action: &str, revision: &str, detail: String) -> NewEvent {
    NewEvent {
        at: t,
        request: Some(request.to_owned()),
        actor: "hadron".into(),
        action: action.into(),
        revision: Some(revision.to_owned()),
        detail,
    }
}

fn update_of(a: &Attempt, t: Millis) -> AttemptUpdate {
    AttemptUpdate {
        state: a.state,
        at: a.finished_at.or(a.started_at).unwrap_or(t),
        cost_usd: Some(a.cost_usd),
        tokens_in: Some(a.tokens_in),
        tokens_out: Some(a.tokens_out),
        result: Some({
            let mut result = serde_json::json!({ "reason": a.reason, "summary": a.summary });
            if a.unconfined {
                result["unconfined"] = serde_json::Value::Bool(true);
            }
            if let Some(id) = &a.session_id {
                result["sessionId"] = serde_json::Value::String(id.clone());
            }
            result
        }),
        pushed_commit: a.pushed_commit.clone(),
    }
}

/// What the agent of a revision reads as `{{feedback}}`: which round it is,
/// who asked at which gate, and what they asked.
fn feedback_text(r: &plan::Revision) -> String {
    format!("Revision {} of {}, asked by {} at gate {}:\n\n{}", r.number, r.max, r.by, r.gate, r.feedback.trim())
}

/// Builds `run.json` for an attempt of `installation` from the desired state;
/// `revision`, the request's latest round of changes, gives a start of its
/// stage the feedback.
pub fn run_spec(
    ctx_control_url: &str,
    installation: &Installation,
    desired: &DesiredState,
    a: &Attempt,
    all: &[Attempt],
    revision: Option<&plan::Revision>,
    t: Millis,
) -> Option<RunSpec> {
    let request: &ChangeRequest = desired.requests.get(&a.request)?;
    let agent = desired.agents.get(&a.agent)?;
    let stages = request.effective_stages(&desired.settings);
    let stage = stages.iter().find(|s| s.name == a.stage)?;
    let repo = request.spec.repos.iter().find(|r| r.url == a.repo)?;
    let prompt_template =
        stage.prompt.clone().or_else(|| agent.spec.prompts.get(&stage.name).cloned()).unwrap_or_else(|| DEFAULT_PROMPT.to_owned());
    let before: Vec<&str> = stages.iter().take_while(|s| s.name != a.stage).map(|s| s.name.as_str()).collect();
    let previous_stages = all
        .iter()
        .filter(|x| x.request == a.request && x.generation == a.generation && x.state == AttemptState::Succeeded)
        .filter(|x| before.contains(&x.stage.as_str()))
        .map(|x| PreviousStage { name: x.stage.clone(), repo: x.repo.clone(), summary: x.summary.clone() })
        .collect();
    let env = agent
        .spec
        .env
        .iter()
        .filter_map(|e| match (&e.value, &e.secret_ref) {
            (Some(v), _) => Some((e.name.clone(), EnvSource::Value(v.clone()))),
            (None, Some(r)) => Some((e.name.clone(), EnvSource::Secret { name: r.name.clone(), key: r.key.clone() })),
            (None, None) => None,
        })
        .collect();
    let spend = plan::remaining_spend(request, desired, all);
    Some(RunSpec {
        worker: a.worker.clone(),
        installation: installation.to_string(),
        request: a.request.clone(),
        generation: a.generation.clone(),
        stage: a.stage.clone(),
        attempt: a.attempt,
        repo: a.repo.clone(),
        clone_url: urls::resolve(ctx_control_url, &repo.url),
        base_branch: repo.branch.clone().unwrap_or_else(|| "main".to_owned()),
        work_branch: format!("hadron/{}", a.request),
        title: request.spec.title.clone(),
        description: request.spec.description.clone(),
        prompt_template,
        previous_stages,
        command: agent.spec.command.clone(),
        model: agent.spec.model.clone(),
        env,
        require_change: agent.spec.require_change.unwrap_or(true),
        pricing: agent.spec.pricing.clone(),
        wall_time_secs: plan::remaining_wall_secs(request, desired, all, t),
        git_author: (WORKER_AUTHOR.0.to_owned(), WORKER_AUTHOR.1.to_owned()),
        image: agent.spec.image.clone(),
        resources: agent.spec.resources.clone(),
        network: worker_network(agent.spec.network.as_ref()),
        sandbox: match desired.settings.spec.workers.sandbox {
            SandboxPolicy::Preferred => SandboxMode::Preferred,
            SandboxPolicy::Required => SandboxMode::Required,
        },
        max_workspace_bytes: request
            .spec
            .budget
            .as_ref()
            .and_then(|b| b.max_workspace_size.as_deref())
            .or_else(|| desired.settings.spec.defaults.budget.as_ref().and_then(|b| b.max_workspace_size.as_deref()))
            .and_then(parse_quantity),
        output: agent.spec.output.unwrap_or_default(),
        max_tokens: spend.0,
        max_cost_usd: spend.1,
        feedback: revision.filter(|r| r.running && r.stage == a.stage).map(feedback_text),
        resume_command: agent.spec.resume.as_ref().map(|r| r.command.clone()),
        resume_session: a.resume_session.clone().filter(|_| agent.spec.resume.is_some()),
        // The driver gives the agent a home that persists, where it can.
        agent_home: None,
    })
}

/// What an agent declared of the network, as the worker applies it.
fn worker_network(declared: Option<&AgentNetwork>) -> WorkerNetwork {
    match declared {
        None | Some(AgentNetwork::Mode(NetworkMode::None)) => WorkerNetwork::None,
        Some(AgentNetwork::Mode(NetworkMode::Host)) => WorkerNetwork::Host,
        Some(AgentNetwork::Allow(a)) => WorkerNetwork::Allow(a.allow.clone()),
    }
}

/// What the loop keeps of a request's record in the store (written
/// through): what decides whether the record is written again, and the
/// generation observe reports. The name is the map's key; the revision and
/// time are only written.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// As read from the store when the loop started (boxed: in a map of
    /// 10,000 records, an inline record would make every entry as big).
    Stored(Box<StoredRecord>),
    /// As this process wrote it: the view it was written from (shared with
    /// the plan and the status renderer, so 10,000 records copy nothing).
    Written(std::sync::Arc<plan::RequestView>),
}

/// A request record as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// The spec generation.
    pub generation: String,
    /// The phase.
    pub phase: String,
    /// The stage.
    pub stage: Option<String>,
    /// The message.
    pub message: String,
}

impl Recorded {
    /// The generation, phase, stage and message recorded.
    fn fields(&self) -> (&str, &str, Option<&str>, &str) {
        match self {
            Recorded::Stored(r) => (&r.generation, &r.phase, r.stage.as_deref(), &r.message),
            Recorded::Written(view) => recorded_fields(view),
        }
    }

    /// The spec generation recorded.
    pub fn generation(&self) -> &str {
        self.fields().0
    }
}

/// What a request record holds of `view`: its generation, phase, stage and message.
fn recorded_fields(view: &plan::RequestView) -> (&str, &str, Option<&str>, &str) {
    (&view.generation, view.phase.as_str(), view.stage.as_deref(), &view.message)
}

impl From<RequestRecord> for Recorded {
    fn from(r: RequestRecord) -> Self {
        Recorded::Stored(Box::new(StoredRecord { generation: r.generation, phase: r.phase, stage: r.stage, message: r.message }))
    }
}

/// Runs the plan's actions in order. A failed action is returned (and
/// logged); the others still run.
pub async fn execute(
    ctx: &mut Context,
    plan: &Plan,
    observed: &Observed,
    revision: &str,
    t: Millis,
) -> Result<Vec<StepFailure>, ReconcileError> {
    // Every attempt, for the run specs of the workers started (previous
    // stages' summaries, the wall time left): gathered only when one starts.
    let starts = plan.actions.iter().any(|a| matches!(a, Action::Start(_)));
    let all: Vec<Attempt> = if starts {
        plan.requests.values().flat_map(|v| v.attempts.iter().cloned()).chain(observed.attempts.iter().cloned()).collect()
    } else {
        Vec::new()
    };
    // Request records first: attempts refer to them. Only records that
    // changed are written (a record keeps the revision it was last changed
    // at, as a status file does), all in one transaction; the others are
    // compared in place, nothing copied.
    if ctx.records.is_none() {
        ctx.records = Some(ctx.store.list_requests().await?.into_iter().map(|r| (r.name.clone(), Recorded::from(r))).collect());
    }
    let records = ctx.records.get_or_insert_default();
    let changed: Vec<(&String, &std::sync::Arc<plan::RequestView>)> =
        plan.requests.iter().filter(|(name, view)| records.get(*name).is_none_or(|r| r.fields() != recorded_fields(view))).collect();
    let rows: Vec<RequestRecord> = changed
        .iter()
        .map(|(name, view)| RequestRecord {
            name: (*name).clone(),
            generation: view.generation.clone(),
            observed_revision: revision.to_owned(),
            phase: view.phase.as_str().to_owned(),
            stage: view.stage.clone(),
            message: view.message.clone(),
            updated_at: t,
        })
        .collect();
    ctx.store.upsert_requests(&rows).await?;
    drop(rows);
    let records = ctx.records.get_or_insert_default();
    records.extend(changed.into_iter().map(|(name, view)| (name.clone(), Recorded::Written(view.clone()))));
    let mut failed = Vec::new();
    for action in &plan.actions {
        use tracing::Instrument;
        // Every log line of an action names its request, stage and worker.
        let (request, stage, worker) = action.subject();
        let span = tracing::info_span!("action", request = %request, stage = %stage, worker = %worker);
        let result = async {
            let changes = match action {
                Action::Start(a) => plan.requests.get(&a.request).and_then(|v| v.revision.as_ref()),
                _ => None,
            };
            let result = execute_one(ctx, action, &all, changes, revision, t).await;
            if let Err(e) = &result {
                tracing::warn!(reason = e.reason(), error = %e, "{} failed; the next pass retries it", action.describe());
            }
            result
        }
        .instrument(span)
        .await;
        match result {
            // This replica does not lead for certain any more: no further
            // action, and the pass (and the leadership) ends here.
            Err(e) if e.ends_leadership() => return Err(e),
            Err(e) => failed.push(StepFailure::execute(&e, &action.describe())),
            Ok(()) => {}
        }
    }
    Ok(failed)
}

async fn execute_one(
    ctx: &mut Context,
    action: &Action,
    all: &[Attempt],
    changes: Option<&plan::Revision>,
    revision: &str,
    t: Millis,
) -> Result<(), ReconcileError> {
    let driver_name = ctx.cfg.driver_name.clone();
    let new_attempt = |a: &Attempt| NewAttempt {
        worker_name: a.worker.clone(),
        request: a.request.clone(),
        generation: a.generation.clone(),
        stage: a.stage.clone(),
        repo: a.repo.clone(),
        attempt: a.attempt,
        driver: driver_name.clone(),
        created_at: t,
    };
    match action {
        Action::Start(a) => {
            // Intent first: a crash after this line restarts the same worker name.
            let inserted = ctx
                .store
                .insert_attempt(
                    &new_attempt(a),
                    Some(&event(t, &a.request, "worker.start", revision, format!("{} on {} (attempt {})", a.stage, a.repo, a.attempt))),
                )
                .await?;
            if inserted.existed && inserted.attempt.state != store::AttemptState::Pending {
                return Ok(());
            }
            let Some(spec) = run_spec(&ctx.cfg.control_url, &ctx.cfg.plan.installation, &ctx.catalog.loaded().desired, a, all, changes, t)
            else {
                return Ok(());
            };
            crate::fault::reach("worker-start", None);
            ctx.lease.check()?;
            let driver = ctx.driver.clone();
            tokio::task::spawn_blocking(move || driver.start(&spec)).await.map_err(|e| ReconcileError::Join(e.to_string()))??;
            ctx.store.update_attempt(&a.worker, &AttemptUpdate::state(store::AttemptState::Running, t), None).await?;
            tracing::info!(attempt = a.attempt, repo = %a.repo, "worker started");
        }
        Action::Cancel { worker, reason } => {
            crate::fault::reach("worker-cancel", None);
            ctx.lease.check()?;
            // Intent first, a write of the leader's fenced store: a deposed
            // leader is refused here (`StoreFenced`), not only by its own
            // clock, and the audit log says what a leader that died after
            // this line may have done.
            let known = ctx.store.get_attempt(worker).await?;
            let intent = NewEvent {
                request: known.as_ref().map(|k| k.request.clone()),
                ..event(t, "", "worker.cancel.intent", revision, format!("{worker}: {reason}"))
            };
            ctx.store.append_event(&intent).await?;
            ctx.lease.check()?;
            let driver = ctx.driver.clone();
            let w = worker.clone();
            tokio::task::spawn_blocking(move || driver.cancel(&w)).await.map_err(|e| ReconcileError::Join(e.to_string()))??;
            tracing::info!(%reason, "worker cancelled");
            if let Some(known) = known
                && !known.state.is_terminal()
            {
                let mut update = AttemptUpdate::state(store::AttemptState::Cancelled, t);
                update.result = Some(serde_json::json!({ "reason": reason, "summary": format!("cancelled: {reason}") }));
                ctx.store
                    .update_attempt(worker, &update, Some(&event(t, &known.request, "worker.cancel", revision, reason.clone())))
                    .await?;
            }
        }
        Action::Adopt(a) => {
            let inserted =
                ctx.store.insert_attempt(&new_attempt(a), Some(&event(t, &a.request, "worker.adopt", revision, a.worker.clone()))).await?;
            if a.state != AttemptState::Pending && !inserted.attempt.state.is_terminal() {
                ctx.store.update_attempt(&a.worker, &update_of(a, t), None).await?;
            }
        }
        Action::Record(a) => {
            if let Some(known) = ctx.store.get_attempt(&a.worker).await?
                && !known.state.is_terminal()
            {
                ctx.store
                    .update_attempt(
                        &a.worker,
                        &update_of(a, t),
                        Some(&event(t, &a.request, &format!("worker.{}", a.state.as_str().to_lowercase()), revision, a.reason.clone())),
                    )
                    .await?;
            }
        }
        Action::OpenApproval { request, gate, generation, revision: work_revision, summary, opened_for, reopen } => {
            crate::fault::reach("approval-push", None);
            ctx.lease.check()?;
            // Intent first, fenced like every write of the leader (see Cancel).
            let branch = crate::gates::approval_branch(request, gate);
            ctx.store.append_event(&event(t, request, "approval.open.intent", revision, branch)).await?;
            ctx.lease.check()?;
            let gates = ctx.gates.clone();
            let (url, branch) = (ctx.cfg.control_url.clone(), ctx.cfg.branch.clone());
            let (r, g, gen_, rev, s, again) = (request.clone(), gate.clone(), generation.clone(), *work_revision, summary.clone(), *reopen);
            tokio::task::spawn_blocking(move || {
                let proposal = crate::gates::Proposal { request: &r, gate: &g, generation: &gen_, revision: rev, summary: &s };
                if again { gates.reopen(&url, &branch, &proposal) } else { gates.open(&url, &branch, &proposal) }
            })
            .await
            .map_err(|e| ReconcileError::Join(e.to_string()))??;
            ctx.store.set_approval_branch_opened_for(request, gate, opened_for, t).await?;
            ctx.store.append_event(&event(t, request, "approval.open", revision, crate::gates::approval_branch(request, gate))).await?;
        }
        Action::Forget { request } => {
            ctx.store.delete_request(request).await?;
            if let Some(records) = ctx.records.as_mut() {
                records.remove(request);
            }
            ctx.store.append_event(&event(t, request, "request.deleted", revision, String::new())).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_update_keeps_tokens_out() {
        let a = Attempt {
            worker: "w".into(),
            request: "r".into(),
            generation: "g".into(),
            stage: "s".into(),
            repo: "../a.git".into(),
            attempt: 1,
            agent: "a".into(),
            state: AttemptState::Succeeded,
            started_at: Some(1),
            finished_at: Some(2),
            cost_usd: 0.5,
            tokens_in: 11,
            tokens_out: 7,
            pushed_commit: None,
            reason: "Completed".into(),
            summary: String::new(),
            unconfined: false,
            session_id: None,
            resume_session: None,
        };
        let update = update_of(&a, 3);
        assert_eq!((update.tokens_in, update.tokens_out), (Some(11), Some(7)));
        let stored = update.result.expect("a result");
        assert_eq!(stored.get("unconfined"), None, "a confined run stores nothing extra");
        let unconfined = update_of(&Attempt { unconfined: true, ..a.clone() }, 3).result.expect("a result");
        assert_eq!(unconfined["unconfined"], true, "an unconfined run says so in the store, and so in the status");
        assert_eq!(stored.get("sessionId"), None, "no session id, none stored");
        let with_session = Attempt { session_id: Some("495cc7e5-d22e".into()), ..a };
        let stored = update_of(&with_session, 3).result.expect("a result");
        assert_eq!(stored["sessionId"], "495cc7e5-d22e", "the session id is stored with the attempt");
        let store_attempt = store::Attempt {
            worker_name: "w".into(),
            request: "r".into(),
            generation: "g".into(),
            stage: "s".into(),
            repo: "../a.git".into(),
            attempt: 1,
            driver: "local".into(),
            state: AttemptState::Failed,
            created_at: 1,
            started_at: Some(1),
            finished_at: Some(2),
            cost_usd: None,
            tokens_in: None,
            tokens_out: None,
            pushed_commit: None,
            result: Some(stored),
        };
        let read_back = crate::reconcile::observe::from_store(&store_attempt, "a");
        assert_eq!(read_back.session_id.as_deref(), Some("495cc7e5-d22e"), "and read back for the planner");
    }
}
