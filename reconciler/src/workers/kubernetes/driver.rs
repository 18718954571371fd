//! The Kubernetes driver: one `batch/v1` Job per worker in one namespace.
//!
//! - **start**: the Job (409: already started, when the Job there is this
//!   installation's), then its NetworkPolicy,
//!   then the run spec's Secret, both owned by the Job from their creation,
//!   so Kubernetes deletes them with it and none is ever left without one
//!   (no `list` of Secrets is needed to find strays). The pod cannot start
//!   its container before the Secret it mounts exists, and the Secret is
//!   made only once the NetworkPolicy is: the worker never runs without its
//!   policy. A crash between the steps leaves a Job whose pod waits for its
//!   Secret until the next start of the same worker (409, then the missing
//!   objects) or its `activeDeadlineSeconds`; a refused policy or Secret
//!   deletes the Job this start made, so the next start begins afresh. A
//!   Secret already there (409) is given to the Job, and its run spec
//!   compared with this start's: a stale one (left by an earlier Job of the
//!   same name that Kubernetes had not collected yet) is replaced.
//! - **observe**: reads a watcher's cache of the Jobs carrying Hadron's
//!   label and this installation's (a reflector; a `410 Gone` makes it list again), never the API
//!   per pass. A finished Job's result is its pod's termination message,
//!   read once and kept. Until the first list has arrived, `observe` waits
//!   (and fails after a while): an empty cache must not read as "every
//!   worker is gone".
//! - **cancel**: deletes the Job with background propagation (its pods and
//!   Secret go with it); a Job already gone is cancelled. Every delete names
//!   the uid of the Job it means (a precondition): a Job made since under
//!   the same name is not deleted by mistake.
//!
//! Several installations may share a namespace: every object carries the
//! `hadron.dev/installation` label, the watcher selects this installation's
//! Jobs only, and a Job of another installation is never adopted, cancelled
//! or pruned (nor taken as "already started" when it holds the name).
//! - Exits: the watcher calls the exit hook when a Job finishes, so no
//!   periodic re-run is needed; wall time is the Job's
//!   `activeDeadlineSeconds`, enforced by Kubernetes.
//!
//! Workers a restarted Hadron does not know are adopted from the cache like
//! run directories are locally: each Job's labels say which request, stage,
//! generation and attempt it runs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};

use super::{
    INSTALLATION_LABEL, JobTemplate, MANAGED_BY, RUN_FILE_KEY, installation_of, is_finished, job, network_policy, observe_job,
    owner_reference, run_secret,
};
use crate::ids::Installation;
use crate::workers::spec::{EnvSource, RunSpec};
use crate::workers::{Driver, DriverError, Observation, WorkerState};

/// Called with the worker's name when its Job finishes.
pub type ExitHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The label selector of everything `installation` creates.
pub fn selector(installation: &Installation) -> String {
    format!("{}={},{INSTALLATION_LABEL}={installation}", MANAGED_BY.0, MANAGED_BY.1)
}

/// How a driver is set up.
#[derive(Clone)]
pub struct KubernetesOptions {
    /// What every Job shares (namespace, default image, …).
    pub template: JobTemplate,
    /// The leader epoch, written on every Job it creates.
    pub epoch: Option<i64>,
    /// Secrets agents may reference (`secretRef.name`); others are left out
    /// of the pod, so the worker fails with `SecretMissing`.
    pub agent_secrets: BTreeSet<String>,
    /// Called when a Job finishes.
    pub on_exit: Option<ExitHook>,
    /// How long `observe` waits for the watcher's first list.
    pub sync_timeout: Duration,
    /// Whose workers these are: the driver watches, starts, cancels and
    /// prunes this installation's Jobs only.
    pub installation: Installation,
}

impl KubernetesOptions {
    /// Options with no epoch, no agent secrets, no hook, a 30 s wait for
    /// the first list and the default installation.
    pub fn new(template: JobTemplate) -> Self {
        KubernetesOptions {
            template,
            epoch: None,
            agent_secrets: BTreeSet::new(),
            on_exit: None,
            sync_timeout: Duration::from_secs(30),
            installation: Installation::default(),
        }
    }
}

/// Runs workers as Kubernetes Jobs. See the module documentation.
pub struct KubernetesDriver {
    jobs: Api<Job>,
    secrets: Api<Secret>,
    policies: Api<NetworkPolicy>,
    pods: Api<Pod>,
    opts: KubernetesOptions,
    cache: reflector::Store<Job>,
    /// Finished workers' states by Job uid, read once from their pods.
    finished: Mutex<HashMap<String, WorkerState>>,
    runtime: tokio::runtime::Handle,
    watch: tokio::task::AbortHandle,
}

impl Drop for KubernetesDriver {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// The client Kubernetes' own tools would use: the pod's service account
/// in a cluster, else the kubeconfig (`KUBECONFIG`, `~/.kube/config`).
pub async fn client() -> Result<kube::Client, DriverError> {
    let config = match kube::Config::incluster() {
        Ok(config) => config,
        Err(in_cluster) => kube::Config::infer()
            .await
            .map_err(|e| DriverError::KubernetesConfig(format!("not in a cluster ({in_cluster}) and no usable kubeconfig ({e})")))?,
    };
    kube::Client::try_from(config).map_err(|e| DriverError::KubernetesConfig(e.to_string()))
}

impl KubernetesDriver {
    /// A driver on `client` in the template's namespace. Starts watching
    /// Jobs at once, on the current tokio runtime (so call it inside one).
    pub fn new(client: kube::Client, opts: KubernetesOptions) -> KubernetesDriver {
        let ns = opts.template.namespace.as_str();
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        let (cache, writer) = reflector::store();
        let hook = opts.on_exit.clone();
        let stream = watcher(jobs.clone(), watcher::Config::default().labels(&selector(&opts.installation)))
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(job) => {
                        if let (Some(hook), Some(name)) = (&hook, job.metadata.name.as_deref())
                            && is_finished(&job)
                        {
                            hook(name);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, reason = "KubernetesWatch", "watching Jobs failed; listing them again after a back-off")
                    }
                }
            }
        });
        KubernetesDriver {
            jobs,
            secrets: Api::namespaced(client.clone(), ns),
            policies: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client, ns),
            opts,
            cache,
            finished: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            watch: task.abort_handle(),
        }
    }

    fn block_on<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        // Driver methods run on blocking threads (spawn_blocking), where
        // waiting on the runtime is allowed.
        self.runtime.block_on(fut)
    }

    fn api_error(&self, op: &'static str, worker: &str, source: kube::Error) -> DriverError {
        DriverError::Kubernetes { op, worker: worker.to_owned(), namespace: self.opts.template.namespace.clone(), source: Box::new(source) }
    }

    /// Whether `job` is this installation's (the watcher selects only
    /// those; a Job read by name may be anyone's).
    fn is_ours(&self, job: &Job) -> bool {
        installation_of(&job.metadata) == Some(self.opts.installation.as_str())
    }

    fn foreign(&self, worker: &str, theirs: Option<&str>) -> DriverError {
        DriverError::ForeignWorker {
            worker: worker.to_owned(),
            theirs: theirs.unwrap_or_default().to_owned(),
            ours: self.opts.installation.to_string(),
        }
    }

    /// The run spec as the pod sees it: a secret reference the operator did
    /// not allow is left out, and an allowed one is read from the variable
    /// the pod's `secretKeyRef` fills (the agent's own variable name).
    fn pod_spec(&self, spec: &RunSpec) -> RunSpec {
        let mut spec = spec.clone();
        spec.env.retain(|(_, source)| match source {
            EnvSource::Value(_) => true,
            EnvSource::Secret { name, .. } => self.opts.agent_secrets.contains(name),
        });
        spec
    }

    /// The termination message of a finished Job's worker container, if a pod has one.
    async fn termination_message(&self, worker: &str) -> Result<Option<String>, DriverError> {
        let pods = self
            .pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={worker}")))
            .await
            .map_err(|e| self.api_error("list pods", worker, e))?;
        Ok(pods.items.iter().find_map(|pod| {
            let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
            let worker_status = statuses.iter().find(|c| c.name == "worker")?;
            worker_status.state.as_ref()?.terminated.as_ref()?.message.clone().filter(|m| !m.is_empty())
        }))
    }

    /// The tail of the worker container's log, from its newest pod.
    async fn pod_log(&self, worker: &str, max_bytes: usize) -> Result<Option<String>, DriverError> {
        let pods = self
            .pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={worker}")))
            .await
            .map_err(|e| self.api_error("list pods", worker, e))?;
        let newest = pods.items.iter().filter_map(|p| Some((p.metadata.creation_timestamp.clone()?, p.metadata.name.clone()?))).max();
        let Some((_, pod)) = newest else { return Ok(None) };
        // The last lines (the API's byte limit counts from the start).
        let params =
            kube::api::LogParams { container: Some("worker".to_owned()), tail_lines: Some(500), ..kube::api::LogParams::default() };
        match self.pods.logs(&pod, &params).await {
            Ok(text) => Ok(Some(crate::workers::tail_of(text.as_bytes(), max_bytes))),
            Err(e) if is_status(&e, 404) || is_status(&e, 400) => Ok(None),
            Err(e) => Err(self.api_error("read the log of", worker, e)),
        }
    }

    async fn observe_all(&self) -> Result<Vec<Observation>, DriverError> {
        match tokio::time::timeout(self.opts.sync_timeout, self.cache.wait_until_ready()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(DriverError::KubernetesNotSynced {
                    namespace: self.opts.template.namespace.clone(),
                    waited: self.opts.sync_timeout,
                });
            }
        }
        let mut jobs = self.cache.state();
        jobs.retain(|j| self.is_ours(j));
        let mut out = Vec::new();
        for job in &jobs {
            let (Some(name), Some(uid)) = (job.metadata.name.as_deref(), job.metadata.uid.as_deref()) else { continue };
            if !is_finished(job) {
                out.extend(observe_job(job, None));
                continue;
            }
            let known = self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(uid).cloned();
            let seen = match known {
                Some(state) => observe_job(job, None).map(|o| Observation { state, ..o }),
                None => {
                    let message = self.termination_message(name).await?;
                    let seen = observe_job(job, message.as_deref());
                    if let Some(o) = &seen {
                        self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(uid.to_owned(), o.state.clone());
                    }
                    seen
                }
            };
            out.extend(seen);
        }
        // Results of Jobs no longer listed are not needed again.
        let listed: BTreeSet<&str> = jobs.iter().filter_map(|j| j.metadata.uid.as_deref()).collect();
        self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|uid, _| listed.contains(uid.as_str()));
        Ok(out)
    }

    async fn start_one(&self, spec: &RunSpec) -> Result<(), DriverError> {
        let worker = spec.worker.as_str();
        if !crate::ids::is_dns_label(worker) {
            return Err(DriverError::InvalidWorkerName(worker.to_owned()));
        }
        if spec.installation != self.opts.installation.as_str() {
            return Err(self.foreign(worker, Some(&spec.installation)));
        }
        let tpl = &self.opts.template;
        let pod_spec = self.pod_spec(spec);
        let post = PostParams { field_manager: Some("hadron".to_owned()), ..PostParams::default() };
        // 1. The Job; a 409 means an earlier start (ours or a former leader's) made it.
        let (created, made_now) = match self.jobs.create(&post, &job(&pod_spec, self.opts.epoch, tpl)).await {
            Ok(job) => (job, true),
            Err(e) if is_status(&e, 409) => {
                let there = self.jobs.get(worker).await.map_err(|e| self.api_error("get job", worker, e))?;
                if !self.is_ours(&there) {
                    // Another installation's Job holds the name: neither started nor ours to touch.
                    return Err(self.foreign(worker, installation_of(&there.metadata)));
                }
                tracing::debug!(%worker, "the Job exists already: started before");
                (there, false)
            }
            Err(e) => return Err(self.api_error("create job", worker, e)),
        };
        let uid = created.metadata.uid.unwrap_or_default();
        let owner = owner_reference(worker, &uid);
        // 2. and 3. Its NetworkPolicy, then the run spec, both the Job's.
        match self.owned_parts(&pod_spec, &post, owner).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if made_now {
                    // Not left waiting for a Secret until its deadline: the
                    // next start makes all three again.
                    if let Err(undo) = self.delete_job(worker, &uid).await {
                        tracing::warn!(%worker, error = %undo, "could not delete the Job whose policy or run spec was refused");
                    }
                }
                Err(e)
            }
        }
    }

    /// Creates the worker's NetworkPolicy and run Secret owned by its Job
    /// (`owner`); one that exists already (an earlier start) is given to
    /// that Job, and a Secret whose run spec is not this one is replaced.
    async fn owned_parts(&self, spec: &RunSpec, post: &PostParams, owner: OwnerReference) -> Result<(), DriverError> {
        let worker = spec.worker.as_str();
        let tpl = &self.opts.template;
        let owned = serde_json::json!({ "metadata": { "ownerReferences": [owner.clone()] } });
        let mut policy = network_policy(spec, tpl);
        policy.metadata.owner_references = Some(vec![owner.clone()]);
        match self.policies.create(post, &policy).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {
                self.policies
                    .patch(worker, &PatchParams::default(), &Patch::Merge(&owned))
                    .await
                    .map_err(|e| self.api_error("own network policy", worker, e))?;
            }
            Err(e) => return Err(self.api_error("create network policy", worker, e)),
        }
        let secret = run_secret(spec, tpl, Some(owner.clone()));
        match self.secrets.create(post, &secret).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => {
                // The Role grants no `get` on Secrets: the patch that gives
                // the Secret to its Job answers with the Secret as it is.
                let there = self
                    .secrets
                    .patch(worker, &PatchParams::default(), &Patch::Merge(&owned))
                    .await
                    .map_err(|e| self.api_error("own secret", worker, e))?;
                if same_run_spec(&there, &secret) {
                    return Ok(());
                }
                tracing::info!(
                    %worker,
                    reason = "StaleRunSpec",
                    "the run spec's Secret held another run spec (left by an earlier Job of this name); replaced"
                );
                let fresh = serde_json::json!({
                    "metadata": { "labels": secret.metadata.labels, "ownerReferences": [owner] },
                    "stringData": secret.string_data,
                });
                self.secrets
                    .patch(worker, &PatchParams::default(), &Patch::Merge(&fresh))
                    .await
                    .map(drop)
                    .map_err(|e| self.api_error("replace stale secret", worker, e))
            }
            Err(e) => Err(self.api_error("create secret", worker, e)),
        }
    }

    /// Deletes the Job `worker` whose uid is `uid` (a precondition: a Job
    /// made since under the same name stays), in the background: its pods,
    /// Secret and NetworkPolicy go with it. Gone already is deleted.
    async fn delete_job(&self, worker: &str, uid: &str) -> Result<(), DriverError> {
        let params = DeleteParams::background().preconditions(Preconditions { uid: Some(uid.to_owned()), resource_version: None });
        match self.jobs.delete(worker, &params).await {
            Ok(_) => Ok(()),
            // 404: gone; 409: the uid precondition failed, so the Job meant is gone too.
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(self.api_error("delete job", worker, e)),
        }
    }

    async fn cancel_one(&self, worker: &str) -> Result<(), DriverError> {
        let key = reflector::ObjectRef::new(worker).within(&self.opts.template.namespace);
        let job = match self.cache.get(&key) {
            Some(job) => job,
            // Not listed yet (just made), or not this installation's: ask.
            None => match self.jobs.get(worker).await {
                Ok(job) => Arc::new(job),
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) => return Err(self.api_error("get job", worker, e)),
            },
        };
        if !self.is_ours(&job) {
            return Err(self.foreign(worker, installation_of(&job.metadata)));
        }
        let Some(uid) = job.metadata.uid.as_deref() else { return Ok(()) };
        // Its Secret and NetworkPolicy are the Job's: Kubernetes deletes them with it.
        self.delete_job(worker, uid).await
    }

    async fn prune_all(&self, finished: &[String], retention: Duration) -> Result<usize, DriverError> {
        let now = jiff::Timestamp::now();
        let retention = jiff::SignedDuration::try_from(retention).unwrap_or(jiff::SignedDuration::MAX);
        let jobs: HashMap<String, Arc<Job>> =
            self.cache.state().into_iter().filter(|j| self.is_ours(j)).filter_map(|j| Some((j.metadata.name.clone()?, j))).collect();
        let mut removed = 0;
        for worker in finished {
            let Some(job) = jobs.get(worker) else { continue };
            let (Some(done), Some(uid)) = (finished_at(job), job.metadata.uid.as_deref()) else { continue };
            if now.duration_since(done) >= retention {
                self.delete_job(worker, uid).await?;
                removed += 1;
            }
        }
        // A Job's Secret and NetworkPolicy go with it: there are no strays to look for.
        Ok(removed)
    }
}

/// When a finished Job finished: its completion time, else when its
/// `Failed` condition became true.
fn finished_at(job: &Job) -> Option<jiff::Timestamp> {
    let status = job.status.as_ref()?;
    status.completion_time.as_ref().map(|t| t.0).or_else(|| {
        status.conditions.as_ref()?.iter().find(|c| c.type_ == "Failed" && c.status == "True")?.last_transition_time.as_ref().map(|t| t.0)
    })
}

/// Whether the Secret `there` (as the API server holds it: `data`) holds
/// the run spec and labels of `wanted` (as made: `stringData`).
fn same_run_spec(there: &Secret, wanted: &Secret) -> bool {
    let held = there.data.as_ref().and_then(|d| d.get(RUN_FILE_KEY)).map(|b| b.0.as_slice());
    let meant = wanted.string_data.as_ref().and_then(|d| d.get(RUN_FILE_KEY)).map(String::as_bytes);
    held.is_some() && held == meant && there.metadata.labels == wanted.metadata.labels
}

/// Whether `e` is the API server answering with HTTP `code`.
fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

impl Driver for KubernetesDriver {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn start(&self, spec: &RunSpec) -> Result<(), DriverError> {
        self.block_on(self.start_one(spec))
    }

    fn observe(&self) -> Result<Vec<Observation>, DriverError> {
        self.block_on(self.observe_all())
    }

    fn recheck_after(&self, live: &[String]) -> Option<Duration> {
        // The watcher reports each Job that finishes; Kubernetes enforces
        // the deadline. Without a hook, look again now and then.
        let _ = live;
        if self.opts.on_exit.is_some() { None } else { Some(Duration::from_secs(2)) }
    }

    fn cancel(&self, worker: &str) -> Result<(), DriverError> {
        self.block_on(self.cancel_one(worker))
    }

    fn prune(&self, finished: &[String], retention: Duration) -> Result<usize, DriverError> {
        self.block_on(self.prune_all(finished, retention))
    }

    fn log_tail(&self, worker: &str, max_bytes: usize) -> Result<Option<String>, DriverError> {
        self.block_on(self.pod_log(worker, max_bytes))
    }
}

#[cfg(test)]
mod tests;
