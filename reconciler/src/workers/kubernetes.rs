//! Kubernetes workers: the `batch/v1` Job (and the Secret holding its run
//! spec) that runs one worker, and what a Job's status says of that worker,
//! all pure here; the driver that creates, watches and deletes these
//! objects is in [`driver`].
//!
//! One Job per worker, named after the worker (a repeated create gets 409:
//! "already started"). Hadron owns retries, so the Job never retries
//! (`backoffLimit: 0`, `restartPolicy: Never`); a pod evicted by a node
//! drain is not a failed attempt (`podFailurePolicy` ignores
//! `DisruptionTarget`). The run spec and prompt inputs go in a Secret
//! mounted read-only, never in arguments; agent secrets are `secretKeyRef`s.
//! The worker's result comes back as the container's termination message
//! (JSON, at most 4 KiB) and the commit it pushed.
//!
//! An agent is untrusted code, so its pod passes the Pod Security
//! `restricted` profile (non-root, `RuntimeDefault` seccomp, no privilege
//! escalation, every capability dropped, no service account token, a
//! read-only root), always stops at `activeDeadlineSeconds`, always has
//! requests and limits and size-limited `emptyDir`s, and gets its own
//! NetworkPolicy ([`network_policy`]): no ingress, egress only to DNS, its
//! git server and what the agent declared. docs/kubernetes-security.md
//! explains the whole design.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::spec::{EnvSource, Outcome, RunIdentity, RunResult, RunSpec, worker_name};
use super::{Observation, WorkerState};

mod driver;
mod network;
pub use driver::{ExitHook, KubernetesDriver, KubernetesOptions, client, selector};
pub use network::{GitEgress, GitEgressError, GitPeer, NON_PUBLIC_V4, NON_PUBLIC_V6, clone_endpoint, ipv4_cidr, network_policy};

/// Label every object Hadron makes carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hadron");
/// Label: the Hadron installation the worker belongs to
/// ([`Installation`](crate::ids::Installation)); a driver watches, adopts,
/// cancels and prunes only the Jobs carrying its own.
pub const INSTALLATION_LABEL: &str = "hadron.dev/installation";
/// Label: the request.
pub const REQUEST_LABEL: &str = "hadron.dev/request";
/// Label: the stage.
pub const STAGE_LABEL: &str = "hadron.dev/stage";
/// Label: the target repo (a short hash of its URL; a label value cannot hold a URL).
pub const REPO_LABEL: &str = "hadron.dev/repo";
/// Label: the attempt number.
pub const ATTEMPT_LABEL: &str = "hadron.dev/attempt";
/// Label: the request's spec generation.
pub const GENERATION_LABEL: &str = "hadron.dev/generation";
/// Label of a worker's pod: the worker's name, which its NetworkPolicy selects.
pub const WORKER_LABEL: &str = "hadron.dev/worker";
/// Annotation: the leader epoch the Job was created under.
pub const EPOCH_ANNOTATION: &str = "hadron.dev/epoch";
/// Annotation: SHA-256 of the run spec.
pub const SPEC_HASH_ANNOTATION: &str = "hadron.dev/run-spec-hash";
/// Annotation: the target repo's URL as written in the request.
pub const REPO_ANNOTATION: &str = "hadron.dev/repo-url";
/// The run spec's key in the Secret, and its file name in the container.
pub const RUN_FILE_KEY: &str = "run.json";
/// Where the Secret is mounted.
pub const RUN_DIR: &str = "/run/hadron";
/// Where the workspace (an `emptyDir`) is mounted.
pub const WORKSPACE: &str = "/workspace";
/// Where the worker writes its result for Kubernetes to keep.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// The largest termination message Kubernetes keeps.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;
/// The workspace budget the worker applies when the run spec names none (1 GiB).
pub const DEFAULT_WORKSPACE_BYTES: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// What every Job of one Hadron installation shares.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTemplate {
    /// Namespace of the Jobs and Secrets.
    pub namespace: String,
    /// Image for agents that name none (the Hadron image with an agent CLI).
    pub default_image: String,
    /// Service account of the worker pods (none: the namespace's default).
    pub service_account: Option<String>,
    /// Seconds a finished Job stays before Kubernetes deletes it.
    pub ttl_seconds_after_finished: i32,
    /// Seconds added to the agent's wall time for cloning and pushing.
    pub deadline_grace_seconds: i64,
    /// The user the worker runs as (not root).
    pub run_as_user: i64,
    /// `activeDeadlineSeconds` of a Job whose run has no wall time: no
    /// worker runs unbounded.
    pub default_deadline_seconds: i64,
    /// CPU request of an agent that names none.
    pub default_cpu: String,
    /// Memory request (and limit) of an agent that names none.
    pub default_memory: String,
    /// CPU limit (an agent asking for more CPU gets its request as the limit).
    pub cpu_limit: String,
    /// Bytes the workspace `emptyDir` may hold beyond the run's workspace
    /// budget (the worker checks the budget before pushing; this is the
    /// hard stop for git's own files, the agent's home and caches).
    pub workspace_headroom_bytes: u64,
    /// Size limit of the `/tmp` `emptyDir`.
    pub tmp_size_limit_bytes: u64,
    /// Where the workers reach their git server; empty: the clone URL's
    /// host and port (a hostname then opens that port to the public
    /// internet only: an in-cluster Gitea must be named here).
    pub git_egress: Vec<GitEgress>,
}

impl JobTemplate {
    /// Defaults: a day's TTL, 5 minutes of grace, user 10001, a 4-hour
    /// deadline without wall time, 500m CPU (limit 2) and 2Gi memory, a
    /// 512 MiB workspace headroom and a 256 MiB `/tmp`, git egress from the
    /// clone URL.
    pub fn new(namespace: impl Into<String>, default_image: impl Into<String>) -> Self {
        JobTemplate {
            namespace: namespace.into(),
            default_image: default_image.into(),
            service_account: None,
            ttl_seconds_after_finished: 86_400,
            deadline_grace_seconds: 300,
            run_as_user: 10_001,
            default_deadline_seconds: 4 * 3600,
            default_cpu: "500m".to_owned(),
            default_memory: "2Gi".to_owned(),
            cpu_limit: "2".to_owned(),
            workspace_headroom_bytes: 512 * MIB,
            tmp_size_limit_bytes: 256 * MIB,
            git_egress: Vec::new(),
        }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The labels that find a worker's objects.
pub fn labels(spec: &RunSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (INSTALLATION_LABEL.to_owned(), spec.installation.clone()),
        (REQUEST_LABEL.to_owned(), spec.request.clone()),
        (STAGE_LABEL.to_owned(), spec.stage.clone()),
        (REPO_LABEL.to_owned(), hex_sha256(spec.repo.as_bytes())[..16].to_owned()),
        (ATTEMPT_LABEL.to_owned(), spec.attempt.to_string()),
        (GENERATION_LABEL.to_owned(), spec.generation.clone()),
    ])
}

/// The run spec as the Secret holds it.
///
/// Resume is not offered on Kubernetes: a fresh pod has none of the CLI's
/// session state from the attempt before, so the resume fields are left
/// out and every attempt runs the agent's `command`.
pub fn run_spec_json(spec: &RunSpec) -> String {
    let spec = RunSpec { resume_command: None, resume_session: None, agent_home: None, ..spec.clone() };
    serde_json::to_string(&spec).expect("because a RunSpec is plain data that always serialises")
}

/// The Job of one worker, created under the leader `epoch` (2+ replicas).
/// The agent's `image` and `resources` come with the run spec.
pub fn job(spec: &RunSpec, epoch: Option<i64>, tpl: &JobTemplate) -> Job {
    let labels = labels(spec);
    let mut pod_labels = labels.clone();
    pod_labels.insert(WORKER_LABEL.to_owned(), spec.worker.clone());
    let mut annotations = BTreeMap::from([
        (SPEC_HASH_ANNOTATION.to_owned(), hex_sha256(run_spec_json(spec).as_bytes())),
        (REPO_ANNOTATION.to_owned(), spec.repo.clone()),
    ]);
    if let Some(epoch) = epoch {
        annotations.insert(EPOCH_ANNOTATION.to_owned(), epoch.to_string());
    }
    // The Job stops at the agent's wall time (plus clone and push); the
    // reconciler already cut that to what the request's budget has left.
    // Without one, at the driver's default: no worker runs unbounded.
    let deadline = match spec.wall_time_secs {
        Some(s) => i64::try_from(s).unwrap_or(i64::MAX).max(1).saturating_add(tpl.deadline_grace_seconds),
        None => tpl.default_deadline_seconds.max(1),
    };
    // The root file system is read-only: home (git's and the agent's
    // config) is the workspace, scratch files go to an emptyDir at /tmp.
    let home = EnvVar { name: "HOME".to_owned(), value: Some(WORKSPACE.to_owned()), value_from: None };
    // The pod is the agent's sandbox (restricted profile, its own
    // NetworkPolicy): the worker runs the agent in it directly.
    let sandbox = EnvVar {
        name: crate::workers::sandbox::SANDBOX_ENV.to_owned(),
        value: Some(crate::workers::sandbox::SANDBOX_POD.to_owned()),
        value_from: None,
    };
    let env: Vec<EnvVar> = [home, sandbox].into_iter().chain(spec.env.iter().map(|(name, source)| env_var(name, source))).collect();
    let resources = Some(resources(spec, tpl));
    let workspace_limit = spec.max_workspace_bytes.unwrap_or(DEFAULT_WORKSPACE_BYTES).saturating_add(tpl.workspace_headroom_bytes);
    let container = Container {
        name: "worker".to_owned(),
        image: Some(spec.image.as_deref().unwrap_or(&tpl.default_image).to_owned()),
        args: Some(
            ["worker", "--run", &format!("{RUN_DIR}/{RUN_FILE_KEY}"), "--work-dir", WORKSPACE, "--termination-log", TERMINATION_LOG]
                .map(str::to_owned)
                .to_vec(),
        ),
        env: Some(env),
        resources,
        working_dir: Some(WORKSPACE.to_owned()),
        volume_mounts: Some(vec![
            VolumeMount { name: "run".to_owned(), mount_path: RUN_DIR.to_owned(), read_only: Some(true), ..VolumeMount::default() },
            VolumeMount { name: "workspace".to_owned(), mount_path: WORKSPACE.to_owned(), ..VolumeMount::default() },
            VolumeMount { name: "tmp".to_owned(), mount_path: "/tmp".to_owned(), ..VolumeMount::default() },
        ]),
        termination_message_path: Some(TERMINATION_LOG.to_owned()),
        termination_message_policy: Some("File".to_owned()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(tpl.run_as_user),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(spec.worker.clone()),
            namespace: Some(tpl.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline),
            ttl_seconds_after_finished: Some(tpl.ttl_seconds_after_finished),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".to_owned(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".to_owned(),
                        status: "True".to_owned(),
                    }]),
                    ..PodFailurePolicyRule::default()
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    service_account_name: tpl.service_account.clone(),
                    // The worker makes no API call (its result is the
                    // termination message): no token in the pod.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(tpl.run_as_user),
                        run_as_group: Some(tpl.run_as_user),
                        fs_group: Some(tpl.run_as_user),
                        seccomp_profile: Some(runtime_default()),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "run".to_owned(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(spec.worker.clone()),
                                default_mode: Some(0o440),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume { name: "workspace".to_owned(), empty_dir: Some(empty_dir(workspace_limit)), ..Volume::default() },
                        Volume { name: "tmp".to_owned(), empty_dir: Some(empty_dir(tpl.tmp_size_limit_bytes)), ..Volume::default() },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }
}

/// An `emptyDir` on the node's disk holding at most `bytes`.
fn empty_dir(bytes: u64) -> EmptyDirVolumeSource {
    EmptyDirVolumeSource { medium: None, size_limit: Some(bytes_quantity(bytes)) }
}

/// `bytes` as a quantity: in `Gi` or `Mi` when whole, else in bytes.
pub fn bytes_quantity(bytes: u64) -> Quantity {
    Quantity(match bytes {
        0 => "0".to_owned(),
        b if b % (1 << 30) == 0 => format!("{}Gi", b >> 30),
        b if b % MIB == 0 => format!("{}Mi", b >> 20),
        b => b.to_string(),
    })
}

/// A CPU quantity in millicores (`500m`, `2`, `1.5`); `None` for forms it
/// does not read (the API server still checks them).
fn millicores(cpu: &str) -> Option<u64> {
    if let Some(m) = cpu.strip_suffix('m') {
        return m.parse().ok();
    }
    let (whole, frac) = cpu.split_once('.').unwrap_or((cpu, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let frac: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<3}").parse().ok()? };
    whole.checked_mul(1000)?.checked_add(frac)
}

/// Requests and limits: the agent's, else the driver's defaults. Memory is
/// limited to what is asked (a worker over it is killed, not its node);
/// CPU to the driver's limit, or to the request when that is higher.
fn resources(spec: &RunSpec, tpl: &JobTemplate) -> ResourceRequirements {
    let asked = spec.resources.as_ref();
    let cpu = asked.and_then(|r| r.cpu.clone()).unwrap_or_else(|| tpl.default_cpu.clone());
    let memory = asked.and_then(|r| r.memory.clone()).unwrap_or_else(|| tpl.default_memory.clone());
    let cpu_limit = match (millicores(&cpu), millicores(&tpl.cpu_limit)) {
        (Some(request), Some(limit)) if request <= limit => tpl.cpu_limit.clone(),
        _ => cpu.clone(),
    };
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_owned(), Quantity(cpu)), ("memory".to_owned(), Quantity(memory.clone()))])),
        limits: Some(BTreeMap::from([("cpu".to_owned(), Quantity(cpu_limit)), ("memory".to_owned(), Quantity(memory))])),
        ..ResourceRequirements::default()
    }
}

/// An agent's environment variable: a literal, or a key of a Secret.
fn env_var(name: &str, source: &EnvSource) -> EnvVar {
    match source {
        EnvSource::Value(value) => EnvVar { name: name.to_owned(), value: Some(value.clone()), value_from: None },
        EnvSource::Secret { name: secret, key } => EnvVar {
            name: name.to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: key.clone().unwrap_or_else(|| name.to_owned()),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
    }
}

/// The Secret with a worker's run spec. It is made after its Job, owned by
/// it from the start (`owner`: [`owner_reference`]), so Kubernetes deletes
/// it with the Job and no Secret is ever left without one.
pub fn run_secret(spec: &RunSpec, tpl: &JobTemplate, owner: Option<OwnerReference>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(spec.worker.clone()),
            namespace: Some(tpl.namespace.clone()),
            labels: Some(labels(spec)),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([(RUN_FILE_KEY.to_owned(), run_spec_json(&pod_run_spec(spec)))])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// The run spec as the worker in the pod reads it: a secret's value is in
/// the variable the pod's `secretKeyRef` fills, the agent's own variable name.
fn pod_run_spec(spec: &RunSpec) -> RunSpec {
    let mut spec = spec.clone();
    for (var, source) in &mut spec.env {
        if let EnvSource::Secret { name, key } = source {
            *name = var.clone();
            *key = None;
        }
    }
    spec
}

/// The Job `job_name` (uid `job_uid`) as the controlling owner of its
/// Secret and NetworkPolicy. Not `blockOwnerDeletion`: the Job is deleted
/// in the background, and setting it would need `update` on
/// `jobs/finalizers` where OwnerReferencesPermissionEnforcement is on.
pub fn owner_reference(job_name: &str, job_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".to_owned(),
        kind: "Job".to_owned(),
        name: job_name.to_owned(),
        uid: job_uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// The termination message of a worker: its result as JSON, cut to the
/// 4 KiB Kubernetes keeps by shortening the free text (message, summary).
pub fn termination_message(result: &RunResult) -> String {
    let mut result = result.clone();
    loop {
        let text = serde_json::to_string(&result).expect("because a RunResult is plain data that always serialises");
        let over = text.len().saturating_sub(TERMINATION_MESSAGE_LIMIT);
        let field = if result.summary.len() >= result.message.len() { &mut result.summary } else { &mut result.message };
        // Within the limit, or nothing left to cut (the fixed fields alone are too long).
        if over == 0 || field.is_empty() {
            return text;
        }
        let mut cut = field.len().saturating_sub(over + '…'.len_utf8());
        while !field.is_char_boundary(cut) {
            cut -= 1;
        }
        field.truncate(cut);
        field.push('…');
    }
}

fn condition<'a>(job: &'a Job, kind: &str) -> Option<&'a JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == kind && c.status == "True")
}

/// Whether the Job is done (`Complete` or `Failed`): its pods will not run again.
pub fn is_finished(job: &Job) -> bool {
    condition(job, "Complete").is_some() || condition(job, "Failed").is_some()
}

/// Which installation a Job (or any object Hadron made) belongs to, by its
/// label; `None` without one.
pub fn installation_of(meta: &ObjectMeta) -> Option<&str> {
    meta.labels.as_ref()?.get(INSTALLATION_LABEL).map(String::as_str)
}

/// Which run a Job carries, from its labels and annotation; `None` when
/// they are missing or do not add up to the Job's name (edited by hand):
/// such a Job is not Hadron's to adopt.
pub fn run_identity(job: &Job) -> Option<RunIdentity> {
    let name = job.metadata.name.as_deref()?;
    let labels = job.metadata.labels.as_ref()?;
    let label = |key: &str| labels.get(key).cloned();
    let run = RunIdentity {
        worker: name.to_owned(),
        request: label(REQUEST_LABEL)?,
        generation: label(GENERATION_LABEL)?,
        stage: label(STAGE_LABEL)?,
        repo: job.metadata.annotations.as_ref()?.get(REPO_ANNOTATION)?.clone(),
        attempt: label(ATTEMPT_LABEL)?.parse().ok()?,
    };
    let installation = crate::ids::Installation::named(&label(INSTALLATION_LABEL)?).ok()?;
    (worker_name(&installation, &run.request, &run.generation, &run.stage, &run.repo, run.attempt) == name).then_some(run)
}

/// What a Job says of its worker. `message` is the worker container's
/// termination message, when its pod has one: the worker's result (only if
/// it names this worker). A Job that failed or finished without one has a
/// failed result with Kubernetes' reason: `WallTimeExceeded` for its
/// deadline, `Job<Reason>` otherwise, `NoResult` for a pod that exited 0
/// without saying anything.
pub fn observe_job(job: &Job, message: Option<&str>) -> Option<Observation> {
    let worker = job.metadata.name.clone()?;
    let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
    let started_at = job.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string());
    let result = message.and_then(|m| serde_json::from_str::<RunResult>(m).ok()).filter(|r| r.worker == worker);
    let look = format!("kubectl -n {namespace} describe job {worker}");
    let failure = |reason: &str, message: String, at: Option<&Time>| RunResult {
        worker: worker.clone(),
        outcome: Outcome::Failed,
        reason: reason.to_owned(),
        message,
        pushed_commit: None,
        tokens_in: 0,
        tokens_out: 0,
        cost_usd: 0.0,
        summary: String::new(),
        log_path: format!("kubectl -n {namespace} logs job/{worker}"),
        started_at: started_at.clone().unwrap_or_default(),
        finished_at: at.map(|t| t.0.to_string()).unwrap_or_default(),
        unconfined: None,
        session_id: None,
    };
    let state = if let Some(result) = result {
        WorkerState::Finished(result)
    } else if let Some(failed) = condition(job, "Failed") {
        let detail = failed.message.as_deref().filter(|m| !m.is_empty()).unwrap_or("no message");
        let at = failed.last_transition_time.as_ref();
        WorkerState::Finished(match failed.reason.as_deref() {
            Some("DeadlineExceeded") => failure(
                "WallTimeExceeded",
                format!(
                    "the Job ran past its activeDeadlineSeconds (the agent's wall time plus clone and push) and Kubernetes stopped it; see `{look}`"
                ),
                at,
            ),
            Some(other) if !other.is_empty() => {
                failure(&format!("Job{other}"), format!("the Job failed: {other}: {detail}; see `{look}`"), at)
            }
            _ => failure("JobFailed", format!("the Job failed: {detail}; see `{look}`"), at),
        })
    } else if let Some(complete) = condition(job, "Complete") {
        WorkerState::Finished(failure(
            "NoResult",
            format!("the worker's pod exited without a result in its termination message; see `{look}` and its logs"),
            complete.last_transition_time.as_ref(),
        ))
    } else {
        WorkerState::Running
    };
    Some(Observation { worker, state, started_at, run: run_identity(job) })
}

#[cfg(test)]
mod tests;
