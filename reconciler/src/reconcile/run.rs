//! The loop around passes: triggers in, a pass, then wait for the next
//! trigger or the soonest retry, backoff or recheck.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::trigger::Trigger;
use super::{Context, FAILING_AFTER, PassReport, ReconcileError, steps};
use crate::time::now;

/// Runs passes until `on_pass` returns false or `shutdown` turns true:
/// coalesces triggers, wakes for retries and to watch live workers, never
/// stops on a failed pass. A shutdown lets the running pass finish and
/// leaves workers running (the next start adopts them).
///
/// `lease_lost` turning true (the elector saw the lease go) cancels the
/// running pass at once, at whichever await it is: no later step of it
/// runs, the status commit it may be pushing is not waited for (the
/// control repo's fence refuses it), `on_pass` sees
/// [`ReconcileError::LeaseLost`] and the loop returns.
pub async fn run(
    ctx: &mut Context,
    mut triggers: mpsc::Receiver<Trigger>,
    mut shutdown: watch::Receiver<bool>,
    mut lease_lost: watch::Receiver<bool>,
    mut on_pass: impl FnMut(&Result<PassReport, ReconcileError>) -> bool,
) {
    let mut failures: u32 = 0;
    let mut degraded_passes: u32 = 0;
    let mut forge_retries: u32 = 0;
    loop {
        if *shutdown.borrow() {
            ctx.finish().await;
            return;
        }
        let result = tokio::select! {
            result = ctx.pass() => result,
            () = shutdown_requested(&mut lease_lost) => {
                let lost = ctx.lease.check().err().unwrap_or_else(|| ctx.lease.lost("the elector saw the lease go during the pass"));
                tracing::warn!(epoch = lost.epoch, "the leader lease was lost during a pass: the pass is cancelled where it stands");
                ctx.abandon_publish();
                on_pass(&Err(ReconcileError::LeaseLost(lost)));
                return;
            }
        };
        let mut delay = ctx.cfg.poll_interval;
        match &result {
            Ok(report) => {
                failures = 0;
                degraded_passes = if report.degraded.is_empty() { 0 } else { degraded_passes.saturating_add(1) };
                if let Some(t) = &ctx.telemetry {
                    // A pass that went on without a step is not a good pass
                    // for `/readyz` once it keeps happening.
                    let why = (degraded_passes >= FAILING_AFTER).then(|| {
                        let steps: Vec<String> =
                            report.degraded.iter().map(|f| format!("{} [{}]: {}", f.step.as_str(), f.reason, f.message)).collect();
                        format!("{degraded_passes} passes in a row went on without a step: {}", steps.join("; "))
                    });
                    *t.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why;
                }
                if let Some(wait) = ctx.publish_retry.wait() {
                    delay = delay.min(wait);
                }
                // A forge call that failed is tried again soon, not at the
                // next poll (which may be an hour away), backing off while
                // the forge stays down.
                forge_retries = if report.forge_retry { forge_retries.saturating_add(1) } else { 0 };
                if report.forge_retry {
                    delay = delay.min(steps::backoff(
                        steps::Severity::Stalling,
                        forge_retries,
                        ctx.cfg.poll_interval.min(Duration::from_secs(60)),
                    ));
                }
                // A step that failed is tried again like a failed pass.
                if !report.degraded.is_empty() {
                    let stalling = report.degraded.iter().any(|f| f.severity == steps::Severity::Stalling);
                    let severity = if stalling { steps::Severity::Stalling } else { steps::Severity::Transient };
                    delay = delay.min(steps::backoff(severity, degraded_passes, ctx.cfg.poll_interval.min(Duration::from_secs(60))));
                }
                delay = delay.min(ctx.housekeeping_wait().max(Duration::from_millis(250)));
                // Live workers: their exits are triggers; the driver says
                // when it must look anyway (a deadline, an adopted worker).
                if let (true, Some(recheck)) = (report.live_workers > 0, report.recheck) {
                    delay = delay.min(recheck);
                }
                if let Some(at) = report.wake_at {
                    let wait = u64::try_from((at - now()).max(0)).unwrap_or(0);
                    delay = delay.min(Duration::from_millis(wait));
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if let (Some(t), true) = (&ctx.telemetry, failures >= FAILING_AFTER) {
                    *t.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(format!("{failures} passes in a row failed; the last with {}: {e}", e.reason()));
                }
                let severity = steps::severity_of(e);
                let wait = steps::backoff(severity, failures, ctx.cfg.poll_interval.min(Duration::from_secs(60)));
                tracing::warn!(reason = e.reason(), error = %e, ?severity, retry_in = ?wait, "reconcile pass failed; retrying");
                delay = delay.min(wait);
            }
        }
        if !on_pass(&result) {
            ctx.finish().await;
            return;
        }
        // Shown and counted: not held while waiting (a first pass at 10,000
        // requests reports 10,000 changes).
        drop(result);
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            // A status commit pushed in the background is recorded as soon
            // as it is done, without a pass of its own.
            let pushed = ctx.pending_publish.as_ref().map(|p| p.done.clone());
            tokio::select! {
                got = triggers.recv() => {
                    match got {
                        Some(trigger) => ctx.note(&trigger),
                        None => tokio::time::sleep_until(deadline).await,
                    }
                    // Coalesce: everything queued is one more pass.
                    while let Ok(trigger) = triggers.try_recv() {
                        ctx.note(&trigger);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {}
                () = shutdown_requested(&mut shutdown) => {}
                () = async {
                    match pushed {
                        Some(done) => done.notified().await,
                        None => std::future::pending().await,
                    }
                } => {
                    ctx.finish().await;
                    continue;
                }
            }
            break;
        }
    }
}

/// Resolves once `shutdown` turns true; never when its sender is gone.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
