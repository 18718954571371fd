//! The forge side of a pass, when Hadron runs against Gitea.
//!
//! Observe: who merged an approval PR, as Gitea's API shows it (a webhook
//! only makes the pass run sooner), and whether that user may approve under
//! the policy in force at this pass (users, teams, never the requester); the
//! combined commit status of pushed heads at a `ci` gate (re-read after a
//! webhook from that repo, and polled as a safety net).
//!
//! Only facts that cannot change are kept between passes: the merge of an
//! approval PR once the API says it is merged (merge commit and merger), and
//! the Gitea login of a commit's author once the API names one. Decisions
//! are not kept: the same git, store and Gitea state gives the same decision
//! in a new process (a restart, another replica after a failover). Team
//! membership is kept by the client for its time to live (60 s).
//!
//! Act, after the executor and before the status is rendered: open or update
//! the approval PR of a gate whose branch is open, open or update a PR in each
//! target repo when a request succeeded (their URLs go into
//! `status.outputs`), and set the request's commit status in the control
//! repo when its phase or stage changes. Every write is idempotent and
//! recorded in the store's `kv` once done, so a restart repeats nothing that
//! finished. A 401, 403 or 404 marks the request Stalled with the error's
//! reason until a later call succeeds; rate limits and 5xx are retried by the
//! client and then by the next pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::forge::repo_full_name;
use crate::forge::{ApprovalPrView, CombinedState, CommitState, CommitView, GiteaClient, GiteaError, RepoRef, StageView, TargetPrView};
use crate::gates::{Approver, GateDecision, Person};
use crate::model::DesiredState;
use crate::model::kinds::{Approval, ApproverPolicy, Phase};
use crate::plan::{ApprovalState, Attempt, AttemptState, CiState, Plan, RequestView};
use crate::store::{PrRecord, Store};
use crate::time::Millis;

use super::{ReconcileError, urls};

/// A merged approval PR as Gitea's API reported it. Gitea cannot unmerge a
/// PR, so this never changes once seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MergeFact {
    /// The merge commit (`merge_commit_sha`).
    commit: String,
    /// Who merged it (`merged_by.login`).
    login: String,
}

/// What the API says of one approval PR.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PrMerge {
    /// Not merged (open, or closed without a merge).
    NotMerged,
    /// Merged, with its merge commit and merger.
    Merged(MergeFact),
    /// Merged, but the answer names no merge commit or no merger.
    Unnamed,
}

/// The forge's state between passes: facts that cannot change and the
/// errors that stall requests.
pub struct ForgeLink {
    client: GiteaClient,
    control: RepoRef,
    /// Re-read a head's CI state at least this often while it is pending.
    ci_poll: Duration,
    ci: BTreeMap<(String, String), (CiState, Instant)>,
    ci_dirty: BTreeSet<String>,
    /// Approval PR number (control repo) → its merge, once the API said merged.
    merges: BTreeMap<u64, MergeFact>,
    /// Requester commit → Gitea login, once the API named one.
    logins: BTreeMap<String, String>,
    /// Request → commit and state last set in the control repo.
    control_status: BTreeMap<String, String>,
    /// Request → generation → repo → PR URL.
    target_prs: BTreeMap<String, (String, BTreeMap<String, String>)>,
    /// Request → (reason, message) of the forge error that stalls it.
    stalled: BTreeMap<String, (String, String)>,
    /// Whether something failed in a way the next pass should retry.
    retry: bool,
}

impl std::fmt::Debug for ForgeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgeLink").field("client", &self.client).field("stalled", &self.stalled).finish_non_exhaustive()
    }
}

/// What the status step needs from the forge.
#[derive(Debug, Clone, Default)]
pub struct ForgeOutputs {
    /// Request → repo URL as written → PR URL.
    pub pull_requests: BTreeMap<String, BTreeMap<String, String>>,
    /// Request → (reason, message) of a forge error that stalls it.
    pub stalled: BTreeMap<String, (String, String)>,
    /// Whether a forge write failed and should be retried on the next pass.
    pub retry: bool,
}

impl ForgeLink {
    /// A link through `client`; pending CI is re-read every `ci_poll`.
    pub fn new(client: GiteaClient, ci_poll: Duration) -> Self {
        let control = client.control().clone();
        ForgeLink {
            client,
            control,
            ci_poll,
            ci: BTreeMap::new(),
            ci_dirty: BTreeSet::new(),
            merges: BTreeMap::new(),
            logins: BTreeMap::new(),
            control_status: BTreeMap::new(),
            target_prs: BTreeMap::new(),
            stalled: BTreeMap::new(),
            retry: false,
        }
    }

    /// Checks `lease` before every write to Gitea.
    pub fn set_lease(&mut self, lease: crate::leader::LeaseGuard) {
        self.client.set_lease(lease);
    }

    /// Called at the start of each pass.
    pub fn begin_pass(&mut self) {
        self.retry = false;
        self.client.close_circuit();
    }

    /// The client.
    pub fn client(&self) -> &GiteaClient {
        &self.client
    }

    /// The control repo on the forge.
    pub fn control(&self) -> &RepoRef {
        &self.control
    }

    /// A webhook said something happened in `repo` (`owner/name`): re-read
    /// the CI state of its heads on the next pass.
    pub fn target_activity(&mut self, repo: &str) {
        self.ci_dirty.insert(repo.to_ascii_lowercase());
    }

    fn stall(&mut self, request: &str, what: &str, e: &GiteaError) {
        tracing::warn!(request, reason = e.reason(), error = %e, "{what} failed; the request is stalled until it works");
        let fix = match e {
            GiteaError::Unreachable { .. } | GiteaError::Server { .. } | GiteaError::RateLimited { .. } => {
                "Gitea is down or overloaded: the workers and status/ go on, and every pass tries again"
            }
            GiteaError::Unauthorized { .. } => "check the token Hadron is given (--gitea-token-env/--gitea-token-file)",
            GiteaError::Forbidden { .. } => "give Hadron's Gitea user write access to this repository",
            GiteaError::NotFound { .. } => "check that the repository exists on Gitea under this owner/name",
            _ => "fix the cause; Hadron retries on the next pass",
        };
        self.stalled.insert(request.to_owned(), (e.reason().to_owned(), format!("{what} failed: {e}; {fix}")));
        self.retry = true;
    }

    fn unstall(&mut self, request: &str) {
        self.stalled.remove(request);
    }

    /// The forge repo of a target repo URL as written in a request.
    fn repo_of(&self, control_url: &str, url: &str) -> Option<RepoRef> {
        let full = repo_full_name(&urls::resolve(control_url, url));
        RepoRef::parse(&full).ok()
    }

    /// What the API says of approval PR `number`: a merge already seen is
    /// not asked again (it cannot change), anything else is.
    async fn merge_of(&mut self, number: u64) -> Result<PrMerge, GiteaError> {
        if let Some(fact) = self.merges.get(&number) {
            return Ok(PrMerge::Merged(fact.clone()));
        }
        let info = self.client.merge_info(&self.control, number).await?;
        if !info.merged {
            return Ok(PrMerge::NotMerged);
        }
        let commit = info.merge_commit_sha.filter(|c| !c.trim().is_empty());
        let login = info.merged_by.filter(|l| !l.trim().is_empty());
        let (Some(commit), Some(login)) = (commit, login) else {
            return Ok(PrMerge::Unnamed);
        };
        let fact = MergeFact { commit, login };
        self.merges.insert(number, fact.clone());
        Ok(PrMerge::Merged(fact))
    }

    /// Decides an approval gate with the forge: `approver` (the commit that
    /// brought the approval file) and `requester` come from git history, or
    /// why they could not be found; the merger and the requester's login from
    /// Gitea's API; `policy` is the one in force at this pass.
    ///
    /// The only approver is the login Gitea's API reports as the merger of
    /// one of Hadron's approval PRs for this gate, and only when that PR's
    /// merge commit is the commit that brought the file onto the branch. A
    /// webhook's word counts for nothing. A file that reached the base
    /// branch any other way (a direct push, whatever its committer name)
    /// does not count, and neither does any approval while the requester is
    /// unknown. Nothing of an earlier decision is reused: a refused approval
    /// counts at the next pass after its merger is added to the policy.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_approval(
        &mut self,
        store: &Store,
        request: &str,
        gate: &str,
        approval: Option<&Approval>,
        approver: Result<&Approver, &str>,
        requester: Result<&(Person, String), &str>,
        policy: &ApproverPolicy,
        generation: &str,
    ) -> Result<ApprovalState, ReconcileError> {
        // Waiting and stale need no forge; neither does an unknown commit or requester.
        let decision = crate::gates::decide(approval, approver, requester.map(|(p, _)| p), policy, generation);
        match &decision {
            GateDecision::Waiting => return Ok(ApprovalState::Waiting),
            GateDecision::Stale { given_for } => return Ok(ApprovalState::Stale { given_for: given_for.clone() }),
            _ => {}
        }
        let (approver, (requester_person, requester_commit)) = match (approver, requester) {
            (Ok(approver), Ok(requester)) => (approver, requester),
            _ => {
                let (by, why) = match decision {
                    GateDecision::Rejected { by, why } => (by, why),
                    other => (None, format!("the approver or the requester is unknown ({})", other.reason())),
                };
                return Ok(ApprovalState::Rejected {
                    commit: by.as_ref().map(|b| b.commit.clone()).unwrap_or_default(),
                    by: by.map_or_else(|| "someone".to_owned(), |b| b.name),
                    why,
                });
            }
        };
        let commit = approver.commit.clone();
        // Who merged: the API's answer for Hadron's approval PRs of this
        // gate, newest first, until one's merge commit is this commit.
        let mut login = None;
        // For the message otherwise: the newest PR, and the newest merged
        // as another commit or without naming its merge.
        let (mut newest, mut elsewhere, mut unnamed) = (None, None, None);
        for &number in store.approval_prs(request, gate).await?.iter().rev() {
            let merge = match self.merge_of(number).await {
                Ok(m) => m,
                Err(e) => {
                    self.stall(request, "reading who merged the approval PR", &e);
                    return Ok(ApprovalState::Waiting);
                }
            };
            newest.get_or_insert((number, merge.clone()));
            match merge {
                PrMerge::Merged(fact) if fact.commit.eq_ignore_ascii_case(&commit) => {
                    login = Some(fact.login);
                    break;
                }
                PrMerge::Merged(fact) => {
                    elsewhere.get_or_insert((number, fact.commit));
                }
                PrMerge::Unnamed => {
                    unnamed.get_or_insert(number);
                }
                PrMerge::NotMerged => {}
            }
        }
        let Some(login) = login else {
            // No merge of Hadron's approval PR brought the file: whatever the
            // commit says about its committer, nobody approved on Gitea.
            self.unstall(request);
            let how = match (elsewhere, unnamed) {
                (Some((number, sha)), _) => {
                    format!("the approval file reached main in commit {commit}, not in the merge of the approval PR #{number} ({sha})")
                }
                (None, Some(number)) => format!(
                    "Gitea reports approval PR #{number} merged but names no merge commit or no merger, so it cannot be the commit {commit} that brought the approval file"
                ),
                (None, None) => "the approval file reached main without a merged approval PR".to_owned(),
            };
            let pr = match newest {
                Some((n, PrMerge::NotMerged)) => format!("merge PR #{n} on Gitea"),
                _ => format!("merge the approval PR of branch {} on Gitea", crate::gates::approval_branch(request, gate)),
            };
            return Ok(ApprovalState::Rejected {
                by: format!("{} (git committer, not a Gitea merge)", approver.name),
                why: format!("{how}; {pr}"),
                commit,
            });
        };
        let requester_login = match self.logins.get(requester_commit) {
            Some(l) => l.clone(),
            None => match self.client.commit_author_login(&self.control, requester_commit).await {
                Ok(Some(l)) => {
                    self.logins.insert(requester_commit.clone(), l.clone());
                    l
                }
                Ok(None) => {
                    // The author name of a commit is whatever its author
                    // typed: without a Gitea user, nobody can tell the
                    // requester from the approver, so the approval does not count.
                    self.unstall(request);
                    return Ok(ApprovalState::Rejected {
                        by: login,
                        why: format!(
                            "the requester could not be determined: Gitea maps the commit that added requests/{request}.yaml ({requester_commit}, author {} <{}>) to no user, so Hadron cannot check that the approver is not the requester; the author adds that e-mail to their Gitea account, or commits the request again as a Gitea user",
                            requester_person.name, requester_person.email
                        ),
                        commit,
                    });
                }
                Err(e) => {
                    self.stall(request, "looking up the requester's Gitea user", &e);
                    return Ok(ApprovalState::Waiting);
                }
            },
        };
        let decision = match self.client.approver_decision(&login, Some(&requester_login), policy).await {
            Ok(d) => d,
            Err(e) => {
                self.stall(request, "resolving the approver's teams", &e);
                return Ok(ApprovalState::Waiting);
            }
        };
        self.unstall(request);
        Ok(match decision {
            crate::forge::ApproverDecision::AllowedAsUser | crate::forge::ApproverDecision::AllowedByTeam { .. } => {
                ApprovalState::Approved { by: login.clone(), revision: 0 }
            }
            crate::forge::ApproverDecision::Requester => ApprovalState::Rejected {
                by: login.clone(),
                why: format!("{login} is the requester of this change request and may not approve it"),
                commit,
            },
            crate::forge::ApproverDecision::NotAllowed => ApprovalState::Rejected {
                by: login.clone(),
                why: format!(
                    "{login} is not an allowed approver: list them under spec.approvers.users or in a team of spec.approvers.teams in hadron.yaml"
                ),
                commit,
            },
        })
    }

    /// Changes asked by a review on the open approval PR of `gate`, when
    /// one counts: the newest review of state `REQUEST_CHANGES` that Gitea
    /// does not call stale or dismissed, given on the PR's current head, by
    /// someone allowed to approve the gate who is not the requester (the
    /// rules of an approval). Returns who asked, the feedback (the review's
    /// text, then each line comment with its file and line) and the review
    /// id. Read level-triggered, every pass the gate waits: a webhook only
    /// makes the pass come sooner. A forge error stalls the request's forge
    /// part and counts as no review.
    pub async fn changes_asked_by_review(
        &mut self,
        store: &Store,
        request: &str,
        gate: &str,
        requester: Result<&(Person, String), &str>,
        policy: &ApproverPolicy,
    ) -> Result<Option<(String, String, u64)>, ReconcileError> {
        let Some(&number) = store.approval_prs(request, gate).await?.last() else { return Ok(None) };
        let Ok((_, requester_commit)) = requester else { return Ok(None) };
        let found = async {
            let pr = self.client.pull_request(&self.control, number).await?;
            if pr.state != "open" || pr.head.sha.is_empty() {
                return Ok(None);
            }
            let reviews = self.client.pull_reviews(&self.control, number).await?;
            let Some(review) = reviews
                .into_iter()
                .filter(|r| r.state == "REQUEST_CHANGES" && !r.stale && !r.dismissed && r.commit_id.eq_ignore_ascii_case(&pr.head.sha))
                .filter(|r| r.user.is_some())
                .max_by_key(|r| r.id)
            else {
                return Ok(None);
            };
            let login = review.user.as_ref().map(|u| u.login.clone()).unwrap_or_default();
            let requester_login = match self.logins.get(requester_commit) {
                Some(l) => l.clone(),
                None => match self.client.commit_author_login(&self.control, requester_commit).await? {
                    Some(l) => {
                        self.logins.insert(requester_commit.clone(), l.clone());
                        l
                    }
                    // Nobody can tell the requester from the reviewer.
                    None => return Ok(None),
                },
            };
            match self.client.approver_decision(&login, Some(&requester_login), policy).await? {
                crate::forge::ApproverDecision::AllowedAsUser | crate::forge::ApproverDecision::AllowedByTeam { .. } => {}
                _ => return Ok(None),
            }
            let comments = self.client.review_comments(&self.control, number, review.id).await?;
            let mut feedback = review.body.trim().to_owned();
            for c in comments.iter().filter(|c| !c.body.trim().is_empty()) {
                let line = if c.position > 0 { c.position } else { c.original_position };
                feedback.push_str(&format!("\n\n- `{}` line {line}: {}", c.path, c.body.trim()));
            }
            Ok::<_, crate::forge::GiteaError>(Some((login, feedback.trim().to_owned(), review.id)))
        }
        .await;
        match found {
            Ok(found) => Ok(found),
            Err(e) => {
                self.stall(request, "reading the reviews of the approval PR", &e);
                Ok(None)
            }
        }
    }

    /// Reads the combined CI state of the pushed heads at `ci` gates.
    /// `heads` are (request, repo URL as written, commit, required contexts).
    pub async fn observe_ci(
        &mut self,
        control_url: &str,
        heads: &[(String, String, String, Vec<String>)],
        out: &mut BTreeMap<(String, String), CiState>,
    ) {
        let now = Instant::now();
        for (request, repo_url, commit, contexts) in heads {
            let key = (repo_url.clone(), commit.clone());
            let Some(repo) = self.repo_of(control_url, repo_url) else { continue };
            let dirty = self.ci_dirty.contains(&repo.to_string().to_ascii_lowercase());
            let cached = self.ci.get(&key).copied();
            let fresh = match cached {
                Some((CiState::Success | CiState::Failure, _)) => true,
                Some((CiState::Pending, at)) => !dirty && now.duration_since(at) < self.ci_poll,
                None => false,
            };
            if !fresh {
                match self.client.combined_status(&repo, commit, Some(contexts)).await {
                    Ok(state) => {
                        let state = match state {
                            CombinedState::Success => CiState::Success,
                            CombinedState::Failure => CiState::Failure,
                            CombinedState::Pending => CiState::Pending,
                        };
                        self.ci.insert(key.clone(), (state, now));
                        self.unstall(request);
                    }
                    Err(e) => self.stall(request, &format!("reading the commit status of {repo}@{commit}"), &e),
                }
            }
            if let Some((state, _)) = self.ci.get(&key) {
                out.insert(key, *state);
            }
        }
        self.ci_dirty.clear();
    }

    /// Requests whose commit status in the control repo must be set this
    /// pass (their generation, phase or stage changed since the last one).
    pub async fn control_status_due(&mut self, store: &Store, plan: &Plan) -> Result<Vec<String>, ReconcileError> {
        let mut due = Vec::new();
        for (name, view) in &plan.requests {
            if view.generation.is_empty() {
                continue;
            }
            if !self.control_status.contains_key(name)
                && let Some(known) = store.control_status(name).await?
            {
                self.control_status.insert(name.clone(), known);
            }
            if self.control_status.get(name) != Some(&status_marker(view)) {
                due.push(name.clone());
            }
        }
        Ok(due)
    }

    /// The forge writes of a pass; see the module docs. `request_commits`
    /// holds the control-repo commit of each request in
    /// [`ForgeLink::control_status_due`].
    // Each argument is a distinct input of the forge step (store, control repo, branch, desired, plan, commits, time).
    #[allow(clippy::too_many_arguments)]
    pub async fn act(
        &mut self,
        store: &Store,
        control_url: &str,
        branch: &str,
        desired: &DesiredState,
        plan: &Plan,
        request_commits: &BTreeMap<String, String>,
        t: Millis,
    ) -> Result<ForgeOutputs, ReconcileError> {
        for (name, view) in &plan.requests {
            let Some(request) = desired.requests.get(name) else { continue };
            // Approval PRs of gates whose branch is open.
            if view.phase == Phase::WaitingForApproval {
                for gate in request.spec.gates.iter().filter(|g| g.gate_type == crate::model::kinds::GateType::Approval) {
                    let Some(token) = store.approval_branch_opened_for(name, &gate.name).await? else {
                        continue;
                    };
                    let recorded = store.approval_pr(name, &gate.name).await?;
                    if recorded.is_some_and(|r| r.made_for == token) {
                        continue;
                    }
                    let pr_view = ApprovalPrView {
                        request: name.clone(),
                        gate: gate.name.clone(),
                        request_title: request.spec.title.clone(),
                        generation: view.generation.clone(),
                        requester: None,
                        stages: self.stage_views(view),
                        commits: self.commit_views(control_url, view),
                        cost: cost_of(&view.attempts),
                        budget: request
                            .spec
                            .budget
                            .as_ref()
                            .or(desired.settings.spec.defaults.budget.as_ref())
                            .and_then(|b| b.max_cost_usd.map(|c| format!("${c:.2}"))),
                    };
                    match self.client.ensure_approval_pr(&pr_view).await {
                        Ok(pr) => {
                            let rec = PrRecord { number: pr.number, url: pr.html_url.clone(), made_for: token };
                            store.set_approval_pr(name, &gate.name, &rec, t).await?;
                            tracing::info!(request = %name, gate = %gate.name, number = pr.number, action = ?pr.action, "approval PR ready");
                            self.unstall(name);
                        }
                        Err(e) => self.stall(name, "opening the approval PR", &e),
                    }
                }
            }
            // A round of changes asked: said on the approval PR when it
            // starts and when its result is back for review, once each.
            if let Some(revision) = &view.revision {
                self.comment_revision(store, name, view, revision, t).await?;
            }
            // Target PRs once the request succeeded.
            if view.phase == Phase::Succeeded {
                self.ensure_target_prs(store, control_url, branch, name, view, desired, t).await?;
            }
            // The request's commit status in the control repo.
            if let Some(commit) = request_commits.get(name) {
                let state = match view.phase {
                    Phase::Succeeded => CommitState::Success,
                    Phase::Failed | Phase::Invalid => CommitState::Failure,
                    Phase::Cancelled => CommitState::Error,
                    _ => CommitState::Pending,
                };
                let target = self.client.file_url(&self.control, branch, &format!("status/{name}.yaml"));
                let description = format!("{}: {}", view.phase.as_str(), view.message);
                match self.client.set_status(&self.control, commit, name, state, &description, Some(&target)).await {
                    Ok(_) => {
                        let marker = status_marker(view);
                        store.set_control_status(name, &marker, t).await?;
                        self.control_status.insert(name.clone(), marker);
                    }
                    Err(e) => self.stall(name, "setting the request's commit status", &e),
                }
            }
        }
        // Requests that are gone keep no stall.
        self.stalled.retain(|name, _| plan.requests.contains_key(name));
        let mut out = ForgeOutputs { stalled: self.stalled.clone(), retry: self.retry, ..ForgeOutputs::default() };
        for (name, view) in &plan.requests {
            if let Some((generation, prs)) = self.target_prs.get(name)
                && *generation == view.generation
            {
                out.pull_requests.insert(name.clone(), prs.clone());
            }
        }
        Ok(out)
    }

    /// Comments on the approval PR of `revision`'s gate when the revision
    /// starts, when it is ready for review again, and when no revision is
    /// left; the store remembers the last comment so each is written once.
    async fn comment_revision(
        &mut self,
        store: &Store,
        name: &str,
        view: &RequestView,
        revision: &crate::plan::Revision,
        t: Millis,
    ) -> Result<(), ReconcileError> {
        let (state, body) = if revision.running {
            (
                "started",
                format!(
                    "Hadron is running revision {} of {} for the changes {} asked for: stage `{}` runs again with the feedback in its prompt. This PR is updated when the work is back.",
                    revision.number, revision.max, revision.by, revision.stage
                ),
            )
        } else if view.reason == "RevisionsExhausted" {
            (
                "exhausted",
                format!(
                    "Changes were asked again, but gate `{}` allows {} revision(s) and all are used. Merge this PR to approve the latest work, or edit `requests/{name}.yaml` to start over.",
                    revision.gate, revision.max
                ),
            )
        } else if view.phase == Phase::WaitingForApproval {
            (
                "ready",
                format!(
                    "Revision {} of {} is ready: stage `{}` ran again for the changes {} asked for. @{} please look again: merge to approve, or request changes once more.",
                    revision.number, revision.max, revision.stage, revision.by, revision.by
                ),
            )
        } else {
            return Ok(());
        };
        let marker = format!("{} r{} {state}", view.generation, revision.number);
        if store.revision_comment(name, &revision.gate).await?.as_deref() == Some(marker.as_str()) {
            return Ok(());
        }
        let Some(pr) = store.approval_pr(name, &revision.gate).await? else { return Ok(()) };
        match self.client.create_comment(&self.control, pr.number, &body).await {
            Ok(_) => store.set_revision_comment(name, &revision.gate, &marker, t).await?,
            Err(e) => self.stall(name, "commenting on the approval PR", &e),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn ensure_target_prs(
        &mut self,
        store: &Store,
        control_url: &str,
        branch: &str,
        name: &str,
        view: &RequestView,
        desired: &DesiredState,
        t: Millis,
    ) -> Result<(), ReconcileError> {
        let Some(request) = desired.requests.get(name) else { return Ok(()) };
        let with_commits: Vec<&str> = request
            .spec
            .repos
            .iter()
            .filter(|r| view.attempts.iter().any(|a| a.repo == r.url && a.pushed_commit.is_some()))
            .map(|r| r.url.as_str())
            .collect();
        if let Some((generation, prs)) = self.target_prs.get(name)
            && *generation == view.generation
            && with_commits.iter().all(|r| prs.contains_key(*r))
        {
            return Ok(());
        }
        let mut urls_by_repo = BTreeMap::new();
        for repo in &request.spec.repos {
            if !view.attempts.iter().any(|a| a.repo == repo.url && a.pushed_commit.is_some()) {
                continue;
            }
            let recorded = store.target_pr(name, &repo.url).await?;
            if let Some(r) = recorded.filter(|r| r.made_for == view.generation) {
                urls_by_repo.insert(repo.url.clone(), r.url);
                continue;
            }
            let Some(repo_ref) = self.repo_of(control_url, &repo.url) else { continue };
            let pr_view = TargetPrView {
                request: name.to_owned(),
                request_title: request.spec.title.clone(),
                description: Some(request.spec.description.clone()).filter(|d| !d.trim().is_empty()),
                stages: self.stage_views(view).into_iter().filter(|s| s.repo == repo.url).collect(),
                commits: self.commit_views(control_url, view).into_iter().filter(|c| c.repo == repo.url).collect(),
                cost: cost_of(&view.attempts),
                status_url: Some(self.client.file_url(&self.control, branch, &format!("status/{name}.yaml"))),
            };
            match self.client.ensure_target_pr(&repo_ref, repo.branch.as_deref(), &pr_view).await {
                Ok(pr) => {
                    let rec = PrRecord { number: pr.number, url: pr.html_url.clone(), made_for: view.generation.clone() };
                    store.set_target_pr(name, &repo.url, &rec, t).await?;
                    tracing::info!(request = name, repo = %repo_ref, number = pr.number, "target PR ready");
                    urls_by_repo.insert(repo.url.clone(), pr.html_url);
                    self.unstall(name);
                }
                Err(e) => self.stall(name, &format!("opening the pull request in {repo_ref}"), &e),
            }
        }
        self.target_prs.insert(name.to_owned(), (view.generation.clone(), urls_by_repo));
        Ok(())
    }

    fn stage_views(&self, view: &RequestView) -> Vec<StageView> {
        view.attempts
            .iter()
            .filter(|a| a.state != AttemptState::Cancelled)
            .map(|a| StageView {
                name: a.stage.clone(),
                repo: a.repo.clone(),
                state: a.state.as_str().to_owned(),
                summary: Some(a.summary.clone()).filter(|s| !s.trim().is_empty()),
                cost: (a.cost_usd > 0.0).then(|| format!("${:.2}", a.cost_usd)),
                pr_url: None,
            })
            .collect()
    }

    fn commit_views(&self, control_url: &str, view: &RequestView) -> Vec<CommitView> {
        let mut seen = BTreeSet::new();
        view.attempts
            .iter()
            .filter(|a| a.state == AttemptState::Succeeded)
            .filter_map(|a: &Attempt| {
                let sha = a.pushed_commit.clone()?;
                if !seen.insert(sha.clone()) {
                    return None;
                }
                let url = self.repo_of(control_url, &a.repo).map(|r| self.client.commit_url(&r, &sha)).unwrap_or_default();
                Some(CommitView::new(a.repo.clone(), sha, url, &format!("{}: {}", a.stage, a.summary)))
            })
            .collect()
    }
}

/// What a commit status was last set for: generation, phase and stage.
fn status_marker(view: &RequestView) -> String {
    format!("{} {} {}", view.generation, view.phase.as_str(), view.stage.as_deref().unwrap_or("-"))
}

fn cost_of(attempts: &[Attempt]) -> Option<String> {
    let total = crate::plan::total_cost(attempts);
    (total > 0.0).then(|| format!("${total:.2}"))
}
