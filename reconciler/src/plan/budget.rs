//! Budgets: whether a request spent what its budget allows, and the wall
//! time a new worker may still use.

use super::{Attempt, total_cost, total_tokens};
use crate::model::{ChangeRequest, DesiredState};
use crate::time::Millis;

/// Why `request` is over its budget (or the settings' default budget), if
/// it is, given the attempts of its current generation.
pub(super) fn budget_exceeded(request: &ChangeRequest, desired: &DesiredState, attempts: &[&Attempt], now: Millis) -> Option<String> {
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

/// What a new worker of `request` may still spend of its `maxTokens` and
/// `maxCostUSD` (the request's own, else the settings' default), given the
/// attempts of its current generation; `None` where there is no limit.
pub fn remaining_spend(request: &ChangeRequest, desired: &DesiredState, attempts: &[Attempt]) -> (Option<u64>, Option<f64>) {
    let defaults = desired.settings.spec.defaults.budget.clone().unwrap_or_default();
    let own = request.spec.budget.clone().unwrap_or_default();
    let generation = request.generation();
    let mine = || attempts.iter().filter(|a| a.request == request.metadata.name && a.generation == generation);
    let tokens = own.max_tokens.or(defaults.max_tokens).map(|max| max.saturating_sub(total_tokens(mine())));
    let cost = own.max_cost_usd.or(defaults.max_cost_usd).map(|max| (max - total_cost(mine())).max(0.0));
    (tokens, cost)
}

/// Wall time the workers of `attempts` ran, in milliseconds (saturating).
fn wall_time<'a>(attempts: impl IntoIterator<Item = &'a Attempt>, now: Millis) -> Millis {
    attempts
        .into_iter()
        .filter_map(|a| a.started_at.map(|s| a.finished_at.unwrap_or(now).max(s).saturating_sub(s)))
        .fold(0, Millis::saturating_add)
}
