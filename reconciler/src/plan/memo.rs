//! Planning in proportion to the change: what planning each valid request
//! produced, kept with the inputs it was planned from, so that a pass plans
//! again only the requests whose inputs changed (the dirty set is what no
//! longer matches).
//!
//! A request's plan reads its request (the parsed file, compared by
//! identity: the catalog keeps the same `Arc` while the file is unchanged),
//! Hadron's own status file of it (by identity too), its attempts as merged
//! from the store and the driver, the approvals and approval branches of its
//! gates, the CI states of its pushed heads, and the settings, agents and
//! tunables shared by all. A request is kept only while its plan does not
//! depend on the clock: nothing of it runs (a live worker's wall time grows)
//! and no retry is scheduled (its message counts down). Whatever changes
//! otherwise (a push, a worker's exit, a webhook's approval or CI state, a
//! timer) changes one of these inputs, so the request is planned again;
//! [`super::plan`] without a memo is the reference the incremental plan is
//! tested against.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Action, ApprovalState, Attempt, CiState, Observed, PlanConfig, RequestView};
use crate::model::DesiredState;
use crate::model::kinds::{Agent, ChangeRequest, RequestStatus, Settings};

/// The workers a request would start, and its agent's concurrency limit.
pub(super) type Starts = (Option<u32>, Vec<Attempt>);

/// A gate's approval state and approval branch, as observed.
type GateSeen<'a> = (Option<&'a ApprovalState>, Option<&'a String>);

/// What planning one valid request produced: its view (before the limits
/// admit its workers), its actions (cancels, approval branches) in order,
/// and the workers it would start.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    /// The view.
    pub view: Arc<RequestView>,
    /// Its actions, in the order planning made them.
    pub actions: Vec<Action>,
    /// The workers it would start, in order, and its agent's concurrency limit.
    pub starts: Option<Starts>,
}

/// What a request's plan was made from, besides the request itself and
/// what all requests share. Empty for most requests (no attempts, no gate
/// state, no CI), so it is kept boxed only when it is not.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Observations {
    /// Its attempts, all generations, as merged.
    attempts: Vec<Attempt>,
    /// Its gates' approval states and approval branches, by gate.
    gates: Vec<(String, Option<ApprovalState>, Option<String>)>,
    /// The CI state of each pushed head, by repo and commit.
    ci: Vec<(String, String, CiState)>,
}

impl Observations {
    fn is_empty(&self) -> bool {
        self.attempts.is_empty() && self.gates.is_empty() && self.ci.is_empty()
    }
}

/// One kept request: four pointers for the usual request (nothing of it
/// observed, nothing to do), so that 10,000 of them stay small.
#[derive(Debug)]
struct Entry {
    request: Arc<ChangeRequest>,
    status: Option<Arc<RequestStatus>>,
    view: Arc<RequestView>,
    rest: Option<Box<Rest>>,
}

/// The rest of a kept request, when it is not empty.
#[derive(Debug)]
struct Rest {
    observations: Observations,
    actions: Vec<Action>,
    starts: Option<Starts>,
}

/// What all requests' plans share: when it changes, every request is planned again.
#[derive(Debug, Clone)]
struct Shared {
    settings: Arc<Settings>,
    agents: BTreeMap<String, Arc<Agent>>,
    cfg: PlanConfig,
}

impl Shared {
    fn holds(&self, desired: &DesiredState, cfg: &PlanConfig) -> bool {
        let same_agents = self.agents.len() == desired.agents.len()
            && self.agents.iter().zip(&desired.agents).all(|((n1, a1), (n2, a2))| n1 == n2 && (Arc::ptr_eq(a1, a2) || a1 == a2));
        (Arc::ptr_eq(&self.settings, &desired.settings) || self.settings == desired.settings) && same_agents && self.cfg == *cfg
    }
}

/// What one valid request's plan is made from, besides what all requests
/// share: the key under which the memo keeps its plan.
#[derive(Clone, Copy)]
pub(super) struct RequestInputs<'a> {
    /// The parsed request (compared by identity).
    pub request: &'a Arc<ChangeRequest>,
    /// The gate and CI observations, indexed once per plan.
    pub index: &'a Index<'a>,
    /// Its attempts, as merged.
    pub mine: &'a [&'a Attempt],
    /// Everything observed (for Hadron's own status file of it).
    pub observed: &'a Observed,
}

/// What the last passes planned, by request, with the inputs each plan was
/// made from. Owned by the loop between passes; planning with an empty memo
/// is planning from scratch.
#[derive(Debug, Default)]
pub struct PlanMemo {
    shared: Option<Shared>,
    entries: BTreeMap<String, Entry>,
    reused: usize,
    planned: usize,
}

impl PlanMemo {
    /// How many valid requests the last plan reused and how many it planned.
    pub fn last_counts(&self) -> (usize, usize) {
        (self.reused, self.planned)
    }

    /// How many requests are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts a plan: forgets everything when what all plans share changed.
    pub(super) fn begin(&mut self, desired: &DesiredState, cfg: &PlanConfig) {
        if !self.shared.as_ref().is_some_and(|s| s.holds(desired, cfg)) {
            self.entries.clear();
            self.shared = Some(Shared { settings: desired.settings.clone(), agents: desired.agents.clone(), cfg: cfg.clone() });
        }
        self.reused = 0;
        self.planned = 0;
    }

    /// What was planned for the request of `inputs` from exactly these inputs, if kept.
    pub(super) fn reuse(&mut self, inputs: &RequestInputs<'_>) -> Option<Planned> {
        let RequestInputs { request, index, mine, observed } = *inputs;
        let name = request.metadata.name.as_str();
        let entry = self.entries.get(name)?;
        let same = Arc::ptr_eq(&entry.request, request)
            && same_status(entry.status.as_ref(), observed.own_statuses.get(name))
            && match &entry.rest {
                None => mine.is_empty() && !index.touches(name, mine),
                Some(rest) => index.matches(name, mine, &rest.observations),
            };
        if !same {
            return None;
        }
        self.reused += 1;
        let (actions, starts) = entry.rest.as_ref().map_or((Vec::new(), None), |rest| (rest.actions.clone(), rest.starts.clone()));
        Some(Planned { view: entry.view.clone(), actions, starts })
    }

    /// Keeps what was planned for the request of `inputs`, unless it
    /// depends on the clock (`timed`: a live worker, a scheduled retry). A
    /// view equal to the one kept before is replaced by that one, so that a
    /// request planned again to the same view is not held twice (here and
    /// in the status renderer's cache).
    pub(super) fn keep(&mut self, inputs: &RequestInputs<'_>, planned: &mut Planned, timed: bool) {
        let RequestInputs { request, index, mine, observed } = *inputs;
        self.planned += 1;
        let name = &request.metadata.name;
        if let Some(kept) = self.entries.get(name.as_str()).filter(|kept| *kept.view == *planned.view) {
            planned.view = kept.view.clone();
        }
        if timed {
            self.entries.remove(name);
            return;
        }
        let observations = index.observations(name, mine);
        let rest = (!observations.is_empty() || !planned.actions.is_empty() || planned.starts.is_some())
            .then(|| Box::new(Rest { observations, actions: planned.actions.clone(), starts: planned.starts.clone() }));
        let entry =
            Entry { request: request.clone(), status: observed.own_statuses.get(name.as_str()).cloned(), view: planned.view.clone(), rest };
        self.entries.insert(name.clone(), entry);
    }

    /// Forgets the requests that are no longer valid requests.
    pub(super) fn retain(&mut self, desired: &DesiredState) {
        self.entries.retain(|name, _| desired.requests.contains_key(name));
    }
}

fn same_status(a: Option<&Arc<RequestStatus>>, b: Option<&Arc<RequestStatus>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The gate and CI observations by request, indexed once per plan.
pub(super) struct Index<'a> {
    /// (approval state, branch) by request, then gate.
    gates: BTreeMap<&'a str, BTreeMap<&'a str, GateSeen<'a>>>,
    /// CI states by commit: (repo, state).
    ci: BTreeMap<&'a str, Vec<(&'a str, CiState)>>,
}

impl<'a> Index<'a> {
    /// Indexes the approvals, approval branches and CI states of `observed`.
    pub(super) fn new(observed: &'a Observed) -> Self {
        let mut gates: BTreeMap<&str, BTreeMap<&str, GateSeen<'_>>> = BTreeMap::new();
        for ((request, gate), state) in &observed.approvals {
            gates.entry(request).or_default().entry(gate).or_default().0 = Some(state);
        }
        for ((request, gate), token) in &observed.approval_branches {
            gates.entry(request).or_default().entry(gate).or_default().1 = Some(token);
        }
        let mut ci: BTreeMap<&str, Vec<(&str, CiState)>> = BTreeMap::new();
        for ((repo, commit), state) in &observed.ci {
            ci.entry(commit).or_default().push((repo, *state));
        }
        Index { gates, ci }
    }

    /// Whether any gate or CI observation concerns request `name` with attempts `mine`.
    fn touches(&self, name: &str, mine: &[&Attempt]) -> bool {
        self.gates.contains_key(name) || mine.iter().any(|a| a.pushed_commit.as_deref().is_some_and(|c| self.ci.contains_key(c)))
    }

    /// Whether request `name` with attempts `mine` observes exactly `kept`
    /// (compared in place: this runs for every request with attempts, every pass).
    fn matches(&self, name: &str, mine: &[&Attempt], kept: &Observations) -> bool {
        let attempts = kept.attempts.len() == mine.len() && kept.attempts.iter().zip(mine).all(|(k, m)| k == *m);
        let gates = match self.gates.get(name) {
            None => kept.gates.is_empty(),
            Some(by_gate) => {
                by_gate.len() == kept.gates.len()
                    && by_gate.iter().zip(&kept.gates).all(|((gate, (state, token)), (k_gate, k_state, k_token))| {
                        *gate == k_gate.as_str() && *state == k_state.as_ref() && *token == k_token.as_ref()
                    })
            }
        };
        attempts && gates && self.ci_of(mine).eq(kept.ci.iter().map(|(repo, commit, state)| (repo.as_str(), commit.as_str(), *state)))
    }

    /// The CI states of the pushed heads of `mine`, by repo and commit, once each.
    fn ci_of<'b>(&'b self, mine: &'b [&'b Attempt]) -> impl Iterator<Item = (&'b str, &'b str, CiState)> + 'b {
        let mut ci = Vec::new();
        for commit in mine.iter().filter_map(|a| a.pushed_commit.as_deref()) {
            for (repo, state) in self.ci.get(commit).map(Vec::as_slice).unwrap_or_default() {
                ci.push((*repo, commit, *state));
            }
        }
        ci.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        ci.dedup();
        ci.into_iter()
    }

    /// What request `name`'s plan reads of the observations.
    fn observations(&self, name: &str, mine: &[&Attempt]) -> Observations {
        let gates = self.gates.get(name).map_or_else(Vec::new, |by_gate| {
            by_gate.iter().map(|(gate, (state, token))| ((*gate).to_owned(), state.cloned(), token.cloned())).collect()
        });
        let ci = self.ci_of(mine).map(|(repo, commit, state)| (repo.to_owned(), commit.to_owned(), state)).collect();
        Observations { attempts: mine.iter().map(|a| (*a).clone()).collect(), gates, ci }
    }
}
