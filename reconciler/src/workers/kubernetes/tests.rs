use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

use super::*;
use crate::model::Resources;
use crate::workers::spec::sample;

fn template() -> JobTemplate {
    JobTemplate::new("hadron", "registry.example/hadron-worker:1.0")
}

fn spec_with_env() -> RunSpec {
    RunSpec {
        env: vec![
            ("MODEL_REGION".to_owned(), EnvSource::Value("eu".to_owned())),
            ("ANTHROPIC_API_KEY".to_owned(), EnvSource::Secret { name: "agent-keys".to_owned(), key: Some("anthropic".to_owned()) }),
            ("GITHUB_TOKEN".to_owned(), EnvSource::Secret { name: "gh".to_owned(), key: None }),
        ],
        wall_time_secs: Some(1800),
        ..sample()
    }
}

fn container(job: &Job) -> &Container {
    &job.spec.as_ref().expect("spec").template.spec.as_ref().expect("pod spec").containers[0]
}

#[test]
fn a_job_runs_one_worker_once_and_hadron_owns_the_retries() {
    let spec = spec_with_env();
    let job = job(&spec, Some(7), &template());
    assert_eq!(job.metadata.name.as_deref(), Some(spec.worker.as_str()), "named after the worker: a second create is a 409");
    assert_eq!(job.metadata.namespace.as_deref(), Some("hadron"));
    let labels = job.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "hadron");
    assert_eq!(labels["hadron.dev/request"], "fix");
    assert_eq!(labels["hadron.dev/stage"], "implement");
    assert_eq!(labels["hadron.dev/attempt"], "1");
    assert_eq!(labels["hadron.dev/generation"], "0011223344556677");
    assert_eq!(labels["hadron.dev/repo"].len(), 16, "a hash: a label value cannot hold a URL");
    let annotations = job.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations["hadron.dev/epoch"], "7");
    assert_eq!(annotations["hadron.dev/repo-url"], "../app.git");
    assert_eq!(annotations["hadron.dev/run-spec-hash"].len(), 64);

    let js = job.spec.as_ref().expect("spec");
    assert_eq!(js.backoff_limit, Some(0));
    assert_eq!(js.active_deadline_seconds, Some(1800 + 300), "the agent's wall time plus clone and push");
    assert_eq!(js.ttl_seconds_after_finished, Some(86_400));
    let rule = &js.pod_failure_policy.as_ref().expect("policy").rules[0];
    assert_eq!(rule.action, "Ignore");
    assert_eq!(rule.on_pod_conditions.as_ref().expect("conditions")[0].type_, "DisruptionTarget", "a node drain is not a failed attempt");
    let pod = js.template.spec.as_ref().expect("pod");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true));

    let c = container(&job);
    assert_eq!(c.image.as_deref(), Some("registry.example/hadron-worker:1.0"));
    let args = ["worker", "--run", "/run/hadron/run.json", "--work-dir", "/workspace", "--termination-log", "/dev/termination-log"];
    assert_eq!(c.args.as_deref(), Some(&args.map(str::to_owned)[..]));
    let sc = c.security_context.as_ref().expect("container security");
    assert_eq!((sc.read_only_root_filesystem, sc.allow_privilege_escalation), (Some(true), Some(false)));
}

#[test]
fn secrets_are_references_and_the_run_spec_is_not_in_the_arguments() {
    let spec = spec_with_env();
    let job = job(&spec, None, &template());
    let env = container(&job).env.as_ref().expect("env");
    assert_eq!((env[0].name.as_str(), env[0].value.as_deref()), ("HOME", Some("/workspace")), "the root file system is read-only");
    let env = &env[1..];
    assert_eq!(env[0].value.as_deref(), Some("eu"));
    let key = env[1].value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("secretKeyRef");
    assert_eq!((key.name.as_str(), key.key.as_str()), ("agent-keys", "anthropic"));
    assert!(env[1].value.is_none());
    let key = env[2].value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("secretKeyRef");
    assert_eq!((key.name.as_str(), key.key.as_str()), ("gh", "GITHUB_TOKEN"), "no key: the variable's own name");
    let spec = RunSpec { description: "Rotate the key kept in vault/prod and tell nobody.".to_owned(), ..spec };
    let text = serde_json::to_string(&super::job(&spec, None, &template())).expect("json");
    assert!(!text.contains(&spec.description), "the prompt inputs travel in the Secret, not in the Job");
    assert!(!text.contains("{{promptFile}}"), "so does the agent command");
}

#[test]
fn the_deadline_is_the_wall_time_left_and_the_agents_image_and_resources_reach_the_container() {
    let spec = RunSpec {
        image: Some("example/agent:2".to_owned()),
        resources: Some(Resources { cpu: Some("500m".to_owned()), memory: Some("2Gi".to_owned()) }),
        wall_time_secs: Some(600),
        ..spec_with_env()
    };
    let job = job(&spec, None, &template());
    assert_eq!(job.spec.as_ref().and_then(|s| s.active_deadline_seconds), Some(600 + 300));
    let c = container(&job);
    assert_eq!(c.image.as_deref(), Some("example/agent:2"), "the agent's image wins");
    let r = c.resources.as_ref().expect("resources");
    assert_eq!(r.requests.as_ref().map(|q| q["cpu"].0.as_str()), Some("500m"));
    assert_eq!(r.limits.as_ref().map(|q| q["memory"].0.as_str()), Some("2Gi"));
    assert!(r.limits.as_ref().is_some_and(|q| !q.contains_key("cpu")), "CPU is not limited");
    let unlimited = job_for_sample_without_limits();
    assert_eq!(unlimited.spec.as_ref().and_then(|s| s.active_deadline_seconds), None, "no wall time left to keep: no deadline");
}

fn job_for_sample_without_limits() -> Job {
    job(&sample(), None, &template())
}

#[test]
fn the_run_secret_holds_the_run_spec_with_secrets_read_from_the_pods_own_variables() {
    let spec = spec_with_env();
    let secret = run_secret(&spec, &template());
    assert_eq!(secret.metadata.labels.as_ref(), Some(&labels(&spec)), "found by label when its start was cut short");
    let text = &secret.string_data.as_ref().expect("data")["run.json"];
    let back: RunSpec = serde_json::from_str(text).expect("the run spec parses back");
    assert_eq!(back.env[0], spec.env[0], "a literal stays");
    assert_eq!(
        back.env[1],
        ("ANTHROPIC_API_KEY".to_owned(), EnvSource::Secret { name: "ANTHROPIC_API_KEY".to_owned(), key: None }),
        "the pod's secretKeyRef fills the agent's own variable, so the worker reads that one"
    );
    assert_eq!(RunSpec { env: spec.env.clone(), ..back }, spec, "the rest is the run spec as given");
    let owner = owner_reference(&spec.worker, "0f1e2d3c-uid");
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Job", spec.worker.as_str(), Some(true)));
}

/// A successful result of `worker`.
pub(super) fn result(worker: &str) -> RunResult {
    RunResult {
        worker: worker.to_owned(),
        outcome: Outcome::Succeeded,
        reason: "Completed".to_owned(),
        message: "pushed".to_owned(),
        pushed_commit: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
        tokens_in: 10,
        tokens_out: 5,
        cost_usd: 0.01,
        summary: "Changed the thing.".to_owned(),
        log_path: String::new(),
        started_at: "2026-11-30T00:00:00Z".to_owned(),
        finished_at: "2026-11-30T00:01:00Z".to_owned(),
        unconfined: None,
    }
}

#[test]
fn the_termination_message_fits_in_4_kib_and_parses_back() {
    let mut long = result("w");
    long.summary = "é".repeat(5000);
    long.message = "x".repeat(900);
    let text = termination_message(&long);
    assert!(text.len() <= TERMINATION_MESSAGE_LIMIT, "{}", text.len());
    let back: RunResult = serde_json::from_str(&text).expect("still a result");
    assert_eq!((back.reason.as_str(), back.pushed_commit.clone()), ("Completed", long.pushed_commit.clone()));
    assert!(back.summary.ends_with('…'));
    let short = result("w");
    assert_eq!(serde_json::from_str::<RunResult>(&termination_message(&short)).expect("parses"), short, "a short result is kept whole");
}

/// The Job of `spec` as the API server reports it: a uid, started at
/// 00:00, with these `(type, reason)` conditions true since 00:05.
pub(super) fn job_with_status(spec: &RunSpec, tpl: &JobTemplate, conditions: &[(&str, &str)]) -> Job {
    let mut j = job(spec, Some(1), tpl);
    j.metadata.uid = Some(format!("uid-{}", spec.worker));
    j.metadata.resource_version = Some("1".to_owned());
    let time = Time("2026-11-30T00:05:00Z".parse().expect("a time"));
    j.status = Some(JobStatus {
        start_time: Some(Time("2026-11-30T00:00:00Z".parse().expect("a time"))),
        completion_time: conditions.iter().any(|(t, _)| *t == "Complete").then(|| time.clone()),
        conditions: Some(
            conditions
                .iter()
                .map(|(t, reason)| JobCondition {
                    type_: (*t).to_owned(),
                    status: "True".to_owned(),
                    reason: Some((*reason).to_owned()),
                    last_transition_time: Some(time.clone()),
                    ..JobCondition::default()
                })
                .collect(),
        ),
        ..JobStatus::default()
    });
    j
}

fn job_with(conditions: &[(&str, &str)]) -> Job {
    job_with_status(&sample(), &template(), conditions)
}

#[test]
fn a_jobs_status_says_how_its_worker_stands() {
    let worker = sample().worker;
    let running = observe_job(&job_with(&[]), None).expect("named");
    assert_eq!((running.worker.as_str(), &running.state), (worker.as_str(), &WorkerState::Running));
    let done = observe_job(&job_with(&[("Complete", "")]), Some(&termination_message(&result(&worker)))).expect("named");
    assert_eq!(done.state, WorkerState::Finished(result(&worker)));
    let cases = [
        (("Failed", "DeadlineExceeded"), "WallTimeExceeded"),
        (("Failed", "BackoffLimitExceeded"), "JobBackoffLimitExceeded"),
        (("Failed", "PodFailurePolicy"), "JobPodFailurePolicy"),
        (("Failed", ""), "JobFailed"),
        (("Complete", ""), "NoResult"),
    ];
    for ((kind, reason), expected) in cases {
        let seen = observe_job(&job_with(&[(kind, reason)]), None).expect("named");
        let WorkerState::Finished(r) = &seen.state else { panic!("{kind}/{reason}: {:?}", seen.state) };
        assert_eq!((r.outcome, r.reason.as_str()), (Outcome::Failed, expected), "{kind}/{reason}");
        assert!(r.message.contains(&format!("kubectl -n hadron describe job {worker}")), "says where to look: {}", r.message);
    }
    // A message that is not this worker's result is not trusted.
    let other = observe_job(&job_with(&[("Complete", "")]), Some(&termination_message(&result("someone-else")))).expect("named");
    assert!(matches!(&other.state, WorkerState::Finished(r) if r.reason == "NoResult"), "{:?}", other.state);
    let garbage = observe_job(&job_with(&[]), Some("not json")).expect("named");
    assert_eq!(garbage.state, WorkerState::Running);
}

#[test]
fn a_jobs_labels_say_which_run_it_is_unless_they_were_edited() {
    let spec = sample();
    let j = job(&spec, None, &template());
    assert_eq!(run_identity(&j), Some(spec.identity()), "adopted after a restart from the labels alone");
    let mut edited = j.clone();
    edited.metadata.labels.as_mut().expect("labels").insert(ATTEMPT_LABEL.to_owned(), "9".to_owned());
    assert_eq!(run_identity(&edited), None, "labels that do not add up to the name are not Hadron's");
    let mut bare = j;
    bare.metadata.annotations = None;
    assert_eq!(run_identity(&bare), None);
}

/// Every kind of object Hadron emits, written to `target/kubernetes-manifests/`
/// for `.ci/run` to validate with `kubernetes-validate --strict` (a real
/// API server cannot run here; its OpenAPI schemas can).
#[test]
fn every_manifest_hadron_emits_is_written_for_the_validator() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kubernetes-manifests");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let spec = spec_with_env();
    let resources = Resources { cpu: Some("1".to_owned()), memory: Some("512Mi".to_owned()) };
    let tpl = JobTemplate { service_account: Some("hadron-worker".to_owned()), ..template() };
    let full = RunSpec { image: Some("example/agent:2".to_owned()), resources: Some(resources), ..spec.clone() };
    let mut owned = run_secret(&spec, &tpl);
    owned.metadata.owner_references = Some(vec![owner_reference(&spec.worker, "6c9b8a7e-0000-4000-8000-000000000001")]);
    let objects: Vec<(&str, serde_json::Value)> = vec![
        ("job-minimal.json", serde_json::to_value(job_for_sample_without_limits()).expect("json")),
        ("job-full.json", serde_json::to_value(job(&full, Some(3), &tpl)).expect("json")),
        ("secret-run.json", serde_json::to_value(run_secret(&spec, &tpl)).expect("json")),
        ("secret-run-owned.json", serde_json::to_value(owned).expect("json")),
    ];
    for (name, value) in objects {
        assert!(value.get("apiVersion").is_some() && value.get("kind").is_some(), "{name}: a full manifest");
        std::fs::write(dir.join(name), serde_json::to_string_pretty(&value).expect("json")).expect("write");
    }
}
