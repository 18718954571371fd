//! Steps 0 and 7 of a pass: verifying which status files are Hadron's own,
//! rendering every request's status once, queuing the changed files in the
//! outbox and publishing them as one commit; flushing what earlier passes
//! queued, and backing off while publishing fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Context, PassReport, PhaseChange, ReconcileError, Seen, forge_step, steps};
use crate::model::kinds::Phase;
use crate::plan::{self, Plan};
use crate::status::render;
use crate::time::{Millis, now};

/// The status files that are Hadron's own, by request (shared with the
/// planner's observations, updated in place between passes).
pub(super) type OwnStatuses = Arc<BTreeMap<String, Arc<crate::model::RequestStatus>>>;

/// The request a status file's path `status/<request>.yaml` is of.
fn request_of(path: &str) -> &str {
    path.trim_start_matches("status/").trim_end_matches(".yaml")
}

/// What a published text gives: its digest, and its blob id (`None` when it
/// cannot be computed: the file is then read back).
type TextFacts = (String, Option<gix::ObjectId>);

/// A status file as last rendered, with the inputs it was rendered from.
pub(super) struct Rendered {
    /// The view (shared with the plan memo while the request is unchanged).
    view: Arc<plan::RequestView>,
    prev: Option<Arc<crate::model::RequestStatus>>,
    prs: BTreeMap<String, String>,
    stalled: Option<(String, String)>,
    /// The text to write; `None` once the file holds it (10,000 published
    /// files need not stay in memory twice).
    text: Option<Arc<[u8]>>,
    /// The status the text was written from (the previous file itself when
    /// it holds the same), handed to the catalog once published.
    status: Arc<crate::model::RequestStatus>,
    /// Whether the text is what the previous file holds.
    same: bool,
}

impl Rendered {
    /// The status as rendered.
    pub(super) fn status(&self) -> &Arc<crate::model::RequestStatus> {
        &self.status
    }

    /// Whether rendering these inputs again would give the same file (the
    /// previous file compared by identity: it is re-parsed only when its
    /// blob changed).
    fn holds(
        &self,
        view: &Arc<plan::RequestView>,
        prev: Option<&Arc<crate::model::RequestStatus>>,
        prs: &BTreeMap<String, String>,
        stalled: Option<&(String, String)>,
    ) -> bool {
        let same_prev = match (&self.prev, prev) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_prev && (Arc::ptr_eq(&self.view, view) || self.view == *view) && self.prs == *prs && self.stalled.as_ref() == stalled
    }
}

impl Context {
    /// The status files that are Hadron's own: their re-rendered text has the
    /// digest Hadron recorded when it published them. Every other status
    /// file (hand-edited, pushed with a new request, or left from before the
    /// store was lost) is reported once as an event and never informs a
    /// decision; the status step overwrites it.
    pub(super) async fn verify_statuses(&mut self, t: Millis) -> Result<OwnStatuses, ReconcileError> {
        // Read once, then written through: this process is the one writer.
        if self.digests.is_none() {
            self.digests = Some(self.store.status_digests().await?);
            self.own = None;
        }
        let recorded = self.digests.take().unwrap_or_default();
        // Only the status files that changed since the last pass are looked
        // at again; everything the first time, or after the digests moved
        // without their files (housekeeping, a vouched-for file).
        let touched = self.catalog.take_status_touches();
        let statuses = &self.catalog.loaded().desired.statuses;
        let (mut own, names): (OwnStatuses, Vec<String>) = match self.own.take() {
            Some(own) => (own, touched.into_iter().collect()),
            None => {
                self.status_digests.retain(|name, _| statuses.contains_key(name));
                self.reported_untrusted.retain(|name, _| statuses.contains_key(name));
                (Arc::default(), statuses.keys().cloned().collect())
            }
        };
        let mine = Arc::make_mut(&mut own);
        let mut untrusted: Vec<(String, String)> = Vec::new();
        for name in names {
            let Some(status) = statuses.get(&name) else {
                mine.remove(&name);
                self.status_digests.remove(&name);
                self.reported_untrusted.remove(&name);
                continue;
            };
            let known = matches!(self.status_digests.get(&name), Some((parsed, _)) if Arc::ptr_eq(parsed, status));
            if !known {
                let digest = render::digest(render::to_yaml(status).as_bytes());
                self.status_digests.insert(name.clone(), (status.clone(), digest));
            }
            let digest = &self.status_digests[&name].1;
            if recorded.get(&name) == Some(digest) {
                self.reported_untrusted.remove(&name);
                mine.insert(name, status.clone());
            } else {
                mine.remove(&name);
                if self.reported_untrusted.get(&name) != Some(digest) {
                    untrusted.push((name, digest.clone()));
                }
            }
        }
        self.own = Some(own.clone());
        for (name, digest) in untrusted {
            let why = if recorded.contains_key(&name) {
                "differs from what Hadron last wrote (edited by hand?)"
            } else {
                "was not written by Hadron (pushed by someone, or Hadron's store was reset)"
            };
            let detail = format!("status/{name}.yaml {why}: it is ignored for decisions and rewritten from Hadron's own observations");
            tracing::warn!(request = %name, "{detail}");
            self.store
                .append_event(&crate::store::NewEvent {
                    at: t,
                    request: Some(name.clone()),
                    actor: "git".into(),
                    action: "status.untrusted".into(),
                    revision: None,
                    detail,
                })
                .await?;
            self.reported_untrusted.insert(name, digest);
        }
        self.digests = Some(recorded);
        Ok(own)
    }

    pub(super) async fn step_status(
        &mut self,
        plan: Plan,
        revision: &str,
        t: Millis,
        forge: &forge_step::ForgeOutputs,
        publishing: bool,
    ) -> Result<PassReport, ReconcileError> {
        // A status commit still being pushed is recorded first: this pass
        // renders from the files it wrote. Publishing goes on only if it
        // went through.
        self.join_publish().await?;
        let publishing = publishing && self.publish_retry.due();
        let mut changes: BTreeMap<String, Option<Arc<[u8]>>> = BTreeMap::new();
        // The statuses of the changed files, as rendered.
        let mut own: BTreeMap<String, Arc<crate::model::RequestStatus>> = BTreeMap::new();
        let mut report =
            PassReport { revision: revision.to_owned(), wake_at: plan.wake_at, forge_retry: forge.retry, ..PassReport::default() };
        let none = BTreeMap::new();
        let mut timer = super::StepTimer::start();
        let mut urgent = false;
        let known = self.rendered.len();
        self.rendered.retain(|name, _| plan.requests.contains_key(name));
        self.board_stale |= self.rendered.len() != known;
        // Rendered again only when one of its inputs changed (a pass that
        // changed one request renders one status file); many at once are
        // rendered together, spread over the cores (a first pass renders all).
        let statuses = &self.catalog.loaded().desired.statuses;
        let jobs: Vec<RenderJob<'_>> = plan
            .requests
            .iter()
            .map(|(name, view)| RenderJob {
                name,
                view,
                prev: statuses.get(name),
                prs: forge.pull_requests.get(name).unwrap_or(&none),
                stalled: forge.stalled.get(name),
            })
            .filter(|job| !self.rendered.get(job.name).is_some_and(|c| c.holds(job.view, job.prev, job.prs, job.stalled)))
            .collect();
        self.board_stale |= !jobs.is_empty();
        // What a person was shown of each request rendered again: its last
        // rendering, or (the first time) its status file. Only these can
        // have changed.
        let mut shown: BTreeMap<String, Option<Seen>> = BTreeMap::new();
        for (job, fresh) in jobs.iter().zip(render_all(&jobs, revision, t)) {
            let before = match self.rendered.insert(job.name.clone(), Box::new(fresh)) {
                Some(old) => Some(Seen::of(&old.status.status)),
                None => job.prev.map(|p| Seen::of(&p.status)),
            };
            shown.insert(job.name.clone(), before);
        }
        drop(jobs);
        for (name, view) in &plan.requests {
            let cached = self.rendered.get(name).expect("because every request was rendered above or is in the cache");
            let (text, status, same) = (cached.text.clone(), cached.status.clone(), cached.same);
            if !crate::ids::is_dns_label(name) {
                // `requests/<bad name>.yaml` is Invalid (its diagnostic says
                // why), but its name cannot be a status file: a person sees
                // it in the log, the terminal and `hadron validate`.
                if self.reported_unnamed.insert(name.clone()) {
                    tracing::warn!(request = ?name, "a request file whose name is not a DNS label gets no status file: {}", view.message);
                }
            } else if let (false, Some(text)) = (same, &text) {
                let path = render::path_of(name);
                changes.insert(path.clone(), Some(text.clone()));
                own.insert(path, status);
            } else if self.reported_untrusted.contains_key(name) {
                // A file Hadron did not write that holds exactly what Hadron
                // decided (say, from before its store was reset): vouch for it.
                let digest = render::digest(render::to_yaml(&status).as_bytes());
                self.store.set_status_digests(&[(name, Some(digest.clone()))], t).await?;
                if let Some(digests) = self.digests.as_mut() {
                    digests.insert(name.clone(), digest);
                }
                self.reported_untrusted.remove(name);
                // Its trust changed without its file: look at every file next pass.
                self.own = None;
            }
            // What a person is shown changed: an event. Only a request
            // rendered again can have changed.
            if let Some(before) = shown.remove(name) {
                let now_seen = Seen::of(&self.rendered[name].status.status);
                if before.as_ref() != Some(&now_seen) {
                    let (reason, message) = match &now_seen.stalled {
                        Some((r, m)) => (r.clone(), format!("Stalled: {m}; {}", view.message)),
                        None => (now_seen.reason.clone(), view.message.clone()),
                    };
                    // What asks a person to act (a stall, a gate, a failure)
                    // is committed at once, never held for the status interval.
                    urgent |=
                        now_seen.stalled.is_some() || matches!(view.phase, Phase::WaitingForApproval | Phase::WaitingForCI | Phase::Failed);
                    report.changes.push(PhaseChange {
                        request: name.clone(),
                        from: before.map(|b| b.phase),
                        to: view.phase,
                        stage: view.stage.clone(),
                        reason,
                        message,
                        revision: revision.to_owned(),
                    });
                }
            }
        }
        // Status files Hadron would never write (a name that is not a DNS
        // label, from an older Hadron or a person) are removed: status/ is Hadron's.
        for path in self.catalog.paths_under("status/") {
            let stem = path.trim_start_matches("status/").strip_suffix(".yaml").unwrap_or("");
            let mine = !path["status/".len()..].contains('/') && crate::ids::is_dns_label(stem);
            if !mine && crate::status::writer::validate_status_path(path).is_ok() {
                changes.insert(path.to_owned(), None);
            }
        }
        for name in &plan.deleted {
            changes.insert(render::path_of(name), None);
            let before = plan::previous(&self.catalog.loaded().desired, name).map(|p| p.status.phase);
            report.changes.push(PhaseChange {
                request: name.clone(),
                from: before,
                to: Phase::Cancelled,
                stage: None,
                reason: "Deleted".into(),
                message: format!(
                    "requests/{name}.yaml was deleted: its workers are cancelled and status/{name}.yaml is removed (history: git log -p -- status/{name}.yaml)"
                ),
                revision: revision.to_owned(),
            });
        }
        timer.lap("render");
        let events: Vec<crate::store::NewEvent> = report
            .changes
            .iter()
            .map(|change| crate::store::NewEvent {
                at: t,
                request: Some(change.request.clone()),
                actor: "hadron".into(),
                action: format!("phase.{}", change.to.as_str()),
                revision: Some(revision.to_owned()),
                detail: change.message.clone(),
            })
            .collect();
        self.store.append_events(&events).await?;
        drop(events);
        timer.lap("events");
        report.live_workers = plan.live_workers();
        let settled = plan.wake_at.is_none()
            && plan
                .requests
                .values()
                .all(|v| v.phase.is_terminal() || matches!(v.phase, Phase::WaitingForApproval | Phase::WaitingForCI | Phase::Cancelled));
        // Rendered and counted: the plan's views are what the report keeps
        // of every request; the rest is not needed while publishing.
        let mut plan = plan;
        report.phases = Arc::new(std::mem::take(&mut plan.requests));
        drop(plan);
        let hold = if urgent { None } else { self.status_hold(report.live_workers) };
        let count = changes.len();
        if !changes.is_empty() && !publishing {
            // Publishing fails or backs off: nothing is queued behind the
            // entry already waiting; these files are decided again (from the
            // store and the workers) once it goes through.
            report.unpublished = count;
        } else if let (false, Some(wait)) = (changes.is_empty(), hold) {
            // Workers run and a status commit was just made: these files go
            // into the next one, with whatever changes meanwhile (kept in
            // the render cache until then, or rendered anew). People see the
            // change at once in the terminal, the events and the API.
            report.held = count;
            let due = now().saturating_add(Millis::try_from(wait.as_millis()).unwrap_or(Millis::MAX).saturating_add(1));
            report.wake_at = Some(report.wake_at.map_or(due, |w| w.min(due)));
        } else if !changes.is_empty() {
            let names: Vec<String> = changes.keys().map(|p| request_of(p).to_owned()).collect();
            let message = status_message(&names, &report);
            // Rendered from strings: the texts are UTF-8.
            let files: BTreeMap<&str, Option<std::borrow::Cow<'_, str>>> =
                changes.iter().map(|(p, c)| (p.as_str(), c.as_ref().map(|b| String::from_utf8_lossy(b)))).collect();
            let id = self.store.put_outbox(&message, &files, t).await?;
            drop(files);
            timer.lap("outbox");
            if report.live_workers > 0 {
                // Workers run: the push goes on while the next pass, asked
                // for by a worker's exit, starts the next worker; that pass
                // joins it before it fetches or renders.
                self.pending_publish = Some(self.start_publish(id, changes, own, message, revision.to_owned()));
            } else {
                let published = self.publish(id, changes, own, message, revision.to_owned()).await;
                match self.settle(published)? {
                    Some(commit) => report.status_commit = commit,
                    None => report.unpublished = count,
                }
            }
        }
        timer.lap("publish");
        tracing::debug!(steps = %timer, files = count, held = report.held, "status step");
        report.idle = report.live_workers == 0 && settled;
        Ok(report)
    }

    pub(super) async fn publish(
        &mut self,
        outbox_id: i64,
        changes: BTreeMap<String, Option<Arc<[u8]>>>,
        own: BTreeMap<String, Arc<crate::model::RequestStatus>>,
        message: String,
        revision: String,
    ) -> Result<Option<String>, ReconcileError> {
        let pending = self.start_publish(outbox_id, changes, own, message, revision);
        self.finish_publish(pending).await
    }

    /// Starts committing and pushing `changes` on a blocking thread; what
    /// it means for the store and the catalog is recorded by
    /// [`Context::finish_publish`].
    fn start_publish(
        &self,
        outbox_id: i64,
        changes: BTreeMap<String, Option<Arc<[u8]>>>,
        own: BTreeMap<String, Arc<crate::model::RequestStatus>>,
        message: String,
        revision: String,
    ) -> PendingPublish {
        let writer = self.writer.clone();
        let to_publish = changes.clone();
        let done = Arc::new(tokio::sync::Notify::new());
        let notify = done.clone();
        let git = tokio::task::spawn_blocking(move || {
            let published = writer
                .lock()
                .map_err(|_| ReconcileError::Join("writer lock poisoned".into()))
                .and_then(|mut writer| Ok(writer.publish(&to_publish, &message, &revision)?));
            // Kept as a permit when the loop is not waiting yet.
            notify.notify_one();
            published
        });
        PendingPublish { git, done, outbox_id, changes, own, started: std::time::Instant::now(), span: tracing::Span::current() }
    }

    /// Waits for a publish started by [`Context::start_publish`] and records
    /// it: the outbox entry, the digests, the catalog.
    async fn finish_publish(&mut self, pending: PendingPublish) -> Result<Option<String>, ReconcileError> {
        let PendingPublish { git, outbox_id, changes, own, started, .. } = pending;
        let outcome = git.await.map_err(|e| ReconcileError::Join(e.to_string()))??;
        let mut timer = super::StepTimer { last: started, laps: Vec::new() };
        timer.lap("git");
        let commit = outcome.commit.clone();
        if commit.is_some() {
            self.last_status_commit = Some(std::time::Instant::now());
        }
        if let Some(t) = &self.telemetry {
            t.metrics.add_push_retries(u64::from(outcome.attempts.saturating_sub(1)));
            if commit.is_some() {
                t.metrics.inc_status_commits();
            }
        }
        self.store.mark_published(outbox_id, commit.as_deref().unwrap_or("unchanged"), now()).await?;
        self.publish_succeeded();
        // Our own files, as now in git, recorded as rendered (not read back):
        // the next fetch brings them back and must neither count as a
        // change nor be parsed again.
        let written: Vec<crate::model::load::OwnFile<'_>> = changes
            .iter()
            .filter_map(|(path, content)| {
                Some(crate::model::load::OwnFile { path: path.as_str(), text: content.as_deref()?, status: own.get(path).cloned() })
            })
            .collect();
        let mut taken = self.catalog.upsert_own_statuses(&written).into_iter();
        drop(written);
        // Per file, in order: the status it now holds (its next rendering
        // starts from it, and its digest is known without rendering it
        // again), and what its text gives: the digest Hadron trusts when it
        // reads the file back and the blob id by which a fetch brings it
        // back. Then the texts go (the render cache lets go of them here),
        // before the maps below grow: after a first pass at 10,000
        // requests they are 9 MB.
        let mut facts: Vec<(Option<Arc<crate::model::RequestStatus>>, Option<TextFacts>)> = Vec::with_capacity(changes.len());
        for (path, content) in &changes {
            let Some(text) = content.as_deref() else {
                facts.push((None, None));
                continue;
            };
            let held = match (own.get(path), taken.next()) {
                (Some(status), Some(true)) => Some(status.clone()),
                _ => None,
            };
            let name = request_of(path);
            if let (Some(status), Some(rendered)) = (&held, self.rendered.get_mut(name)) {
                rendered.prev = Some(status.clone());
                rendered.same = true;
                rendered.text = None;
            }
            // An id that cannot be computed only means the file is read back.
            let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, text).ok();
            facts.push((held, Some((render::digest(text), id))));
        }
        let paths: Vec<String> = changes.into_keys().collect();
        // What Hadron published is what it will trust when it reads it back.
        let digests: Vec<(&str, Option<String>)> =
            paths.iter().zip(&facts).map(|(path, (_, f))| (request_of(path), f.as_ref().map(|(d, _)| d.clone()))).collect();
        self.store.set_status_digests(&digests, now()).await?;
        drop(digests);
        timer.lap("record");
        tracing::debug!(steps = %timer, "published");
        for (path, (held, f)) in paths.into_iter().zip(facts) {
            let name = request_of(&path).to_owned();
            self.reported_untrusted.remove(&name);
            match f {
                Some((digest, id)) => {
                    if let Some(status) = held {
                        self.status_digests.insert(name.clone(), (status, digest.clone()));
                    }
                    if let Some(known) = self.digests.as_mut() {
                        known.insert(name, digest);
                    }
                    // The blob id tells Hadron's own file when a fetch brings it back.
                    match id {
                        Some(id) => self.written.insert(path, id),
                        None => self.written.remove(&path),
                    };
                }
                None => {
                    if let Some(known) = self.digests.as_mut() {
                        known.remove(&name);
                    }
                    self.catalog.remove(&path);
                    self.written.remove(&path);
                }
            }
        }
        Ok(commit)
    }

    /// Before the loop returns: the status commit being pushed, if any, is
    /// waited for and recorded (a failure leaves it in the outbox for the
    /// next start).
    pub(super) async fn finish(&mut self) {
        if let Err(e) = self.join_publish().await {
            tracing::warn!(reason = e.reason(), "recording the last status commit failed: {e}; the next start publishes it again");
        }
    }

    /// The lease is lost: the status commit being pushed, if any, is not
    /// waited for or recorded (its entry stays in the outbox; the control
    /// repo's fence refuses the push once a newer leader has claimed it).
    pub(super) fn abandon_publish(&mut self) {
        if let Some(pending) = self.pending_publish.take() {
            tracing::warn!(outbox = pending.outbox_id, "a status commit being pushed is abandoned: this replica no longer leads");
        }
    }

    /// Waits for the status commit an earlier pass left being pushed, if
    /// any, and records it (a failure is handled as a failed publish: the
    /// entry stays in the outbox and publishing backs off).
    pub(super) async fn join_publish(&mut self) -> Result<(), ReconcileError> {
        use tracing::Instrument;
        let Some(pending) = self.pending_publish.take() else { return Ok(()) };
        // Logged in the span of the pass that decided these files.
        let span = pending.span.clone();
        async {
            let published = self.finish_publish(pending).await;
            self.settle(published).map(|_| ())
        }
        .instrument(span)
        .await
    }

    /// What a publish came to, the one way for every caller: a failure of
    /// git or of its thread backs publishing off (the entry stays in the
    /// outbox) and is `None`; any other error stops the pass.
    fn settle<T>(&mut self, published: Result<T, ReconcileError>) -> Result<Option<T>, ReconcileError> {
        match published {
            Ok(done) => Ok(Some(done)),
            // A newer leader holds the control repo: this pass, and this
            // leadership, end here (nothing is re-applied onto its head).
            Err(e) if e.ends_leadership() => Err(e),
            Err(e @ (ReconcileError::Writer(_) | ReconcileError::Join(_))) => {
                self.publish_failed(&e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// How long the status files of this pass wait for the next status
    /// commit: while `live` workers run, until the status interval since
    /// the last commit has passed (`None`: commit now).
    pub(super) fn status_hold(&self, live: usize) -> Option<Duration> {
        if live == 0 {
            return None;
        }
        let since = self.last_status_commit?.elapsed();
        Some(self.cfg.status_interval.saturating_sub(since)).filter(|wait| !wait.is_zero())
    }

    /// Step 0, flush: publishes what earlier passes queued. Returns whether
    /// this pass publishes (false while publishing fails or backs off).
    pub(super) async fn step_flush(&mut self) -> Result<bool, ReconcileError> {
        if !self.publish_retry.due() {
            return Ok(false);
        }
        let flushed = self.flush_outbox().await;
        let flushed = self.settle(flushed)?.is_some();
        if flushed {
            // Nothing waits in the outbox any more.
            self.publish_succeeded();
        }
        Ok(flushed)
    }

    pub(super) fn publish_succeeded(&mut self) {
        if let Some(failure) = self.publish_failure.take() {
            tracing::info!(after = self.publish_retry.failures(), "status files are published again (they were not: {})", failure.message);
        }
        self.publish_retry.succeeded();
        if let Some(t) = &self.telemetry {
            t.metrics.set_status_publish_failing(false);
        }
    }

    pub(super) fn publish_failed(&mut self, err: &ReconcileError) {
        let failure = steps::StepFailure::publish(err);
        let wait = self.publish_retry.failed(failure.severity, self.cfg.poll_interval.min(Duration::from_secs(60)));
        tracing::warn!(reason = err.reason(), retry_in = ?wait, "{}", failure.message);
        if let Some(t) = &self.telemetry {
            t.metrics.inc_status_publish_failures(err.reason());
            t.metrics.set_status_publish_failing(true);
        }
        self.publish_failure = Some(failure);
    }

    /// Publishes pending outbox entries (left by a crash between commit and
    /// push, or by a failed publish).
    pub(super) async fn flush_outbox(&mut self) -> Result<(), ReconcileError> {
        for entry in self.store.pending_outbox().await? {
            let changes: BTreeMap<String, Option<Arc<[u8]>>> =
                entry.files.iter().map(|(p, c)| (p.clone(), c.as_ref().map(|s| Arc::from(s.as_bytes())))).collect();
            let revision = self.store.last_revision().await?.unwrap_or_default();
            let revision = if revision.len() == 40 { revision } else { "0".repeat(40) };
            match self.publish(entry.id, changes, BTreeMap::new(), entry.message.clone(), revision).await {
                Err(ReconcileError::Writer(e)) if e.is_permanent() => {
                    // This row can never be published: set it aside with an
                    // event, so it does not stop every later pass.
                    let detail = format!(
                        "outbox entry {} ({}) can never be published and was set aside: {e}",
                        entry.id,
                        entry.message.lines().next().unwrap_or("")
                    );
                    tracing::error!(reason = e.reason(), "{detail}");
                    self.store.mark_published(entry.id, "dead-letter", now()).await?;
                    self.store
                        .append_event(&crate::store::NewEvent {
                            at: now(),
                            request: None,
                            actor: "hadron".into(),
                            action: "outbox.dead_letter".into(),
                            revision: None,
                            detail,
                        })
                        .await?;
                    if let Some(t) = &self.telemetry {
                        t.metrics.inc_dead_letters(e.reason());
                    }
                }
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }
}

/// A status commit being pushed while the loop goes on (see
/// [`Context::join_publish`]).
pub(super) struct PendingPublish {
    git: tokio::task::JoinHandle<Result<crate::status::writer::PublishOutcome, ReconcileError>>,
    /// Notified once the push is done (the loop then records it).
    pub(super) done: Arc<tokio::sync::Notify>,
    outbox_id: i64,
    changes: BTreeMap<String, Option<Arc<[u8]>>>,
    own: BTreeMap<String, Arc<crate::model::RequestStatus>>,
    started: std::time::Instant,
    /// The span of the pass that started it.
    span: tracing::Span,
}

/// One status file to render: a request and the inputs of its file.
struct RenderJob<'a> {
    name: &'a String,
    view: &'a Arc<plan::RequestView>,
    prev: Option<&'a Arc<crate::model::RequestStatus>>,
    prs: &'a BTreeMap<String, String>,
    stalled: Option<&'a (String, String)>,
}

impl RenderJob<'_> {
    fn render(&self, revision: &str, t: Millis) -> Rendered {
        let stalled = self.stalled.map(|(r, m)| (r.as_str(), m.as_str()));
        let status = render::render_with(self.view, self.prev.map(Arc::as_ref), revision, t, self.prs, stalled);
        // The same as the previous file: keep that one, not a copy, and no
        // text to write.
        let (status, same, text) = match self.prev.filter(|p| ***p == status) {
            Some(p) => (p.clone(), true, None),
            None => {
                let text: Arc<[u8]> = render::to_yaml(&status).into_bytes().into();
                (Arc::new(status), false, Some(text))
            }
        };
        Rendered {
            view: self.view.clone(),
            prev: self.prev.cloned(),
            prs: self.prs.clone(),
            stalled: self.stalled.cloned(),
            text,
            status,
            same,
        }
    }
}

/// Renders `jobs` in order; more than a few are spread over the cores.
fn render_all(jobs: &[RenderJob<'_>], revision: &str, t: Millis) -> Vec<Rendered> {
    const ALONE: usize = 64;
    if jobs.len() <= ALONE {
        return jobs.iter().map(|job| job.render(revision, t)).collect();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = jobs.len().div_ceil(threads).max(ALONE);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|job| job.render(revision, t)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// The status commit's message: a subject that says what happened (each
/// request and its phase for up to three, counts by phase beyond), and one
/// body line per written file.
fn status_message(names: &[String], report: &PassReport) -> String {
    let phase_of = |name: &String| report.phases.get(name).map_or("deleted", |v| v.phase.as_str());
    let subject = if names.len() <= 3 {
        let parts: Vec<String> = names.iter().map(|n| format!("{n} {}", phase_of(n))).collect();
        format!("status: {}", parts.join(", "))
    } else {
        let mut by_phase: BTreeMap<&str, usize> = BTreeMap::new();
        for name in names {
            *by_phase.entry(phase_of(name)).or_default() += 1;
        }
        let counts: Vec<String> = by_phase.iter().map(|(p, n)| format!("{n} {p}")).collect();
        format!("status: {} requests ({})", names.len(), counts.join(", "))
    };
    let mut body = String::new();
    for name in names {
        match report.phases.get(name) {
            Some(v) => body.push_str(&format!(
                "- {name}: {}{}\n",
                v.phase.as_str(),
                v.stage.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
            )),
            None => body.push_str(&format!("- {name}: deleted\n")),
        }
    }
    format!("{subject}\n\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(phases: &[(&str, Phase)]) -> PassReport {
        PassReport {
            phases: Arc::new(
                phases
                    .iter()
                    .map(|(n, p)| {
                        let view = plan::RequestView {
                            name: (*n).to_owned(),
                            generation: String::new(),
                            phase: *p,
                            stage: None,
                            reason: String::new(),
                            message: String::new(),
                            attempts: Vec::new(),
                            work_branch: String::new(),
                            revision: None,
                        };
                        ((*n).to_owned(), Arc::new(view))
                    })
                    .collect(),
            ),
            ..PassReport::default()
        }
    }

    #[test]
    fn status_subject_names_each_request_and_its_phase() {
        let r = report(&[("add-greeting", Phase::Succeeded), ("add-healthz", Phase::WaitingForApproval), ("other", Phase::Running)]);
        let names = vec!["add-greeting".to_owned(), "add-healthz".to_owned()];
        let msg = status_message(&names, &r);
        assert_eq!(msg.lines().next(), Some("status: add-greeting Succeeded, add-healthz WaitingForApproval"));
        let gone = status_message(&["old".to_owned()], &r);
        assert_eq!(gone.lines().next(), Some("status: old deleted"));
    }

    #[test]
    fn status_subject_counts_by_phase_beyond_three() {
        let r = report(&[("a", Phase::Running), ("b", Phase::Running), ("c", Phase::Pending), ("d", Phase::WaitingForApproval)]);
        let names: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| (*s).to_owned()).collect();
        let msg = status_message(&names, &r);
        let subject = msg.lines().next().expect("subject");
        assert!(subject.starts_with("status: 5 requests ("), "{subject}");
        for part in ["2 Running", "1 Pending", "1 WaitingForApproval", "1 deleted"] {
            assert!(subject.contains(part), "{subject} lacks {part}");
        }
    }
}
