//! The reconcile loop: the one description of a pass.
//!
//! Triggers ([`trigger::Trigger`]: file watch, poll, worker exit, webhooks,
//! `hadron ci-status`) go into one coalescing channel; [`run`] runs a pass
//! per batch of triggers, and each pass ([`Context::pass`]) runs these steps
//! in this order:
//!
//! 1. **flush**: publish what earlier passes queued in the outbox (skipped
//!    while publishing backs off);
//! 2. **fetch + load** (`source`, `model`): fetch the control repo, read the
//!    changed blobs, patch the desired state; on failure go on with the last
//!    good revision. A pass that brought only Hadron's own status files after
//!    an idle pass stops here;
//! 3. **observe** (`observe`): attempts from the store, runs from the driver,
//!    approvals, CI; then verify which status files are Hadron's own;
//! 4. **plan** (`crate::plan`, pure): actions and every request's view;
//! 5. **execute** (`execute`): intent into the store, then each side effect;
//! 6. **forge** (`forge_step`): approval and target PRs, commit statuses;
//!    then plan previews on open PRs into the control branch (`pr_previews`);
//! 7. **status**: render every status file once, queue the changed ones in
//!    the outbox and publish them as one commit;
//! 8. **housekeeping** (`housekeeping`), every few minutes.
//!
//! A step that fails is reported ([`steps::StepFailure`]) and the steps
//! after it still run. Intent is stored before each side effect; side
//! effects carry deterministic names, so a crash at any point and a restart
//! continue without doing finished work again.

pub mod dashboard_model;
pub mod execute;
pub mod forge_step;
pub mod housekeeping;
pub mod observe;
pub mod pr_previews;
mod publish;
mod run;
pub mod steps;
pub mod trigger;
pub mod urls;

pub use run::run;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::model::kinds::Phase;
use crate::model::{Catalog, Loaded};
use crate::plan::{self, Plan, PlanConfig};
use crate::source::{Blob, LoadOptions, PathFilter, Source, SourceConfig, SourceError};
use crate::status::writer::{StatusWriter, WriterConfig, WriterError};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::time::{Millis, now};
use crate::workers::{Driver, DriverError};
use trigger::Trigger;

/// Why a pass failed. Each is retried on the next trigger; none stops the loop.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The control repo could not be fetched or read.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The status could not be published.
    #[error("status: {0}")]
    Writer(#[from] WriterError),
    /// The worker driver failed.
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    /// An approval branch could not be opened or read.
    #[error("gate: {0}")]
    Gate(#[from] crate::gates::GateError),
    /// A forge call failed (plan previews; the forge step stalls requests instead).
    #[error("forge: {0}")]
    Forge(#[from] crate::forge::GiteaError),
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Join(String),
    /// The leader lease is not held for certain: the side effect was not made.
    #[error("{0}")]
    LeaseLost(#[from] crate::leader::LeaseLost),
}

impl ReconcileError {
    /// Stable reason string, for conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Source(e) => e.reason(),
            ReconcileError::Store(e) => e.reason(),
            ReconcileError::Writer(e) => e.reason(),
            ReconcileError::Driver(e) => e.reason(),
            ReconcileError::Gate(e) => e.reason(),
            ReconcileError::Forge(e) => e.reason(),
            ReconcileError::Join(_) => "InternalError",
            ReconcileError::LeaseLost(e) => e.reason(),
        }
    }

    /// Whether this replica does not lead for certain any more: the lease
    /// is not held by its own clock, or a fenced write (the store's or the
    /// control repo's) was refused. Such an error ends the pass at once,
    /// wherever it comes from, and the leadership with it: it is never one
    /// more failed step of a pass that goes on.
    pub fn ends_leadership(&self) -> bool {
        matches!(
            self,
            ReconcileError::LeaseLost(_)
                | ReconcileError::Store(StoreError::Fenced { .. })
                | ReconcileError::Writer(WriterError::Fenced { .. } | WriterError::LeaseLost(_))
                | ReconcileError::Forge(crate::forge::GiteaError::LeaseLost { .. })
        )
    }
}

/// How the loop is set up.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Control repo URL or path.
    pub control_url: String,
    /// Branch of the control repo.
    pub branch: String,
    /// Hadron's data dir (mirror, writer clone, gate clone).
    pub data_dir: PathBuf,
    /// Poll interval when nothing else triggers.
    pub poll_interval: Duration,
    /// Planner tunables.
    pub plan: PlanConfig,
    /// Name of the driver recorded with attempts (`local`, `kubernetes`).
    pub driver_name: String,
    /// What is kept how long, and how often housekeeping runs.
    pub retention: housekeeping::Retention,
    /// While workers run, the shortest time between two status commits
    /// (zero: one per pass that changed a file).
    pub status_interval: Duration,
}

impl LoopConfig {
    /// The source's trigger config (for `spawn_triggers`).
    pub fn source_config(&self) -> SourceConfig {
        SourceConfig::new(self.control_url.clone(), self.data_dir.join("source"))
            .with_branch(self.branch.clone())
            .with_poll_interval(self.poll_interval)
    }
}

/// The loop's output for people: a request changed (its phase, or what it
/// waits for, or a stall). Printed by `up`, appended to the event log and
/// streamed on `GET /api/v1/events` as it is.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseChange {
    /// Request name.
    pub request: String,
    /// Phase before (None for a new request).
    pub from: Option<Phase>,
    /// Phase now.
    pub to: Phase,
    /// Stage now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The stable reason: the Ready condition's, `Stalled…` while stalled,
    /// `Deleted` for a removed request.
    pub reason: String,
    /// The status message.
    pub message: String,
    /// Control-repo revision of the pass that saw the change.
    pub revision: String,
}

/// What a person waits to see of a request: any change of it is a
/// [`PhaseChange`], printed by `up` and sent on `/api/v1/events`, even when
/// the phase stays (a rejected approval merge, a stale approval, a stall).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    phase: Phase,
    stage: Option<String>,
    reason: String,
    /// The message, except while Pending or Running (where it only counts down retries).
    message: Option<String>,
    /// The Stalled condition's reason and message, when true.
    stalled: Option<(String, String)>,
}

impl Seen {
    fn of(status: &crate::model::RequestStatusBody) -> Self {
        let condition = |t: &str| status.conditions.iter().find(|c| c.condition_type == t);
        Seen {
            phase: status.phase,
            stage: status.stage.clone(),
            reason: condition("Ready").map(|c| c.reason.clone()).unwrap_or_default(),
            message: (!matches!(status.phase, Phase::Pending | Phase::Running)).then(|| status.message.clone()),
            stalled: condition("Stalled").filter(|c| c.status == "True").map(|c| (c.reason.clone(), c.message.clone())),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Control-repo revision read.
    pub revision: String,
    /// Phase changes.
    pub changes: Vec<PhaseChange>,
    /// Where every request stands after the pass: the plan's views
    /// (shared: a copy of the report copies no view).
    pub phases: Arc<BTreeMap<String, Arc<plan::RequestView>>>,
    /// Live workers after the pass.
    pub live_workers: usize,
    /// How soon the driver must look at the live workers again when no
    /// exit notice comes (`None`: every exit is a trigger).
    pub recheck: Option<Duration>,
    /// Status commit made, if any.
    pub status_commit: Option<String>,
    /// When to run again without a trigger (a retry backoff expiring).
    pub wake_at: Option<Millis>,
    /// Whether every request is terminal or waiting on a person.
    pub idle: bool,
    /// Whether a forge call failed and the next pass should try again.
    pub forge_retry: bool,
    /// Steps that failed while the rest of the pass went on.
    pub degraded: Vec<steps::StepFailure>,
    /// Status files decided but not pushed (publishing failed or backs off).
    pub unpublished: usize,
    /// Status files decided and held for the next status commit: workers
    /// run and the last status commit is younger than the status interval
    /// (`wake_at` is when it is due).
    pub held: usize,
}

impl PassReport {
    /// A copy without the phase changes: what is kept of a pass once its
    /// changes were shown (at 10,000 requests a first pass has 10,000).
    pub fn without_changes(&self) -> PassReport {
        PassReport {
            revision: self.revision.clone(),
            changes: Vec::new(),
            phases: self.phases.clone(),
            live_workers: self.live_workers,
            recheck: self.recheck,
            status_commit: self.status_commit.clone(),
            wake_at: self.wake_at,
            idle: self.idle,
            forge_retry: self.forge_retry,
            degraded: self.degraded.clone(),
            unpublished: self.unpublished,
            held: self.held,
        }
    }
}

/// Where a pass reports what it did, for the HTTP server.
#[derive(Clone)]
pub struct Telemetry {
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the control repo was fetched and the store answered.
    pub ready: Arc<AtomicBool>,
    /// Phase changes, for `GET /api/v1/events`.
    pub events: broadcast::Sender<PhaseChange>,
    /// Why passes keep failing (after [`FAILING_AFTER`] in a row), for `/readyz`.
    pub failing: Arc<std::sync::Mutex<Option<String>>>,
    /// What the dashboard shows, rebuilt after a pass that rendered anything.
    pub board: dashboard_model::BoardCell,
}

/// How long each step of a pass took, for the `pass steps` debug line.
struct StepTimer {
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl StepTimer {
    fn start() -> Self {
        StepTimer { last: Instant::now(), laps: Vec::new() }
    }

    fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        self.laps.push((step, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for StepTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, took)) in self.laps.iter().enumerate() {
            write!(f, "{}{step} {:.1} ms", if i == 0 { "" } else { ", " }, took.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// Failed passes in a row after which `/readyz` says not ready.
pub const FAILING_AFTER: u32 = 3;

/// Everything a pass needs: the context of the loop.
pub struct Context {
    /// Configuration.
    pub cfg: LoopConfig,
    /// The store.
    pub store: Store,
    /// The worker driver.
    pub driver: Arc<dyn Driver>,
    source: Arc<Mutex<Source>>,
    writer: Arc<Mutex<StatusWriter>>,
    gates: Arc<crate::gates::branch::ApprovalBranches>,
    catalog: Catalog,
    last_report: Option<PassReport>,
    /// Status files Hadron wrote last, by the id of the blob it wrote,
    /// while the catalog holds them as written: a fetch that brings them
    /// back neither reads, parses nor counts them as a change.
    written: BTreeMap<String, gix::ObjectId>,
    /// Digest of each status file's re-rendered text, cached by the parsed
    /// file it was computed from (recomputed only when the file changes).
    status_digests: BTreeMap<String, (Arc<crate::model::RequestStatus>, String)>,
    /// Requests with names that cannot become a status file, already logged.
    reported_unnamed: BTreeSet<String>,
    /// Status files reported as not Hadron's own (name → digest), so each
    /// edit is one event, not one per pass.
    reported_untrusted: BTreeMap<String, String>,
    forge: Option<forge_step::ForgeLink>,
    telemetry: Option<Telemetry>,
    pruned_at: Option<Instant>,
    /// Publishing status files: skipped while it backs off after failures.
    publish_retry: steps::Retry,
    /// The last publish failure, reported while publishing backs off.
    publish_failure: Option<steps::StepFailure>,
    /// What the last good forge step produced.
    forge_outputs: forge_step::ForgeOutputs,
    /// Passes run so far (the `n` of the `pass` span).
    passes: u64,
    /// Kinds of the triggers noted since the last pass.
    noted: BTreeSet<&'static str>,
    /// The request records as in the store (read once, then written
    /// through), so a pass writes only the records that changed.
    records: Option<BTreeMap<String, execute::Recorded>>,
    /// Set while housekeeping packs the private clone in the background.
    maintaining: Arc<AtomicBool>,
    /// The store's digests of the status files Hadron published (read
    /// once, then written through; reloaded after housekeeping).
    digests: Option<BTreeMap<String, String>>,
    /// Each request's status file as last rendered, with its inputs.
    rendered: BTreeMap<String, Box<publish::Rendered>>,
    /// The status files found to be Hadron's own in the last pass (`None`:
    /// look at every file again).
    own: Option<publish::OwnStatuses>,
    /// When the last status commit was pushed (for the status interval).
    last_status_commit: Option<Instant>,
    /// A status commit being pushed while workers run (joined by the next
    /// pass before it fetches or renders).
    pending_publish: Option<publish::PendingPublish>,
    /// Whether a status was rendered (or dropped) since the board was built.
    board_stale: bool,
    /// Whether the plan previews of open pull requests are to be written.
    previews_due: bool,
    /// What planning each request produced, with its inputs: a pass plans
    /// again only the requests whose inputs changed.
    plan_memo: plan::PlanMemo,
    /// Pull request → the head whose unreadable state was said on it.
    preview_errors: BTreeMap<u64, String>,
    /// Checked before every side effect (worker start and cancel, approval
    /// branch push, status push, Gitea write).
    pub(crate) lease: crate::leader::LeaseGuard,
}

impl Context {
    /// Opens the source mirror, the status writer and the gate clone under the data dir.
    pub fn new(cfg: LoopConfig, store: Store, driver: Arc<dyn Driver>) -> Result<Self, ReconcileError> {
        let source_cfg = SourceConfig::new(cfg.control_url.clone(), cfg.data_dir.join("source"))
            .with_branch(cfg.branch.clone())
            .with_poll_interval(cfg.poll_interval);
        let opts = LoadOptions { filter: PathFilter::hadron(), ..LoadOptions::default() };
        let source = Source::new(source_cfg, opts)?;
        let writer = StatusWriter::new(
            WriterConfig::new(cfg.control_url.clone(), cfg.branch.clone(), cfg.data_dir.join("writer")).with_epoch(store.fence_epoch()),
        )?;
        let gates = crate::gates::branch::ApprovalBranches::new(
            cfg.data_dir.join("gates"),
            crate::gates::Person::new("hadron", "hadron@localhost"),
        )?;
        Ok(Context {
            cfg,
            store,
            driver,
            source: Arc::new(Mutex::new(source)),
            writer: Arc::new(Mutex::new(writer)),
            gates: Arc::new(gates),
            catalog: Catalog::new(),
            last_report: None,
            written: BTreeMap::new(),
            status_digests: BTreeMap::new(),
            reported_untrusted: BTreeMap::new(),
            reported_unnamed: BTreeSet::new(),
            forge: None,
            telemetry: None,
            pruned_at: None,
            publish_retry: steps::Retry::default(),
            publish_failure: None,
            forge_outputs: forge_step::ForgeOutputs::default(),
            passes: 0,
            noted: BTreeSet::new(),
            records: None,
            maintaining: Arc::default(),
            rendered: BTreeMap::new(),
            digests: None,
            own: None,
            last_status_commit: None,
            pending_publish: None,
            board_stale: true,
            previews_due: true,
            plan_memo: plan::PlanMemo::default(),
            preview_errors: BTreeMap::new(),
            lease: crate::leader::LeaseGuard::unguarded(),
        })
    }

    /// Works with Gitea through `link`: approval and target PRs, commit
    /// statuses, approvers by login and team, CI from combined statuses.
    pub fn with_forge(mut self, mut link: forge_step::ForgeLink) -> Self {
        link.set_lease(self.lease.clone());
        self.forge = Some(link);
        self
    }

    /// Reports passes to the HTTP server's metrics, readiness and events.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Guards every side effect with `lease` (a replica leading under an
    /// epoch): the status writer's pushes, worker starts and cancels,
    /// approval-branch pushes and Gitea writes check it first.
    pub fn with_lease(mut self, lease: crate::leader::LeaseGuard) -> Self {
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).set_lease(lease.clone());
        if let Some(forge) = self.forge.as_mut() {
            forge.set_lease(lease.clone());
        }
        self.lease = lease;
        self
    }

    /// Takes note of a trigger before the pass it causes.
    pub fn note(&mut self, trigger: &Trigger) {
        self.noted.insert(trigger.kind());
        // Webhook triggers are counted by the server that received them.
        if let (Some(t), Trigger::Poll | Trigger::WorkerExited | Trigger::CiRecorded) = (&self.telemetry, trigger) {
            t.metrics.inc_trigger(trigger.kind());
        }
        if let (Trigger::TargetActivity { repo, .. }, Some(forge)) = (trigger, self.forge.as_mut()) {
            forge.target_activity(repo);
        }
        // A push to the control repo may be the fix (a person made room for
        // Hadron's commits): publish again at once.
        if matches!(trigger, Trigger::ControlPush { .. }) {
            self.publish_retry.now();
        }
        // A pull request moved, or its base may have: preview again (the
        // poll is the safety net for a lost webhook).
        if matches!(trigger, Trigger::PullRequestChanged { .. } | Trigger::ControlPush { .. } | Trigger::Poll) {
            self.previews_due();
        }
    }

    /// The source's trigger config (for `spawn_triggers`).
    pub fn source_config(&self) -> SourceConfig {
        self.cfg.source_config()
    }

    /// The desired state of the last pass.
    pub fn loaded(&self) -> &Loaded {
        self.catalog.loaded()
    }

    /// Step 1, source: fetch and feed the changed blobs to the catalog.
    /// Returns the revision and whether anything but Hadron's own status
    /// files changed.
    async fn step_source(&mut self) -> Result<(String, bool), ReconcileError> {
        let source = self.source.clone();
        let started = Instant::now();
        // Hadron's own files, back from git, are skipped by their blob ids.
        let written = std::mem::take(&mut self.written);
        // (A failed fetch hands them back too: the next one skips them still.)
        let (written, changes) = tokio::task::spawn_blocking(move || {
            let changes = (|| {
                let mut source = source.lock().map_err(|_| ReconcileError::Join("source lock poisoned".into()))?;
                let rev = source.fetch()?;
                Ok::<_, ReconcileError>(source.load_except(rev, &written)?)
            })();
            (written, changes)
        })
        .await
        .map_err(|e| ReconcileError::Join(e.to_string()))?;
        self.written = written;
        let changes = changes?;
        if let Some(t) = &self.telemetry {
            t.metrics.observe_fetch(started.elapsed());
            // Ready: the control repo was fetched (and the store answers, which `/readyz` checks itself).
            t.ready.store(true, Ordering::Release);
        }
        let mut meaningful = changes.full;
        // Parsed together, spread over the cores (a first load of 10,000 files).
        let mut data: Vec<(&str, &[u8])> = Vec::new();
        for (path, blob) in &changes.upserts {
            // Anything listed is not (or no longer) what Hadron wrote there.
            meaningful = true;
            self.written.remove(path);
            match blob {
                Blob::Data(bytes) => data.push((path.as_str(), bytes.as_slice())),
                Blob::TooLarge { size } => self.catalog.upsert_too_large(path, *size),
            }
        }
        self.catalog.upsert_all(&data);
        for path in &changes.deletes {
            meaningful |= !path.starts_with("status/") || self.written.remove(path).is_some();
            self.catalog.remove(path);
        }
        Ok((changes.revision.to_string(), meaningful))
    }

    /// One pass: source → model → observe → plan → execute → forge → status.
    pub async fn pass(&mut self) -> Result<PassReport, ReconcileError> {
        use tracing::Instrument;
        self.passes += 1;
        let triggers: Vec<&str> = std::mem::take(&mut self.noted).into_iter().collect();
        // Every log line of the pass carries its number, its triggers and
        // (once fetched) the revision it reconciles.
        let span = tracing::info_span!("pass", n = self.passes, triggers = %triggers.join(","), revision = tracing::field::Empty);
        let started = Instant::now();
        let result = self.pass_steps(&triggers).instrument(span).await;
        if let Some(t) = &self.telemetry {
            t.metrics.observe_pass(started.elapsed(), result.as_ref().map(|_| ()).map_err(ReconcileError::reason));
            if let Ok(report) = &result {
                let mut by_phase: BTreeMap<&str, u64> = BTreeMap::new();
                for view in report.phases.values() {
                    *by_phase.entry(view.phase.as_str()).or_default() += 1;
                }
                t.metrics.set_requests_by_phase(by_phase);
                if std::mem::take(&mut self.board_stale) {
                    let statuses = self.rendered.iter().map(|(name, r)| (name, r.status()));
                    dashboard_model::publish(
                        &t.board,
                        dashboard_model::Board::build(&self.catalog.loaded().desired, statuses, &report.revision),
                    );
                }
                for change in &report.changes {
                    // No subscriber is fine.
                    let _ = t.events.send(change.clone());
                }
            }
        }
        result
    }

    async fn pass_steps(&mut self, triggers: &[&str]) -> Result<PassReport, ReconcileError> {
        let mut degraded = Vec::new();
        let mut timer = StepTimer::start();
        // A pass asked for only by worker exits goes on while the last status
        // commit is pushed (it starts the next workers meanwhile) and joins
        // it in its status step; any other pass joins it first.
        let exits_only = trigger::only_worker_exits(triggers);
        if !exits_only {
            self.join_publish().await?;
        }
        // Publish what an earlier pass (or a crash) left in the outbox first,
        // unless publishing backs off; a failure does not stop the pass.
        // (Not while a status commit is being pushed: its entry is still in
        // the outbox, and the status step joins it first.)
        let publishing = if self.pending_publish.is_some() { true } else { self.step_flush().await? };
        if let Some(failure) = self.publish_failure.clone().filter(|_| !publishing) {
            degraded.push(failure);
        }

        // Fetch; on failure, go on with the last good catalog (if there is one).
        // A pass asked for only by worker exits does not fetch: a push has
        // a trigger of its own (the watch, a webhook, the poll), which runs
        // a pass that fetches, unless the last fetch failed.
        let fetched_last = self.last_report.as_ref().filter(|r| !r.degraded.iter().any(|f| f.step == steps::Step::Fetch));
        let fetched = match (exits_only, fetched_last) {
            (true, Some(last)) => Ok((last.revision.clone(), false)),
            _ => match self.join_publish().await {
                // Hadron's own commit must be recorded before a fetch brings it back.
                Ok(()) => self.step_source().await,
                Err(e) => Err(e),
            },
        };
        let (revision, meaningful) = match fetched {
            Ok(fetched) => {
                tracing::Span::current().record("revision", tracing::field::display(&fetched.0));
                fetched
            }
            Err(e) => match self.last_report.as_ref() {
                Some(_) if e.ends_leadership() => return Err(e),
                Some(last) => {
                    let failure = steps::StepFailure::fetch(&e);
                    tracing::warn!(reason = e.reason(), "{}", failure.message);
                    degraded.push(failure);
                    (last.revision.clone(), true)
                }
                _ => return Err(e),
            },
        };
        timer.lap("fetch");
        let t = now();
        // After an idle pass, a commit holding only Hadron's own status files
        // changes nothing to decide, unless CI is awaited (CI results arrive
        // in the store or through the forge, not in git), a forge call
        // waits to be retried, or a step of that pass failed. The same holds
        // while workers run when only the control repo's push or poll asked
        // for this pass: their exits are triggers of their own, and what
        // waits for a time (a retry, held status files, a driver's recheck)
        // wakes the loop by itself.
        if let Some(prev) = self.last_report.as_ref().filter(|_| !meaningful && degraded.is_empty()) {
            let only_source = trigger::only_control_repo(triggers);
            let busy = prev.live_workers > 0 && only_source && prev.recheck.is_none();
            // Reviews asking for changes live on the forge, not in git: a
            // review's webhook, or the poll (for a lost webhook), reads them
            // while a gate waits.
            let reviews_due = self.forge.is_some()
                && triggers.iter().any(|k| *k == "ApprovalReviewed" || *k == "Poll")
                && prev.phases.values().any(|v| v.phase == Phase::WaitingForApproval);
            let quiet = (prev.idle || busy)
                && self.housekeeping_wait() > Duration::ZERO
                && !prev.forge_retry
                && prev.degraded.is_empty()
                && prev.unpublished == 0
                && (prev.live_workers == 0 || busy)
                && prev.wake_at.is_none_or(|w| w > t)
                && !prev.phases.values().any(|v| v.phase == Phase::WaitingForCI)
                && !reviews_due;
            if quiet {
                let report = PassReport { revision, status_commit: None, ..prev.without_changes() };
                // Nothing to decide, but a pull request may want its preview.
                self.step_previews(t).await;
                return Ok(report);
            }
        }
        // Model: patched per changed file, read by reference below.
        self.catalog.refresh();
        timer.lap("model");
        // Observe. The forge link is taken out for the call and put back
        // whatever happens.
        let mut forge = self.forge.take();
        if let Some(f) = forge.as_mut() {
            f.begin_pass();
        }
        let observed = observe::observe(self, forge.as_mut()).await;
        self.forge = forge;
        let mut observed = observed?;
        observed.own_statuses = self.verify_statuses(t).await?;
        timer.lap("observe");
        // Plan.
        let plan: Plan = plan::plan_incremental(&self.catalog.loaded().desired, &observed, t, &self.cfg.plan, &mut self.plan_memo);
        timer.lap("plan");
        let (reused, planned) = self.plan_memo.last_counts();
        tracing::debug!(reused, planned, "plan");
        // The status step that follows will likely publish, unless workers
        // run once this plan is carried out and it holds its files for the
        // status interval: the writer fetches the branch meanwhile, beside
        // execute (a failure is only a lost head start). Decided after the
        // plan, so that a pass starting a worker does not fetch for a
        // commit it holds back, beside the worker's own clone.
        if publishing && self.pending_publish.is_none() && self.status_hold(plan.live_workers()).is_none() {
            let writer = self.writer.clone();
            tokio::task::spawn_blocking(move || {
                if let Ok(mut writer) = writer.lock()
                    && let Err(e) = writer.prefetch()
                {
                    tracing::debug!(reason = e.reason(), "prefetching the control repo for the status commit failed: {e}");
                }
            });
        }
        // Execute. Between steps, a replica that does not lead for certain
        // stops here (each side effect checks again just before it acts).
        self.lease.check()?;
        degraded.extend(execute::execute(self, &plan, &observed, &revision, t).await?);
        timer.lap("execute");
        // Forge: PRs and commit statuses. A failure keeps the last outputs
        // (the PR links stay in the status files) and is retried next pass.
        self.lease.check()?;
        let outputs = match self.step_forge(&plan, t).await {
            Ok(outputs) => {
                self.forge_outputs = outputs.clone();
                outputs
            }
            Err(e) if e.ends_leadership() => return Err(e),
            Err(e) => {
                let failure = steps::StepFailure::forge(&e);
                tracing::warn!(reason = e.reason(), "{}", failure.message);
                degraded.push(failure);
                forge_step::ForgeOutputs { retry: true, ..self.forge_outputs.clone() }
            }
        };
        timer.lap("forge");
        // Plan previews on open pull requests (never fails the pass).
        self.step_previews(t).await;
        timer.lap("previews");
        // What is needed of the plan after the status step, taken before it:
        // the status step drops the plan before it publishes (at 10,000
        // requests, 5 MB less at the first publish, the peak).
        let live: Vec<String> = plan
            .requests
            .values()
            .flat_map(|v| v.attempts.iter())
            .filter(|a| a.state.is_live())
            .map(|a| a.worker.clone())
            .chain(plan.actions.iter().filter_map(|a| match a {
                plan::Action::Start(a) => Some(a.worker.clone()),
                _ => None,
            }))
            .collect();
        let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
        for a in plan.requests.values().flat_map(|v| v.attempts.iter()) {
            *by_state.entry(a.state.as_str()).or_default() += 1;
        }
        // Status, summarised once at the end of the pass.
        self.lease.check()?;
        let mut report = self.step_status(plan, &revision, t, &outputs, publishing).await?;
        timer.lap("status");
        if let Some(failure) = self.publish_failure.clone().filter(|_| publishing) {
            degraded.push(failure);
        }
        if !degraded.is_empty() {
            report.idle = false;
        }
        if report.live_workers > 0 {
            report.recheck = self.driver.recheck_after(&live);
        }
        report.degraded = degraded;
        if let Some(t) = &self.telemetry {
            t.metrics.set_workers_by_state(by_state);
        }
        self.store.set_last_revision(&revision, t).await?;
        if self.housekeeping_wait() == Duration::ZERO {
            let published = report.unpublished == 0 && report.held == 0 && self.pending_publish.is_none() && self.publish_failure.is_none();
            let swept = housekeeping::sweep(self, &observed, t, published).await?;
            // Housekeeping forgot the digests of deleted requests: so does
            // the loop's copy (not read again: 10,000 rows).
            let desired = &self.catalog.loaded().desired;
            if let Some(digests) = self.digests.as_mut() {
                digests.retain(|name, _| housekeeping::keeps(desired, &observed, name));
            }
            tracing::debug!(?swept, "housekeeping");
            self.pruned_at = Some(Instant::now());
        }
        timer.lap("housekeeping");
        tracing::debug!(steps = %timer, "pass steps");
        self.last_report = Some(report.without_changes());
        Ok(report)
    }

    /// Step 6, forge: approval PRs, target PRs, commit statuses (nothing
    /// without a forge).
    async fn step_forge(&mut self, plan: &Plan, t: Millis) -> Result<forge_step::ForgeOutputs, ReconcileError> {
        let Some(mut link) = self.forge.take() else {
            return Ok(forge_step::ForgeOutputs::default());
        };
        let result = async {
            let due = link.control_status_due(&self.store, plan).await?;
            let commits = self.request_commits(due).await?;
            link.act(&self.store, &self.cfg.control_url, &self.cfg.branch, &self.catalog.loaded().desired, plan, &commits, t).await
        }
        .await;
        self.forge = Some(link);
        result
    }

    /// The control-repo commit that brought each request's present content.
    async fn request_commits(&self, names: Vec<String>) -> Result<BTreeMap<String, String>, ReconcileError> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let (mirror, head) = {
            let source = self.source.lock().map_err(|_| ReconcileError::Join("source lock poisoned".into()))?;
            (source.mirror_path(), source.last_loaded())
        };
        let Some(head) = head else { return Ok(BTreeMap::new()) };
        tokio::task::spawn_blocking(move || {
            let repo = crate::git::open(&mirror).map_err(|e| crate::gates::GateError::object("open the control-repo mirror", e))?;
            let mut out = BTreeMap::new();
            for name in names {
                if let Some(commit) = crate::gates::history::request_commit_of(&repo, head.id(), &name)? {
                    out.insert(name, commit.to_string());
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| ReconcileError::Join(e.to_string()))?
    }

    /// Time until housekeeping is due (zero: now).
    fn housekeeping_wait(&self) -> Duration {
        self.pruned_at.map_or(Duration::ZERO, |at| self.cfg.retention.interval.saturating_sub(at.elapsed()))
    }
}
