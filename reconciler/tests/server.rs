//! The HTTP server over real loopback HTTP, with a real SQLite store and the real Gitea
//! payloads of `tests/fixtures/gitea/webhooks`, signed exactly as Gitea signs them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use axum::body::Body;
use hadron::model::Phase;
use hadron::server::webhook::{sign, verify_signature};
use hadron::server::{ControlRepoId, ServerConfig, ServerError, ServerState, Trigger, WebhookSecret};
use hadron::store::{RequestRecord, Store};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tower::ServiceExt;

const SECRET: &str = "correct horse battery staple";

/// The workspace's copies of real third-party data (`tests/fixtures`, see its README).
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn webhook_dir() -> PathBuf {
    fixtures().join("gitea/webhooks")
}

fn payload(name: &str) -> Result<Vec<u8>> {
    let path = webhook_dir().join(name);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The `X-Gitea-Event` header Gitea sends with each fixture (fixtures README).
fn event_of(file: &str) -> Result<&'static str> {
    Ok(match file {
        "push.json" | "push_gitea_docs.json" | "push_multi_recent.json" => "push",
        "branch_create.json" => "create",
        "branch_delete.json" => "delete",
        "issue_comment_created.json" | "pull_request_comment_created.json" => "issue_comment",
        "pull_request_review_approved.json" => "pull_request_approved",
        "pull_request_review_rejected.json" => "pull_request_rejected",
        "pull_request_review_comment.json" => "pull_request_comment",
        f if f.starts_with("pull_request_") => "pull_request",
        other => bail!("no event header known for fixture {other}"),
    })
}

/// `control` watching `target` too (an `owner/name` or a clone URL).
fn with_target(mut control: ControlRepoId, target: &str) -> ControlRepoId {
    control.add_target(target);
    control
}

/// A running server on 127.0.0.1:0 with its store, trigger receiver and shutdown switch.
struct Harness {
    _dir: TempDir,
    store: Store,
    state: ServerState,
    /// The readiness flag the server reads (the loop sets it in `hadron up`).
    ready: Arc<AtomicBool>,
    base: String,
    client: reqwest::Client,
    triggers: mpsc::Receiver<Trigger>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ServerError>>,
}

impl Harness {
    async fn start(control: ControlRepoId, secret: Option<&str>, body_limit: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = Store::open_data_dir(dir.path()).await?;
        let (tx, triggers) = mpsc::channel(64);
        let mut config = ServerConfig::new(store.clone(), control, tx);
        config.webhook_secret = secret.map(WebhookSecret::new).transpose()?;
        config.body_limit = body_limit;
        let ready = config.ready.clone();
        let state = ServerState::new(config);
        let listener = hadron::server::bind("127.0.0.1:0".parse()?).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(hadron::server::serve_listener(listener, state.clone(), async move {
            let _ = shutdown_rx.await;
        }));
        Ok(Self {
            _dir: dir,
            store,
            state,
            ready,
            base,
            client: reqwest::Client::builder().no_proxy().build()?,
            triggers,
            shutdown: Some(shutdown),
            server,
        })
    }

    async fn with_control(control: ControlRepoId) -> Result<Self> {
        Self::start(control, Some(SECRET), hadron::server::DEFAULT_BODY_LIMIT).await
    }

    /// Posts `body` with the headers Gitea sends; `signature` is the `X-Gitea-Signature`
    /// value (None leaves the header out).
    async fn post_raw(&self, event: &str, delivery: &str, signature: Option<&str>, body: impl Into<reqwest::Body>) -> Result<(u16, Value)> {
        let mut req = self
            .client
            .post(format!("{}/hooks/gitea", self.base))
            .header("Content-Type", "application/json")
            .header("X-Gitea-Event", event)
            .header("X-Gitea-Event-Type", event)
            .header("X-Gogs-Event", event)
            .header("X-GitHub-Event", event)
            .header("X-Gitea-Delivery", delivery)
            .header("X-Gogs-Delivery", delivery)
            .header("X-GitHub-Delivery", delivery);
        if let Some(sig) = signature {
            req =
                req.header("X-Gitea-Signature", sig).header("X-Gogs-Signature", sig).header("X-Hub-Signature-256", format!("sha256={sig}"));
        }
        let resp = req.body(body).send().await?;
        let status = resp.status().as_u16();
        let json = resp.json::<Value>().await.context("response body is not JSON")?;
        Ok((status, json))
    }

    /// Posts `body` signed with the server's secret, as Gitea does.
    async fn post_signed(&self, event: &str, delivery: &str, body: Vec<u8>) -> Result<(u16, Value)> {
        let sig = sign(SECRET.as_bytes(), &body);
        self.post_raw(event, delivery, Some(&sig), body).await
    }

    /// Every trigger queued so far.
    fn drain(&mut self) -> Vec<Trigger> {
        let mut out = Vec::new();
        while let Ok(t) = self.triggers.try_recv() {
            out.push(t);
        }
        out
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        Ok(self.client.get(format!("{}{path}", self.base)).send().await?)
    }

    /// Stops the server and checks that it shut down cleanly.
    async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.server).await.context("server did not shut down")???;
        Ok(())
    }
}

fn delivery_id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn json_files() -> Result<Vec<String>> {
    let mut files: Vec<String> = std::fs::read_dir(webhook_dir())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    ensure!(files.len() >= 20, "expected the Gitea fixtures, found {files:?}");
    Ok(files)
}

#[tokio::test]
async fn every_fixture_is_accepted_and_unrelated_ones_are_ignored() -> Result<()> {
    // A control repo none of the fixtures is about, and no targets.
    let mut h = Harness::with_control(ControlRepoId::new("hadron/control", "main")).await?;
    for (i, file) in json_files()?.iter().enumerate() {
        let body = payload(file)?;
        let (status, json) = h.post_signed(event_of(file)?, &delivery_id(i as u32), body).await?;
        ensure!(status == 202, "{file}: status {status}, body {json}");
        ensure!(json["result"] == "ignored", "{file}: {json}");
    }
    ensure!(h.drain().is_empty(), "unrelated deliveries must not trigger");
    ensure!(h.state.metrics().deliveries("ignored") == json_files()?.len() as u64);
    h.stop().await
}

#[tokio::test]
async fn a_review_asking_for_changes_on_an_approval_pr_triggers_a_pass_and_nothing_else_does() -> Result<()> {
    // Gitea's own `pull_request_rejected` delivery; its PR is re-pointed at
    // an approval branch of the control repo it names.
    let mut review: Value = serde_json::from_slice(&payload("pull_request_review_rejected.json")?)?;
    let control = ControlRepoId::new("a_nice_user/hello_world_ci", "main");
    let mut h = Harness::with_control(control.clone()).await?;
    let (status, json) = h.post_signed("pull_request_rejected", &delivery_id(1), serde_json::to_vec(&review)?).await?;
    ensure!(status == 202 && json["result"] == "ignored", "a review of an ordinary PR: {status} {json}");
    review["pull_request"]["head"]["ref"] = json!("hadron/approve/fix/review");
    let (status, json) = h.post_signed("pull_request_rejected", &delivery_id(2), serde_json::to_vec(&review)?).await?;
    ensure!(status == 202 && json["trigger"] == "ApprovalReviewed", "{status} {json}");
    ensure!(h.drain() == vec![Trigger::ApprovalReviewed { request: "fix".into(), gate: "review".into() }]);
    // The same review of an approval branch in another repository triggers nothing.
    review["repository"]["full_name"] = json!("someone/else");
    let (status, json) = h.post_signed("pull_request_rejected", &delivery_id(3), serde_json::to_vec(&review)?).await?;
    ensure!(status == 202 && json["result"] == "ignored", "{status} {json}");
    ensure!(h.drain().is_empty());
    h.stop().await
}

#[tokio::test]
async fn pushes_to_the_control_branch_trigger_control_push() -> Result<()> {
    for (file, repo, branch) in [
        ("push.json", "gogits/hello-world", "master"),
        ("push_gitea_docs.json", "gitea/webhooks", "develop"),
        ("push_multi_recent.json", "Test-CI/multi-line-secrets", "main"),
    ] {
        let body = payload(file)?;
        let after = serde_json::from_slice::<Value>(&body)?["after"].as_str().context("after")?.to_owned();
        // Control repo named by its clone URL, as `hadron up` knows it.
        let control = ControlRepoId::new(&format!("https://git.example.com/{repo}.git"), branch);
        let mut h = Harness::with_control(control).await?;
        let (status, json) = h.post_signed("push", &delivery_id(1), body.clone()).await?;
        ensure!(status == 202 && json["trigger"] == "ControlPush", "{file}: {status} {json}");
        ensure!(h.drain() == vec![Trigger::ControlPush { after: after.clone() }], "{file}");
        h.stop().await?;

        // Same repo, another control branch: the push is not to the control branch.
        let mut h = Harness::with_control(ControlRepoId::new(repo, "some-other-branch")).await?;
        let (status, json) = h.post_signed("push", &delivery_id(2), body.clone()).await?;
        ensure!(status == 202 && json["result"] == "ignored", "{file}: {status} {json}");
        ensure!(h.drain().is_empty());
        h.stop().await?;

        // Another control repo, this one a watched target: TargetActivity.
        let control = with_target(ControlRepoId::new("hadron/control", "main"), &format!("http://gitea:3000/{repo}.git"));
        let mut h = Harness::with_control(control).await?;
        let (status, json) = h.post_signed("push", &delivery_id(3), body).await?;
        ensure!(status == 202 && json["trigger"] == "TargetActivity", "{file}: {status} {json}");
        let expected = Trigger::TargetActivity { repo: repo.to_owned(), commit: Some(after) };
        ensure!(h.drain() == vec![expected], "{file}");
        h.stop().await?;
    }
    Ok(())
}

/// `file` with the PR's head branch rewritten (and optionally `merged_by` removed).
fn approval_payload(file: &str, head: &str, drop_merged_by: bool) -> Result<(Vec<u8>, Value)> {
    let mut v: Value = serde_json::from_slice(&payload(file)?)?;
    v["pull_request"]["head"]["ref"] = Value::from(head);
    v["pull_request"]["head"]["label"] = Value::from(head);
    if drop_merged_by {
        v["pull_request"]["merged_by"] = Value::Null;
    }
    Ok((serde_json::to_vec_pretty(&v)?, v))
}

/// A signed delivery saying an approval PR was merged is a reason to look,
/// never evidence: it triggers a pass and writes nothing the approval
/// decision could read (the loop asks Gitea's API who merged).
#[tokio::test]
async fn a_signed_merge_delivery_triggers_a_pass_and_records_no_merger() -> Result<()> {
    let (body, v) = approval_payload("pull_request_merged.json", "hadron/approve/fix/review", false)?;
    let repo = v["repository"]["full_name"].as_str().context("repo")?;
    let base = v["pull_request"]["base"]["ref"].as_str().context("base")?;
    let mut h = Harness::with_control(ControlRepoId::new(repo, base)).await?;
    let (status, json) = h.post_signed("pull_request", &delivery_id(7), body.clone()).await?;
    ensure!(status == 202 && json["trigger"] == "ApprovalMerged", "{status} {json}");
    ensure!(h.drain().len() == 1, "one pass is asked for");
    let db = h._dir.path().join("hadron.db");
    let side = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await?;
    let kv: Vec<(String,)> = sqlx::query_as("SELECT key FROM kv").fetch_all(&side).await?;
    ensure!(kv.is_empty(), "the delivery's claims are not kept: {kv:?}");
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries").fetch_one(&side).await?;
    ensure!(deliveries == 1, "only its id is, for duplicates: {deliveries}");
    // The same delivery again is a duplicate and asks for nothing.
    let (status, json) = h.post_signed("pull_request", &delivery_id(7), body).await?;
    ensure!(status == 200 && json["result"] == "duplicate", "{status} {json}");
    ensure!(h.drain().is_empty(), "a duplicate triggers nothing");
    side.close().await;
    h.stop().await?;
    Ok(())
}

#[tokio::test]
async fn merged_approval_prs_yield_approval_merged() -> Result<()> {
    for file in ["pull_request_merged.json", "pull_request_merged_recent.json"] {
        let (body, v) = approval_payload(file, "hadron/approve/fix/review", false)?;
        let repo = v["repository"]["full_name"].as_str().context("repo")?;
        let base = v["pull_request"]["base"]["ref"].as_str().context("base")?;
        let merger = v["pull_request"]["merged_by"]["login"].as_str().context("merged_by")?.to_owned();
        let merge_commit = v["pull_request"]["merge_commit_sha"].as_str().map(str::to_owned);
        ensure!(merge_commit.is_some(), "{file} names its merge commit");
        let mut h = Harness::with_control(ControlRepoId::new(repo, base)).await?;

        let (status, json) = h.post_signed("pull_request", &delivery_id(1), body).await?;
        ensure!(status == 202 && json["trigger"] == "ApprovalMerged", "{file}: {status} {json}");
        let expected = Trigger::ApprovalMerged {
            request: "fix".into(),
            gate: "review".into(),
            merged_by_login: merger,
            merge_commit: merge_commit.clone(),
        };
        ensure!(h.drain() == vec![expected], "{file}");

        // No merged_by: the sender is the merger.
        let (body, v) = approval_payload(file, "hadron/approve/fix/review", true)?;
        let sender = v["sender"]["login"].as_str().context("sender")?.to_owned();
        let (status, _) = h.post_signed("pull_request", &delivery_id(2), body).await?;
        ensure!(status == 202);
        let got = h.drain();
        ensure!(matches!(&got[..], [Trigger::ApprovalMerged { merged_by_login, .. }] if *merged_by_login == sender), "{file}: {got:?}");

        // The unmodified merge (head `feature`-like) is not an approval.
        let (status, json) = h.post_signed("pull_request", &delivery_id(3), payload(file)?).await?;
        ensure!(status == 202 && json["result"] == "ignored", "{file}: {json}");
        // Head names that are not `<request>/<gate>` labels are not approvals either.
        let (body, _) = approval_payload(file, "hadron/approve/fix/review/extra", false)?;
        let (_, json) = h.post_signed("pull_request", &delivery_id(4), body).await?;
        ensure!(json["result"] == "ignored", "{file}: {json}");
        ensure!(h.drain().is_empty(), "{file}");
        h.stop().await?;

        // The same merge on a repo that is not the control repo triggers nothing.
        let mut h = Harness::with_control(with_target(ControlRepoId::new("hadron/control", base), repo)).await?;
        let (body, _) = approval_payload(file, "hadron/approve/fix/review", false)?;
        let (_, json) = h.post_signed("pull_request", &delivery_id(5), body).await?;
        ensure!(json["result"] == "ignored", "{file}: {json}");
        ensure!(h.drain().is_empty());
        h.stop().await?;
    }

    // Closed without merge: nothing, even on an approval branch of the control repo.
    let (body, v) = approval_payload("pull_request_closed.json", "hadron/approve/fix/review", false)?;
    let repo = v["repository"]["full_name"].as_str().context("repo")?;
    let mut h = Harness::with_control(ControlRepoId::new(repo, "master")).await?;
    let (status, json) = h.post_signed("pull_request", &delivery_id(6), body).await?;
    ensure!(status == 202 && json["result"] == "ignored", "{json}");
    ensure!(h.drain().is_empty());
    h.stop().await
}

#[tokio::test]
async fn commit_status_events_of_targets_trigger_target_activity() -> Result<()> {
    let control = with_target(ControlRepoId::new("hadron/control", "main"), "org/app");
    let mut h = Harness::with_control(control).await?;
    let sha = "8c8a6e1e0a6b1f8f4a2d7c2b2e0f4d3a1b2c3d4e";
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "sha": sha, "context": "ci/build", "state": "success",
        "repository": { "full_name": "Org/App" }, "sender": { "login": "ci" },
    }))?;
    let (status, json) = h.post_signed("status", &delivery_id(1), body).await?;
    ensure!(status == 202 && json["trigger"] == "TargetActivity", "{json}");
    ensure!(h.drain() == vec![Trigger::TargetActivity { repo: "Org/App".into(), commit: Some(sha.into()) }]);

    // A malformed payload of an event Hadron acts on is a bad request, not recorded.
    let (status, json) = h.post_signed("status", &delivery_id(2), b"{\"sha\": 1}".to_vec()).await?;
    ensure!(status == 400 && json["error"] == "InvalidPayload", "{status} {json}");
    ensure!(h.drain().is_empty());
    h.stop().await
}

#[tokio::test]
async fn signature_vector_verifies_and_matches_the_server() -> Result<()> {
    let path = fixtures().join("gitea/signature_vector.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let secret = v["secret"].as_str().context("secret")?;
    let body = v["payload"].as_str().context("payload")?;
    let signature = v["signature"].as_str().context("signature")?;
    ensure!(sign(secret.as_bytes(), body.as_bytes()) == signature);
    ensure!(verify_signature(secret.as_bytes(), body.as_bytes(), signature));
    ensure!(!verify_signature(secret.as_bytes(), b"Hello, World?", signature));

    // End to end: a server keyed with the vector's secret accepts the vector's bytes
    // (an event Hadron does not parse, so the non-JSON body is fine) and refuses a
    // one-byte change.
    let h = Harness::start(ControlRepoId::new("o/r", "main"), Some(secret), 1024).await?;
    let (status, json) = h.post_raw("ping", &delivery_id(1), Some(signature), body.to_owned()).await?;
    ensure!(status == 202 && json["result"] == "ignored", "{status} {json}");
    let (status, json) = h.post_raw("ping", &delivery_id(2), Some(signature), "Hello, World?").await?;
    ensure!(status == 401 && json["error"] == "SignatureMismatch", "{status} {json}");
    h.stop().await
}

#[tokio::test]
async fn forged_unsigned_and_unconfigured_deliveries_are_refused() -> Result<()> {
    let repo = "gogits/hello-world";
    let mut h = Harness::with_control(ControlRepoId::new(repo, "master")).await?;
    let body = payload("push.json")?;
    let id = delivery_id(7);

    let forged = sign(b"not the secret", &body);
    let (status, json) = h.post_raw("push", &id, Some(&forged), body.clone()).await?;
    ensure!(status == 401 && json["error"] == "SignatureMismatch", "{status} {json}");
    ensure!(json["message"].as_str().is_some_and(|m| !m.contains(SECRET)));
    let (status, json) = h.post_raw("push", &id, None, body.clone()).await?;
    ensure!(status == 401 && json["error"] == "SignatureMissing", "{status} {json}");
    // Gitea without a secret sends the header empty.
    let (status, json) = h.post_raw("push", &id, Some(""), body.clone()).await?;
    ensure!(status == 401 && json["error"] == "SignatureMissing", "{status} {json}");
    // A valid signature over other bytes.
    let mut tampered = body.clone();
    tampered.extend_from_slice(b"\n");
    let sig = sign(SECRET.as_bytes(), &body);
    let (status, _) = h.post_raw("push", &id, Some(&sig), tampered).await?;
    ensure!(status == 401);
    // The deprecated `secret` field inside the payload is no credential.
    let docs = payload("push_gitea_docs.json")?;
    let embedded: Value = serde_json::from_slice(&docs)?;
    let embedded = embedded["secret"].as_str().context("the docs payload carries a secret")?;
    let sig = sign(embedded.as_bytes(), &docs);
    let (status, _) = h.post_raw("push", &delivery_id(8), Some(&sig), docs).await?;
    ensure!(status == 401);
    ensure!(h.drain().is_empty(), "refused deliveries must not trigger");
    ensure!(h.state.metrics().deliveries("unauthorized") == 5);

    // Refused deliveries were not recorded: the genuine one with the same id goes through.
    let (status, _) = h.post_signed("push", &id, body.clone()).await?;
    ensure!(status == 202);
    ensure!(h.drain().len() == 1);

    // Signed but without the delivery or event header: a bad request.
    let sig = sign(SECRET.as_bytes(), &body);
    let resp = h
        .client
        .post(format!("{}/hooks/gitea", h.base))
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Signature", &sig)
        .body(body.clone())
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 400);
    let json: Value = resp.json().await?;
    ensure!(json["error"] == "MissingHeader", "{json}");
    h.stop().await?;

    // No secret configured: webhooks are off, even correctly signed ones.
    let mut h = Harness::start(ControlRepoId::new(repo, "master"), None, 1 << 20).await?;
    let (status, json) = h.post_signed("push", &delivery_id(9), body).await?;
    ensure!(status == 401 && json["error"] == "WebhookSecretNotConfigured", "{status} {json}");
    ensure!(h.drain().is_empty());
    h.stop().await
}

#[tokio::test]
async fn a_redelivery_is_a_duplicate_and_triggers_nothing() -> Result<()> {
    let mut h = Harness::with_control(ControlRepoId::new("gogits/hello-world", "master")).await?;
    let body = payload("push.json")?;
    let id = "f6266f16-1bf3-46a5-9ea4-602e06ead473";
    let (status, _) = h.post_signed("push", id, body.clone()).await?;
    ensure!(status == 202);
    ensure!(h.drain().len() == 1);
    let (status, json) = h.post_signed("push", id, body.clone()).await?;
    ensure!(status == 200 && json["result"] == "duplicate", "{status} {json}");
    ensure!(h.drain().is_empty(), "a replay must not trigger");
    // The dedup lives in the store: a new server on the same store still knows the id.
    ensure!(!h.store.record_delivery(id, "push", 0).await?);
    ensure!(h.state.metrics().deliveries("duplicate") == 1);
    h.stop().await
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_anything_else() -> Result<()> {
    let limit = 4096;
    let mut h = Harness::start(ControlRepoId::new("Test-CI/multi-line-secrets", "main"), Some(SECRET), limit).await?;
    let body = payload("push_multi_recent.json")?;
    ensure!(body.len() > limit, "fixture must exceed the test limit");
    // Correctly signed but too large: 413, not recorded.
    let (status, json) = h.post_signed("push", &delivery_id(1), body.clone()).await?;
    ensure!(status == 413 && json["error"] == "PayloadTooLarge", "{status} {json}");
    // Too large and unsigned: still 413 (the size is checked first).
    let (status, _) = h.post_raw("push", &delivery_id(2), None, body.clone()).await?;
    ensure!(status == 413);
    // Chunked, with no Content-Length: the limit holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let sig = sign(SECRET.as_bytes(), &body);
    let (status, _) = h.post_raw("push", &delivery_id(3), Some(&sig), stream).await?;
    ensure!(status == 413);
    ensure!(h.drain().is_empty());
    ensure!(h.state.metrics().deliveries("too_large") == 3);

    // A body of exactly the limit passes the size check (and, unsigned, fails the next one).
    let (status, _) = h.post_raw("ping", &delivery_id(4), None, vec![b' '; limit]).await?;
    ensure!(status == 401);
    // The refused id was never recorded.
    ensure!(h.store.record_delivery(&delivery_id(1), "push", 0).await?);
    h.stop().await
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() -> Result<()> {
    let mut h = Harness::with_control(ControlRepoId::new("gogits/hello-world", "master")).await?;
    let body = payload("push.json")?;
    h.post_signed("push", &delivery_id(1), body.clone()).await?;
    h.post_signed("push", &delivery_id(1), body.clone()).await?;
    h.post_raw("push", &delivery_id(2), Some("00"), body).await?;
    h.post_signed("create", &delivery_id(3), payload("branch_create.json")?).await?;
    h.drain();
    let m = h.state.metrics();
    m.observe_pass(Duration::from_millis(30), Ok(()));
    m.observe_pass(Duration::from_secs(2), Err("Network"));
    m.observe_fetch(Duration::from_millis(120));
    m.set_requests_by_phase([("Running", 2), ("WaitingForApproval", 1)]);
    m.set_workers_by_state([("Running", 2)]);
    m.inc_status_commits();
    m.add_push_retries(3);

    let resp = h.get("/metrics").await?;
    ensure!(resp.status().as_u16() == 200);
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    ensure!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = resp.text().await?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;

    let value = |name: &str, label: Option<(&str, &str)>| -> Option<f64> {
        scrape.samples.iter().find_map(|s| {
            let matches = s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v));
            match (&s.value, matches) {
                (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v), true) => Some(*v),
                (prometheus_parse::Value::Untyped(v), true) => Some(*v),
                _ => None,
            }
        })
    };
    let delivery = |result| value("hadron_webhook_deliveries_total", Some(("result", result)));
    ensure!(delivery("accepted") == Some(1.0), "{text}");
    ensure!(delivery("duplicate") == Some(1.0), "{text}");
    ensure!(delivery("unauthorized") == Some(1.0), "{text}");
    ensure!(delivery("ignored") == Some(1.0), "{text}");
    ensure!(delivery("too_large") == Some(0.0), "{text}");
    ensure!(delivery("bad_request") == Some(0.0), "{text}");
    ensure!(value("hadron_reconcile_passes_total", Some(("result", "ok"))) == Some(1.0));
    ensure!(value("hadron_reconcile_passes_total", Some(("result", "error"))) == Some(1.0));
    // Failures are counted by their error's reason too.
    ensure!(value("hadron_reconcile_pass_failures_total", Some(("reason", "Network"))) == Some(1.0), "{text}");
    ensure!(value("hadron_webhook_delivery_failures_total", Some(("reason", "SignatureMismatch"))) == Some(1.0), "{text}");
    ensure!(value("hadron_requests", Some(("phase", "Running"))) == Some(2.0));
    ensure!(value("hadron_requests", Some(("phase", "WaitingForApproval"))) == Some(1.0));
    ensure!(value("hadron_workers", Some(("state", "Running"))) == Some(2.0));
    ensure!(value("hadron_status_commits_total", None) == Some(1.0));
    ensure!(value("hadron_push_retries_total", None) == Some(3.0));
    ensure!(value("hadron_triggers_total", Some(("kind", "ControlPush"))) == Some(1.0));
    ensure!(value("hadron_ready", None) == Some(0.0));
    for (name, count) in [("hadron_reconcile_pass_duration_seconds", 2), ("hadron_fetch_duration_seconds", 1)] {
        let hist = scrape
            .samples
            .iter()
            .find_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) if s.metric == name => Some(h),
                _ => None,
            })
            .with_context(|| format!("{name} is not a histogram in:\n{text}"))?;
        let inf = hist.iter().find(|b| b.less_than.is_infinite()).context("+Inf bucket")?;
        ensure!(inf.count == f64::from(count), "{name}: {inf:?}");
    }
    h.stop().await
}

#[tokio::test]
async fn readiness_follows_the_flag_and_the_store() -> Result<()> {
    let h = Harness::with_control(ControlRepoId::new("o/r", "main")).await?;
    ensure!(h.get("/healthz").await?.status().as_u16() == 200);
    let resp = h.get("/readyz").await?;
    ensure!(resp.status().as_u16() == 503);
    let json: Value = resp.json().await?;
    ensure!(json["error"] == "NotReady", "{json}");

    h.ready.store(true, Ordering::Release);
    ensure!(h.get("/readyz").await?.status().as_u16() == 200);

    // A store that no longer answers makes the server unready, while alive.
    h.store.close().await;
    let resp = h.get("/readyz").await?;
    ensure!(resp.status().as_u16() == 503);
    let json: Value = resp.json().await?;
    ensure!(json["error"] == "StoreQuery", "{json}");
    ensure!(h.get("/healthz").await?.status().as_u16() == 200);
    h.stop().await
}

#[tokio::test]
async fn the_request_api_returns_what_the_store_holds() -> Result<()> {
    let h = Harness::with_control(ControlRepoId::new("o/r", "main")).await?;
    let records = [
        RequestRecord {
            name: "add-login".into(),
            generation: "g1".into(),
            observed_revision: "rev1".into(),
            phase: "Running".into(),
            stage: Some("implement".into()),
            message: "implementing on 1 repo".into(),
            updated_at: 1000,
        },
        RequestRecord {
            name: "fix-typo".into(),
            generation: "g2".into(),
            observed_revision: "rev2".into(),
            phase: "Succeeded".into(),
            stage: None,
            message: "done".into(),
            updated_at: 2000,
        },
    ];
    for r in &records {
        h.store.upsert_request(r).await?;
    }
    let list: Value = h.get("/api/v1/requests").await?.json().await?;
    let items = list["items"].as_array().context("items")?;
    ensure!(items.len() == 2, "{list}");
    for (item, r) in items.iter().zip(&records) {
        ensure!(item["name"] == r.name.as_str());
        ensure!(item["phase"] == r.phase.as_str());
        ensure!(item["observedRevision"] == r.observed_revision.as_str());
        ensure!(item["observedGeneration"] == r.generation.as_str());
        ensure!(item["message"] == r.message.as_str());
        ensure!(item.get("stage").and_then(Value::as_str) == r.stage.as_deref(), "{item}");
    }
    let one = h.get("/api/v1/requests/add-login").await?;
    ensure!(one.status().as_u16() == 200);
    let one: Value = one.json().await?;
    ensure!(one == items[0], "{one}");

    // A long message is cut in the list (a character boundary, an ellipsis), whole for one request.
    let long = RequestRecord { name: "zz-long".into(), message: "é".repeat(100_000), ..records[1].clone() };
    h.store.upsert_request(&long).await?;
    let list: Value = h.get("/api/v1/requests").await?.json().await?;
    let shown = list["items"][2]["message"].as_str().context("message")?;
    ensure!(shown == format!("{}…", "é".repeat(hadron::server::LIST_MESSAGE_CHARS)), "{} characters", shown.chars().count());
    let one: Value = h.get("/api/v1/requests/zz-long").await?.json().await?;
    ensure!(one["message"] == long.message.as_str());

    let missing = h.get("/api/v1/requests/nope").await?;
    ensure!(missing.status().as_u16() == 404);
    let json: Value = missing.json().await?;
    ensure!(json["error"] == "NotFound" && json["message"].is_string(), "{json}");
    h.stop().await
}

#[tokio::test]
async fn server_sent_events_deliver_phase_events_and_end_on_shutdown() -> Result<()> {
    let h = Harness::with_control(ControlRepoId::new("o/r", "main")).await?;
    let mut resp = h.get("/api/v1/events").await?;
    ensure!(resp.status().as_u16() == 200);
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    ensure!(ctype.starts_with("text/event-stream"), "{ctype}");

    // The handler subscribed before answering, so this event reaches the stream.
    let event = hadron::reconcile::PhaseChange {
        request: "add-login".into(),
        from: Some(Phase::Pending),
        to: Phase::Running,
        stage: Some("implement".into()),
        reason: "Progressing".into(),
        message: "implementing".into(),
        revision: "abc123".into(),
    };
    let receivers = h.state.events().send(event.clone())?;
    ensure!(receivers == 1);

    let mut text = String::new();
    let data = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let Some(chunk) = resp.chunk().await? else { bail!("stream ended early: {text:?}") };
            text.push_str(std::str::from_utf8(&chunk)?);
            if let Some(block) = text.split("\n\n").find(|b| b.contains("event: phase")) {
                let data = block.lines().find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:"))).context("data line")?;
                return Ok::<_, anyhow::Error>(data.to_owned());
            }
        }
    })
    .await??;
    let got: Value = serde_json::from_str(&data)?;
    ensure!(got["request"] == "add-login" && got["from"] == "Pending" && got["to"] == "Running", "{got}");
    ensure!(got["stage"] == "implement" && got["revision"] == "abc123", "{got}");

    // Shutting down ends the open stream and the server returns.
    let mut h = h;
    if let Some(tx) = h.shutdown.take() {
        let _ = tx.send(());
    }
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while resp.chunk().await?.is_some() {}
        Ok::<_, anyhow::Error>(())
    })
    .await;
    ensure!(ended.is_ok(), "the event stream did not end on shutdown");
    h.stop().await
}

#[tokio::test]
async fn routes_answer_through_tower_oneshot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open_data_dir(dir.path()).await?;
    let (tx, mut rx) = mpsc::channel(4);
    let mut config = ServerConfig::new(store, ControlRepoId::new("gogits/hello-world", "master"), tx);
    config.webhook_secret = Some(WebhookSecret::new(SECRET)?);
    let app = hadron::server::router(ServerState::new(config));

    let resp = app.clone().oneshot(axum::http::Request::get("/healthz").body(Body::empty())?).await?;
    ensure!(resp.status() == 200);
    let resp = app.clone().oneshot(axum::http::Request::get("/no/such/path").body(Body::empty())?).await?;
    ensure!(resp.status() == 404);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await?;
    let json: Value = serde_json::from_slice(&bytes)?;
    ensure!(json["error"] == "NotFound", "{json}");

    let body = payload("push.json")?;
    let req = axum::http::Request::post("/hooks/gitea")
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Delivery", delivery_id(1))
        .header("X-Gitea-Signature", sign(SECRET.as_bytes(), &body))
        .body(Body::from(body))?;
    let resp = app.oneshot(req).await?;
    ensure!(resp.status() == 202);
    ensure!(matches!(rx.try_recv(), Ok(Trigger::ControlPush { .. })));
    Ok(())
}

#[tokio::test]
async fn a_full_trigger_queue_refuses_without_recording() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open_data_dir(dir.path()).await?;
    let (tx, mut rx) = mpsc::channel(1);
    let mut config = ServerConfig::new(store.clone(), ControlRepoId::new("gogits/hello-world", "master"), tx);
    config.webhook_secret = Some(WebhookSecret::new(SECRET)?);
    let app = hadron::server::router(ServerState::new(config));
    let body = payload("push.json")?;
    let request = |id: u32| {
        axum::http::Request::post("/hooks/gitea")
            .header("X-Gitea-Event", "push")
            .header("X-Gitea-Delivery", delivery_id(id))
            .header("X-Gitea-Signature", sign(SECRET.as_bytes(), &body))
            .body(Body::from(body.clone()))
    };
    ensure!(app.clone().oneshot(request(1)?).await?.status() == 202);
    let resp = app.clone().oneshot(request(2)?).await?;
    ensure!(resp.status() == 503, "queue of one is full");
    // Not recorded: once the loop took the first trigger, a redelivery is accepted.
    ensure!(rx.try_recv().is_ok());
    ensure!(app.oneshot(request(2)?).await?.status() == 202);
    ensure!(rx.try_recv().is_ok());
    Ok(())
}

#[tokio::test]
async fn pull_requests_opened_pushed_or_reopened_into_the_control_branch_ask_for_a_plan_preview() -> Result<()> {
    for file in ["pull_request_opened.json", "pull_request_synchronized.json", "pull_request_reopened.json"] {
        let v: Value = serde_json::from_slice(&payload(file)?)?;
        let repo = v["repository"]["full_name"].as_str().context("repo")?.to_owned();
        let base = v["pull_request"]["base"]["ref"].as_str().context("base")?.to_owned();
        let number = v["pull_request"]["number"].as_u64().context("number")?;
        let mut h = Harness::with_control(ControlRepoId::new(&repo, &base)).await?;
        let (status, json) = h.post_signed("pull_request", &delivery_id(1), payload(file)?).await?;
        ensure!(status == 202 && json["trigger"] == "PullRequestChanged", "{file}: {status} {json}");
        ensure!(h.drain() == vec![Trigger::PullRequestChanged { number }], "{file}");

        // Into another branch, or Hadron's own approval branch: nothing to preview.
        let mut other = v.clone();
        other["pull_request"]["base"]["ref"] = Value::from("release");
        let (status, json) = h.post_signed("pull_request", &delivery_id(2), serde_json::to_vec(&other)?).await?;
        ensure!(status == 202 && json["result"] == "ignored", "{file} into another branch: {status} {json}");
        let mut approval = v.clone();
        approval["pull_request"]["head"]["ref"] = Value::from("hadron/approve/fix/review");
        let (status, json) = h.post_signed("pull_request", &delivery_id(3), serde_json::to_vec(&approval)?).await?;
        ensure!(status == 202 && json["result"] == "ignored" && h.drain().is_empty(), "{file}: an approval PR needs no preview: {json}");
        h.stop().await?;
    }
    // Closed without a merge: nothing either.
    let v: Value = serde_json::from_slice(&payload("pull_request_closed.json")?)?;
    let repo = v["repository"]["full_name"].as_str().context("repo")?.to_owned();
    let base = v["pull_request"]["base"]["ref"].as_str().context("base")?.to_owned();
    let mut h = Harness::with_control(ControlRepoId::new(&repo, &base)).await?;
    let (status, json) = h.post_signed("pull_request", &delivery_id(4), payload("pull_request_closed.json")?).await?;
    ensure!(status == 202 && json["result"] == "ignored" && h.drain().is_empty(), "{json}");
    h.stop().await
}
