//! Deciding a request's next step: its stages in order, each with the gates
//! after it. The first stage or gate not passed says what happens next
//! (start workers, wait, fail); when every one is passed, the request
//! succeeded.

use std::collections::BTreeMap;

use super::{Action, ApprovalState, Attempt, AttemptState, CiState, Observed, Plan, PlanConfig, Revision, approval_token, backoff};
use crate::ids::worker_name;
use crate::model::kinds::{ChangeRequest, Gate, GateType, Phase, Stage};
use crate::time::Millis;

/// One request's pipeline as it stands in this pass: what deciding its next
/// step reads besides the stages.
pub(super) struct Pipeline<'a> {
    /// The request.
    pub request: &'a ChangeRequest,
    /// Its current spec generation.
    pub generation: &'a str,
    /// The agent its workers run.
    pub agent: &'a str,
    /// Whether that agent continues a failed attempt's session (`spec.resume`).
    pub resume: bool,
    /// Its attempts of the current generation.
    pub current: &'a [&'a Attempt],
    /// Attempts per worker before a stage fails.
    pub max_attempts: u32,
    /// The time of the pass.
    pub now: Millis,
    /// Tunables (the retry backoff).
    pub cfg: &'a PlanConfig,
    /// Approvals, approval branches and CI states.
    pub observed: &'a Observed,
}

/// Where the request stands and why: the phase, reason and message of its view.
pub(super) struct Decision {
    /// Lifecycle phase.
    pub phase: Phase,
    /// Stable CamelCase reason.
    pub reason: &'static str,
    /// One human sentence.
    pub message: String,
}

/// The next step of a request.
pub(super) struct Step {
    /// The stage looked at last: the one that starts, runs or failed, or
    /// whose gate waits; the last stage when every one passed.
    pub stage: Option<String>,
    /// What the view says.
    pub decision: Decision,
    /// Workers to start (empty unless the step starts a stage).
    pub starts: Vec<Attempt>,
    /// The latest round of changes asked at a gate, if any.
    pub revision: Option<Revision>,
}

/// Changes an allowed approver asked at an approval gate after a stage.
struct ChangesAsked<'a> {
    /// The gate.
    gate: &'a Gate,
    /// The revision of the stage's work they were asked of.
    revision: u32,
    /// Who asked.
    by: &'a str,
    /// What to change.
    feedback: &'a str,
}

/// The changes asked at the first approval gate after `stage` that has any.
fn changes_asked<'a>(p: &Pipeline<'a>, stage: &Stage) -> Option<ChangesAsked<'a>> {
    let name = &p.request.metadata.name;
    p.request.spec.gates.iter().filter(|g| g.after == stage.name && g.gate_type == GateType::Approval).find_map(|gate| {
        match p.observed.approvals.get(&(name.clone(), gate.name.clone()))? {
            ApprovalState::ChangesRequested { by, revision, feedback, .. } => {
                Some(ChangesAsked { gate, revision: *revision, by, feedback })
            }
            _ => None,
        }
    })
}

/// How many times `stage` succeeded on `repo` in this generation: its
/// first result and one more per revision.
fn successes(p: &Pipeline, stage: &str, repo: &str) -> u32 {
    let n = p.current.iter().filter(|a| a.stage == stage && a.repo == repo && a.state == AttemptState::Succeeded).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The revision of `stage`'s work a gate after it reviews: the one every
/// repo has reached (0 for the first result).
fn revision_of(p: &Pipeline, stage: &str) -> u32 {
    super::gate_revision(p.current.iter().copied(), p.request, p.generation, stage)
}

/// Walks the stages and their gates. `attempts` are the view's attempts
/// (for the summary an approval branch carries); an approval branch to open
/// and the time a retry is due go into `out`.
pub(super) fn next_step(p: &Pipeline, stages: &[Stage], attempts: &[Attempt], out: &mut Plan) -> Step {
    let mut looked_at = None;
    let mut revision = None;
    for stage in stages {
        looked_at = Some(stage.name.clone());
        let asked = changes_asked(p, stage);
        if let Some(c) = &asked {
            let max = c.gate.max_revisions();
            let running = c.revision < max && p.request.spec.repos.iter().any(|r| successes(p, &stage.name, &r.url) == c.revision + 1);
            revision = Some(Revision {
                gate: c.gate.name.clone(),
                stage: stage.name.clone(),
                number: if c.revision < max { c.revision + 1 } else { c.revision },
                max,
                by: c.by.to_owned(),
                feedback: c.feedback.to_owned(),
                running,
            });
        }
        let step = |decision, starts| Step { stage: Some(stage.name.clone()), decision, starts, revision: revision.clone() };
        let commits = match stage_state(p, stage, asked.as_ref()) {
            StageState::Done(commits) => commits,
            StageState::Start { starts, retry_at } => {
                // A retry due later on another repo: the plan wakes then too.
                if let Some(at) = retry_at {
                    out.wake_at = Some(out.wake_at.map_or(at, |w| w.min(at)));
                }
                return step(starting(p, stage), starts);
            }
            StageState::Running { retry_at } => return step(running(p, stage, retry_at, out), Vec::new()),
            StageState::Failed(why) => return step(Decision { phase: Phase::Failed, reason: "StageFailed", message: why }, Vec::new()),
        };
        // The stage is done: gates after it.
        for gate in p.request.spec.gates.iter().filter(|g| g.after == stage.name) {
            let waiting = match gate.gate_type {
                GateType::Approval => approval_gate(p, gate, attempts, out),
                GateType::Ci => ci_gate(p, gate, &commits),
            };
            if let Some(decision) = waiting {
                return step(decision, Vec::new());
            }
        }
    }
    let message = match stages {
        [only] => format!("stage {} succeeded", only.name),
        all => format!("all {} stages succeeded", all.len()),
    };
    Step { stage: looked_at, decision: Decision { phase: Phase::Succeeded, reason: "Succeeded", message }, starts: Vec::new(), revision }
}

/// A stage with workers to start.
fn starting(p: &Pipeline, stage: &Stage) -> Decision {
    let message = match changes_asked(p, stage) {
        Some(c) if p.request.spec.repos.iter().any(|r| successes(p, &stage.name, &r.url) > c.revision) => format!(
            "stage {} starting revision {} of {}: {} asked for changes at gate {}",
            stage.name,
            c.revision + 1,
            c.gate.max_revisions(),
            c.by,
            c.gate.name
        ),
        _ => format!("stage {} starting", stage.name),
    };
    Decision {
        phase: if p.current.iter().any(|a| a.state.is_live()) { Phase::Running } else { Phase::Pending },
        reason: "Progressing",
        message,
    }
}

/// A stage with workers running or a retry scheduled; the retry's time is
/// when the plan wakes up at the latest.
fn running(p: &Pipeline, stage: &Stage, retry_at: Option<Millis>, out: &mut Plan) -> Decision {
    if let Some(at) = retry_at {
        out.wake_at = Some(out.wake_at.map_or(at, |w| w.min(at)));
    }
    let message = match retry_at {
        Some(at) if !p.current.iter().any(|a| a.state.is_live() && a.stage == stage.name) => {
            format!("stage {}: a worker failed; retrying in {}s", stage.name, (at - p.now + 999) / 1000)
        }
        Some(_) => format!("stage {} running; a retry is scheduled", stage.name),
        None => format!("stage {} running", stage.name),
    };
    Decision { phase: Phase::Running, reason: "Progressing", message }
}

/// An approval gate: `None` when approved; else the request waits, and the
/// approval branch is opened (again) unless it already is for this state.
fn approval_gate(p: &Pipeline, gate: &Gate, attempts: &[Attempt], out: &mut Plan) -> Option<Decision> {
    let name = p.request.metadata.name.as_str();
    let generation = p.generation;
    let key = (name.to_owned(), gate.name.clone());
    let state = p.observed.approvals.get(&key).cloned().unwrap_or(ApprovalState::Waiting);
    let revision = revision_of(p, &gate.after);
    let max = gate.max_revisions();
    if matches!(state, ApprovalState::Approved { revision: r, .. } if r == revision) {
        return None;
    }
    let opened_for = approval_token(generation, revision, &state);
    if p.observed.approval_branches.get(&key) != Some(&opened_for) {
        let mut summary = summary_of(attempts);
        // The base branch holds a decision on this very revision already:
        // the branch must be opened again to be merged again.
        let reopen = match &state {
            ApprovalState::Rejected { .. } => true,
            ApprovalState::Approved { revision: r, .. } | ApprovalState::ChangesRequested { revision: r, .. } => *r == revision,
            _ => false,
        };
        match &state {
            ApprovalState::Rejected { by, why, .. } => {
                summary = format!("{summary}\nOpened again: the earlier merge by {by} did not count ({why}).");
            }
            ApprovalState::ChangesRequested { by, revision: r, .. } if *r < revision => {
                summary = format!("{summary}\nRevision {revision} of {max}: the changes {by} asked for are made.");
            }
            _ => {}
        }
        out.actions.push(Action::OpenApproval {
            request: name.to_owned(),
            gate: gate.name.clone(),
            generation: generation.to_owned(),
            revision,
            summary,
            opened_for,
            reopen,
        });
    }
    let branch = format!("hadron/approve/{name}/{}", gate.name);
    let message = match state {
        ApprovalState::ChangesRequested { by, revision: r, .. } if r >= max && r == revision => {
            return Some(Decision {
                phase: Phase::WaitingForApproval,
                reason: "RevisionsExhausted",
                message: format!(
                    "gate {}: {by} asked for changes again, but the gate allows {max} revision(s) (maxRevisions) and all are used; to go on, an allowed approver merges branch {branch} to approve revision {revision}, or edit requests/{name}.yaml to start over",
                    gate.name
                ),
            });
        }
        ApprovalState::ChangesRequested { by, revision: r, .. } if r < revision => format!(
            "gate {}: revision {revision} of {max} is ready (changes asked by {by}); merge branch {branch} to approve it, or set `decision: changes` and `feedback` in its approval file to ask again",
            gate.name
        ),
        ApprovalState::Approved { by, revision: r } | ApprovalState::ChangesRequested { by, revision: r, .. } => format!(
            "gate {}: the decision by {by} was about revision {r} of the work, which is now at revision {revision}; merge the updated branch {branch}",
            gate.name
        ),
        ApprovalState::Stale { given_for } => format!(
            "gate {}: the approval was given for generation {given_for}, but the request changed (now {generation}); merge the updated branch hadron/approve/{name}/{} to approve again",
            gate.name, gate.name
        ),
        ApprovalState::Rejected { by, why, .. } => format!(
            "gate {}: the approval merged by {by} does not count ({why}); an allowed approver must merge the re-opened branch hadron/approve/{name}/{}",
            gate.name, gate.name
        ),
        _ => format!("gate {}: waiting for approval; merge branch hadron/approve/{name}/{} into main", gate.name, gate.name),
    };
    Some(Decision { phase: Phase::WaitingForApproval, reason: "AwaitingApproval", message })
}

/// A CI gate: `None` when CI passed on every repo's pushed head; else the
/// request failed (CI failed somewhere) or waits for CI.
fn ci_gate(p: &Pipeline, gate: &Gate, commits: &BTreeMap<&str, Option<String>>) -> Option<Decision> {
    let mut states = Vec::new();
    for repo in &p.request.spec.repos {
        let commit = commits.get(repo.url.as_str()).cloned().flatten();
        let state = commit.and_then(|c| p.observed.ci.get(&(repo.url.clone(), c)).copied()).unwrap_or(CiState::Pending);
        states.push((repo.url.as_str(), state));
    }
    if let Some((repo, _)) = states.iter().find(|(_, s)| *s == CiState::Failure) {
        Some(Decision { phase: Phase::Failed, reason: "CIFailed", message: format!("gate {}: CI failed on {repo}", gate.name) })
    } else if states.iter().any(|(_, s)| *s == CiState::Pending) {
        Some(Decision {
            phase: Phase::WaitingForCI,
            reason: "AwaitingCI",
            message: format!("gate {}: waiting for CI on the pushed heads", gate.name),
        })
    } else {
        None
    }
}

/// Where one stage stands, over every repo of the request.
enum StageState<'a> {
    /// Every repo succeeded: pushed commit per repo.
    Done(BTreeMap<&'a str, Option<String>>),
    /// Workers to start now, and when a retry on another repo is due.
    Start {
        /// The workers.
        starts: Vec<Attempt>,
        /// The earliest retry not due yet.
        retry_at: Option<Millis>,
    },
    /// Workers running, or a retry scheduled.
    Running { retry_at: Option<Millis> },
    /// A repo ran out of attempts.
    Failed(String),
}

/// `asked`: changes asked at a gate after the stage; a repo whose latest
/// result is the revision they were asked of runs the stage again (while
/// the gate allows more revisions).
fn stage_state<'a>(p: &Pipeline<'a>, stage: &Stage, asked: Option<&ChangesAsked>) -> StageState<'a> {
    let Pipeline { request, generation, agent, resume, current: attempts, max_attempts, now, cfg, .. } = *p;
    let name = request.metadata.name.as_str();
    let mut done = BTreeMap::new();
    let mut starts = Vec::new();
    let mut running = false;
    let mut retry_at: Option<Millis> = None;
    for repo in &request.spec.repos {
        let latest = attempts.iter().filter(|a| a.stage == stage.name && a.repo == repo.url).max_by_key(|a| a.attempt);
        let next = |n: u32| Attempt {
            worker: worker_name(&cfg.installation, name, generation, &stage.name, &repo.url, n),
            request: name.to_owned(),
            generation: generation.to_owned(),
            stage: stage.name.clone(),
            repo: repo.url.clone(),
            attempt: n,
            agent: agent.to_owned(),
            ..Attempt::default()
        };
        match latest {
            None => starts.push(next(1)),
            Some(a) if a.state.is_live() => running = true,
            Some(a) if a.state == AttemptState::Succeeded => match asked {
                Some(c) if c.revision < c.gate.max_revisions() && successes(p, &stage.name, &repo.url) == c.revision + 1 => {
                    // A revision continues the session of the work under
                    // review, where the agent can resume.
                    let resume_session = a.session_id.clone().filter(|_| resume);
                    starts.push(Attempt { resume_session, ..next(a.attempt.saturating_add(1)) });
                }
                _ => {
                    done.insert(repo.url.as_str(), a.pushed_commit.clone());
                }
            },
            // A cancelled attempt (suspend, then resume) is run again under a new number.
            Some(a) if a.state == AttemptState::Cancelled => starts.push(next(a.attempt.saturating_add(1))),
            Some(a) => {
                let failures =
                    attempts.iter().filter(|x| x.stage == stage.name && x.repo == repo.url && x.state == AttemptState::Failed).count();
                if !is_retried(&a.reason) {
                    return StageState::Failed(format!(
                        "stage {} failed on {}: {} ({}, which is not retried)",
                        stage.name, repo.url, a.summary, a.reason
                    ));
                }
                if u32::try_from(failures).unwrap_or(u32::MAX) >= max_attempts {
                    return StageState::Failed(format!(
                        "stage {} failed on {} after {failures} attempts: {} ({})",
                        stage.name, repo.url, a.summary, a.reason
                    ));
                }
                let n = a.attempt.saturating_add(1);
                let at = a.finished_at.unwrap_or(now).saturating_add(backoff(cfg, n, &a.worker));
                if now >= at {
                    // The retry continues the failed attempt's session when
                    // the agent asks for it and the attempt recorded one.
                    let resume_session = a.session_id.clone().filter(|_| resume);
                    starts.push(Attempt { resume_session, ..next(n) });
                } else {
                    retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
                }
            }
        }
    }
    if !starts.is_empty() {
        StageState::Start { starts, retry_at }
    } else if running || retry_at.is_some() {
        StageState::Running { retry_at }
    } else {
        StageState::Done(done)
    }
}

/// Failure reasons a new attempt is not started for: the stage fails at
/// once, as when its attempts are spent.
///
/// `InvalidUsageReport`: the worker refused the agent's usage report (an
/// absurd figure, a report too big to read). The agent did run, so a retry
/// would spend again for a report that is as likely refused again, and what
/// the refused one cost is unknown.
///
/// `AgentFailedFinal`: the agent's CLI reported a failure another attempt
/// meets again (authentication, bad input, its own turn or budget limit).
///
/// `BudgetExceeded`: the worker stopped a streaming CLI that spent past the
/// request's remaining budget; another attempt would have none left.
const NOT_RETRIED: &[&str] =
    &[crate::attempt::INVALID_USAGE_REPORT, "SandboxUnavailable", crate::attempt::AGENT_FAILED_FINAL, "BudgetExceeded"];

/// Whether a failed attempt with `reason` may be followed by another.
fn is_retried(reason: &str) -> bool {
    !NOT_RETRIED.contains(&reason)
}

/// What the approver reads: the stages that succeeded so far, one a line,
/// each agent summary capped to
/// [`SUMMARY_MAX_BYTES`](crate::attempt::SUMMARY_MAX_BYTES).
fn summary_of(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .filter(|a| a.state == AttemptState::Succeeded)
        .map(|a| {
            // By characters: the commit may come from a hand-edited status file.
            let commit = a.pushed_commit.as_deref().map(|c| c.char_indices().nth(12).map_or(c, |(i, _)| &c[..i])).unwrap_or("-");
            // Capped like the status file's: a hand-edited status cannot make the approval file grow.
            format!("{} on {}: {} (commit {commit})", a.stage, a.repo, crate::attempt::cap_summary(&a.summary))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
