//! Telemetry: Hadron's metrics, kept with `prometheus-client` and rendered in
//! the Prometheus text format 0.0.4.
//!
//! It sits below both the loop and the HTTP server and imports neither: the
//! reconcile loop (and the webhook handler) feed [`Metrics`] through its
//! methods; the server's `GET /metrics` renders a snapshot. Every metric is an
//! atomic of its own; only the two gauges by phase and by state take a lock
//! (to zero the phases and states that are gone).
//!
//! Failures are counted by the stable `reason()` of their error (as
//! `kube-rs/controller-rs` labels its errors), in a counter with a `reason`
//! label beside the counter of all passes or deliveries.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the rendered metrics (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every `result` of a webhook delivery, shown at zero before the first one
/// (`ServerError::delivery_result` gives those of refused deliveries).
const DELIVERY_RESULTS: [&str; 9] =
    ["accepted", "duplicate", "unauthorized", "too_large", "ignored", "bad_request", "timeout", "unavailable", "error"];

/// Upper bounds (seconds) of the duration histogram buckets.
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The `result` of a pass (`ok`, `error`) or of a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The stable `reason()` of the error behind a failure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The kind of a trigger of the loop (e.g. `ControlPush`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// One label whose values are set all at once: phases of requests, states of workers.
type ValueLabel = [(&'static str, String); 1];

/// A gauge per value of one label, set all at once: values seen before and
/// missing now are set to zero, so their series do not vanish.
#[derive(Debug)]
struct GaugeSet {
    label: &'static str,
    gauges: Family<ValueLabel, Gauge>,
    /// Every value seen so far (and the lock that keeps two updates apart).
    seen: Mutex<BTreeSet<String>>,
}

impl GaugeSet {
    fn new(label: &'static str) -> Self {
        Self { label, gauges: Family::default(), seen: Mutex::new(BTreeSet::new()) }
    }

    fn replace<K: Into<String>>(&self, counts: impl IntoIterator<Item = (K, u64)>) {
        let mut now: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for (key, n) in counts {
            *now.entry(key.into()).or_default() += n;
        }
        // A panic while holding the lock leaves a plain set of names behind: still usable.
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.extend(now.keys().cloned());
        // Each gauge is set once: a scrape never sees a value dip to zero and back.
        for key in seen.iter() {
            let n = now.get(key).copied().unwrap_or(0);
            self.gauges.get_or_create(&[(self.label, key.clone())]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Counters, gauges and histograms of one Hadron process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ready: Gauge,
    passes: Family<ResultLabel, Counter>,
    pass_failures: Family<ReasonLabel, Counter>,
    pass_duration: Histogram,
    fetch_duration: Histogram,
    workers: GaugeSet,
    requests: GaugeSet,
    deliveries: Family<ResultLabel, Counter>,
    delivery_failures: Family<ReasonLabel, Counter>,
    triggers: Family<KindLabel, Counter>,
    status_commits: Counter,
    dead_letters: Family<ReasonLabel, Counter>,
    pass_max: Gauge<f64, AtomicU64>,
    publish_failures: Family<ReasonLabel, Counter>,
    publish_failing: Gauge,
    push_retries: Counter,
    leader: Gauge,
    leader_epoch: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics at zero.
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::default(),
            ready: Gauge::default(),
            passes: Family::default(),
            pass_failures: Family::default(),
            pass_duration: Histogram::new(BUCKETS),
            fetch_duration: Histogram::new(BUCKETS),
            workers: GaugeSet::new("state"),
            requests: GaugeSet::new("phase"),
            deliveries: Family::default(),
            delivery_failures: Family::default(),
            triggers: Family::default(),
            status_commits: Counter::default(),
            dead_letters: Family::default(),
            pass_max: Gauge::default(),
            publish_failures: Family::default(),
            publish_failing: Gauge::default(),
            push_retries: Counter::default(),
            leader: Gauge::default(),
            leader_epoch: Gauge::default(),
        };
        // The series that exist from the start, at zero.
        for result in DELIVERY_RESULTS {
            m.deliveries.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        for result in ["ok", "error"] {
            m.passes.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        m.register()
    }

    /// Registers every metric, in the order they are rendered. Counters are
    /// named without `_total`, which the encoder appends.
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register("hadron_ready", "1 once the control repo was fetched at least once", self.ready.clone());
        r.register("hadron_reconcile_passes", "Reconcile passes, by result", self.passes.clone());
        r.register(
            "hadron_reconcile_pass_failures",
            "Failed reconcile passes, by the error's reason (e.g. Network, AuthFailed)",
            self.pass_failures.clone(),
        );
        r.register("hadron_reconcile_pass_duration_seconds", "Duration of reconcile passes", self.pass_duration.clone());
        r.register("hadron_fetch_duration_seconds", "Duration of control repo fetches", self.fetch_duration.clone());
        r.register("hadron_workers", "Workers (attempts) by state", self.workers.gauges.clone());
        r.register("hadron_requests", "Change requests by phase", self.requests.gauges.clone());
        r.register("hadron_webhook_deliveries", "Webhook deliveries, by result", self.deliveries.clone());
        r.register(
            "hadron_webhook_delivery_failures",
            "Refused webhook deliveries, by the error's reason (e.g. SignatureMismatch, PayloadTooLarge)",
            self.delivery_failures.clone(),
        );
        r.register(
            "hadron_triggers",
            "Triggers of the reconcile loop, by kind (webhooks, polls and file-watch events, worker exits)",
            self.triggers.clone(),
        );
        r.register("hadron_status_commits", "Status commits pushed to the control repo", self.status_commits.clone());
        r.register(
            "hadron_outbox_dead_letters",
            "Status outbox entries set aside because they can never be published, by the error's reason (see the outbox.dead_letter events)",
            self.dead_letters.clone(),
        );
        r.register("hadron_pass_duration_seconds_max", "The longest reconcile pass since Hadron started", self.pass_max.clone());
        r.register(
            "hadron_status_publish_failures",
            "Failed pushes of status files, by reason (PushFailed: a hook or branch protection declined Hadron's commit)",
            self.publish_failures.clone(),
        );
        r.register(
            "hadron_status_publish_failing",
            "1 while status files cannot be pushed (condition StatusPublishFailed); workers and plans go on",
            self.publish_failing.clone(),
        );
        r.register("hadron_push_retries", "Pushes retried after a rejection", self.push_retries.clone());
        r.register(
            "hadron_leader",
            "1 while this replica holds the leader lease and runs the loop (always 1 on SQLite, which runs one replica)",
            self.leader.clone(),
        );
        r.register(
            "hadron_leader_epoch",
            "The epoch (fencing token) of the leader lease this replica holds or last saw held; 0 on SQLite",
            self.leader_epoch.clone(),
        );
        self
    }

    /// Records one reconcile pass: how long it took, and the failed pass's
    /// reason (the error's `reason()`).
    pub fn observe_pass(&self, duration: Duration, result: Result<(), &'static str>) {
        match result {
            Ok(()) => self.passes.get_or_create(&ResultLabel { result: "ok" }).inc(),
            Err(reason) => {
                self.pass_failures.get_or_create(&ReasonLabel { reason }).inc();
                self.passes.get_or_create(&ResultLabel { result: "error" }).inc()
            }
        };
        let seconds = duration.as_secs_f64();
        self.pass_duration.observe(seconds);
        // The largest of the old and the new, whichever pass sets it first.
        let _ = self
            .pass_max
            .inner()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| (seconds > f64::from_bits(old)).then_some(seconds.to_bits()));
    }

    /// Records how long one fetch of the control repo took.
    pub fn observe_fetch(&self, duration: Duration) {
        self.fetch_duration.observe(duration.as_secs_f64());
    }

    /// Sets the number of requests per phase (e.g. `Running` → 3). Phases seen
    /// before and missing now are set to zero, so their series do not vanish.
    pub fn set_requests_by_phase<K: Into<String>>(&self, counts: impl IntoIterator<Item = (K, u64)>) {
        self.requests.replace(counts);
    }

    /// Sets the number of workers (attempts) per state (e.g. `Running` → 2).
    /// States seen before and missing now are set to zero.
    pub fn set_workers_by_state<K: Into<String>>(&self, counts: impl IntoIterator<Item = (K, u64)>) {
        self.workers.replace(counts);
    }

    /// Counts one status commit pushed to the control repo.
    pub fn inc_status_commits(&self) {
        self.status_commits.inc();
    }

    /// Counts an outbox entry set aside because it can never be published, by
    /// the error's reason.
    pub fn inc_dead_letters(&self, reason: &'static str) {
        self.dead_letters.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a failed publish of status files, by the error's reason.
    pub fn inc_status_publish_failures(&self, reason: &'static str) {
        self.publish_failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Whether status files currently fail to publish.
    pub fn set_status_publish_failing(&self, failing: bool) {
        self.publish_failing.set(i64::from(failing));
    }

    /// Records whether this replica leads and the lease's epoch it knows.
    pub fn set_leader(&self, leading: bool, epoch: i64) {
        self.leader.set(i64::from(leading));
        self.leader_epoch.set(epoch);
    }

    /// Counts `n` retried pushes (after a rejected non-fast-forward push).
    pub fn add_push_retries(&self, n: u64) {
        self.push_retries.inc_by(n);
    }

    /// Counts one webhook delivery with its `result` (`accepted`, `duplicate`,
    /// `ignored`, or for a refused one `unauthorized`, `too_large`,
    /// `bad_request`, `timeout`, `unavailable`, `error`) and, for a refused
    /// one, the error's reason.
    pub fn inc_delivery(&self, result: &'static str, reason: Option<&'static str>) {
        self.deliveries.get_or_create(&ResultLabel { result }).inc();
        if let Some(reason) = reason {
            self.delivery_failures.get_or_create(&ReasonLabel { reason }).inc();
        }
    }

    /// Counts one trigger sent to the loop, by kind (e.g. `ControlPush`).
    pub fn inc_trigger(&self, kind: &'static str) {
        self.triggers.get_or_create(&KindLabel { kind }).inc();
    }

    /// How many deliveries were counted with `result`.
    pub fn deliveries(&self, result: &str) -> u64 {
        DELIVERY_RESULTS
            .into_iter()
            .find(|r| *r == result)
            .and_then(|result| self.deliveries.get(&ResultLabel { result }).map(|c| c.get()))
            .unwrap_or(0)
    }

    /// The metrics in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]);
    /// `ready` is the readiness flag at the time of the scrape.
    pub fn render(&self, ready: bool) -> String {
        self.ready.set(i64::from(ready));
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            // Writing to a String does not fail; should the encoder refuse a
            // metric, the scrape says so rather than show half the metrics.
            out.clear();
            let _ = writeln!(out, "# the metrics could not be encoded: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("because the rendered metrics parse")
    }

    /// The value of the counter or gauge `name` with `label`, as Prometheus reads it.
    fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        scrape.samples.iter().find_map(|s| {
            let matches = s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v));
            match (&s.value, matches) {
                (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v), true) => Some(*v),
                _ => None,
            }
        })
    }

    #[test]
    fn durations_fill_cumulative_buckets_and_the_maximum() {
        let m = Metrics::new();
        for ms in [1, 200, 1_000_000] {
            m.observe_pass(Duration::from_millis(ms), Ok(()));
        }
        let text = m.render(true);
        assert!(text.contains("hadron_reconcile_pass_duration_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("hadron_reconcile_pass_duration_seconds_bucket{le=\"0.25\"} 2\n"), "{text}");
        assert!(text.contains("hadron_reconcile_pass_duration_seconds_bucket{le=\"300\"} 2\n"), "{text}");
        assert!(text.contains("hadron_reconcile_pass_duration_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("hadron_reconcile_pass_duration_seconds_count 3\n"), "{text}");
        let s = scrape(&text);
        assert_eq!(value(&s, "hadron_pass_duration_seconds_max", None), Some(1000.0), "{text}");
        assert_eq!(value(&s, "hadron_ready", None), Some(1.0), "{text}");
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

    #[test]
    fn failures_are_counted_by_reason_beside_the_totals() {
        let m = Metrics::new();
        m.observe_pass(Duration::from_millis(5), Ok(()));
        m.observe_pass(Duration::from_millis(5), Err("Network"));
        m.observe_pass(Duration::from_millis(5), Err("Network"));
        m.inc_delivery("unauthorized", Some("SignatureMismatch"));
        m.inc_delivery("accepted", None);
        m.inc_dead_letters("PathOutsideStatus");
        m.inc_status_publish_failures("PushFailed");
        let text = m.render(true);
        let s = scrape(&text);
        assert_eq!(value(&s, "hadron_reconcile_passes_total", Some(("result", "ok"))), Some(1.0), "{text}");
        assert_eq!(value(&s, "hadron_reconcile_passes_total", Some(("result", "error"))), Some(2.0), "{text}");
        assert_eq!(value(&s, "hadron_reconcile_pass_failures_total", Some(("reason", "Network"))), Some(2.0), "{text}");
        assert_eq!(value(&s, "hadron_webhook_deliveries_total", Some(("result", "unauthorized"))), Some(1.0), "{text}");
        assert_eq!(value(&s, "hadron_webhook_deliveries_total", Some(("result", "timeout"))), Some(0.0), "{text}");
        assert_eq!(value(&s, "hadron_webhook_delivery_failures_total", Some(("reason", "SignatureMismatch"))), Some(1.0), "{text}");
        assert_eq!(value(&s, "hadron_outbox_dead_letters_total", Some(("reason", "PathOutsideStatus"))), Some(1.0), "{text}");
        assert_eq!(value(&s, "hadron_status_publish_failures_total", Some(("reason", "PushFailed"))), Some(1.0), "{text}");
        // A success is no failure.
        assert_eq!(s.samples.iter().filter(|x| x.metric == "hadron_webhook_delivery_failures_total").count(), 1, "{text}");
        assert_eq!(m.deliveries("unauthorized"), 1);
        assert_eq!(m.deliveries("no-such-result"), 0);
    }

    #[test]
    fn every_family_has_help_and_a_type_prometheus_reads() {
        let m = Metrics::new();
        // A family shows once it has a series: one of each.
        m.observe_pass(Duration::from_millis(5), Err("Network"));
        m.observe_fetch(Duration::from_millis(5));
        m.set_workers_by_state([("Running", 1)]);
        m.set_requests_by_phase([("Running", 1)]);
        m.inc_delivery("bad_request", Some("InvalidPayload"));
        m.inc_trigger("Poll");
        m.inc_dead_letters("PathIsFolder");
        m.inc_status_publish_failures("PushFailed");
        let text = m.render(false);
        let s = scrape(&text);
        for (name, kind) in [
            ("hadron_ready", "gauge"),
            ("hadron_reconcile_passes_total", "counter"),
            ("hadron_reconcile_pass_failures_total", "counter"),
            ("hadron_reconcile_pass_duration_seconds", "histogram"),
            ("hadron_fetch_duration_seconds", "histogram"),
            ("hadron_workers", "gauge"),
            ("hadron_requests", "gauge"),
            ("hadron_webhook_deliveries_total", "counter"),
            ("hadron_webhook_delivery_failures_total", "counter"),
            ("hadron_triggers_total", "counter"),
            ("hadron_status_commits_total", "counter"),
            ("hadron_outbox_dead_letters_total", "counter"),
            ("hadron_pass_duration_seconds_max", "gauge"),
            ("hadron_status_publish_failures_total", "counter"),
            ("hadron_status_publish_failing", "gauge"),
            ("hadron_push_retries_total", "counter"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} is not a {kind}:\n{text}");
            assert!(s.docs.contains_key(name), "{name} has no help:\n{text}");
        }
        assert_eq!(value(&s, "hadron_status_commits_total", None), Some(0.0), "{text}");
    }
}
