use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

use super::*;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule};

use crate::model::Resources;
use crate::workers::spec::{WorkerNetwork, sample};

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
    assert_eq!(
        (env[1].name.as_str(), env[1].value.as_deref()),
        ("HADRON_SANDBOX", Some("pod")),
        "the pod is the agent's sandbox: the worker does not look for bubblewrap in it"
    );
    let env = &env[2..];
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
    assert_eq!(r.limits.as_ref().map(|q| q["cpu"].0.as_str()), Some("2"), "CPU is limited to the driver's limit, above the request");
    let unlimited = job_for_sample_without_limits();
    assert_eq!(
        unlimited.spec.as_ref().and_then(|s| s.active_deadline_seconds),
        Some(4 * 3600),
        "no wall time: the driver's default deadline, never none"
    );
    let tpl = JobTemplate { default_deadline_seconds: 900, ..template() };
    assert_eq!(
        super::job(&sample(), None, &tpl).spec.as_ref().and_then(|s| s.active_deadline_seconds),
        Some(900),
        "the default is the driver's setting"
    );
}

fn job_for_sample_without_limits() -> Job {
    job(&sample(), None, &template())
}

#[test]
fn the_run_secret_holds_the_run_spec_with_secrets_read_from_the_pods_own_variables() {
    let spec = spec_with_env();
    let secret = run_secret(&spec, &template(), None);
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
    assert_eq!(owner.block_owner_deletion, None, "would need update on jobs/finalizers where that admission plugin runs");
    let owned = run_secret(&spec, &template(), Some(owner.clone()));
    assert_eq!(owned.metadata.owner_references, Some(vec![owner]), "owned by its Job from its creation: never a stray");
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
        session_id: None,
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
    let mut moved = j.clone();
    moved.metadata.labels.as_mut().expect("labels").insert(INSTALLATION_LABEL.to_owned(), "team-b".to_owned());
    assert_eq!(run_identity(&moved), None, "the name's hash covers the installation: relabelled, it does not add up");
    assert_eq!(installation_of(&j.metadata), Some(spec.installation.as_str()));
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
    let owner = owner_reference(&spec.worker, "6c9b8a7e-0000-4000-8000-000000000001");
    let owned = run_secret(&spec, &tpl, Some(owner.clone()));
    let policy = |network: WorkerNetwork, tpl: &JobTemplate| {
        let mut p =
            network_policy(&RunSpec { network, clone_url: "https://gitea.example.com/acme/app.git".to_owned(), ..spec.clone() }, tpl);
        p.metadata.owner_references = Some(vec![owner.clone()]);
        serde_json::to_value(p).expect("json")
    };
    let in_cluster_git = JobTemplate {
        git_egress: vec!["namespace/gitea:3000".parse().expect("a rule"), "10.20.0.0/16:22".parse().expect("a rule")],
        ..tpl.clone()
    };
    let allow = WorkerNetwork::Allow(vec!["api.anthropic.com:443".to_owned(), "10.0.0.0/8:8443".to_owned(), "192.0.2.7:5432".to_owned()]);
    let objects: Vec<(&str, serde_json::Value)> = vec![
        ("job-minimal.json", serde_json::to_value(job_for_sample_without_limits()).expect("json")),
        ("job-full.json", serde_json::to_value(job(&full, Some(3), &tpl)).expect("json")),
        (
            "job-host-network.json",
            serde_json::to_value(job(&RunSpec { network: WorkerNetwork::Host, ..full.clone() }, None, &tpl)).expect("json"),
        ),
        ("secret-run.json", serde_json::to_value(run_secret(&spec, &tpl, None)).expect("json")),
        ("secret-run-owned.json", serde_json::to_value(owned).expect("json")),
        ("networkpolicy-none.json", policy(WorkerNetwork::None, &tpl)),
        ("networkpolicy-allow.json", policy(allow, &in_cluster_git)),
        ("networkpolicy-host.json", policy(WorkerNetwork::Host, &tpl)),
    ];
    for (name, value) in objects {
        assert!(value.get("apiVersion").is_some() && value.get("kind").is_some(), "{name}: a full manifest");
        std::fs::write(dir.join(name), serde_json::to_string_pretty(&value).expect("json")).expect("write");
    }
}

fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().expect("spec").template.spec.as_ref().expect("pod spec")
}

#[test]
fn a_worker_pod_passes_the_restricted_pod_security_profile() {
    for spec in [sample(), spec_with_env(), RunSpec { network: WorkerNetwork::Host, ..spec_with_env() }] {
        let job = job(&spec, None, &template());
        let pod = pod(&job);
        let psc = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert!(psc.run_as_user.is_some_and(|u| u >= 10_000), "a high non-root uid: {:?}", psc.run_as_user);
        assert_eq!(psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));
        assert_eq!(pod.automount_service_account_token, Some(false), "the worker makes no API call");
        assert_eq!(pod.enable_service_links, Some(false), "no variables naming the namespace's Services");
        assert!(
            pod.host_network.is_none() && pod.host_pid.is_none() && pod.host_ipc.is_none(),
            "`network: host` is not the node's network"
        );
        let c = container(&job);
        let sc = c.security_context.as_ref().expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.privileged, None);
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_owned()]));
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.add.clone()), None);
        assert_eq!(sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));
        let labels = job.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.as_ref()).expect("pod labels");
        assert_eq!(labels[WORKER_LABEL], spec.worker, "what its NetworkPolicy selects");
    }
}

#[test]
fn resources_default_to_the_drivers_and_cpu_is_limited() {
    let r = |resources: Option<Resources>| {
        let job = job(&RunSpec { resources, ..sample() }, None, &template());
        let r = container(&job).resources.clone().expect("resources, always");
        let get =
            |q: &Option<BTreeMap<String, Quantity>>, k: &str| q.as_ref().and_then(|q| q.get(k)).map(|v| v.0.clone()).unwrap_or_default();
        (get(&r.requests, "cpu"), get(&r.requests, "memory"), get(&r.limits, "cpu"), get(&r.limits, "memory"))
    };
    let own = |s: &str| s.to_owned();
    assert_eq!(r(None), (own("500m"), own("2Gi"), own("2"), own("2Gi")), "the driver's defaults");
    assert_eq!(r(Some(Resources { cpu: None, memory: Some("4Gi".to_owned()) })), (own("500m"), own("4Gi"), own("2"), own("4Gi")));
    assert_eq!(r(Some(Resources { cpu: Some("1500m".to_owned()), memory: None })), (own("1500m"), own("2Gi"), own("2"), own("2Gi")));
    assert_eq!(
        r(Some(Resources { cpu: Some("3".to_owned()), memory: None })).2,
        "3",
        "asking for more than the limit: the request is the limit"
    );
    assert_eq!(r(Some(Resources { cpu: Some("2.5".to_owned()), memory: None })).2, "2.5");
    assert_eq!(r(Some(Resources { cpu: Some("0.25".to_owned()), memory: None })).2, "2");
    assert_eq!((millicores("250m"), millicores("1.5"), millicores("2"), millicores("1e3")), (Some(250), Some(1500), Some(2000), None));
}

#[test]
fn every_empty_dir_has_a_size_limit_and_the_workspace_follows_the_budget() {
    let limits = |spec: &RunSpec| -> BTreeMap<String, String> {
        let job = job(spec, None, &template());
        pod(&job)
            .volumes
            .as_ref()
            .expect("volumes")
            .iter()
            .filter_map(|v| {
                let dir = v.empty_dir.as_ref()?;
                Some((v.name.clone(), dir.size_limit.as_ref().map(|q| q.0.clone()).unwrap_or_default()))
            })
            .collect()
    };
    let default = limits(&sample());
    assert_eq!(default.len(), 2, "workspace and tmp: {default:?}");
    assert_eq!(default["workspace"], "1536Mi", "the worker's 1 GiB budget plus 512 MiB of headroom");
    assert_eq!(default["tmp"], "256Mi");
    let big = limits(&RunSpec { max_workspace_bytes: Some(5 << 30), ..sample() });
    assert_eq!(big["workspace"], "5632Mi", "5 GiB plus the headroom");
    let odd = limits(&RunSpec { max_workspace_bytes: Some(1000), ..sample() });
    assert_eq!(odd["workspace"], (1000 + 512 * 1024 * 1024).to_string());
    assert_eq!(bytes_quantity(2 << 30).0, "2Gi");
}

fn rules(policy: &NetworkPolicy) -> &[NetworkPolicyEgressRule] {
    policy.spec.as_ref().and_then(|s| s.egress.as_deref()).expect("egress rules")
}

/// Each egress rule as `(peers, ports)` in words: `cidr!except,…`,
/// `ns=…/pod=…`, and `proto/port`.
fn described(policy: &NetworkPolicy) -> Vec<(Vec<String>, Vec<String>)> {
    rules(policy)
        .iter()
        .map(|r| {
            let peers =
                r.to.iter()
                    .flatten()
                    .map(|p| match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
                        (Some(b), _, _) => format!("{}!{}", b.cidr, b.except.clone().unwrap_or_default().join(",")),
                        (None, ns, pod) => {
                            let labels = |s: &Option<LabelSelector>| {
                                s.as_ref()
                                    .and_then(|s| s.match_labels.as_ref())
                                    .map(|l| l.values().cloned().collect::<Vec<_>>().join(","))
                                    .unwrap_or_default()
                            };
                            format!("ns={}/pod={}", labels(ns), labels(pod))
                        }
                    })
                    .collect();
            let ports = r
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    let port = match &p.port {
                        Some(IntOrString::Int(n)) => n.to_string(),
                        other => format!("{other:?}"),
                    };
                    format!("{}/{port}", p.protocol.as_deref().unwrap_or("?"))
                })
                .collect();
            (peers, ports)
        })
        .collect()
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const PUBLIC_V4: &str = "0.0.0.0/0!0.0.0.0/8,10.0.0.0/8,100.64.0.0/10,127.0.0.0/8,169.254.0.0/16,172.16.0.0/12,192.168.0.0/16";
const PUBLIC_V6: &str = "::/0!::1/128,::ffff:0:0/96,fc00::/7,fe80::/10";

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn a_worker_without_network_reaches_dns_and_its_git_server_only_and_nothing_reaches_it() {
    let spec = RunSpec { clone_url: "https://gitea.example.com:3000/acme/app.git".to_owned(), ..sample() };
    let policy = network_policy(&spec, &template());
    assert_eq!(policy.metadata.name.as_deref(), Some(spec.worker.as_str()));
    assert_eq!(policy.metadata.namespace.as_deref(), Some("hadron"));
    assert_eq!(policy.metadata.labels.as_ref(), Some(&labels(&spec)));
    let ps = policy.spec.as_ref().expect("spec");
    assert_eq!(
        ps.pod_selector.as_ref().and_then(|s| s.match_labels.clone()),
        Some(BTreeMap::from([(WORKER_LABEL.to_owned(), spec.worker.clone())])),
        "exactly this worker's pod"
    );
    assert_eq!(ps.policy_types.as_deref(), Some(&strings(&["Ingress", "Egress"])[..]));
    assert_eq!(ps.ingress.as_deref(), Some(&[][..]), "no ingress rule: nothing may connect to the worker");
    assert_eq!(
        described(&policy),
        vec![
            (strings(&["ns=kube-system/pod=kube-dns"]), strings(&["UDP/53", "TCP/53"])),
            (strings(&[PUBLIC_V4, PUBLIC_V6]), strings(&["TCP/3000"])),
        ],
        "DNS, and the clone URL's port on the public internet (a hostname)"
    );
    // A local clone path needs no network; an address is itself.
    let local = network_policy(&sample(), &template());
    assert_eq!(described(&local).len(), 1, "DNS only: {:?}", described(&local));
    let by_address = network_policy(&RunSpec { clone_url: "ssh://git@10.1.2.3/acme/app.git".to_owned(), ..sample() }, &template());
    assert_eq!(described(&by_address)[1], (strings(&["10.1.2.3/32!"]), strings(&["TCP/22"])));
    // An in-cluster Service name: the pods of its namespace, on that port.
    for url in ["http://gitea-http.gitea.svc:3000/acme/app.git", "http://gitea-http.gitea.svc.cluster.local:3000/acme/app.git"] {
        let in_cluster = network_policy(&RunSpec { clone_url: url.to_owned(), ..sample() }, &template());
        assert_eq!(described(&in_cluster)[1], (strings(&["ns=gitea/pod="]), strings(&["TCP/3000"])), "{url}");
    }
}

#[test]
fn declared_endpoints_open_their_port_to_their_range_or_for_a_hostname_the_public_internet() {
    let allow = WorkerNetwork::Allow(strings(&["api.anthropic.com:443", "10.0.0.1/8:8443", "192.0.2.7:5432", "api.anthropic.com:443"]));
    let tpl = JobTemplate { git_egress: vec!["namespace/gitea:3000".parse().expect("a rule")], ..template() };
    let policy = network_policy(&RunSpec { network: allow, clone_url: "https://gitea.example.com/a/b.git".to_owned(), ..sample() }, &tpl);
    assert_eq!(
        described(&policy),
        vec![
            (strings(&["ns=kube-system/pod=kube-dns"]), strings(&["UDP/53", "TCP/53"])),
            (strings(&["ns=gitea/pod="]), strings(&["TCP/3000"])),
            (strings(&[PUBLIC_V4, PUBLIC_V6]), strings(&["TCP/443"])),
            (strings(&["10.0.0.0/8!"]), strings(&["TCP/8443"])),
            (strings(&["192.0.2.7/32!"]), strings(&["TCP/5432"])),
        ],
        "the operator's git rule replaces the clone URL's; a CIDR in canonical form; a repeated entry once"
    );
}

#[test]
fn host_network_opens_every_port_everywhere_but_link_local() {
    let policy = network_policy(&RunSpec { network: WorkerNetwork::Host, ..sample() }, &template());
    let rules = described(&policy);
    assert_eq!(rules.last(), Some(&(strings(&["0.0.0.0/0!169.254.0.0/16", "::/0!fe80::/10"]), vec![])), "{rules:?}");
    assert_eq!(policy.spec.as_ref().and_then(|s| s.ingress.as_ref()).map(Vec::len), Some(0), "still no ingress");
}

#[test]
fn git_egress_rules_parse_or_say_what_is_wrong() {
    assert_eq!("10.20.0.0/16:3000".parse(), Ok(GitEgress { peer: GitPeer::Cidr("10.20.0.0/16".to_owned()), port: 3000 }));
    assert_eq!("10.20.3.4:22".parse(), Ok(GitEgress { peer: GitPeer::Cidr("10.20.3.4/32".to_owned()), port: 22 }));
    assert_eq!("namespace/gitea:3000".parse(), Ok(GitEgress { peer: GitPeer::Namespace("gitea".to_owned()), port: 3000 }));
    assert!(matches!("gitea.example.com:443".parse::<GitEgress>(), Err(GitEgressError::Peer(_))));
    assert!(matches!("10.0.0.0/8".parse::<GitEgress>(), Err(GitEgressError::Shape(_))));
    assert!(matches!("10.0.0.0/8:http".parse::<GitEgress>(), Err(GitEgressError::Port { .. })));
    assert!(matches!("10.0.0.0/8:0".parse::<GitEgress>(), Err(GitEgressError::Port { .. })));
    assert!(matches!("nothing".parse::<GitEgress>(), Err(GitEgressError::Shape(_))));
    assert!(matches!("namespace/Not_A_Label:1".parse::<GitEgress>(), Err(GitEgressError::Peer(_))));
    let e = "gitea.example.com:443".parse::<GitEgress>().expect_err("a name");
    assert!(e.to_string().contains("hostname cannot be written"), "{e}");
    assert_eq!(ipv4_cidr("10.1.2.3/8").as_deref(), Some("10.0.0.0/8"));
    assert_eq!(ipv4_cidr("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
    assert_eq!(ipv4_cidr("10.1.2.3/33"), None);
}

#[test]
fn clone_urls_name_their_host_and_port() {
    let cases = [
        ("https://gitea.example.com/acme/app.git", Some(("gitea.example.com", 443))),
        ("https://bot:t0ken@gitea.example.com:3000/acme/app.git", Some(("gitea.example.com", 3000))),
        ("http://10.0.0.5/a.git", Some(("10.0.0.5", 80))),
        ("ssh://git@gitea.example.com:2222/a.git", Some(("gitea.example.com", 2222))),
        ("git@gitea.example.com:acme/app.git", Some(("gitea.example.com", 22))),
        ("git://example.com/a.git", Some(("example.com", 9418))),
        ("https://[2001:db8::1]:8443/a.git", Some(("2001:db8::1", 8443))),
        ("/srv/git/app.git", None),
        ("file:///srv/git/app.git", None),
        ("../app.git", None),
    ];
    for (url, expected) in cases {
        assert_eq!(clone_endpoint(url), expected.map(|(h, p)| (h.to_owned(), p)), "{url}");
    }
}

#[test]
fn a_pod_is_never_asked_to_resume_a_session_it_cannot_have() {
    let spec = RunSpec {
        resume_command: Some(vec!["claude".into(), "--resume".into(), "{{sessionId}}".into()]),
        resume_session: Some("ses-1".into()),
        agent_home: Some("/runs/.agent-homes/h".into()),
        ..sample()
    };
    let json: serde_json::Value = serde_json::from_str(&run_spec_json(&spec)).expect("json");
    for key in ["resumeCommand", "resumeSession", "agentHome"] {
        assert!(json.get(key).is_none(), "{key} is left out of the pod's run spec: {json}");
    }
    assert_eq!(json["command"], serde_json::json!(["agent", "{{promptFile}}"]), "every attempt runs the command");
}
