//! Kubernetes workers, the pure part: the `batch/v1` Job (and the Secret
//! holding its run spec) that runs one worker, and what a Job's status
//! says of that worker. No API calls here: the driver that creates, watches
//! and deletes these objects builds on it.
//!
//! One Job per worker, named after the worker (a repeated create gets 409:
//! "already started"). Hadron owns retries, so the Job never retries
//! (`backoffLimit: 0`, `restartPolicy: Never`); a pod evicted by a node
//! drain is not a failed attempt (`podFailurePolicy` ignores
//! `DisruptionTarget`). The run spec and prompt inputs go in a Secret
//! mounted read-only, never in arguments; agent secrets are `secretKeyRef`s.
//! The worker's result comes back as the container's termination message
//! (JSON, at most 4 KiB) and the commit it pushed.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::spec::{EnvSource, RunResult, RunSpec};
use super::{Observation, WorkerState};
use crate::model::Resources;

/// Label every object Hadron makes carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hadron");
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
}

impl JobTemplate {
    /// Defaults: a day's TTL, 5 minutes of grace, user 10001.
    pub fn new(namespace: impl Into<String>, default_image: impl Into<String>) -> Self {
        JobTemplate {
            namespace: namespace.into(),
            default_image: default_image.into(),
            service_account: None,
            ttl_seconds_after_finished: 86_400,
            deadline_grace_seconds: 300,
            run_as_user: 10_001,
        }
    }
}

/// One worker to run as a Job.
#[derive(Debug, Clone, Copy)]
pub struct JobInputs<'a> {
    /// The run spec (its worker name names the Job).
    pub spec: &'a RunSpec,
    /// The agent's image, if it names one.
    pub image: Option<&'a str>,
    /// The agent's resources, if it asks for any.
    pub resources: Option<&'a Resources>,
    /// The leader epoch the Job is created under (2+ replicas).
    pub epoch: Option<i64>,
    /// Seconds of wall time left in the request's budget, if it has one.
    pub budget_seconds_left: Option<i64>,
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The labels that find a worker's objects.
pub fn labels(spec: &RunSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (REQUEST_LABEL.to_owned(), spec.request.clone()),
        (STAGE_LABEL.to_owned(), spec.stage.clone()),
        (REPO_LABEL.to_owned(), hex_sha256(spec.repo.as_bytes())[..16].to_owned()),
        (ATTEMPT_LABEL.to_owned(), spec.attempt.to_string()),
        (GENERATION_LABEL.to_owned(), spec.generation.clone()),
    ])
}

/// The run spec as the Secret holds it.
pub fn run_spec_json(spec: &RunSpec) -> String {
    serde_json::to_string(spec).expect("because a RunSpec is plain data that always serialises")
}

/// The Job of one worker.
pub fn job(inputs: &JobInputs<'_>, tpl: &JobTemplate) -> Job {
    let spec = inputs.spec;
    let labels = labels(spec);
    let mut annotations = BTreeMap::from([
        (SPEC_HASH_ANNOTATION.to_owned(), hex_sha256(run_spec_json(spec).as_bytes())),
        (REPO_ANNOTATION.to_owned(), spec.repo.clone()),
    ]);
    if let Some(epoch) = inputs.epoch {
        annotations.insert(EPOCH_ANNOTATION.to_owned(), epoch.to_string());
    }
    // The Job stops at the agent's wall time (plus clone and push), and
    // never past what the request's budget has left.
    let deadline = [spec.wall_time_secs.and_then(|s| i64::try_from(s).ok()), inputs.budget_seconds_left]
        .into_iter()
        .flatten()
        .min()
        .map(|s| s.max(1).saturating_add(tpl.deadline_grace_seconds));
    let env: Vec<EnvVar> = spec.env.iter().map(|(name, source)| env_var(name, source)).collect();
    let resources = inputs.resources.map(|r| {
        let mut q = BTreeMap::new();
        if let Some(cpu) = &r.cpu {
            q.insert("cpu".to_owned(), Quantity(cpu.clone()));
        }
        if let Some(memory) = &r.memory {
            q.insert("memory".to_owned(), Quantity(memory.clone()));
        }
        // Memory limited to what is asked (a worker over it is killed, not
        // its node); CPU not limited (throttling only slows it).
        let limits: BTreeMap<String, Quantity> = q.iter().filter(|(k, _)| *k == "memory").map(|(k, v)| (k.clone(), v.clone())).collect();
        ResourceRequirements { requests: Some(q), limits: (!limits.is_empty()).then_some(limits), ..ResourceRequirements::default() }
    });
    let container = Container {
        name: "worker".to_owned(),
        image: Some(inputs.image.unwrap_or(&tpl.default_image).to_owned()),
        args: Some(
            ["worker", "--run", &format!("{RUN_DIR}/{RUN_FILE_KEY}"), "--work-dir", WORKSPACE, "--termination-log", TERMINATION_LOG]
                .map(str::to_owned)
                .to_vec(),
        ),
        env: (!env.is_empty()).then_some(env),
        resources,
        working_dir: Some(WORKSPACE.to_owned()),
        volume_mounts: Some(vec![
            VolumeMount { name: "run".to_owned(), mount_path: RUN_DIR.to_owned(), read_only: Some(true), ..VolumeMount::default() },
            VolumeMount { name: "workspace".to_owned(), mount_path: WORKSPACE.to_owned(), ..VolumeMount::default() },
        ]),
        termination_message_path: Some(TERMINATION_LOG.to_owned()),
        termination_message_policy: Some("File".to_owned()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
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
            active_deadline_seconds: deadline,
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
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    service_account_name: tpl.service_account.clone(),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(tpl.run_as_user),
                        run_as_group: Some(tpl.run_as_user),
                        fs_group: Some(tpl.run_as_user),
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
                        Volume { name: "workspace".to_owned(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
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

/// The Secret with a worker's run spec, owned by its Job (`job_uid`), so
/// Kubernetes deletes it with the Job.
pub fn run_secret(spec: &RunSpec, tpl: &JobTemplate, job_uid: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(spec.worker.clone()),
            namespace: Some(tpl.namespace.clone()),
            labels: Some(labels(spec)),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".to_owned(),
                kind: "Job".to_owned(),
                name: spec.worker.clone(),
                uid: job_uid.to_owned(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([(RUN_FILE_KEY.to_owned(), run_spec_json(spec))])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
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

/// What a Job says of its worker. `message` is the worker container's
/// termination message, when its pod has one: the worker's result. A Job
/// that failed or finished without one is `Lost` with Kubernetes' reason
/// (`DeadlineExceeded` is the wall time), unless the message is a result.
pub fn observe_job(job: &Job, message: Option<&str>) -> Option<Observation> {
    let worker = job.metadata.name.clone()?;
    let started_at = job.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string());
    let result = message.and_then(|m| serde_json::from_str::<RunResult>(m).ok()).filter(|r| r.worker == worker);
    let state = if let Some(result) = result {
        WorkerState::Finished(result)
    } else if let Some(failed) = condition(job, "Failed") {
        let reason = match failed.reason.as_deref() {
            Some("DeadlineExceeded") => "WallTimeExceeded".to_owned(),
            Some(other) if !other.is_empty() => format!("Job{other}"),
            _ => "JobFailed".to_owned(),
        };
        WorkerState::Lost { reason }
    } else if condition(job, "Complete").is_some() {
        WorkerState::Lost { reason: "NoResult".to_owned() }
    } else {
        WorkerState::Running
    };
    Some(Observation { worker, state, started_at, spec: None })
}

#[cfg(test)]
mod tests;
