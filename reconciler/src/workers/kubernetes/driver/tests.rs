//! Scenarios against a Kubernetes API double (kube-rs's tower-test
//! pattern): the client's requests reach a mock service, which answers as
//! the API server does (objects and `Status` errors serialised from
//! k8s-openapi's types; paths, verbs and codes as the API documents them).
//! A real API server cannot run here; the objects the driver sends are
//! the ones `.ci/run` validates against Kubernetes' OpenAPI schemas.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::ids::Installation;
use crate::workers::kubernetes::{INSTALLATION_LABEL, run_spec_json};
use crate::workers::kubernetes::{JobTemplate, termination_message};
use crate::workers::spec::{RunResult, sample, worker_name};

const NS: &str = "agents";

/// One call the double received.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
}

/// The API server's state as far as the driver uses it.
#[derive(Default)]
struct Cluster {
    jobs: BTreeMap<String, Job>,
    secrets: BTreeMap<String, Secret>,
    policies: BTreeMap<String, NetworkPolicy>,
    pods: Vec<Pod>,
    calls: Vec<Call>,
    /// (method, path suffix, code): calls refused with that code.
    refuse: Vec<(&'static str, &'static str, u16)>,
    /// Lines the next watch answers with (one answer per entry).
    watch: VecDeque<String>,
    version: u64,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code })
}

/// A query parameter, percent-decoded.
fn query_param(query: &str, key: &str) -> Option<String> {
    let raw = query.split('&').find_map(|p| p.strip_prefix(key)?.strip_prefix('='))?;
    let mut out = Vec::new();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("a percent escape"));
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    Some(String::from_utf8(out).expect("UTF-8"))
}

/// Whether `labels` match an equality-based selector (`a=b,c=d`).
fn selects(selector: Option<&str>, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector.is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| {
            let (k, v) = term.split_once('=').expect("an equality term");
            labels.and_then(|l| l.get(k)).map(String::as_str) == Some(v)
        })
    })
}

/// A Secret as the API server keeps it: `stringData` written into `data`.
fn stored(mut secret: Secret) -> Secret {
    for (k, v) in secret.string_data.take().unwrap_or_default() {
        secret.data.get_or_insert_default().insert(k, ByteString(v.into_bytes()));
    }
    secret
}

impl Cluster {
    fn bump(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn list(&self, kind: &str, items: Vec<Value>) -> Value {
        json!({ "apiVersion": "v1", "kind": kind, "metadata": { "resourceVersion": self.version.to_string() }, "items": items })
    }

    fn answer(&mut self, call: &Call) -> (u16, Value) {
        let jobs = format!("/apis/batch/v1/namespaces/{NS}/jobs");
        let secrets = format!("/api/v1/namespaces/{NS}/secrets");
        let pods = format!("/api/v1/namespaces/{NS}/pods");
        let policies = format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies");
        if let Some((_, _, code)) = self.refuse.iter().find(|(m, suffix, _)| *m == call.method && call.path.ends_with(suffix)) {
            let reason = if *code == 403 { "Forbidden" } else { "InternalError" };
            return (*code, status(*code, reason, &format!("{} {} refused by the test", call.method, call.path)));
        }
        let name = |prefix: &str| call.path.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('/')).map(str::to_owned);
        match call.method.as_str() {
            "GET" if call.path == jobs => {
                let selector = query_param(&call.query, "labelSelector");
                let items = self
                    .jobs
                    .values()
                    .filter(|j| selects(selector.as_deref(), j.metadata.labels.as_ref()))
                    .map(|j| serde_json::to_value(j).expect("json"))
                    .collect();
                (200, self.list("JobList", items))
            }
            "GET" if call.path == pods => {
                let wanted = call.query.split('&').find_map(|p| p.strip_prefix("labelSelector=batch.kubernetes.io%2Fjob-name%3D"));
                let items = self
                    .pods
                    .iter()
                    .filter(|p| {
                        p.metadata.labels.as_ref().and_then(|l| l.get("batch.kubernetes.io/job-name")).map(String::as_str) == wanted
                    })
                    .map(|p| serde_json::to_value(p).expect("json"))
                    .collect();
                (200, self.list("PodList", items))
            }
            // The chart's Role grants no list or get on Secrets.
            "GET" if call.path.starts_with(&secrets) => (403, status(403, "Forbidden", "secrets is forbidden: cannot list or get")),
            "GET" => match name(&jobs).and_then(|n| self.jobs.get(&n)) {
                Some(job) => (200, serde_json::to_value(job).expect("json")),
                None => (404, status(404, "NotFound", "not found")),
            },
            "POST" if call.path == jobs || call.path == secrets || call.path == policies => {
                let mut object = call.body.clone();
                let name = object["metadata"]["name"].as_str().expect("a name").to_owned();
                let exists = if call.path == jobs {
                    self.jobs.contains_key(&name)
                } else if call.path == secrets {
                    self.secrets.contains_key(&name)
                } else {
                    self.policies.contains_key(&name)
                };
                if exists {
                    return (409, status(409, "AlreadyExists", &format!("\"{name}\" already exists")));
                }
                object["metadata"]["uid"] = json!(format!("uid-{name}"));
                object["metadata"]["resourceVersion"] = json!(self.bump());
                object["metadata"]["creationTimestamp"] = json!("2026-11-30T00:00:00Z");
                if call.path == jobs {
                    self.jobs.insert(name, serde_json::from_value(object.clone()).expect("a Job"));
                } else if call.path == secrets {
                    let secret = stored(serde_json::from_value(object).expect("a Secret"));
                    object = serde_json::to_value(&secret).expect("json");
                    self.secrets.insert(name, secret);
                } else {
                    self.policies.insert(name, serde_json::from_value(object.clone()).expect("a NetworkPolicy"));
                }
                (201, object)
            }
            "PATCH" => {
                let owners = || serde_json::from_value(call.body["metadata"]["ownerReferences"].clone()).expect("owner references");
                if let Some(secret) = name(&secrets).and_then(|n| self.secrets.get_mut(&n)) {
                    // A JSON merge patch: labels merge, lists are replaced, stringData goes into data.
                    secret.metadata.owner_references = Some(owners());
                    if let Some(labels) = call.body["metadata"]["labels"].as_object() {
                        let into = secret.metadata.labels.get_or_insert_default();
                        into.extend(labels.iter().map(|(k, v)| (k.clone(), v.as_str().expect("a label value").to_owned())));
                    }
                    if let Some(data) = call.body["stringData"].as_object() {
                        let into = secret.data.get_or_insert_default();
                        into.extend(data.iter().map(|(k, v)| (k.clone(), ByteString(v.as_str().expect("a string").as_bytes().to_vec()))));
                    }
                    self.version += 1;
                    secret.metadata.resource_version = Some(self.version.to_string());
                    (200, serde_json::to_value(&*secret).expect("json"))
                } else if let Some(policy) = name(&policies).and_then(|n| self.policies.get_mut(&n)) {
                    policy.metadata.owner_references = Some(owners());
                    (200, serde_json::to_value(&*policy).expect("json"))
                } else {
                    (404, status(404, "NotFound", "not found"))
                }
            }
            "DELETE" => {
                // Kubernetes' garbage collector: what a deleted Job owned goes with it.
                let meant = call.body["preconditions"]["uid"].as_str();
                let gone = match (name(&jobs), name(&secrets)) {
                    (Some(n), _) => {
                        let held = self.jobs.get(&n).and_then(|j| j.metadata.uid.clone());
                        if let (Some(meant), Some(held)) = (meant, &held)
                            && meant != held
                        {
                            let message = format!("Precondition failed: UID in precondition: {meant}, UID in object meta: {held}");
                            return (409, status(409, "Conflict", &message));
                        }
                        let uid = self.jobs.remove(&n).and_then(|j| j.metadata.uid);
                        let owned_by = |refs: &Option<Vec<OwnerReference>>| refs.iter().flatten().any(|o| Some(&o.uid) == uid.as_ref());
                        self.secrets.retain(|_, s| !owned_by(&s.metadata.owner_references));
                        self.policies.retain(|_, p| !owned_by(&p.metadata.owner_references));
                        uid.is_some()
                    }
                    (_, Some(n)) => self.secrets.remove(&n).is_some(),
                    _ => false,
                };
                if gone {
                    (200, json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "code": 200 }))
                } else {
                    (404, status(404, "NotFound", "not found"))
                }
            }
            _ => (405, status(405, "MethodNotAllowed", "not in the double")),
        }
    }
}

/// A driver whose client talks to the double, and the double's state.
struct Lab {
    driver: Arc<KubernetesDriver>,
    cluster: Arc<Mutex<Cluster>>,
    exits: Arc<Mutex<Vec<String>>>,
}

impl Lab {
    fn new(cluster: Cluster, tweak: impl FnOnce(&mut KubernetesOptions)) -> Lab {
        Lab::on(Arc::new(Mutex::new(cluster)), tweak)
    }

    /// A driver on a cluster other drivers may share.
    fn on(cluster: Arc<Mutex<Cluster>>, tweak: impl FnOnce(&mut KubernetesOptions)) -> Lab {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = cluster.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.expect("a request body");
                let call = Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let (code, text) = if call.query.contains("watch=true") {
                        // A watch: answer with the queued events, or with
                        // none after a moment (the client watches again).
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        let mut cluster = state.lock().expect("lock");
                        cluster.calls.push(call);
                        (200, cluster.watch.pop_front().unwrap_or_default())
                    } else {
                        let mut cluster = state.lock().expect("lock");
                        let (code, value) = cluster.answer(&call);
                        cluster.calls.push(call);
                        (code, value.to_string())
                    };
                    let response = Response::builder().status(code).body(Body::from(text.into_bytes())).expect("a response");
                    respond.send_response(response);
                });
            }
        });
        let exits: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = exits.clone();
        let mut opts = KubernetesOptions::new(JobTemplate::new(NS, "registry.example/hadron:1"));
        opts.on_exit = Some(Arc::new(move |w: &str| seen.lock().expect("lock").push(w.to_owned())));
        tweak(&mut opts);
        let driver = Arc::new(KubernetesDriver::new(kube::Client::new(service, NS), opts));
        Lab { driver, cluster, exits }
    }

    /// The workers `observe` reports, once the first list has arrived.
    async fn workers(&self) -> Vec<String> {
        let mut seen: Vec<String> = self.call(|d| d.observe()).await.expect("observed").into_iter().map(|o| o.worker).collect();
        seen.sort();
        seen
    }

    /// Runs a driver method as the reconciler does: on a blocking thread.
    async fn call<T: Send + 'static>(&self, f: impl FnOnce(&KubernetesDriver) -> T + Send + 'static) -> T {
        let driver = self.driver.clone();
        tokio::task::spawn_blocking(move || f(&driver)).await.expect("the driver call returns")
    }

    fn calls(&self) -> Vec<Call> {
        self.cluster.lock().expect("lock").calls.clone()
    }

    /// The calls other than the watcher's own (list and watch of Jobs).
    fn driver_calls(&self) -> Vec<(String, String)> {
        let jobs = format!("/apis/batch/v1/namespaces/{NS}/jobs");
        self.calls().into_iter().filter(|c| !(c.method == "GET" && c.path == jobs)).map(|c| (c.method, c.path)).collect()
    }
}

fn spec_with_secrets() -> RunSpec {
    RunSpec {
        env: vec![
            ("ANTHROPIC_API_KEY".to_owned(), EnvSource::Secret { name: "agent-keys".to_owned(), key: Some("anthropic".to_owned()) }),
            ("GITEA_TOKEN".to_owned(), EnvSource::Secret { name: "hadron-gitea".to_owned(), key: Some("token".to_owned()) }),
        ],
        ..sample()
    }
}

fn job_of(spec: &RunSpec, conditions: &[(&str, &str)]) -> Job {
    crate::workers::kubernetes::tests::job_with_status(spec, &JobTemplate::new(NS, "registry.example/hadron:1"), conditions)
}

fn pod_with_message(worker: &str, message: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{worker}-x7k2p")),
            labels: Some(BTreeMap::from([("batch.kubernetes.io/job-name".to_owned(), worker.to_owned())])),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "worker".to_owned(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated { exit_code: 0, message: Some(message.to_owned()), ..Default::default() }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
        spec: None,
    }
}

fn succeeded(worker: &str) -> RunResult {
    crate::workers::kubernetes::tests::result(worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_makes_the_job_then_its_network_policy_then_its_secret_both_owned_by_the_job() {
    let lab = Lab::new(Cluster::default(), |o| {
        o.epoch = Some(4);
        o.agent_secrets.insert("agent-keys".to_owned());
    });
    let spec = spec_with_secrets();
    let s = spec.clone();
    lab.call(move |d| d.start(&s)).await.expect("started");
    let w = spec.worker.as_str();
    assert_eq!(
        lab.driver_calls(),
        [
            ("POST".to_owned(), format!("/apis/batch/v1/namespaces/{NS}/jobs")),
            ("POST".to_owned(), format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies")),
            ("POST".to_owned(), format!("/api/v1/namespaces/{NS}/secrets")),
        ],
        "the Secret the pod mounts comes last: the worker never runs before its policy exists"
    );
    let calls = lab.calls();
    let posted_job = &calls.iter().find(|c| c.method == "POST" && c.path.ends_with("/jobs")).expect("a Job").body;
    assert_eq!(posted_job["metadata"]["name"], w);
    assert_eq!(posted_job["metadata"]["annotations"]["hadron.dev/epoch"], "4", "the Job carries the leader's epoch");
    let env = posted_job["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env");
    assert_eq!(env.len(), 3, "HOME, HADRON_SANDBOX, and only the secret the operator allowed reaches the pod: {env:?}");
    assert_eq!(env[2]["valueFrom"]["secretKeyRef"], json!({ "name": "agent-keys", "key": "anthropic", "optional": false }));
    let posted_secret = &calls.iter().find(|c| c.method == "POST" && c.path.ends_with("/secrets")).expect("a Secret").body;
    let run: RunSpec = serde_json::from_str(posted_secret["stringData"]["run.json"].as_str().expect("run.json")).expect("a run spec");
    assert_eq!(run.env, vec![("ANTHROPIC_API_KEY".to_owned(), EnvSource::Secret { name: "ANTHROPIC_API_KEY".to_owned(), key: None })]);
    let posted_policy = &calls.iter().find(|c| c.method == "POST" && c.path.ends_with("/networkpolicies")).expect("a policy").body;
    assert_eq!(posted_policy["spec"]["podSelector"]["matchLabels"]["hadron.dev/worker"], w, "selects this worker's pod");
    assert_eq!(posted_policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let cluster = lab.cluster.lock().expect("lock");
    for refs in [&cluster.secrets[w].metadata.owner_references, &cluster.policies[w].metadata.owner_references] {
        let owner = &refs.as_ref().expect("owned")[0];
        assert_eq!((owner.kind.as_str(), owner.uid.clone()), ("Job", format!("uid-{w}")), "deleted with its Job");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_an_earlier_leader_made_is_already_started() {
    let spec = sample();
    let mut cluster = Cluster::default();
    cluster.jobs.insert(spec.worker.clone(), job_of(&spec, &[]));
    let lab = Lab::new(cluster, |_| {});
    let s = spec.clone();
    lab.call(move |d| d.start(&s)).await.expect("a 409 is not an error");
    let w = spec.worker.as_str();
    let calls = lab.driver_calls();
    assert!(calls.contains(&("GET".to_owned(), format!("/apis/batch/v1/namespaces/{NS}/jobs/{w}"))), "{calls:?}");
    let cluster = lab.cluster.lock().expect("lock");
    assert_eq!(cluster.jobs.len(), 1, "no second Job");
    let owner = &cluster.secrets[w].metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(owner.uid, format!("uid-{w}"), "the Secret belongs to the Job that exists");
    let owner = &cluster.policies[w].metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(owner.uid, format!("uid-{w}"), "so does the policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_cut_short_is_finished_by_the_next_one_and_strays_are_given_to_the_job() {
    let spec = sample();
    let w = spec.worker.clone();
    let mut cluster = Cluster::default();
    cluster.jobs.insert(w.clone(), job_of(&spec, &[]));
    // A policy made by an earlier start, not (yet) owned; no Secret.
    let policy = crate::workers::kubernetes::network_policy(&spec, &JobTemplate::new(NS, "registry.example/hadron:1"));
    cluster.policies.insert(w.clone(), policy);
    let lab = Lab::new(cluster, |_| {});
    let s = spec.clone();
    lab.call(move |d| d.start(&s)).await.expect("409s are not errors");
    assert!(
        lab.driver_calls().contains(&("PATCH".to_owned(), format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{w}"))),
        "{:?}",
        lab.driver_calls()
    );
    let cluster = lab.cluster.lock().expect("lock");
    assert_eq!(cluster.policies[&w].metadata.owner_references.as_ref().map(|o| o[0].uid.clone()), Some(format!("uid-{w}")));
    assert!(cluster.secrets.contains_key(&w), "the missing Secret is made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_network_policy_takes_back_the_job_it_came_with() {
    let mut cluster = Cluster::default();
    cluster.refuse.push(("POST", "/networkpolicies", 403));
    let lab = Lab::new(cluster, |_| {});
    let err = lab.call(|d| d.start(&sample())).await.expect_err("refused");
    assert_eq!(err.reason(), "KubernetesForbidden");
    assert!(err.to_string().contains("create network policy"), "{err}");
    let cluster = lab.cluster.lock().expect("lock");
    assert!(cluster.jobs.is_empty() && cluster.secrets.is_empty(), "no Job left waiting for a Secret that will not come");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_create_is_an_error_that_names_the_permission() {
    let mut cluster = Cluster::default();
    cluster.refuse.push(("POST", "/jobs", 403));
    let lab = Lab::new(cluster, |o| o.on_exit = None);
    assert_eq!(lab.driver.recheck_after(&["w".to_owned()]), Some(Duration::from_secs(2)), "no exit hook: look again now and then");
    let err = lab.call(|d| d.start(&sample())).await.expect_err("refused");
    assert_eq!(err.reason(), "KubernetesForbidden");
    let text = err.to_string();
    assert!(text.contains("create job") && text.contains("namespace agents") && text.contains("Role"), "{text}");
    // Nothing half-made: the Job comes first, so no Secret or policy was made.
    let cluster = lab.cluster.lock().expect("lock");
    assert!(cluster.jobs.is_empty() && cluster.secrets.is_empty() && cluster.policies.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_deletes_in_the_background_and_a_job_already_gone_is_cancelled() {
    let spec = sample();
    let mut cluster = Cluster::default();
    cluster.jobs.insert(spec.worker.clone(), job_of(&spec, &[]));
    let lab = Lab::new(cluster, |_| {});
    let w = spec.worker.clone();
    lab.call(move |d| d.cancel(&w)).await.expect("cancelled");
    let calls = lab.calls();
    let delete = calls.iter().find(|c| c.method == "DELETE" && c.path.ends_with(&format!("/jobs/{}", spec.worker))).expect("a delete");
    assert_eq!(delete.body["propagationPolicy"], "Background", "its pods, Secret and policy go with it");
    assert!(lab.cluster.lock().expect("lock").jobs.is_empty());
    assert!(!calls.iter().any(|c| c.path.contains("/secrets")), "the Secret is the Job's: no call of its own");
    let w = spec.worker.clone();
    lab.call(move |d| d.cancel(&w)).await.expect("a 404 is cancelled too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_on_the_watch_lists_again_and_the_finished_job_is_reported() {
    let spec = sample();
    let w = spec.worker.clone();
    let mut cluster = Cluster::default();
    cluster.jobs.insert(w.clone(), job_of(&spec, &[]));
    let lab = Lab::new(cluster, |_| {});
    let seen = lab.call(|d| d.observe()).await.expect("observed");
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].state.clone(), seen[0].run.clone()), (WorkerState::Running, Some(spec.identity())), "adopted from its labels");
    {
        // The Job finished while the watch was too old to resume.
        let mut cluster = lab.cluster.lock().expect("lock");
        cluster.jobs.insert(w.clone(), job_of(&spec, &[("Complete", "")]));
        cluster.pods.push(pod_with_message(&w, &termination_message(&succeeded(&w))));
        let gone = json!({ "type": "ERROR", "object": status(410, "Expired", "too old resource version: 1 (40)") });
        cluster.watch.push_back(format!("{gone}\n"));
    }
    let lists = || {
        let jobs = format!("/apis/batch/v1/namespaces/{NS}/jobs");
        lab.calls().iter().filter(|c| c.method == "GET" && c.path == jobs && !c.query.contains("watch=true")).count()
    };
    for _ in 0..200 {
        if !lab.exits.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lab.exits.lock().expect("lock").as_slice(), std::slice::from_ref(&w), "the exit is a trigger: no periodic re-run");
    assert!(lists() >= 2, "listed again after 410 Gone");
    let seen = lab.call(|d| d.observe()).await.expect("observed");
    assert_eq!(seen[0].state, WorkerState::Finished(succeeded(&w)), "the result is the pod's termination message");
    let pod_reads = |lab: &Lab| lab.calls().iter().filter(|c| c.path.ends_with("/pods")).count();
    assert_eq!(pod_reads(&lab), 1);
    lab.call(|d| d.observe()).await.expect("observed");
    assert_eq!(pod_reads(&lab), 1, "a finished Job's result is read once");
    assert_eq!(lab.driver.recheck_after(std::slice::from_ref(&w)), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_taken_as_gone_before_the_first_list() {
    let mut cluster = Cluster::default();
    cluster.refuse.push(("GET", "/jobs", 503));
    let lab = Lab::new(cluster, |o| o.sync_timeout = Duration::from_millis(400));
    let err = lab.call(|d| d.observe()).await.expect_err("not listed yet");
    assert_eq!(err.reason(), "KubernetesNotSynced");
    assert!(err.to_string().contains("nothing is taken as gone"), "{err}");
    lab.cluster.lock().expect("lock").refuse.clear();
    let mut seen = None;
    for _ in 0..100 {
        if let Ok(s) = lab.call(|d| d.observe()).await {
            seen = Some(s);
            break;
        }
    }
    assert_eq!(seen.map(|s| s.len()), Some(0), "once listed, an empty namespace is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_say_why_and_edited_jobs_are_not_adopted() {
    let late = RunSpec {
        worker: worker_name(&Installation::default(), "fix", "0011223344556677", "review", "../app.git", 2),
        stage: "review".into(),
        attempt: 2,
        ..sample()
    };
    let mut edited = job_of(&sample(), &[]);
    edited.metadata.labels.as_mut().expect("labels").insert("hadron.dev/request".to_owned(), "someone-else".to_owned());
    let mut cluster = Cluster::default();
    cluster.jobs.insert(late.worker.clone(), job_of(&late, &[("Failed", "DeadlineExceeded")]));
    cluster.jobs.insert(sample().worker, edited);
    let lab = Lab::new(cluster, |_| {});
    let mut seen = lab.call(|d| d.observe()).await.expect("observed");
    seen.sort_by(|a, b| a.worker.cmp(&b.worker));
    let by_worker: BTreeMap<&str, &Observation> = seen.iter().map(|o| (o.worker.as_str(), o)).collect();
    let failed = by_worker[late.worker.as_str()];
    assert!(matches!(&failed.state, WorkerState::Finished(r) if r.reason == "WallTimeExceeded"), "{:?}", failed.state);
    assert_eq!(failed.run, Some(late.identity()));
    assert_eq!(by_worker[sample().worker.as_str()].run, None, "labels that do not match its name: not adopted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_finished_jobs_with_what_they_own_and_lists_no_secrets() {
    let done = sample();
    let running = RunSpec {
        worker: worker_name(&Installation::default(), "fix", "0011223344556677", "review", "../app.git", 1),
        stage: "review".into(),
        ..sample()
    };
    let tpl = JobTemplate::new(NS, "registry.example/hadron:1");
    let mut cluster = Cluster::default();
    cluster.jobs.insert(done.worker.clone(), job_of(&done, &[("Complete", "")]));
    cluster.jobs.insert(running.worker.clone(), job_of(&running, &[]));
    for spec in [&done, &running] {
        let owner = owner_reference(&spec.worker, &format!("uid-{}", spec.worker));
        cluster.secrets.insert(spec.worker.clone(), run_secret(spec, &tpl, Some(owner.clone())));
        let mut policy = crate::workers::kubernetes::network_policy(spec, &tpl);
        policy.metadata.owner_references = Some(vec![owner]);
        cluster.policies.insert(spec.worker.clone(), policy);
    }
    let lab = Lab::new(cluster, |_| {});
    lab.call(|d| d.observe()).await.expect("listed");
    let finished = vec![done.worker.clone(), running.worker.clone(), "hadron-unknown-1-00000000".to_owned()];
    let removed = lab.call(move |d| d.prune(&finished, Duration::from_secs(3600))).await.expect("pruned");
    assert_eq!(removed, 1, "only the finished Job past retention; a live one is not finished, an unknown one is skipped");
    assert!(
        !lab.calls().iter().any(|c| c.method == "GET" && c.path.contains("/secrets")),
        "no Secret is listed or read: the Role grants no list or get on Secrets"
    );
    let cluster = lab.cluster.lock().expect("lock");
    assert_eq!(cluster.jobs.keys().collect::<Vec<_>>(), [&running.worker]);
    assert_eq!(cluster.secrets.keys().collect::<Vec<_>>(), [&running.worker], "the Secret went with its Job");
    assert_eq!(cluster.policies.keys().collect::<Vec<_>>(), [&running.worker], "so did the policy");
}

/// The first attempt of `stage` of request `fix` in `installation`.
fn spec_of(installation: &str, stage: &str) -> RunSpec {
    let i = Installation::named(installation).expect("a label");
    RunSpec {
        worker: worker_name(&i, "fix", "0011223344556677", stage, "../app.git", 1),
        installation: i.to_string(),
        stage: stage.into(),
        ..sample()
    }
}

fn team(installation: &'static str) -> impl FnOnce(&mut KubernetesOptions) {
    move |o| o.installation = Installation::named(installation).expect("a label")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_share_a_namespace_and_never_touch_each_others_jobs() {
    // Each installation has a running and a finished Job of the same
    // request, stage and attempt in one namespace.
    let (a_running, a_done) = (spec_of("team-a", "implement"), spec_of("team-a", "review"));
    let (b_running, b_done) = (spec_of("team-b", "implement"), spec_of("team-b", "review"));
    assert_ne!(a_running.worker, b_running.worker, "the installation is in the name: the two never collide");
    let mut cluster = Cluster::default();
    for (spec, conditions) in
        [(&a_running, &[][..]), (&a_done, &[("Complete", "")][..]), (&b_running, &[][..]), (&b_done, &[("Complete", "")][..])]
    {
        cluster.jobs.insert(spec.worker.clone(), job_of(spec, conditions));
    }
    let cluster = Arc::new(Mutex::new(cluster));
    let a = Lab::on(cluster.clone(), team("team-a"));
    let b = Lab::on(cluster.clone(), team("team-b"));

    let mut mine = vec![a_running.worker.clone(), a_done.worker.clone()];
    mine.sort();
    assert_eq!(a.workers().await, mine, "a watches its own Jobs only");
    let mut theirs = vec![b_running.worker.clone(), b_done.worker.clone()];
    theirs.sort();
    assert_eq!(b.workers().await, theirs, "b its own");
    // The calls of both drivers reach the one cluster: each lists with its own selector.
    let mut selectors: Vec<String> =
        a.calls().iter().filter(|c| c.path.ends_with("/jobs")).filter_map(|c| query_param(&c.query, "labelSelector")).collect();
    selectors.sort();
    selectors.dedup();
    assert_eq!(
        selectors,
        [
            "app.kubernetes.io/managed-by=hadron,hadron.dev/installation=team-a",
            "app.kubernetes.io/managed-by=hadron,hadron.dev/installation=team-b"
        ]
    );

    // a neither cancels, prunes nor starts b's workers.
    let w = b_running.worker.clone();
    let err = a.call(move |d| d.cancel(&w)).await.expect_err("not a's to cancel");
    assert_eq!(err.reason(), "ForeignWorker");
    assert!(err.to_string().contains("`team-b`") && err.to_string().contains("`team-a`"), "{err}");
    let s = b_running.clone();
    assert_eq!(a.call(move |d| d.start(&s)).await.map_err(|e| e.reason()), Err("ForeignWorker"));
    let finished = vec![b_done.worker.clone(), a_done.worker.clone()];
    assert_eq!(a.call(move |d| d.prune(&finished, Duration::ZERO)).await.expect("pruned"), 1, "a's finished Job only");
    {
        let cluster = cluster.lock().expect("lock");
        let left: Vec<&String> = cluster.jobs.keys().collect();
        assert!(left.contains(&&b_running.worker) && left.contains(&&b_done.worker), "b's Jobs are all there: {left:?}");
        assert!(!left.contains(&&a_done.worker), "a pruned its own: {left:?}");
        assert!(!cluster.calls.iter().any(|c| c.method == "DELETE" && c.path.contains("team-b")), "no delete was even tried on b's");
    }
    assert_eq!(b.workers().await, theirs, "b still sees both of its Jobs");

    // Both start the next stage of the same request: two Jobs, each labelled with its installation.
    let (a_next, b_next) = (spec_of("team-a", "polish"), spec_of("team-b", "polish"));
    let s = a_next.clone();
    a.call(move |d| d.start(&s)).await.expect("a starts");
    let s = b_next.clone();
    b.call(move |d| d.start(&s)).await.expect("b starts");
    let cluster = cluster.lock().expect("lock");
    for (spec, installation) in [(&a_next, "team-a"), (&b_next, "team-b")] {
        let labels = |meta: &ObjectMeta| meta.labels.as_ref().and_then(|l| l.get(INSTALLATION_LABEL)).cloned();
        assert_eq!(labels(&cluster.jobs[&spec.worker].metadata).as_deref(), Some(installation));
        assert_eq!(labels(&cluster.secrets[&spec.worker].metadata).as_deref(), Some(installation));
        assert_eq!(labels(&cluster.policies[&spec.worker].metadata).as_deref(), Some(installation));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_another_installation_holding_the_name_is_not_taken_as_started() {
    // A worker name both installations compute (two installations set to
    // one name by mistake, or a hash collision): b's Job holds it.
    let spec = spec_of("team-a", "implement");
    let mut theirs = job_of(&spec, &[]);
    theirs.metadata.labels.as_mut().expect("labels").insert(INSTALLATION_LABEL.to_owned(), "team-b".to_owned());
    let mut cluster = Cluster::default();
    cluster.jobs.insert(spec.worker.clone(), theirs.clone());
    let lab = Lab::new(cluster, team("team-a"));
    let s = spec.clone();
    let err = lab.call(move |d| d.start(&s)).await.expect_err("not started");
    assert_eq!(err.reason(), "ForeignWorker");
    assert!(err.to_string().contains("`team-b`"), "{err}");
    let cluster = lab.cluster.lock().expect("lock");
    assert_eq!(cluster.jobs[&spec.worker], theirs, "b's Job is as it was");
    assert!(cluster.secrets.is_empty() && cluster.policies.is_empty(), "nothing of a's was given to it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_run_spec_secret_is_replaced_and_a_current_one_kept() {
    let tpl = JobTemplate::new(NS, "registry.example/hadron:1");
    let spec = sample();
    let w = spec.worker.clone();
    // An earlier Job of this name left its Secret behind with another run
    // spec (another prompt), owned by that Job, which is gone.
    let earlier = RunSpec { prompt_template: "an older prompt".into(), ..spec.clone() };
    let mut cluster = Cluster::default();
    cluster.secrets.insert(w.clone(), stored(run_secret(&earlier, &tpl, Some(owner_reference(&w, "uid-gone")))));
    let lab = Lab::new(cluster, |_| {});
    let s = spec.clone();
    lab.call(move |d| d.start(&s)).await.expect("started");
    let secret_path = format!("/api/v1/namespaces/{NS}/secrets/{w}");
    let patches = |lab: &Lab| lab.driver_calls().iter().filter(|(m, p)| m == "PATCH" && *p == secret_path).count();
    assert_eq!(patches(&lab), 2, "given to the new Job, found stale, replaced: {:?}", lab.driver_calls());
    {
        let cluster = lab.cluster.lock().expect("lock");
        let held = &cluster.secrets[&w].data.as_ref().expect("data")[RUN_FILE_KEY].0;
        assert_eq!(String::from_utf8_lossy(held), run_spec_json(&spec), "the pod reads this start's run spec");
        let owner = &cluster.secrets[&w].metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(owner.uid, format!("uid-{w}"), "owned by the Job that mounts it");
    }

    // The same start again after the Job went (its Secret not collected
    // yet): the Secret holds this run spec already and is only given to the new Job.
    let mut cluster = Cluster::default();
    cluster.secrets.insert(w.clone(), stored(run_secret(&spec, &tpl, Some(owner_reference(&w, "uid-gone")))));
    let lab = Lab::new(cluster, |_| {});
    let s = spec.clone();
    lab.call(move |d| d.start(&s)).await.expect("started");
    assert_eq!(patches(&lab), 1, "current: not written again: {:?}", lab.driver_calls());
    let cluster = lab.cluster.lock().expect("lock");
    assert_eq!(cluster.secrets[&w].metadata.owner_references.as_ref().expect("owned")[0].uid, format!("uid-{w}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_name_the_uid_of_the_job_they_mean() {
    let spec = sample();
    let w = spec.worker.clone();
    let mut cluster = Cluster::default();
    cluster.jobs.insert(w.clone(), job_of(&spec, &[]));
    let lab = Lab::new(cluster, |_| {});
    assert_eq!(lab.workers().await, std::slice::from_ref(&w));
    // Since it was listed, the Job was deleted and another made under the same name.
    let mut newer = job_of(&spec, &[]);
    newer.metadata.uid = Some("uid-newer".to_owned());
    lab.cluster.lock().expect("lock").jobs.insert(w.clone(), newer);
    let name = w.clone();
    lab.call(move |d| d.cancel(&name)).await.expect("the Job meant is gone: cancelled");
    let calls = lab.calls();
    let delete = calls.iter().find(|c| c.method == "DELETE").expect("a delete");
    assert_eq!(delete.body["preconditions"]["uid"], format!("uid-{w}"), "{:?}", delete.body);
    assert_eq!(delete.body["propagationPolicy"], "Background");
    let cluster = lab.cluster.lock().expect("lock");
    assert_eq!(cluster.jobs[&w].metadata.uid.as_deref(), Some("uid-newer"), "the newer Job is not deleted by mistake");
}
