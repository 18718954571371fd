//! Admitting the workers requests would start within the limits: workers
//! at once, and per agent.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, Attempt, Plan};
use crate::model::kinds::Phase;

/// The workers one request would start.
pub(super) struct Candidate {
    /// Request name.
    pub request: String,
    /// Its agent's concurrency limit, if it has one.
    pub agent_limit: Option<u32>,
    /// The workers, in order.
    pub starts: Vec<Attempt>,
}

/// Admits starts within the limits, in the order of `candidates` (priority
/// order). Live workers count whatever their request, except those this
/// plan cancels (`cancelled`: the executor cancels before it starts).
pub(super) fn admit(attempts: &[Attempt], cancelled: &BTreeSet<String>, candidates: Vec<Candidate>, max_workers: u32, out: &mut Plan) {
    let mut live_total = 0u32;
    let mut live_by_agent: BTreeMap<String, u32> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.state.is_live() && !cancelled.contains(&a.worker)) {
        live_total += 1;
        *live_by_agent.entry(a.agent.clone()).or_default() += 1;
    }
    for Candidate { request, agent_limit, starts } in candidates {
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
        if let Some(view) = out.requests.get_mut(&request) {
            // (A copy when an earlier pass's view is shared.)
            let view = std::sync::Arc::make_mut(view);
            if admitted_any {
                view.phase = Phase::Running;
            } else if view.phase == Phase::Pending {
                view.message = format!("{}; waiting for a free worker slot", view.message);
            }
        }
    }
}
