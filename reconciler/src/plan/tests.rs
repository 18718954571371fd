//! Scenario and property tests of the planner, against a simulated world
//! that applies the plan's effects the way the executor does.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::ids::worker_name;
use crate::model::Catalog;
use crate::status::render;

const AGENT: &str = "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: a\nspec:\n  command: [sh, run.sh]\n";

fn settings(max_workers: u32) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: a\n    maxAttempts: 2\n  limits:\n    maxConcurrentWorkers: {max_workers}\n"
    )
}

#[derive(Debug, Clone)]
struct Req {
    name: String,
    stages: u8,
    repos: u8,
    gate_after: Option<u8>,
    priority: i32,
    suspend: bool,
    title_rev: u8,
    budget_tokens: Option<u64>,
}

impl Req {
    fn yaml(&self) -> String {
        let mut s = format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {}\nspec:\n  title: Do it v{}\n  priority: {}\n  suspend: {}\n  repos:\n",
            self.name, self.title_rev, self.priority, self.suspend
        );
        for r in 0..self.repos {
            s.push_str(&format!("    - url: ../repo-{r}.git\n"));
        }
        s.push_str("  stages:\n");
        for st in 0..self.stages {
            s.push_str(&format!("    - name: s{st}\n"));
        }
        if let Some(g) = self.gate_after {
            s.push_str(&format!("  gates:\n    - name: review\n      type: approval\n      after: s{}\n", g.min(self.stages - 1)));
        }
        if let Some(t) = self.budget_tokens {
            s.push_str(&format!("  budget:\n    maxTokens: {t}\n"));
        }
        s
    }
}

/// The world: the store, the driver and git, as the executor would leave them.
#[derive(Default)]
struct World {
    store: BTreeMap<String, Attempt>,
    runs: BTreeMap<String, DriverRun>,
    approvals: BTreeMap<(String, String), ApprovalState>,
    branches: BTreeMap<(String, String), String>,
    statuses: BTreeMap<String, Arc<RequestStatus>>,
    known: BTreeMap<String, String>,
}

impl World {
    fn observed(&self) -> Observed {
        Observed {
            attempts: self.store.values().cloned().collect(),
            runs: self.runs.values().cloned().collect(),
            approvals: self.approvals.clone(),
            approval_branches: self.branches.clone(),
            ci: BTreeMap::new(),
            known_requests: self.known.clone(),
            // The simulated Hadron wrote every status file itself.
            own_statuses: Arc::new(self.statuses.clone()),
        }
    }

    fn apply(&mut self, plan: &Plan, now: Millis) {
        for action in &plan.actions {
            match action {
                Action::Start(a) => {
                    let a = Attempt { state: AttemptState::Running, started_at: Some(now), ..a.clone() };
                    self.store.insert(a.worker.clone(), a.clone());
                    self.runs.insert(a.worker.clone(), DriverRun { attempt: a, state: RunState::Running });
                }
                Action::Cancel { worker, .. } => {
                    if let Some(a) = self.store.get_mut(worker) {
                        a.state = AttemptState::Cancelled;
                        a.finished_at = Some(now);
                        let a = a.clone();
                        self.runs.insert(worker.clone(), DriverRun { attempt: a, state: RunState::Finished });
                    }
                }
                Action::Adopt(a) | Action::Record(a) => {
                    self.store.insert(a.worker.clone(), a.clone());
                }
                Action::OpenApproval { request, gate, opened_for, .. } => {
                    self.branches.insert((request.clone(), gate.clone()), opened_for.clone());
                }
                Action::Forget { request } => {
                    self.known.remove(request);
                }
            }
        }
        for (name, view) in &plan.requests {
            if !view.generation.is_empty() {
                self.known.insert(name.clone(), view.generation.clone());
            }
            let prev = self.statuses.get(name).map(|s| s.as_ref());
            let status = render::render(view, prev, "rev", now, &BTreeMap::new());
            // An unchanged file is the same file (as the catalog keeps it).
            if prev != Some(&status) {
                self.statuses.insert(name.clone(), Arc::new(status));
            }
        }
        for name in &plan.deleted {
            self.statuses.remove(name);
        }
    }

    fn finish(&mut self, worker: &str, ok: bool, now: Millis) {
        if let Some(run) = self.runs.get_mut(worker)
            && run.state == RunState::Running
        {
            run.state = RunState::Finished;
            run.attempt.state = if ok { AttemptState::Succeeded } else { AttemptState::Failed };
            run.attempt.finished_at = Some(now);
            run.attempt.tokens_in = 6;
            run.attempt.tokens_out = 4;
            run.attempt.pushed_commit = ok.then(|| format!("c-{worker}"));
            run.attempt.reason = if ok { "Completed".into() } else { "AgentExitNonZero".into() };
        }
    }
}

fn desired(reqs: &[Req], max_workers: u32, world: &World) -> DesiredState {
    desired_with(reqs, max_workers, world, AGENT)
}

/// [`desired`] with agent `a` as `agent` says.
fn desired_with(reqs: &[Req], max_workers: u32, world: &World, agent: &str) -> DesiredState {
    let settings = settings(max_workers);
    let mut files: Vec<(String, Vec<u8>)> =
        vec![("hadron.yaml".into(), settings.into_bytes()), ("agents/a.yaml".into(), agent.as_bytes().to_vec())];
    for r in reqs {
        files.push((format!("requests/{}.yaml", r.name), r.yaml().into_bytes()));
    }
    let loaded = Catalog::load(files.iter().map(|(p, b)| (p.as_str(), b.as_slice())));
    assert_eq!(loaded.error_count(), 0, "{:?}", loaded.diagnostics);
    let mut d = loaded.desired;
    d.statuses = world.statuses.clone();
    d
}

fn req(name: &str) -> Req {
    Req { name: name.into(), stages: 2, repos: 2, gate_after: None, priority: 0, suspend: false, title_rev: 0, budget_tokens: None }
}

fn starts(plan: &Plan) -> Vec<&Attempt> {
    plan.actions.iter().filter_map(|a| if let Action::Start(a) = a { Some(a) } else { None }).collect()
}

/// Request `r` (two stages, an approval gate after the first) run to the
/// gate: the world after applying the plan that stops there, and that plan.
fn waiting_at_the_gate(cfg: &PlanConfig) -> (World, Vec<Req>, Plan) {
    let mut world = World::default();
    let reqs = vec![Req { repos: 1, stages: 2, gate_after: Some(0), ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, cfg);
    world.apply(&p, 0);
    world.finish(&starts(&p)[0].worker.clone(), true, 1);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 2, cfg);
    world.apply(&p, 2);
    (world, reqs, p)
}

#[test]
fn runs_stages_in_order_one_worker_per_repo() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![req("r")];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    let s: Vec<(&str, &str, u32)> = starts(&p).iter().map(|a| (a.stage.as_str(), a.repo.as_str(), a.attempt)).collect();
    assert_eq!(s, [("s0", "../repo-0.git", 1), ("s0", "../repo-1.git", 1)]);
    world.apply(&p, 0);
    assert_eq!(world.statuses["r"].status.phase, Phase::Running);
    // One repo done: the next stage waits for the other.
    let w0 = starts(&p)[0].worker.clone();
    let w1 = starts(&p)[1].worker.clone();
    world.finish(&w0, true, 10);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 10, &cfg);
    assert!(starts(&p).is_empty());
    world.apply(&p, 10);
    world.finish(&w1, true, 20);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 20, &cfg);
    assert_eq!(starts(&p).iter().map(|a| a.stage.as_str()).collect::<Vec<_>>(), ["s1", "s1"]);
    world.apply(&p, 20);
    for w in starts(&p).iter().map(|a| a.worker.clone()).collect::<Vec<_>>() {
        world.finish(&w, true, 30);
    }
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 30, &cfg);
    world.apply(&p, 30);
    let st = &world.statuses["r"].status;
    assert_eq!(st.phase, Phase::Succeeded);
    assert_eq!(st.stages.len(), 4);
    assert_eq!(st.total_tokens, 40);
    assert_eq!((st.total_tokens_in, st.total_tokens_out), (24, 16), "input and output tokens apart, as budgets bill them");
    assert!(st.stages.iter().all(|s| (s.tokens_in, s.tokens_out, s.tokens) == (6, 4, 10)), "{:?}", st.stages);
    let yaml = crate::status::render::to_yaml(&world.statuses["r"]);
    assert!(yaml.contains("totalTokensIn: 24") && yaml.contains("tokensOut: 4"), "{yaml}");
    assert_eq!(st.conditions[0].status, "True");
}

#[test]
fn each_installation_names_its_workers_with_its_own_names() {
    let world = World::default();
    let reqs = vec![req("r")];
    let names = |installation: &str| -> Vec<String> {
        let cfg = PlanConfig { installation: Installation::named(installation).expect("a label"), ..PlanConfig::default() };
        starts(&plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg)).iter().map(|a| a.worker.clone()).collect()
    };
    let (a, b) = (names("team-a"), names("team-b"));
    assert_eq!(a.len(), 2);
    assert_eq!(a, names("team-a"), "replicas of one installation name the same workers");
    assert!(a.iter().all(|w| !b.contains(w)), "the same request in two installations never shares a worker name: {a:?} {b:?}");
}

#[test]
fn success_message_counts_stages_in_words_that_fit() {
    let cfg = PlanConfig::default();
    for (stages, message) in [(1, "stage s0 succeeded"), (2, "all 2 stages succeeded")] {
        let mut world = World::default();
        let reqs = vec![Req { stages, repos: 1, ..req("r") }];
        for t in 0..=u64::from(stages) {
            let t = i64::try_from(t).expect("small") * 10;
            let p = plan(&desired(&reqs, 8, &world), &world.observed(), t, &cfg);
            world.apply(&p, t);
            for w in starts(&p).iter().map(|a| a.worker.clone()).collect::<Vec<_>>() {
                world.finish(&w, true, t + 5);
            }
        }
        let st = &world.statuses["r"].status;
        assert_eq!(st.phase, Phase::Succeeded);
        assert_eq!(st.message, message);
    }
}

#[test]
fn retries_after_backoff_then_fails() {
    let cfg = PlanConfig { backoff_base_ms: 1000, ..PlanConfig::default() };
    let mut world = World::default();
    let reqs = vec![Req { repos: 1, stages: 1, ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let w = starts(&p)[0].worker.clone();
    world.finish(&w, false, 100);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 200, &cfg);
    assert!(starts(&p).is_empty(), "no retry before the backoff");
    let wake = p.wake_at.expect("a wake-up for the retry");
    assert!((100 + 800..=100 + 1200).contains(&wake), "backoff with jitter: {wake}");
    world.apply(&p, 200);
    assert!(world.statuses["r"].status.message.contains("retrying"), "{}", world.statuses["r"].status.message);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), wake, &cfg);
    let s = starts(&p);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].attempt, 2);
    world.apply(&p, wake);
    let w2 = s[0].worker.clone();
    world.finish(&w2, false, wake + 10);
    // maxAttempts: 2 in settings → Failed, no third attempt.
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), wake + 1_000_000, &cfg);
    assert!(starts(&p).is_empty());
    assert_eq!(p.requests["r"].phase, Phase::Failed);
    assert_eq!(p.requests["r"].reason, "StageFailed");
}

#[test]
fn a_retry_resumes_the_failed_attempt_s_session_only_when_the_agent_asks_and_there_is_one() {
    const RESUMING: &str = "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: a\nspec:\n  command: [sh, run.sh]\n  resume:\n    command: [sh, resume.sh, \"{{sessionId}}\"]\n";
    let cfg = PlanConfig { backoff_base_ms: 1000, ..PlanConfig::default() };
    let reqs = vec![Req { repos: 1, stages: 1, ..req("r") }];
    // (agent, session id of the failed attempt) → what the retry carries.
    let cases = [(RESUMING, Some("ses-1"), Some("ses-1")), (RESUMING, None, None), (AGENT, Some("ses-1"), None), (AGENT, None, None)];
    for (agent, session, want) in cases {
        let mut world = World::default();
        let p = plan(&desired_with(&reqs, 8, &world, agent), &world.observed(), 0, &cfg);
        let first = starts(&p);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].resume_session, None, "a first attempt has nothing to resume");
        world.apply(&p, 0);
        let w = first[0].worker.clone();
        world.finish(&w, false, 100);
        world.runs.get_mut(&w).expect("the run").attempt.session_id = session.map(str::to_owned);
        let p = plan(&desired_with(&reqs, 8, &world, agent), &world.observed(), 1_000_000, &cfg);
        let retry = starts(&p);
        assert_eq!(retry.len(), 1, "the retry starts");
        assert_eq!(retry[0].attempt, 2);
        assert_eq!(retry[0].resume_session.as_deref(), want, "agent resumes: {}, session: {session:?}", agent.contains("resume"));
    }
    // A run that was cancelled (suspend, then resume) starts afresh.
    let mut world = World::default();
    let p = plan(&desired_with(&reqs, 8, &world, RESUMING), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let w = starts(&p)[0].worker.clone();
    let run = world.runs.get_mut(&w).expect("the run");
    run.state = RunState::Finished;
    run.attempt.state = AttemptState::Cancelled;
    run.attempt.finished_at = Some(50);
    run.attempt.session_id = Some("ses-1".into());
    let p = plan(&desired_with(&reqs, 8, &world, RESUMING), &world.observed(), 1_000_000, &cfg);
    let again = starts(&p);
    assert_eq!(again.len(), 1, "{:?}", p.actions);
    assert_eq!(again[0].resume_session, None, "only a failed attempt's session is continued");
}

#[test]
fn approval_gate_waits_goes_stale_on_edit_and_resumes() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let mut reqs = vec![Req { repos: 1, stages: 2, gate_after: Some(0), ..req("r") }];
    let mut now = 0;
    // Run stage s0.
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
    world.apply(&p, now);
    world.finish(&starts(&p)[0].worker.clone(), true, 1);
    now = 2;
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
    assert!(p.actions.iter().any(|a| matches!(a, Action::OpenApproval { gate, .. } if gate == "review")));
    assert_eq!(p.requests["r"].phase, Phase::WaitingForApproval);
    world.apply(&p, now);
    // Opening again is not repeated.
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
    assert!(!p.actions.iter().any(|a| matches!(a, Action::OpenApproval { .. })));
    let gen1 = p.requests["r"].generation.clone();
    // Approve, then edit the request: a new generation starts over.
    world.approvals.insert(("r".into(), "review".into()), ApprovalState::Approved { by: "bob".into(), revision: 0 });
    reqs[0].title_rev = 1;
    let d = desired(&reqs, 8, &world);
    let gen2 = d.requests["r"].generation();
    assert_ne!(gen1, gen2);
    world.approvals.insert(("r".into(), "review".into()), ApprovalState::Stale { given_for: gen1.clone() });
    let p = plan(&d, &world.observed(), now, &cfg);
    assert_eq!(starts(&p).len(), 1, "the new generation starts at stage s0 again");
    assert!(p.requests["r"].message.contains("spec changed"), "{}", p.requests["r"].message);
    world.apply(&p, now);
    world.finish(&starts(&p)[0].worker.clone(), true, 3);
    now = 4;
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
    assert_eq!(p.requests["r"].phase, Phase::WaitingForApproval);
    assert!(p.requests["r"].message.contains("request changed"), "{}", p.requests["r"].message);
    world.apply(&p, now);
    world.approvals.insert(("r".into(), "review".into()), ApprovalState::Approved { by: "bob".into(), revision: 0 });
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
    assert_eq!(starts(&p).iter().map(|a| a.stage.as_str()).collect::<Vec<_>>(), ["s1"]);
}

#[test]
fn a_rejected_approval_reopens_the_branch_once_per_rejected_merge_and_keeps_waiting() {
    let cfg = PlanConfig::default();
    let (mut world, reqs, _) = waiting_at_the_gate(&cfg);
    let key = ("r".to_owned(), "review".to_owned());
    let rejected = |by: &str, commit: &str| ApprovalState::Rejected { by: by.into(), why: "not allowed".into(), commit: commit.into() };
    world.approvals.insert(key.clone(), rejected("mallory", "c1"));
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 3, &cfg);
    assert_eq!(p.requests["r"].phase, Phase::WaitingForApproval);
    assert!(starts(&p).is_empty(), "a rejected approval starts nothing");
    assert!(p.requests["r"].message.contains("mallory"), "{}", p.requests["r"].message);
    let reopened: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::OpenApproval { reopen, opened_for, summary, .. } => Some((*reopen, opened_for.clone(), summary.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(reopened.len(), 1, "{reopened:?}");
    assert!(reopened[0].0 && reopened[0].1.ends_with("after c1") && reopened[0].2.contains("mallory"), "{reopened:?}");
    world.apply(&p, 3);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 4, &cfg);
    assert!(!p.actions.iter().any(|a| matches!(a, Action::OpenApproval { .. })), "not re-opened twice for one merge");
    world.approvals.insert(key.clone(), rejected("alice", "c2"));
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 5, &cfg);
    assert!(p.actions.iter().any(|a| matches!(a, Action::OpenApproval { opened_for, .. } if opened_for.ends_with("after c2"))));
    world.apply(&p, 5);
    world.approvals.insert(key, ApprovalState::Approved { by: "bob".into(), revision: 0 });
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 6, &cfg);
    assert_eq!(starts(&p).iter().map(|a| a.stage.as_str()).collect::<Vec<_>>(), ["s1"]);
}

#[test]
fn a_new_worker_is_given_what_is_left_of_the_token_budget() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![Req { repos: 2, stages: 1, budget_tokens: Some(25), ..req("r") }];
    let d = desired(&reqs, 8, &world);
    let p = plan(&d, &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let first = starts(&p)[0].worker.clone();
    world.finish(&first, false, 5); // 10 tokens
    let attempts: Vec<Attempt> = world.runs.values().map(|r| r.attempt.clone()).collect();
    let request = &d.requests["r"];
    assert_eq!(super::remaining_spend(request, &d, &attempts), (Some(15), None));
    let other = Attempt { request: "other".into(), tokens_in: 1000, ..attempts[0].clone() };
    assert_eq!(super::remaining_spend(request, &d, &[other]).0, Some(25), "another request's attempts do not count");
    let over = Attempt { tokens_in: 1000, ..attempts[0].clone() };
    assert_eq!(super::remaining_spend(request, &d, &[over]).0, Some(0));
}

#[test]
fn budget_exceeded_fails_and_cancels() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![Req { repos: 2, stages: 2, budget_tokens: Some(10), ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let first = starts(&p)[0].worker.clone();
    world.finish(&first, true, 5); // 10 tokens: the budget is reached
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 6, &cfg);
    assert_eq!(p.requests["r"].phase, Phase::Failed);
    assert_eq!(p.requests["r"].reason, "BudgetExceeded");
    assert!(p.actions.iter().any(|a| matches!(a, Action::Cancel { reason, .. } if reason == "BudgetExceeded")));
    assert!(starts(&p).is_empty());
}

#[test]
fn lost_worker_is_marked_failed_and_orphan_is_adopted() {
    let cfg = PlanConfig { backoff_base_ms: 0, ..PlanConfig::default() };
    let mut world = World::default();
    let reqs = vec![Req { repos: 1, stages: 1, ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let w = starts(&p)[0].worker.clone();
    world.runs.remove(&w); // the driver forgot it: stopped reporting
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 10, &cfg);
    assert!(p.actions.iter().any(|a| matches!(a, Action::Record(a) if a.worker == w && a.reason == "WorkerLost")));
    assert_eq!(starts(&p).len(), 1, "retried as attempt 2");
    // The store is deleted; the driver still knows a run: adopted, not restarted.
    let mut fresh = World::default();
    let run = DriverRun { attempt: Attempt { state: AttemptState::Running, ..starts(&p)[0].clone() }, state: RunState::Running };
    fresh.runs.insert(run.attempt.worker.clone(), run.clone());
    let p2 = plan(&desired(&reqs, 8, &fresh), &fresh.observed(), 20, &cfg);
    assert!(p2.actions.iter().any(|a| matches!(a, Action::Adopt(a) if a.worker == run.attempt.worker)));
    assert!(starts(&p2).is_empty());
}

#[test]
fn finished_stages_in_hadrons_own_status_files_are_not_run_again() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![Req { repos: 1, stages: 2, ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    world.finish(&starts(&p)[0].worker.clone(), true, 1);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 2, &cfg);
    world.apply(&p, 2); // s1 started, status written
    // Attempt and run records gone; the status files are Hadron's own (the
    // store still holds their digests).
    let rebuilt = World { statuses: world.statuses.clone(), ..World::default() };
    let p = plan(&desired(&reqs, 8, &rebuilt), &rebuilt.observed(), 3, &cfg);
    let s = starts(&p);
    // s0 is not run again; s1's attempt 1 is started under the same worker
    // name, so a driver that still has that run finds it instead of starting twice.
    assert_eq!(s.iter().map(|a| (a.stage.as_str(), a.attempt)).collect::<Vec<_>>(), [("s1", 1)]);
    assert_eq!(s[0].worker, world.store.values().find(|a| a.stage == "s1").map(|a| a.worker.clone()).unwrap_or_default());
}

/// A status file Hadron cannot vouch for: in git (desired), not among its own.
fn untrusted(world: &World) -> Observed {
    Observed { own_statuses: Arc::default(), ..world.observed() }
}

#[test]
fn a_status_file_hadron_cannot_vouch_for_decides_nothing() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![Req { repos: 1, stages: 2, ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let s0 = starts(&p)[0].worker.clone();
    world.finish(&s0, true, 1);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 2, &cfg);
    world.apply(&p, 2);
    // The store was lost with the run records: the status file in git says
    // s0 succeeded, but nothing Hadron keeps vouches for it.
    let rebuilt = World { statuses: world.statuses.clone(), ..World::default() };
    let p = plan(&desired(&reqs, 8, &rebuilt), &untrusted(&rebuilt), 3, &cfg);
    let s = starts(&p);
    // s0 runs again under the same deterministic worker name: the worker
    // finds its pushed commit by the `Hadron-Worker:` trailer instead of
    // running the agent twice.
    assert_eq!(s.iter().map(|a| (a.stage.as_str(), a.worker.as_str())).collect::<Vec<_>>(), [("s0", s0.as_str())]);
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Adopt(_))), "nothing adopted from the file");
}

#[test]
fn a_forged_succeeded_at_an_approval_gate_is_not_obeyed() {
    let cfg = PlanConfig::default();
    let (world, reqs, p) = waiting_at_the_gate(&cfg);
    assert_eq!(p.requests["r"].phase, Phase::WaitingForApproval);
    // A person edits status/r.yaml: phase Succeeded.
    let mut forged = (*world.statuses["r"]).clone();
    forged.status.phase = Phase::Succeeded;
    let mut d = desired(&reqs, 8, &world);
    d.statuses.insert("r".into(), Arc::new(forged.clone()));
    let mut obs = world.observed();
    Arc::make_mut(&mut obs.own_statuses).remove("r");
    let p = plan(&d, &obs, 3, &cfg);
    assert_eq!(p.requests["r"].phase, Phase::WaitingForApproval, "{}", p.requests["r"].message);
    assert!(starts(&p).is_empty(), "polish does not start without the approval");
    // The same edit on a request with a live worker cancels nothing.
    let reqs2 = vec![Req { repos: 1, stages: 1, ..req("q") }];
    let mut w2 = World::default();
    let p = plan(&desired(&reqs2, 8, &w2), &w2.observed(), 0, &cfg);
    w2.apply(&p, 0);
    let mut forged = (*w2.statuses["q"]).clone();
    forged.status.phase = Phase::Succeeded;
    let mut d = desired(&reqs2, 8, &w2);
    d.statuses.insert("q".into(), Arc::new(forged));
    let p = plan(&d, &untrusted(&w2), 1, &cfg);
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Cancel { .. })), "{:?}", p.actions);
    assert_eq!(p.requests["q"].phase, Phase::Running);
}

#[test]
fn a_new_request_pushed_with_a_status_claiming_success_still_runs() {
    let cfg = PlanConfig::default();
    // What Hadron would write after running it: rendered in another world.
    let mut other = World::default();
    let reqs = vec![Req { repos: 1, stages: 1, ..req("n") }];
    let p = plan(&desired(&reqs, 8, &other), &other.observed(), 0, &cfg);
    other.apply(&p, 0);
    other.finish(&starts(&p)[0].worker.clone(), true, 1);
    let p = plan(&desired(&reqs, 8, &other), &other.observed(), 2, &cfg);
    other.apply(&p, 2);
    assert_eq!(other.statuses["n"].status.phase, Phase::Succeeded);
    // Pushed together with the request into a fresh control repo.
    let fresh = World { statuses: other.statuses.clone(), ..World::default() };
    let p = plan(&desired(&reqs, 8, &fresh), &untrusted(&fresh), 3, &cfg);
    assert_eq!(starts(&p).len(), 1, "the stage runs: a status file is no evidence");
    assert_ne!(p.requests["n"].phase, Phase::Succeeded);
}

#[test]
fn deleted_and_suspended_requests_cancel_their_workers() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let mut reqs = vec![req("a"), req("b")];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    reqs[0].suspend = true;
    reqs.remove(1);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 1, &cfg);
    let cancels: Vec<&str> =
        p.actions.iter().filter_map(|a| if let Action::Cancel { reason, .. } = a { Some(reason.as_str()) } else { None }).collect();
    assert_eq!(cancels.iter().filter(|r| **r == "Suspended").count(), 2);
    assert_eq!(cancels.iter().filter(|r| **r == "Deleted").count(), 2);
    assert_eq!(p.requests["a"].phase, Phase::Cancelled);
    world.apply(&p, 1);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 2, &cfg);
    assert!(p.actions.iter().any(|a| matches!(a, Action::Forget { request } if request == "b")));
    assert_eq!(p.deleted, ["b"]);
}

#[test]
fn a_request_that_fails_for_good_stops_its_other_repos_in_the_same_pass() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![Req { repos: 2, stages: 1, ..req("f") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let first: Vec<String> = starts(&p).iter().map(|a| a.worker.clone()).collect();
    assert_eq!(first.len(), 2, "one worker per repo");
    // The first repo's worker fails every attempt (retried after its backoff) while the other runs.
    let (mut failing, mut now) = (first[0].clone(), 1);
    let p = loop {
        world.finish(&failing, false, now);
        now += 1_000_000;
        let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
        if p.requests["f"].phase == Phase::Failed {
            break p;
        }
        assert!(now < 10_000_000, "never failed: {:?}", p.requests["f"]);
        world.apply(&p, now);
        failing = starts(&p).first().expect("a retry of the failing repo").worker.clone();
    };
    let stopped = p.actions.iter().any(|a| matches!(a, Action::Cancel { worker, reason } if *worker == first[1] && reason == "Terminal"));
    assert!(stopped, "the other repo's worker stops in the pass that decides the failure: {:?}", p.actions);
}

#[test]
fn priority_decides_who_gets_scarce_slots() {
    let cfg = PlanConfig::default();
    let world = World::default();
    let reqs = vec![Req { repos: 1, ..req("low") }, Req { repos: 1, priority: 5, ..req("high") }];
    let p = plan(&desired(&reqs, 1, &world), &world.observed(), 0, &cfg);
    assert_eq!(starts(&p).iter().map(|a| a.request.as_str()).collect::<Vec<_>>(), ["high"]);
    assert_eq!(p.requests["low"].phase, Phase::Pending);
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Event {
    Finish { pick: usize, ok: bool },
    Tick(i64),
    Approve(usize),
    Edit(usize),
    ToggleSuspend(usize),
    Delete(usize),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Event::Finish { pick, ok }),
        2 => (1i64..100_000).prop_map(Event::Tick),
        1 => any::<usize>().prop_map(Event::Approve),
        1 => any::<usize>().prop_map(Event::Edit),
        1 => any::<usize>().prop_map(Event::ToggleSuspend),
        1 => any::<usize>().prop_map(Event::Delete),
    ]
}

/// What happens in the world between two passes.
fn happen(ev: Event, reqs: &mut Vec<Req>, world: &mut World, now: &mut Millis) {
    match ev {
        Event::Finish { pick, ok } => {
            let running: Vec<String> =
                world.runs.values().filter(|r| r.state == RunState::Running).map(|r| r.attempt.worker.clone()).collect();
            if !running.is_empty() {
                world.finish(&running[pick % running.len()], ok, *now);
            }
        }
        Event::Tick(ms) => *now += ms,
        Event::Approve(i) => {
            let r = &reqs[i % reqs.len()];
            world.approvals.insert((r.name.clone(), "review".into()), ApprovalState::Approved { by: "bob".into(), revision: 0 });
        }
        Event::Edit(i) => {
            let n = reqs.len();
            let r = &mut reqs[i % n];
            r.title_rev = r.title_rev.wrapping_add(1);
            world.approvals.remove(&(r.name.clone(), "review".into()));
        }
        Event::ToggleSuspend(i) => {
            let n = reqs.len();
            reqs[i % n].suspend = !reqs[i % n].suspend;
        }
        Event::Delete(i) => {
            if reqs.len() > 1 {
                let n = reqs.len();
                reqs.remove(i % n);
            }
        }
    }
}

fn request_strategy() -> impl Strategy<Value = Vec<Req>> {
    prop::collection::vec((1u8..4, 1u8..3, prop::option::of(0u8..3), -2i32..3, prop::option::of(20u64..80)), 1..5).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (stages, repos, gate_after, priority, budget_tokens))| Req {
                name: format!("r{i}"),
                stages,
                repos,
                gate_after,
                priority,
                suspend: false,
                title_rev: 0,
                budget_tokens,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Over random histories (workers finishing, time passing, approvals,
    /// edits, suspensions, deletions) the invariants hold, and planning
    /// with the memo of the passes before is planning from scratch.
    #[test]
    fn invariants_hold_over_random_histories(
        mut reqs in request_strategy(),
        max_workers in 1u32..5,
        events in prop::collection::vec(event(), 1..60),
    ) {
        let cfg = PlanConfig { backoff_base_ms: 1000, ..PlanConfig::default() };
        let mut world = World::default();
        let mut now: Millis = 0;
        let mut terminal: BTreeMap<(String, String), Phase> = BTreeMap::new();
        let mut memo = PlanMemo::default();
        let mut prev: Option<DesiredState> = None;
        for ev in events {
            let d = unchanged_kept(prev.as_ref(), desired(&reqs, max_workers, &world));
            let observed = world.observed();
            let p = plan(&d, &observed, now, &cfg);
            // The incremental plan is the plan: planning with the memo of
            // the passes before gives exactly what planning from scratch gives.
            let incremental = plan_incremental(&d, &observed, now, &cfg, &mut memo);
            prop_assert_eq!(&incremental, &p);
            world.apply(&p, now);

            // Never two live workers for one (request, generation, stage, repo).
            let mut live = BTreeMap::new();
            for a in world.store.values().filter(|a| a.state.is_live()) {
                let key = (a.request.clone(), a.generation.clone(), a.stage.clone(), a.repo.clone());
                prop_assert!(live.insert(key, a.worker.clone()).is_none(), "two live workers for one key");
            }
            // Never more than the global limit.
            prop_assert!(live.len() as u32 <= max_workers, "{} live > limit {max_workers}", live.len());
            // Re-planning after applying the effects starts nothing new.
            let again = plan(&desired(&reqs, max_workers, &world), &world.observed(), now, &cfg);
            prop_assert!(starts(&again).is_empty(), "re-plan started {:?}", starts(&again));
            // Terminal phases stay terminal for their generation.
            for (name, view) in &p.requests {
                let key = (name.clone(), view.generation.clone());
                if let Some(before) = terminal.get(&key) {
                    prop_assert_eq!(*before, view.phase, "{} left a terminal phase", name);
                }
                if matches!(view.phase, Phase::Succeeded | Phase::Failed) {
                    terminal.insert(key, view.phase);
                }
            }

            happen(ev, &mut reqs, &mut world, &mut now);
            now += 1;
            prev = Some(d);
        }
    }
}

#[test]
fn intent_without_a_started_worker_is_started_again_under_the_same_name() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![Req { repos: 1, stages: 1, ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    let first = starts(&p)[0].clone();
    // The executor stored the intent, then crashed before the driver started it.
    world.store.insert(first.worker.clone(), first.clone());
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 1, &cfg);
    let again = starts(&p);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].worker, first.worker);
    assert_eq!(again[0].attempt, 1);
}

#[test]
fn a_run_that_never_started_is_started_again_not_counted_as_failed() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![Req { repos: 1, stages: 1, ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    let first = starts(&p)[0].clone();
    world.store.insert(first.worker.clone(), first.clone());
    let lost = Attempt { reason: "NotStarted".into(), ..first.clone() };
    world.runs.insert(first.worker.clone(), DriverRun { attempt: lost, state: RunState::Lost });
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 1, &cfg);
    let again = starts(&p);
    assert_eq!(again.iter().map(|a| (a.worker.as_str(), a.attempt)).collect::<Vec<_>>(), [(first.worker.as_str(), 1)]);
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Record(_) | Action::Adopt(_))), "{:?}", p.actions);
}

// ---- untrusted numbers and text ----

#[test]
fn huge_token_sums_exceed_the_budget_instead_of_wrapping() {
    use crate::workers::usage::MAX_TOKENS_PER_ATTEMPT;
    let cfg = PlanConfig { backoff_base_ms: 0, ..PlanConfig::default() };
    // Sane per attempt, huge in sum: four repos at the per-attempt maximum
    // in and out are 8·10^12 tokens, over a budget of 7·10^12.
    let mut world = World::default();
    let reqs = vec![Req { repos: 4, stages: 1, budget_tokens: Some(7 * MAX_TOKENS_PER_ATTEMPT), ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let workers: Vec<String> = starts(&p).iter().map(|a| a.worker.clone()).collect();
    assert_eq!(workers.len(), 4);
    for w in &workers {
        world.finish(w, true, 5);
        let run = world.runs.get_mut(w).expect("the run was started");
        run.attempt.tokens_in = MAX_TOKENS_PER_ATTEMPT;
        run.attempt.tokens_out = MAX_TOKENS_PER_ATTEMPT;
    }
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 6, &cfg);
    assert_eq!((p.requests["r"].phase, p.requests["r"].reason.as_str()), (Phase::Failed, "BudgetExceeded"));
    assert!(p.requests["r"].message.contains("used 8000000000000 of maxTokens 7000000000000"), "{}", p.requests["r"].message);
    world.apply(&p, 6);
    assert_eq!(world.statuses["r"].status.total_tokens, 8 * MAX_TOKENS_PER_ATTEMPT);

    // Sums that would wrap (attempts the store can hold, i64::MAX each way)
    // saturate: the budget of 1000 is exceeded, not reset to a tiny sum.
    let mut world = World::default();
    let reqs = vec![Req { repos: 2, stages: 1, budget_tokens: Some(1000), ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    for a in starts(&p) {
        world.finish(&a.worker, true, 5);
        let run = world.runs.get_mut(&a.worker).expect("the run was started");
        run.attempt.tokens_in = i64::MAX as u64;
        run.attempt.tokens_out = i64::MAX as u64 + 2;
    }
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 6, &cfg);
    assert_eq!((p.requests["r"].phase, p.requests["r"].reason.as_str()), (Phase::Failed, "BudgetExceeded"));
    world.apply(&p, 6);
    assert_eq!(world.statuses["r"].status.total_tokens, u64::MAX);
}

#[test]
fn cost_sums_count_nan_as_infinite_and_negative_as_zero() {
    let a = |cost_usd: f64| Attempt { cost_usd, ..Attempt::from_test("w") };
    assert_eq!(total_cost(&[a(1.5), a(-100.0), a(2.0)]), 3.5);
    assert_eq!(total_cost(&[a(1.0), a(f64::NAN)]), f64::INFINITY);
    assert_eq!(total_cost(&[a(f64::MAX), a(f64::MAX)]), f64::INFINITY);
    assert_eq!(total_tokens(&[Attempt { tokens_in: u64::MAX, tokens_out: 1, ..a(0.0) }, a(0.0)]), u64::MAX);
}

impl Attempt {
    fn from_test(worker: &str) -> Attempt {
        Attempt {
            worker: worker.into(),
            request: "r".into(),
            generation: "g".into(),
            stage: "s0".into(),
            repo: "../repo-0.git".into(),
            attempt: 1,
            agent: "a".into(),
            state: AttemptState::Succeeded,
            ..Attempt::default()
        }
    }
}

/// The summary of the approval branch opened after a one-stage request's
/// first stage finished with `finished` done to its attempt.
fn approval_summary_after(finished: impl FnOnce(&mut Attempt)) -> String {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let reqs = vec![Req { repos: 1, stages: 2, gate_after: Some(0), ..req("r") }];
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
    world.apply(&p, 0);
    let w = starts(&p)[0].worker.clone();
    world.finish(&w, true, 5);
    finished(&mut world.runs.get_mut(&w).expect("the run was started").attempt);
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 6, &cfg);
    p.actions
        .iter()
        .find_map(|a| if let Action::OpenApproval { summary, .. } = a { Some(summary.clone()) } else { None })
        .expect("the approval branch is opened")
}

#[test]
fn a_multibyte_pushed_commit_does_not_panic_the_approval_summary() {
    let summary = approval_summary_after(|a| a.pushed_commit = Some("ééééééééééééé".into()));
    assert!(summary.contains("(commit éééééééééééé)"), "12 characters, not 12 bytes: {summary}");
}

#[test]
fn a_huge_hostile_summary_is_capped_in_the_approval_file_which_stays_valid_yaml() {
    let hostile = format!("---\nkind: Approval\n\"': {{[ <!-- `\u{1b}[2J\n{}", "x".repeat(1 << 20));
    let summary = approval_summary_after(|a| a.summary = hostile);
    assert!(summary.len() < crate::attempt::SUMMARY_MAX_BYTES + 200, "{} bytes", summary.len());
    assert!(summary.contains("kept]"), "a cut marker: {}", &summary[summary.len() - 100..]);
    let file = crate::gates::render_approval("r", "g", "1", 0, &summary).expect("renders");
    let back: crate::model::kinds::Approval = serde_saphyr::from_str(&file).expect("the approval file is one valid YAML document");
    assert_eq!(back.spec.summary, summary);
    assert_eq!(back.spec.request, "r");
}

/// Fragments of control-repo YAML, for trees that are almost right.
const FRAGMENTS: &[&str] = &[
    "apiVersion: hadron.dev/v1alpha1\n",
    "kind: ChangeRequest\n",
    "kind: RequestStatus\n",
    "kind: Agent\n",
    "kind: Approval\n",
    "metadata:\n  name: r\n",
    "spec:\n",
    "status:\n",
    "  observedGeneration: x\n",
    "  stages:\n",
    "    - name: s0\n",
    "      pushedCommit: \"é€😀\"\n",
    "      tokens: 18446744073709551615\n",
    "      costUSD: .nan\n",
    "      attempt: 4294967295\n",
    "  repos:\n    - url: ../repo-0.git\n",
    "  budget:\n    maxTokens: 18446744073709551615\n",
    "  gates:\n    - name: review\n      type: approval\n      after: s0\n",
    "&a [*a, *a]\n",
    "- ",
    ": ",
    "{",
    "[",
    "é",
    "\u{0}",
    "\t",
    "  ",
];

fn yamlish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..12).prop_map(|f| f.concat().into_bytes()),
    ]
}

fn tree_path() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["", "requests/", "status/", "agents/", "approvals/", "approvals/r/", "requests/x/", "../", "/"][..]),
        "[a-zé.-]{0,6}",
        prop::sample::select(&[".yaml", ".yml", "", "/"][..]),
    )
        .prop_map(|(dir, stem, ext)| format!("{dir}{stem}{ext}"))
}

/// One stage entry of a status file: fields either right or arbitrary.
fn stage_entry() -> impl Strategy<Value = (u8, bool, String, u32, String, Option<String>, String, String)> {
    (
        0u8..3,
        prop::bool::weighted(0.8),
        "\\PC{0,16}",
        prop_oneof![6 => Just(1u32), 1 => Just(2u32), 1 => Just(0u32), 1 => Just(u32::MAX), 1 => any::<u32>()],
        prop::sample::select(&["Succeeded", "Succeeded", "Succeeded", "Failed", "Cancelled", "Running", "Pending", "é"][..])
            .prop_map(str::to_owned),
        prop::option::weighted(0.8, prop_oneof!["[0-9a-f]{40}", "\\PC{0,44}", Just("ééééééééééééééééééééé".to_owned()),]),
        // Mostly numbers that parse, so that most files load and their
        // entries reach the planner; some that do not.
        prop_oneof![
            6 => (0u64..100_000).prop_map(|t| t.to_string()),
            2 => any::<u64>().prop_map(|t| t.to_string()),
            1 => prop::sample::select(&["18446744073709551616", "-1", "1e30"][..]).prop_map(str::to_owned),
        ],
        prop_oneof![
            6 => (0.0..10.0f64).prop_map(|c| format!("{c:?}")),
            2 => any::<f64>().prop_map(|c| format!("{c:?}")),
            2 => prop::sample::select(&[".nan", ".inf", "-.inf", "-0.5", "1e300", "NaN"][..]).prop_map(str::to_owned),
        ],
    )
}

/// One `stages` entry of a hand-written status file: stage index, whether to use the right worker name, a worker name otherwise, attempt, state, pushed commit, tokens, cost (as YAML text).
type StatusEntry = (u8, bool, String, u32, String, Option<String>, String, String);

fn status_file(generation: &str, entries: &[StatusEntry]) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut s = format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: RequestStatus\nmetadata:\n  name: r\nstatus:\n  observedRevision: rev\n  observedGeneration: {}\n  phase: Running\n  stages:\n",
        q(generation)
    );
    for (stage, right_worker, worker, attempt, state, commit, tokens, cost) in entries {
        let stage = format!("s{stage}");
        let repo = "../repo-0.git";
        let worker =
            if *right_worker { worker_name(&Installation::default(), "r", generation, &stage, repo, *attempt) } else { worker.clone() };
        s.push_str(&format!(
            "    - name: {stage}\n      repo: {repo}\n      worker: {}\n      attempt: {attempt}\n      state: {state}\n      tokens: {tokens}\n      costUSD: {cost}\n",
            q(&worker)
        ));
        if let Some(c) = commit {
            s.push_str(&format!("      pushedCommit: {}\n", q(c)));
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever people write into status files and the rest of the control
    /// repo, loading and planning (and rendering the statuses) do not panic,
    /// and what the planner adopts from a status file is what Hadron writes.
    #[test]
    fn hand_edited_control_repos_never_panic(
        entries in prop::collection::vec(stage_entry(), 0..6),
        tree in prop::collection::vec((tree_path(), yamlish()), 0..6),
        gate in any::<bool>(),
        budget in prop::option::of(prop_oneof![Just(u64::MAX), 1u64..100]),
    ) {
        let r = Req { repos: 1, stages: 2, gate_after: gate.then_some(0), budget_tokens: budget, ..req("r") };
        let generation = desired(std::slice::from_ref(&r), 8, &World::default()).requests["r"].generation();
        let mut files: Vec<(String, Vec<u8>)> = vec![
            ("hadron.yaml".into(), settings(8).into_bytes()),
            ("agents/a.yaml".into(), AGENT.as_bytes().to_vec()),
            ("requests/r.yaml".into(), r.yaml().into_bytes()),
            ("status/r.yaml".into(), status_file(&generation, &entries).into_bytes()),
        ];
        files.extend(tree);
        let loaded = Catalog::load(files.iter().map(|(p, b)| (p.as_str(), b.as_slice())));
        let cfg = PlanConfig::default();
        let p = plan(&loaded.desired, &Observed::default(), 0, &cfg);
        let mut observed = Observed::default();
        for action in &p.actions {
            if let Action::Adopt(a) = action {
                prop_assert!(a.pushed_commit.as_deref().is_none_or(crate::model::validate::is_commit_id), "{:?}", a.pushed_commit);
                prop_assert!(a.tokens() <= crate::workers::usage::MAX_TOTAL_TOKENS_PER_ATTEMPT);
                prop_assert!(crate::workers::usage::cost_is_sane(a.cost_usd), "{}", a.cost_usd);
                observed.attempts.push(a.clone());
            }
        }
        // Plan again with the adopted attempts in the store, as the next pass does.
        let p = plan(&loaded.desired, &observed, 1, &cfg);
        for view in p.requests.values() {
            let prev = loaded.desired.statuses.get(&view.name).map(|s| s.as_ref());
            let _ = render::render(view, prev, "rev", 1, &BTreeMap::new());
        }
    }
}

/// An edit a person might push: reword, (un)suspend, delete, reprioritise, or add a request.
#[derive(Debug, Clone)]
enum Edit {
    Reword(usize),
    ToggleSuspend(usize),
    Delete(usize),
    Reprioritise(usize),
    Add,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Reword),
        any::<usize>().prop_map(Edit::ToggleSuspend),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Reprioritise),
        Just(Edit::Add),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// `hadron plan` foretells the next pass: after a random history, a
    /// random change to the requests is previewed from the trees before and
    /// after and the status files; the planner's next pass on the changed
    /// tree then cancels exactly the workers the preview names, for the
    /// reason it gives, and works on the generations it names.
    #[test]
    fn the_preview_says_what_the_next_pass_does(
        mut reqs in request_strategy(),
        max_workers in 1u32..5,
        history in prop::collection::vec((any::<usize>(), prop::bool::weighted(0.8)), 0..8),
        suspended in prop::collection::vec(any::<bool>(), 4),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let cfg = PlanConfig { backoff_base_ms: 1000, ..PlanConfig::default() };
        for (r, s) in reqs.iter_mut().zip(&suspended) {
            r.suspend = *s && r.name.ends_with('1');
        }
        let mut world = World::default();
        let mut now: Millis = 0;
        for (pick, ok) in history {
            let p = plan(&desired(&reqs, max_workers, &world), &world.observed(), now, &cfg);
            world.apply(&p, now);
            let live: Vec<String> = world.runs.values().filter(|r| r.state == RunState::Running).map(|r| r.attempt.worker.clone()).collect();
            if !live.is_empty() {
                world.finish(&live[pick % live.len()], ok, now + 1);
            }
            now += 5_000;
        }
        // Two passes: the status files then list the workers the first one started.
        for _ in 0..2 {
            let p = plan(&desired(&reqs, max_workers, &world), &world.observed(), now, &cfg);
            world.apply(&p, now);
            now += 1;
        }

        let before = desired(&reqs, max_workers, &world);
        let mut changed = reqs.clone();
        for (k, e) in edits.iter().enumerate() {
            let n = changed.len();
            match *e {
                Edit::Reword(i) if n > 0 => changed[i % n].title_rev += 1,
                Edit::ToggleSuspend(i) if n > 0 => changed[i % n].suspend = !changed[i % n].suspend,
                Edit::Delete(i) if n > 1 => {
                    changed.remove(i % n);
                }
                Edit::Reprioritise(i) if n > 0 => changed[i % n].priority += 1,
                Edit::Add => changed.push(Req { repos: 1, ..req(&format!("new{k}")) }),
                _ => {}
            }
        }
        let after = desired(&changed, max_workers, &world);
        let foretold = preview::preview(&before, &after, &world.statuses);

        let cancels = |p: &Plan| -> BTreeMap<String, String> {
            p.actions.iter().filter_map(|a| if let Action::Cancel { worker, reason } = a { Some((worker.clone(), reason.clone())) } else { None }).collect()
        };
        // What the pass does anyway (without the change) is not the change's doing.
        let anyway = cancels(&plan(&before, &world.observed(), now, &cfg));
        let next = plan(&after, &world.observed(), now, &cfg);
        let caused: BTreeMap<String, String> = cancels(&next).into_iter().filter(|(w, _)| !anyway.contains_key(w)).collect();
        let named: BTreeMap<String, String> = foretold
            .requests
            .iter()
            .flat_map(|r| r.cancelled_workers.iter().map(|w| (w.clone(), r.cancel_reason.clone().unwrap_or_default())))
            .filter(|(w, _)| !anyway.contains_key(w))
            .collect();
        prop_assert_eq!(&caused, &named, "cancelled by the next pass vs named by the preview: {:?}", foretold);
        for r in &foretold.requests {
            match r.change {
                preview::Change::Cancelled if r.reason == "Deleted" => prop_assert!(!next.requests.contains_key(&r.name)),
                preview::Change::Created | preview::Change::Restarted | preview::Change::Resumed | preview::Change::Unchanged => {
                    let view = next.requests.get(&r.name);
                    prop_assert_eq!(view.map(|v| &v.generation), r.generation.as_ref(), "{}: {:?}", r.name, r.change);
                    if r.change == preview::Change::Restarted {
                        prop_assert_ne!(&r.previous_generation, &r.generation);
                    }
                }
                _ => {}
            }
        }
        prop_assert_eq!(foretold.count(preview::Change::Created), changed.iter().filter(|r| r.name.starts_with("new")).count());
    }
}

/// `desired` with the requests, settings and agents of `prev` where they
/// are equal: what the catalog does for files a push did not change.
fn unchanged_kept(prev: Option<&DesiredState>, mut next: DesiredState) -> DesiredState {
    let Some(prev) = prev else { return next };
    if prev.settings == next.settings {
        next.settings = prev.settings.clone();
    }
    for (name, agent) in next.agents.iter_mut() {
        if let Some(old) = prev.agents.get(name).filter(|old| *old == agent) {
            *agent = old.clone();
        }
    }
    for (name, request) in next.requests.iter_mut() {
        if let Some(old) = prev.requests.get(name).filter(|old| *old == request) {
            *request = old.clone();
        }
    }
    next
}

#[test]
fn a_pass_plans_again_only_the_requests_whose_inputs_changed() {
    let cfg = PlanConfig::default();
    let mut world = World::default();
    let mut reqs: Vec<Req> = (0..50).map(|i| Req { suspend: true, ..req(&format!("r{i:02}")) }).collect();
    reqs.push(Req { repos: 1, stages: 1, gate_after: Some(0), ..req("gated") });
    let mut memo = PlanMemo::default();
    let d = desired(&reqs, 8, &world);
    let p = plan_incremental(&d, &world.observed(), 0, &cfg, &mut memo);
    assert_eq!(memo.last_counts(), (0, 51));
    let worker = starts(&p)[0].worker.clone();
    world.apply(&p, 0);
    // Its own status files are new: every request once more; then none.
    let first = p.requests["r00"].clone();
    let p = plan_incremental(&d, &world.observed(), 1, &cfg, &mut memo);
    assert_eq!(memo.last_counts(), (0, 51));
    assert!(Arc::ptr_eq(&first, &p.requests["r00"]), "planned again to the same view: the view kept is handed out, not a copy");
    world.apply(&p, 1);
    let p2 = plan_incremental(&d, &world.observed(), 2, &cfg, &mut memo);
    assert_eq!(memo.last_counts(), (50, 1), "the gated request's worker runs: planned every pass");
    assert_eq!(p2, plan(&d, &world.observed(), 2, &cfg));
    // The worker finishes: the request waits at its gate, and stays kept.
    world.finish(&worker, true, 3);
    let p = plan_incremental(&d, &world.observed(), 4, &cfg, &mut memo);
    world.apply(&p, 4);
    assert_eq!(p.requests["gated"].phase, Phase::WaitingForApproval);
    plan_incremental(&d, &world.observed(), 5, &cfg, &mut memo);
    plan_incremental(&d, &world.observed(), 6, &cfg, &mut memo);
    assert_eq!(memo.last_counts(), (51, 0), "nothing changed, nothing planned");
    // One request edited: that one is planned again, the others kept.
    reqs[7].title_rev += 1;
    let d = unchanged_kept(Some(&d), desired(&reqs, 8, &world));
    let p = plan_incremental(&d, &world.observed(), 7, &cfg, &mut memo);
    assert_eq!(memo.last_counts(), (50, 1));
    assert_eq!(p, plan(&d, &world.observed(), 7, &cfg));
    // An approval (a webhook) makes the gated request dirty, nothing else.
    world.approvals.insert(("gated".into(), "review".into()), ApprovalState::Approved { by: "bob".into(), revision: 0 });
    world.apply(&p, 7);
    let p = plan_incremental(&d, &world.observed(), 8, &cfg, &mut memo);
    let (reused, planned) = memo.last_counts();
    assert!(planned >= 1 && reused >= 49, "reused {reused}, planned {planned}");
    assert_eq!(p.requests["gated"].phase, Phase::Succeeded);
    // New settings plan every request again.
    let d = desired(&reqs, 3, &world);
    plan_incremental(&d, &world.observed(), 9, &cfg, &mut memo);
    assert_eq!(memo.last_counts(), (0, 51));
    assert_eq!(memo.len(), 51);
    // A deleted request is forgotten.
    reqs.remove(3);
    let d = unchanged_kept(Some(&d), desired(&reqs, 3, &world));
    plan_incremental(&d, &world.observed(), 10, &cfg, &mut memo);
    assert_eq!((memo.last_counts(), memo.len()), ((50, 0), 50));
    assert!(PlanMemo::default().is_empty());
}

#[test]
fn an_invalid_usage_report_fails_the_stage_once_without_a_retry() {
    let cfg = PlanConfig { backoff_base_ms: 1000, ..PlanConfig::default() };
    for (reason, retried) in [
        ("AgentExitNonZero", true),
        (crate::workers::usage::INVALID_USAGE_REPORT, false),
        ("AgentFailed", true),
        (crate::attempt::AGENT_FAILED_FINAL, false),
    ] {
        let mut world = World::default();
        let reqs = vec![Req { repos: 1, stages: 1, ..req("r") }];
        let p = plan(&desired(&reqs, 8, &world), &world.observed(), 0, &cfg);
        world.apply(&p, 0);
        let w = starts(&p)[0].worker.clone();
        world.finish(&w, false, 100);
        let run = world.runs.get_mut(&w).expect("the run");
        run.attempt.reason = reason.into();
        run.attempt.summary = "the agent reported 1e300 input tokens".into();
        // Right after the failure, and long after any backoff.
        for now in [200, 1_000_000] {
            let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
            let view = &p.requests["r"];
            if retried {
                assert_ne!(view.phase, Phase::Failed, "{reason} is retried: {}", view.message);
            } else {
                assert!(starts(&p).is_empty(), "no retry of {reason} at {now}");
                assert_eq!((view.phase, view.reason.as_str()), (Phase::Failed, "StageFailed"), "{}", view.message);
                assert!(view.message.contains(&format!("({reason}, which is not retried)")), "{}", view.message);
                assert!(view.message.contains("1e300 input tokens"), "the status says why: {}", view.message);
            }
            world.apply(&p, now);
        }
        let attempts = world.store.values().filter(|a| a.request == "r").count();
        assert_eq!(attempts, if retried { 2 } else { 1 }, "{reason}");
    }
}

#[test]
fn changes_asked_at_a_gate_re_run_its_stage_then_the_gate_asks_again_until_revisions_run_out() {
    let cfg = PlanConfig::default();
    let (mut world, reqs, _) = waiting_at_the_gate(&cfg);
    let key = ("r".to_owned(), "review".to_owned());
    let changes = |revision: u32| ApprovalState::ChangesRequested {
        by: "bob".into(),
        revision,
        feedback: format!("round {revision}: rename x"),
        commit: format!("c{revision}"),
    };
    let mut now = 10;
    for round in 0..3u32 {
        world.approvals.insert(key.clone(), changes(round));
        let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
        let s = starts(&p);
        assert_eq!(s.iter().map(|a| (a.stage.as_str(), a.attempt)).collect::<Vec<_>>(), [("s0", round + 2)], "round {round}");
        let revision = p.requests["r"].revision.clone().expect("the view shows the revision");
        assert_eq!((revision.number, revision.max, revision.running, revision.by.as_str()), (round + 1, 3, true, "bob"));
        assert!(revision.feedback.contains(&format!("round {round}")));
        assert!(p.requests["r"].message.contains(&format!("revision {} of 3", round + 1)), "{}", p.requests["r"].message);
        world.apply(&p, now);
        // Still asked while the revision runs: nothing new starts.
        let p = plan(&desired(&reqs, 8, &world), &world.observed(), now + 1, &cfg);
        assert!(starts(&p).is_empty());
        world.finish(&s[0].worker.clone(), true, now + 2);
        now += 10;
        // The revision is back: the gate asks again, for the new revision.
        let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
        assert!(starts(&p).is_empty(), "the stage is not run again for the same changes");
        let opened: Vec<u32> =
            p.actions.iter().filter_map(|a| if let Action::OpenApproval { revision, .. } = a { Some(*revision) } else { None }).collect();
        assert_eq!(opened, [round + 1], "the branch is opened for the new revision");
        assert_eq!(p.requests["r"].phase, Phase::WaitingForApproval);
        assert!(!p.requests["r"].revision.as_ref().expect("shown").running);
        world.apply(&p, now);
        // An approval of an earlier revision does not count for this one.
        world.approvals.insert(key.clone(), ApprovalState::Approved { by: "bob".into(), revision: round });
        let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
        assert!(starts(&p).is_empty() && p.requests["r"].phase == Phase::WaitingForApproval, "{}", p.requests["r"].message);
    }
    // Three revisions done; asking a fourth time stalls the request.
    world.approvals.insert(key.clone(), changes(3));
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
    assert!(starts(&p).is_empty());
    assert_eq!((p.requests["r"].phase, p.requests["r"].reason.as_str()), (Phase::WaitingForApproval, "RevisionsExhausted"));
    assert!(p.requests["r"].message.contains("maxRevisions") && p.requests["r"].message.contains("edit requests/r.yaml"));
    assert!(
        p.actions.iter().any(|a| matches!(a, Action::OpenApproval { revision: 3, reopen: true, .. })),
        "the branch is opened again so that revision 3 can still be approved"
    );
    world.apply(&p, now);
    // Approving the latest revision lets the request go on.
    world.approvals.insert(key.clone(), ApprovalState::Approved { by: "bob".into(), revision: 3 });
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), now, &cfg);
    assert_eq!(starts(&p).iter().map(|a| a.stage.as_str()).collect::<Vec<_>>(), ["s1"]);
}

#[test]
fn a_failed_revision_attempt_is_retried_and_keeps_its_feedback() {
    let cfg = PlanConfig::default();
    let (mut world, reqs, _) = waiting_at_the_gate(&cfg);
    world.approvals.insert(
        ("r".to_owned(), "review".to_owned()),
        ApprovalState::ChangesRequested { by: "bob".into(), revision: 0, feedback: "rename x".into(), commit: "c".into() },
    );
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), 10, &cfg);
    world.apply(&p, 10);
    world.finish(&starts(&p)[0].worker.clone(), false, 11);
    let later = 11 + 60_000;
    let p = plan(&desired(&reqs, 8, &world), &world.observed(), later, &cfg);
    assert_eq!(starts(&p).iter().map(|a| a.attempt).collect::<Vec<_>>(), [3], "the revision is retried");
    assert!(p.requests["r"].revision.as_ref().is_some_and(|r| r.running && r.feedback == "rename x"));
}

#[test]
fn a_revision_continues_the_reviewed_attempt_s_session_when_the_agent_resumes() {
    const RESUMING: &str = "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: a\nspec:\n  command: [sh, run.sh]\n  resume:\n    command: [sh, resume.sh, \"{{sessionId}}\"]\n";
    let cfg = PlanConfig::default();
    let reqs = vec![Req { repos: 1, stages: 2, gate_after: Some(0), ..req("r") }];
    for (agent, want) in [(RESUMING, Some("ses-7")), (AGENT, None)] {
        let mut world = World::default();
        let p = plan(&desired_with(&reqs, 8, &world, agent), &world.observed(), 0, &cfg);
        world.apply(&p, 0);
        let w = starts(&p)[0].worker.clone();
        world.finish(&w, true, 1);
        world.runs.get_mut(&w).expect("the run").attempt.session_id = Some("ses-7".into());
        let p = plan(&desired_with(&reqs, 8, &world, agent), &world.observed(), 2, &cfg);
        world.apply(&p, 2);
        world.approvals.insert(
            ("r".to_owned(), "review".to_owned()),
            ApprovalState::ChangesRequested { by: "bob".into(), revision: 0, feedback: "rename x".into(), commit: "c".into() },
        );
        let p = plan(&desired_with(&reqs, 8, &world, agent), &world.observed(), 3, &cfg);
        let revision = starts(&p);
        assert_eq!(revision.iter().map(|a| a.attempt).collect::<Vec<_>>(), [2]);
        assert_eq!(revision[0].resume_session.as_deref(), want, "agent resumes: {}", agent.contains("resume"));
    }
}
