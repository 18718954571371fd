//! Telemetry: Hadron's metrics, rendered in the Prometheus text format 0.0.4.
//!
//! It sits below both the loop and the HTTP server and imports neither: the
//! reconcile loop (and the webhook handler) feed [`Metrics`] through its
//! methods; the server's `GET /metrics` renders a snapshot. Everything sits behind one mutex: updates are a few per
//! pass or delivery, far from contended.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The `Content-Type` of the rendered metrics.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every `result` of a webhook delivery, shown at zero before the first one.
pub const DELIVERY_RESULTS: [&str; 8] =
    ["accepted", "duplicate", "unauthorized", "too_large", "ignored", "bad_request", "unavailable", "error"];

/// Upper bounds (seconds) of the duration histogram buckets.
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A cumulative histogram of durations in seconds.
#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative; `BUCKETS.len()` entries).
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    passes: BTreeMap<&'static str, u64>,
    pass_duration: Histogram,
    fetch_duration: Histogram,
    workers: BTreeMap<String, u64>,
    requests: BTreeMap<String, u64>,
    deliveries: BTreeMap<&'static str, u64>,
    triggers: BTreeMap<&'static str, u64>,
    status_commits: u64,
    dead_letters: u64,
    push_retries: u64,
    publish_failures: BTreeMap<&'static str, u64>,
    publish_failing: bool,
    pass_max: f64,
}

/// Counters, gauges and histograms of one Hadron process.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics at zero.
    pub fn new() -> Self {
        let mut inner = Inner::default();
        for result in DELIVERY_RESULTS {
            inner.deliveries.insert(result, 0);
        }
        for result in ["ok", "error"] {
            inner.passes.insert(result, 0);
        }
        Self { inner: Mutex::new(inner) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one reconcile pass: how long it took and whether it succeeded.
    pub fn observe_pass(&self, duration: Duration, ok: bool) {
        let mut inner = self.lock();
        *inner.passes.entry(if ok { "ok" } else { "error" }).or_default() += 1;
        inner.pass_duration.observe(duration.as_secs_f64());
        inner.pass_max = inner.pass_max.max(duration.as_secs_f64());
    }

    /// Records how long one fetch of the control repo took.
    pub fn observe_fetch(&self, duration: Duration) {
        self.lock().fetch_duration.observe(duration.as_secs_f64());
    }

    /// Sets the number of requests per phase (e.g. `Running` → 3). Phases seen
    /// before and missing now are set to zero, so their series do not vanish.
    pub fn set_requests_by_phase<K: Into<String>>(&self, counts: impl IntoIterator<Item = (K, u64)>) {
        replace_gauges(&mut self.lock().requests, counts);
    }

    /// Sets the number of workers (attempts) per state (e.g. `Running` → 2).
    /// States seen before and missing now are set to zero.
    pub fn set_workers_by_state<K: Into<String>>(&self, counts: impl IntoIterator<Item = (K, u64)>) {
        replace_gauges(&mut self.lock().workers, counts);
    }

    /// Counts one status commit pushed to the control repo.
    pub fn inc_status_commits(&self) {
        self.lock().status_commits += 1;
    }

    /// Counts an outbox entry set aside because it can never be published.
    pub fn inc_dead_letters(&self) {
        self.lock().dead_letters += 1;
    }

    /// Counts a failed publish of status files, by the cause's reason.
    pub fn inc_status_publish_failures(&self, reason: &'static str) {
        *self.lock().publish_failures.entry(reason).or_default() += 1;
    }

    /// Whether status files currently fail to publish.
    pub fn set_status_publish_failing(&self, failing: bool) {
        self.lock().publish_failing = failing;
    }

    /// Counts `n` retried pushes (after a rejected non-fast-forward push).
    pub fn add_push_retries(&self, n: u64) {
        self.lock().push_retries += n;
    }

    /// Counts one webhook delivery with its `result` (one of [`DELIVERY_RESULTS`]).
    pub fn inc_delivery(&self, result: &'static str) {
        *self.lock().deliveries.entry(result).or_default() += 1;
    }

    /// Counts one trigger sent to the loop, by kind (e.g. `ControlPush`).
    pub fn inc_trigger(&self, kind: &'static str) {
        *self.lock().triggers.entry(kind).or_default() += 1;
    }

    /// How many deliveries were counted with `result`.
    pub fn deliveries(&self, result: &str) -> u64 {
        self.lock().deliveries.get(result).copied().unwrap_or(0)
    }

    /// The metrics in the Prometheus text format 0.0.4; `ready` is the
    /// readiness flag at the time of the scrape.
    pub fn render(&self, ready: bool) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(4096);
        family(&mut out, "hadron_ready", "gauge", "1 once the control repo was fetched at least once");
        let _ = writeln!(out, "hadron_ready {}", u8::from(ready));

        family(&mut out, "hadron_reconcile_passes_total", "counter", "Reconcile passes, by result");
        for (result, n) in &inner.passes {
            let _ = writeln!(out, "hadron_reconcile_passes_total{{result=\"{result}\"}} {n}");
        }
        family(&mut out, "hadron_reconcile_pass_duration_seconds", "histogram", "Duration of reconcile passes");
        inner.pass_duration.render(&mut out, "hadron_reconcile_pass_duration_seconds", "");
        family(&mut out, "hadron_fetch_duration_seconds", "histogram", "Duration of control repo fetches");
        inner.fetch_duration.render(&mut out, "hadron_fetch_duration_seconds", "");

        family(&mut out, "hadron_workers", "gauge", "Workers (attempts) by state");
        for (state, n) in &inner.workers {
            let _ = writeln!(out, "hadron_workers{{state=\"{}\"}} {n}", escape(state));
        }
        family(&mut out, "hadron_requests", "gauge", "Change requests by phase");
        for (phase, n) in &inner.requests {
            let _ = writeln!(out, "hadron_requests{{phase=\"{}\"}} {n}", escape(phase));
        }

        family(&mut out, "hadron_webhook_deliveries_total", "counter", "Webhook deliveries, by result");
        for (result, n) in &inner.deliveries {
            let _ = writeln!(out, "hadron_webhook_deliveries_total{{result=\"{result}\"}} {n}");
        }
        family(
            &mut out,
            "hadron_triggers_total",
            "counter",
            "Triggers of the reconcile loop, by kind (webhooks, polls and file-watch events, worker exits)",
        );
        for (kind, n) in &inner.triggers {
            let _ = writeln!(out, "hadron_triggers_total{{kind=\"{kind}\"}} {n}");
        }
        family(&mut out, "hadron_status_commits_total", "counter", "Status commits pushed to the control repo");
        let _ = writeln!(out, "hadron_status_commits_total {}", inner.status_commits);
        family(
            &mut out,
            "hadron_outbox_dead_letters_total",
            "counter",
            "Status outbox entries set aside because they can never be published (see the outbox.dead_letter events)",
        );
        let _ = writeln!(out, "hadron_outbox_dead_letters_total {}", inner.dead_letters);
        family(&mut out, "hadron_pass_duration_seconds_max", "gauge", "The longest reconcile pass since Hadron started");
        let _ = writeln!(out, "hadron_pass_duration_seconds_max {}", inner.pass_max);
        family(
            &mut out,
            "hadron_status_publish_failures_total",
            "counter",
            "Failed pushes of status files, by reason (PushFailed: a hook or branch protection declined Hadron's commit)",
        );
        for (reason, n) in &inner.publish_failures {
            let _ = writeln!(out, "hadron_status_publish_failures_total{{reason=\"{reason}\"}} {n}");
        }
        family(
            &mut out,
            "hadron_status_publish_failing",
            "gauge",
            "1 while status files cannot be pushed (condition StatusPublishFailed); workers and plans go on",
        );
        let _ = writeln!(out, "hadron_status_publish_failing {}", u8::from(inner.publish_failing));
        family(&mut out, "hadron_push_retries_total", "counter", "Pushes retried after a rejection");
        let _ = writeln!(out, "hadron_push_retries_total {}", inner.push_retries);
        out
    }
}

/// Replaces gauge values, keeping old keys at zero.
fn replace_gauges<K: Into<String>>(gauges: &mut BTreeMap<String, u64>, counts: impl IntoIterator<Item = (K, u64)>) {
    for value in gauges.values_mut() {
        *value = 0;
    }
    for (key, n) in counts {
        *gauges.entry(key.into()).or_default() += n;
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.001);
        h.observe(0.2);
        h.observe(1000.0);
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.25\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"300\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn gauges_keep_old_keys_at_zero_and_escape_labels() {
        let m = Metrics::new();
        m.set_requests_by_phase([("Running", 2), ("Pending", 1)]);
        m.set_requests_by_phase([("Succeeded", 3)]);
        m.set_workers_by_state([("we\"ird\\\n", 1)]);
        let text = m.render(false);
        assert!(text.contains("hadron_requests{phase=\"Running\"} 0\n"), "{text}");
        assert!(text.contains("hadron_requests{phase=\"Succeeded\"} 3\n"), "{text}");
        assert!(text.contains("hadron_workers{state=\"we\\\"ird\\\\\\n\"} 1\n"), "{text}");
        assert!(text.contains("hadron_ready 0\n"), "{text}");
    }
}
