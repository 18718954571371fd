//! Housekeeping: nothing Hadron keeps grows without bound.
//!
//! Run every [`Retention::interval`] at the end of a pass: webhook delivery
//! ids after a week, published outbox entries and the run directories of
//! finished workers after [`Retention::runs`] (the workspace clone goes as
//! soon as the worker is done), `kv` entries of requests that are gone at
//! once, events and CI results after [`Retention::events`].

use std::collections::BTreeSet;
use std::time::Duration;

use crate::plan::{Observed, RunState};
use crate::time::Millis;

use super::{Context, ReconcileError};

/// How long what is kept is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Run directories of finished workers (their result and log) and
    /// published outbox entries.
    pub runs: Duration,
    /// Events of the audit log and CI results; `None` keeps them forever.
    pub events: Option<Duration>,
    /// How often housekeeping runs.
    pub interval: Duration,
}

impl Default for Retention {
    /// Runs for 7 days, events for 90 days, every 10 minutes.
    fn default() -> Retention {
        Retention {
            runs: Duration::from_secs(7 * 24 * 3600),
            events: Some(Duration::from_secs(90 * 24 * 3600)),
            interval: Duration::from_secs(600),
        }
    }
}

/// How long webhook delivery ids are kept for deduplication (7 days):
/// Gitea redelivers within hours.
pub const DELIVERY_RETENTION_MS: Millis = 7 * 24 * 3600 * 1000;

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Webhook delivery ids.
    pub deliveries: u64,
    /// Published outbox entries.
    pub outbox: u64,
    /// `kv` entries of requests that are gone.
    pub kv: u64,
    /// Events.
    pub events: u64,
    /// CI results.
    pub commit_statuses: u64,
    /// Whole run directories.
    pub runs: usize,
}

fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// Workers whose records may go: finished on the driver's side, and either
/// terminal in the store or left by a request that no longer exists.
pub fn finished_workers(observed: &Observed, requests: &BTreeSet<String>) -> Vec<String> {
    observed
        .runs
        .iter()
        .filter(|run| run.state == RunState::Finished)
        .filter(|run| match observed.attempts.iter().find(|a| a.worker == run.attempt.worker) {
            Some(stored) => stored.state.is_terminal(),
            None => !requests.contains(&run.attempt.request),
        })
        .map(|run| run.attempt.worker.clone())
        .collect()
}

/// Packs the status writer's private clone in the background, off the
/// pass (at most one at a time): publishes leave loose objects, and
/// automatic `git gc` is off for Hadron's git.
fn pack_private_clone(ctx: &Context) {
    use std::sync::atomic::Ordering;
    if ctx.maintaining.swap(true, Ordering::AcqRel) {
        return;
    }
    let flag = ctx.maintaining.clone();
    let dir = ctx.cfg.data_dir.join("writer");
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match crate::status::writer::StatusWriter::maintain(&dir, crate::git::Identity::default()) {
            Ok(()) => tracing::debug!(took = ?started.elapsed(), "packed the status writer's clone"),
            Err(e) => tracing::warn!(reason = e.reason(), "could not pack the status writer's clone: {e}"),
        }
        flag.store(false, Ordering::Release);
    });
}

/// Whether housekeeping keeps what the store holds of request `name`
/// (status digest, pull requests, commit statuses): the control repo has
/// it (a request or a status file), or the store still knows it.
pub fn keeps(desired: &crate::model::DesiredState, observed: &Observed, name: &str) -> bool {
    desired.requests.contains_key(name) || desired.statuses.contains_key(name) || observed.known_requests.contains_key(name)
}

/// One sweep. `published` says whether every status is pushed: run
/// directories are pruned only then, so nothing a status still needs goes.
pub async fn sweep(ctx: &Context, observed: &Observed, t: Millis, published: bool) -> Result<Swept, ReconcileError> {
    let retention = &ctx.cfg.retention;
    let desired = &ctx.catalog.loaded().desired;
    let mut swept = Swept {
        deliveries: ctx.store.prune_deliveries(t - DELIVERY_RETENTION_MS).await?,
        outbox: ctx.store.prune_outbox(t - ms(retention.runs)).await?,
        ..Swept::default()
    };
    swept.kv = ctx.store.prune_request_entries(|request| keeps(desired, observed, request)).await?;
    if let Some(keep) = retention.events {
        swept.events = ctx.store.prune_events(t - ms(keep)).await?;
        swept.commit_statuses = ctx.store.prune_commit_statuses(t - ms(keep)).await?;
    }
    pack_private_clone(ctx);
    if published {
        let requests: BTreeSet<String> = desired.requests.keys().cloned().collect();
        let finished = finished_workers(observed, &requests);
        if !finished.is_empty() {
            let driver = ctx.driver.clone();
            let keep = retention.runs;
            swept.runs = tokio::task::spawn_blocking(move || driver.prune(&finished, keep))
                .await
                .map_err(|e| ReconcileError::Join(e.to_string()))??;
        }
    }
    Ok(swept)
}
