//! Step 3, observe: what the store, the driver, the control repo's history
//! (approvals) and CI say, gathered into [`Observed`] for the planner.

use std::collections::BTreeMap;

use crate::gates::{self, GateDecision};
use crate::model::kinds::GateType;
use crate::plan::{self, ApprovalState, AttemptState, CiState, DriverRun, Observed, RunState};
use crate::store;
use crate::workers::spec::{Outcome, RunResult};
use crate::workers::{Observation, WorkerState};

use super::{Context, ReconcileError};

/// A store attempt as the planner sees it.
pub fn from_store(a: &store::Attempt, agent: &str) -> plan::Attempt {
    let field = |k: &str| a.result.as_ref().and_then(|r| r.get(k)).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    plan::Attempt {
        worker: a.worker_name.clone(),
        request: a.request.clone(),
        generation: a.generation.clone(),
        stage: a.stage.clone(),
        repo: a.repo.clone(),
        attempt: a.attempt,
        agent: agent.to_owned(),
        state: a.state,
        started_at: a.started_at,
        finished_at: a.finished_at,
        cost_usd: a.cost_usd.unwrap_or(0.0),
        tokens_in: a.tokens_in.unwrap_or(0),
        tokens_out: a.tokens_out.unwrap_or(0),
        pushed_commit: a.pushed_commit.clone(),
        reason: field("reason"),
        summary: field("summary"),
        unconfined: a.result.as_ref().and_then(|r| r.get("unconfined")).and_then(serde_json::Value::as_bool).unwrap_or(false),
        session_id: Some(field("sessionId")).filter(|id| crate::ids::is_session_id(id)),
        resume_session: None,
    }
}

/// A driver observation as the planner sees it (`None` when the driver cannot tell which run it is).
pub fn from_run(obs: &Observation, agent: &str) -> Option<DriverRun> {
    let spec = obs.run.as_ref()?;
    let mut attempt = plan::Attempt {
        worker: spec.worker.clone(),
        request: spec.request.clone(),
        generation: spec.generation.clone(),
        stage: spec.stage.clone(),
        repo: spec.repo.clone(),
        attempt: spec.attempt,
        agent: agent.to_owned(),
        state: AttemptState::Running,
        started_at: obs.started_at.as_deref().and_then(crate::time::parse_rfc3339),
        ..plan::Attempt::default()
    };
    let state = match &obs.state {
        WorkerState::Running => RunState::Running,
        WorkerState::Lost { reason } => {
            attempt.reason = reason.clone();
            RunState::Lost
        }
        WorkerState::Finished(result) => {
            apply_result(&mut attempt, result);
            RunState::Finished
        }
    };
    Some(DriverRun { attempt, state })
}

/// Copies a worker's result into an attempt. A usage report outside sane
/// bounds is refused: the attempt fails with `InvalidUsageReport`.
pub fn apply_result(attempt: &mut plan::Attempt, result: &RunResult) {
    let mut checked;
    let result = if crate::workers::usage::check(result.tokens_in, result.tokens_out, result.cost_usd).is_ok() {
        result
    } else {
        checked = result.clone();
        checked.refuse_insane_usage();
        &checked
    };
    attempt.state = match result.outcome {
        Outcome::Succeeded => AttemptState::Succeeded,
        Outcome::Failed if result.reason == "Cancelled" => AttemptState::Cancelled,
        Outcome::Failed => AttemptState::Failed,
    };
    attempt.finished_at = crate::time::parse_rfc3339(&result.finished_at).or(attempt.finished_at);
    attempt.started_at = attempt.started_at.or_else(|| crate::time::parse_rfc3339(&result.started_at));
    attempt.cost_usd = result.cost_usd;
    attempt.tokens_in = result.tokens_in;
    attempt.tokens_out = result.tokens_out;
    attempt.pushed_commit = result.pushed_commit.clone();
    attempt.reason = result.reason.clone();
    attempt.summary = if result.summary.is_empty() { result.message.clone() } else { result.summary.clone() };
    attempt.unconfined = result.unconfined.is_some();
    attempt.session_id = result.session_id.clone().filter(|id| crate::ids::is_session_id(id));
}

/// Gathers the observed state for one pass.
/// `forge` is taken out of the context for the call, so that it can be
/// borrowed mutably beside the context.
pub async fn observe(ctx: &Context, mut forge: Option<&mut super::forge_step::ForgeLink>) -> Result<Observed, ReconcileError> {
    let desired = &ctx.catalog.loaded().desired;
    let agent_of = |request: &str| -> String {
        desired.requests.get(request).and_then(|r| r.effective_agent(&desired.settings).map(str::to_owned)).unwrap_or_default()
    };
    // The records as execute keeps them (written through), read from the
    // store only before the first pass has.
    // Only those the control repo has no valid request for: what planning
    // and housekeeping need of them (10,000 names are not copied per pass).
    let known_requests = match &ctx.records {
        Some(records) => records
            .iter()
            .filter(|(name, _)| !desired.requests.contains_key(*name))
            .map(|(name, r)| (name.clone(), r.generation().to_owned()))
            .collect(),
        None => ctx
            .store
            .list_requests()
            .await?
            .into_iter()
            .filter(|r| !desired.requests.contains_key(&r.name))
            .map(|r| (r.name, r.generation))
            .collect(),
    };
    let mut observed = Observed { known_requests, ..Observed::default() };
    let known = &observed.known_requests;
    let named = |request: &str| {
        known.contains_key(request) || desired.requests.contains_key(request) || desired.invalid_requests.contains_key(request)
    };
    // One query for every attempt; the agent is looked up once per request.
    let mut agent: Option<(String, String)> = None;
    let all: Vec<store::Attempt> = ctx.store.list_all_attempts().await?.into_iter().filter(|a| named(&a.request)).collect();
    for a in all {
        if agent.as_ref().is_none_or(|(request, _)| *request != a.request) {
            agent = Some((a.request.clone(), agent_of(&a.request)));
        }
        let agent = agent.as_ref().map(|(_, agent)| agent.as_str()).unwrap_or_default();
        observed.attempts.push(from_store(&a, agent));
    }
    let driver = ctx.driver.clone();
    let runs = tokio::task::spawn_blocking(move || driver.observe()).await.map_err(|e| ReconcileError::Join(e.to_string()))??;
    observed.runs = runs.iter().filter_map(|o| from_run(o, &o.run.as_ref().map(|s| agent_of(&s.request)).unwrap_or_default())).collect();

    // Gates.
    let mut ci_heads: Vec<(String, String, String, Vec<String>)> = Vec::new();
    let mirror = ctx.source.lock().map_err(|_| ReconcileError::Join("source lock poisoned".into()))?.mirror_path();
    let head = ctx.source.lock().map_err(|_| ReconcileError::Join("source lock poisoned".into()))?.last_loaded();
    // Approval gates already let through (one query): each stays passed for
    // its generation, whatever the approver policy or team says later.
    let passed = ctx.store.approvals_passed().await?;
    for (name, request) in desired.requests.iter().filter(|(_, r)| !r.spec.gates.is_empty()) {
        let generation = request.generation();
        for gate in &request.spec.gates {
            let key = (name.clone(), gate.name.clone());
            if let Some(opened_for) = ctx.store.approval_branch_opened_for(name, &gate.name).await? {
                observed.approval_branches.insert(key.clone(), opened_for);
            }
            match gate.gate_type {
                GateType::Approval => {
                    if let Some(p) = passed.get(&key).filter(|p| p.generation == generation) {
                        observed.approvals.insert(key, ApprovalState::Approved { by: p.by.clone(), revision: p.revision });
                        continue;
                    }
                    let approval = desired.approvals.get(&key).map(|a| a.as_ref());
                    // Who merged and who asked, from the history (a walk of
                    // it): read now for an approval file, and for a review
                    // only once one may count (below).
                    let read_facts = || {
                        let (mirror, head) = (mirror.clone(), head.as_ref().map(|h| h.id()));
                        let (name, gate_name) = (name.clone(), gate.name.clone());
                        async move {
                            match head {
                                Some(head) => tokio::task::spawn_blocking(move || history_facts(&mirror, head, &name, &gate_name))
                                    .await
                                    .map_err(|e| ReconcileError::Join(e.to_string())),
                                None => {
                                    let why = "the control repo has not been read yet".to_owned();
                                    Ok((Err(why.clone()), Err(why)))
                                }
                            }
                        }
                    };
                    let mut facts = match approval {
                        Some(_) => Some(read_facts().await?),
                        None if forge.is_some() => None,
                        None => {
                            observed.approvals.insert(key, ApprovalState::Waiting);
                            continue;
                        }
                    };
                    let policy = &desired.settings.spec.approvers;
                    let state = match (approval, facts.as_ref()) {
                        (Some(approval), Some((approver, requester))) => {
                            let state = if let Some(forge) = forge.as_deref_mut() {
                                forge
                                    .decide_approval(
                                        &ctx.store,
                                        name,
                                        &gate.name,
                                        Some(approval),
                                        approver.as_ref().map_err(String::as_str),
                                        requester.as_ref().map_err(String::as_str),
                                        policy,
                                        &generation,
                                    )
                                    .await?
                            } else {
                                let decision = gates::decide(
                                    Some(approval),
                                    approver.as_ref().map_err(String::as_str),
                                    requester.as_ref().map(|(p, _)| p).map_err(String::as_str),
                                    policy,
                                    &generation,
                                );
                                match decision {
                                    GateDecision::Approved { by } => ApprovalState::Approved { by: by.name, revision: 0 },
                                    GateDecision::Waiting => ApprovalState::Waiting,
                                    GateDecision::Stale { given_for } => ApprovalState::Stale { given_for },
                                    GateDecision::Rejected { by, why } => ApprovalState::Rejected {
                                        commit: by.as_ref().map(|b| b.commit.clone()).unwrap_or_default(),
                                        by: by.map_or_else(|| "someone".to_owned(), |b| b.name),
                                        why,
                                    },
                                }
                            };
                            // The file says which revision it is about, and whether it
                            // approves or asks for changes; who may decide was
                            // checked above, the same for both.
                            decided(state, approval, approver.as_ref().map(|a| a.commit.as_str()).unwrap_or_default())
                        }
                        _ => ApprovalState::Waiting,
                    };
                    // With Gitea, a review asking for changes on the open
                    // approval PR of the current revision decides too, unless
                    // the base branch already holds a decision on it.
                    let current = plan::gate_revision(observed.attempts.iter(), request, &generation, &gate.after);
                    let decided_here = match &state {
                        ApprovalState::Approved { revision, .. } | ApprovalState::ChangesRequested { revision, .. } => *revision >= current,
                        _ => false,
                    };
                    let opened_for_current = observed
                        .approval_branches
                        .get(&key)
                        .is_some_and(|t| t.starts_with(generation.as_str()) && plan::token_revision(t) == current);
                    let state = match forge.as_deref_mut() {
                        Some(forge) if !decided_here && opened_for_current => {
                            if facts.is_none() {
                                facts = Some(read_facts().await?);
                            }
                            let requester = match facts.as_ref() {
                                Some((_, requester)) => requester.as_ref().map_err(String::as_str),
                                None => Err("the history was not read"),
                            };
                            match forge.changes_asked_by_review(&ctx.store, name, &gate.name, requester, policy).await? {
                                Some((by, feedback, review)) => ApprovalState::ChangesRequested {
                                    by,
                                    revision: current,
                                    feedback: crate::attempt::cap_text(&feedback, FEEDBACK_MAX_BYTES),
                                    commit: format!("review-{review}"),
                                },
                                None => state,
                            }
                        }
                        _ => state,
                    };
                    if let (ApprovalState::Approved { by, revision }, Some((Ok(approver), _))) = (&state, facts.as_ref()) {
                        let record = store::PassedGate {
                            generation: generation.clone(),
                            by: by.clone(),
                            commit: approver.commit.clone(),
                            revision: *revision,
                        };
                        ctx.store.record_approval_passed(name, &gate.name, &record, crate::time::now()).await?;
                    }
                    observed.approvals.insert(key, state);
                }
                GateType::Ci => {
                    for a in observed.attempts.iter().filter(|a| a.request == *name && a.generation == generation) {
                        if a.stage != gate.after || a.state != AttemptState::Succeeded {
                            continue;
                        }
                        let Some(commit) = &a.pushed_commit else { continue };
                        if forge.is_some() {
                            ci_heads.push((name.clone(), a.repo.clone(), commit.clone(), gate.contexts.clone()));
                        } else {
                            let statuses = ctx.store.commit_statuses(&a.repo, commit).await?;
                            observed.ci.insert((a.repo.clone(), commit.clone()), ci_state(&statuses, &gate.contexts));
                        }
                    }
                }
            }
        }
    }
    if let Some(forge) = forge {
        forge.observe_ci(&ctx.cfg.control_url, &ci_heads, &mut observed.ci).await;
    }
    Ok(observed)
}

/// Who approved and who asked, from the history of `head` in the mirror, or
/// why each could not be found (never silently nothing: the decision must
/// know a fact is missing, see [`gates::decide`]). The requester comes with
/// the id of the commit that added the request.
pub fn history_facts(
    mirror: &std::path::Path,
    head: gix::ObjectId,
    request: &str,
    gate: &str,
) -> (Result<gates::Approver, String>, Result<(gates::Person, String), String>) {
    let repo = match crate::git::open(mirror) {
        Ok(repo) => repo,
        Err(e) => {
            let why = format!("opening the control repo mirror failed: {e}");
            return (Err(why.clone()), Err(why));
        }
    };
    let approver = match gates::history::approver_of(&repo, head, request, gate) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(format!(
            "no commit on the first-parent history of the base branch could be found that brought approvals/{request}/{gate}.yaml (is the history shallow?)"
        )),
        Err(e) => Err(format!("reading the history failed: {e}")),
    };
    let requester = match gates::history::requester_commit_of(&repo, head, request) {
        Ok(Some((p, c))) => Ok((p, c.to_string())),
        Ok(None) => Err(format!(
            "no commit adding requests/{request}.yaml could be found in the history of the base branch (is the history shallow?)"
        )),
        Err(e) => Err(format!("reading the history failed: {e}")),
    };
    (approver, requester)
}

/// Combines commit statuses: every required context (or, with none listed,
/// every reported one, at least one) must succeed; any failure fails.
pub fn ci_state(statuses: &[(String, String)], required: &[String]) -> CiState {
    let by_context: BTreeMap<&str, &str> = statuses.iter().map(|(c, s)| (c.as_str(), s.as_str())).collect();
    let relevant: Vec<&str> = if required.is_empty() {
        by_context.values().copied().collect()
    } else {
        required.iter().map(|c| by_context.get(c.as_str()).copied().unwrap_or("pending")).collect()
    };
    if relevant.contains(&"failure") {
        CiState::Failure
    } else if !relevant.is_empty() && relevant.iter().all(|s| *s == "success") {
        CiState::Success
    } else {
        CiState::Pending
    }
}

/// An approval that counts, read for its revision and decision: approved,
/// or changes asked (with the feedback, capped at
/// [`FEEDBACK_MAX_BYTES`]). Other states are kept as they are.
fn decided(state: ApprovalState, approval: &crate::model::Approval, commit: &str) -> ApprovalState {
    let spec = &approval.spec;
    match state {
        ApprovalState::Approved { by, .. } if spec.decision == crate::model::kinds::ApprovalDecision::Changes => {
            ApprovalState::ChangesRequested {
                by,
                revision: spec.revision,
                feedback: crate::attempt::cap_text(&spec.feedback, FEEDBACK_MAX_BYTES),
                commit: commit.to_owned(),
            }
        }
        ApprovalState::Approved { by, .. } => ApprovalState::Approved { by, revision: spec.revision },
        other => other,
    }
}

/// The most feedback an agent is given, in bytes.
pub const FEEDBACK_MAX_BYTES: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn result(tokens_in: u64, tokens_out: u64, cost_usd: f64) -> RunResult {
        RunResult {
            worker: "w".into(),
            outcome: Outcome::Succeeded,
            reason: "Completed".into(),
            message: "pushed".into(),
            pushed_commit: Some("a".repeat(40)),
            tokens_in,
            tokens_out,
            cost_usd,
            summary: "did it".into(),
            log_path: String::new(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:01:00Z".into(),
            unconfined: None,
            session_id: None,
        }
    }

    fn attempt() -> plan::Attempt {
        plan::Attempt {
            worker: "w".into(),
            request: "r".into(),
            generation: "g".into(),
            stage: "s".into(),
            repo: "../a.git".into(),
            attempt: 1,
            agent: "a".into(),
            state: AttemptState::Running,
            ..plan::Attempt::default()
        }
    }

    #[test]
    fn an_overflowing_usage_report_fails_the_attempt() {
        let mut a = attempt();
        apply_result(&mut a, &result(u64::MAX, 1, 0.5));
        assert_eq!((a.state, a.reason.as_str()), (AttemptState::Failed, "InvalidUsageReport"));
        assert_eq!((a.tokens_in, a.tokens_out, a.cost_usd, a.pushed_commit.as_ref()), (0, 0, 0.0, None));
        assert!(a.summary.contains("18446744073709551615 input tokens"), "{}", a.summary);
        for cost in [f64::NAN, -1.0, 1e7] {
            let mut a = attempt();
            apply_result(&mut a, &result(1, 1, cost));
            assert_eq!((a.state, a.reason.as_str()), (AttemptState::Failed, "InvalidUsageReport"), "{cost}");
        }
    }

    #[test]
    fn tokens_in_and_out_stay_apart() {
        let mut a = attempt();
        apply_result(&mut a, &result(1_000_000_000_000, 7, 0.5));
        assert_eq!((a.state, a.tokens_in, a.tokens_out), (AttemptState::Succeeded, 1_000_000_000_000, 7));
        let stored = store::Attempt {
            worker_name: "w".into(),
            request: "r".into(),
            generation: "g".into(),
            stage: "s".into(),
            repo: "../a.git".into(),
            attempt: 1,
            driver: "local".into(),
            state: AttemptState::Succeeded,
            created_at: 0,
            started_at: None,
            finished_at: None,
            cost_usd: None,
            tokens_in: Some(3),
            tokens_out: Some(4),
            result: None,
            pushed_commit: None,
        };
        let planned = from_store(&stored, "a");
        assert_eq!((planned.tokens_in, planned.tokens_out, planned.tokens()), (3, 4, 7));
        assert!(!planned.unconfined);
        let unconfined = store::Attempt { result: Some(serde_json::json!({ "reason": "Completed", "unconfined": true })), ..stored };
        assert!(from_store(&unconfined, "a").unconfined, "an unconfined run read back from the store is still marked");
    }

    #[test]
    fn a_result_s_session_id_reaches_the_attempt_and_a_malformed_one_does_not() {
        let mut a = attempt();
        apply_result(&mut a, &RunResult { session_id: Some("thr_01".into()), ..result(1, 1, 0.0) });
        assert_eq!(a.session_id.as_deref(), Some("thr_01"));
        let mut a = attempt();
        apply_result(&mut a, &RunResult { session_id: Some("--dangerous".into()), ..result(1, 1, 0.0) });
        assert_eq!(a.session_id, None, "a result.json written by hand is checked again");
    }
}
