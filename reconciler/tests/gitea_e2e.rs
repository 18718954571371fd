//! End to end with Gitea: `hadron serve --forge gitea` as a subprocess, real
//! bare repos driven by the `git` CLI as the people, and the Gitea double
//! (which checks every API call against Gitea's swagger) standing in for the
//! Gitea server. Webhooks are the real fixture payloads, adapted to these
//! repos and signed as Gitea signs them.
//!
//! The control repo is not watched and polled only hourly, so everything
//! after the first pass happens because of a webhook or a worker exit.

#[allow(dead_code)] // each test crate uses a part of the helpers
#[path = "support/git.rs"]
mod git;
#[allow(dead_code)] // each test crate uses a part of the double
#[path = "support/gitea_double.rs"]
mod gitea_double;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use git::{HUMAN, git, git_with};
use gitea_double::{GiteaDouble, NewReview, gitea_fixtures};
use hadron::model::kinds::{Phase, RequestStatus};
use serde_json::{Value, json};

const TOKEN: &str = "e2e-token-not-a-secret";
const SECRET: &str = "e2e-webhook-secret";

/// A person's clone of a repo, committing as them.
struct Person {
    dir: PathBuf,
    name: String,
    email: String,
}

impl Person {
    fn clone_as(url: &Path, dir: PathBuf, name: &str, email: &str) -> Result<Person> {
        let (url, into) = (url.to_str().context("utf-8 url")?, dir.to_str().context("utf-8 dir")?);
        git(dir.parent().context("parent")?, (name, email), &["clone", "--quiet", url, into])?;
        Ok(Person { dir, name: name.to_owned(), email: email.to_owned() })
    }

    /// `git args…` in the clone, as this person.
    fn run(&self, args: &[&str]) -> Result<String> {
        git(&self.dir, (&self.name, &self.email), args)
    }

    fn commit_file(&self, path: &str, text: &str, message: &str) -> Result<String> {
        if !self.run(&["ls-remote", "--heads", "origin", "main"])?.is_empty() {
            self.run(&["pull", "--quiet", "--rebase", "origin", "main"])?;
        }
        let full = self.dir.join(path);
        std::fs::create_dir_all(full.parent().context("parent")?)?;
        std::fs::write(&full, text)?;
        self.run(&["add", path])?;
        self.run(&["commit", "--quiet", "-m", message])?;
        self.push()
    }

    /// Pushes to main; when Hadron pushed a status commit meanwhile, pulls
    /// (rebasing, or re-merging for a merge) and pushes again, as a person would.
    fn push(&self) -> Result<String> {
        for _ in 0..10 {
            if self.run(&["push", "--quiet", "origin", "HEAD:main"]).is_ok() {
                return self.run(&["rev-parse", "HEAD"]);
            }
            self.run(&["pull", "--quiet", "--rebase=merges", "origin", "main"])?;
        }
        bail!("push kept being rejected")
    }

    /// Merges a branch into the tip of main with a merge commit, here only
    /// (nothing is pushed); the merge commit.
    fn merge_locally(&self, branch: &str) -> Result<String> {
        self.run(&["fetch", "--quiet", "origin"])?;
        self.run(&["reset", "--quiet", "--hard", "origin/main"])?;
        self.run(&["merge", "--quiet", "--no-ff", "-m", &format!("Merge {branch}"), &format!("origin/{branch}")])?;
        self.run(&["rev-parse", "HEAD"])
    }

    /// Pushes HEAD to main as it is (no rebase); whether main took it.
    fn push_as_is(&self) -> bool {
        self.run(&["push", "--quiet", "origin", "HEAD:main"]).is_ok()
    }

    /// Merges a branch with a merge commit, as Gitea's merge button does.
    fn merge(&self, branch: &str) -> Result<String> {
        self.run(&["fetch", "--quiet", "origin"])?;
        self.run(&["reset", "--quiet", "--hard", "origin/main"])?;
        self.run(&["merge", "--quiet", "--no-ff", "-m", &format!("Merge {branch}"), &format!("origin/{branch}")])?;
        self.push()
    }
}

fn bare(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)?;
    git(path, HUMAN, &["init", "--quiet", "--bare", "--initial-branch=main"])?;
    Ok(())
}

struct Hadron {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Hadron {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hadron {
    fn start(control: &Path, data: &Path, gitea: &str) -> Result<Hadron> {
        Self::start_sharing(control, data, gitea, None)
    }

    /// [`Hadron::start`], with `shared` (a folder that exists) visible to
    /// every agent's sandbox.
    fn start_sharing(control: &Path, data: &Path, gitea: &str, shared: Option<&Path>) -> Result<Hadron> {
        let mut command = Self::command(control, data, gitea, TOKEN);
        command.args(["--poll-seconds", "3600"]);
        if let Some(dir) = shared {
            command.env(hadron::workers::sandbox::SHARED_ENV, dir);
        }
        Self::spawn(command)
    }

    /// `hadron serve` on `control` with the Gitea double at `gitea`,
    /// calling it with `token`; pushes are heard of by webhooks only.
    fn command(control: &Path, data: &Path, gitea: &str, token: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hadron"));
        command
            .args(["serve", "--repo"])
            .arg(control)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--no-watch", "--backoff-ms", "200"])
            .args(["--forge", "gitea", "--gitea-url", gitea, "--gitea-repo", "acme/control"])
            .env("GITEA_TOKEN", token)
            .env("HADRON_WEBHOOK_SECRET", SECRET)
            .env("RUST_LOG", "hadron=info");
        command
    }

    /// Starts `command`, keeps its output and log, and waits for its address.
    fn spawn(mut command: Command) -> Result<Hadron> {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().context("stderr")?;
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().expect("log lock").push_str(&format!("{line}\n"));
                }
            });
        }
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(rest) = line.strip_prefix("serving http://") {
                        let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                        let _ = tx.send(addr);
                    }
                    log.lock().expect("log lock").push_str(&format!("{line}\n"));
                }
            });
        }
        let addr = rx.recv_timeout(Duration::from_secs(60)).context("hadron serve printed no address")?;
        Ok(Hadron { child, base: format!("http://{addr}"), log })
    }

    fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// One replica of several on the PostgreSQL `database_url` (2 s lease,
    /// one runs dir), calling Gitea with `token`, with `fault` armed (see
    /// `reconciler/src/fault.rs`).
    fn replica(
        control: &Path,
        data: &Path,
        gitea: &str,
        database_url: &str,
        runs: &Path,
        token: &str,
        fault: Option<&str>,
    ) -> Result<Hadron> {
        let mut command = Self::command(control, data, gitea, token);
        command.args(["--poll-seconds", "1", "--database-url", database_url, "--lease-seconds", "2", "--runs-dir"]).arg(runs);
        if let Some(point) = fault {
            command.env(hadron::fault::ENV, point);
        }
        Self::spawn(command)
    }

    async fn wait_line(&self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            ensure!(Instant::now() < deadline, "no line with {needle:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A PostgreSQL database of one test on the local server, dropped at the end.
struct Postgres(String);

impl Postgres {
    fn psql(sql: &str) -> Result<()> {
        let out = Command::new("psql").args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql]).output()?;
        ensure!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    fn create(test: &str) -> Result<Postgres> {
        let name = format!("hadron_e2e_{test}_{}", std::process::id());
        Self::psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        Self::psql(&format!("CREATE DATABASE {name}"))?;
        Ok(Postgres(name))
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Self::psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

/// Sends a fixture webhook, signed with the secret; returns the HTTP status.
async fn send_hook(http: &reqwest::Client, hadron: &Hadron, event: &str, payload: &Value) -> Result<u16> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DELIVERY: AtomicU64 = AtomicU64::new(1);
    let body = serde_json::to_vec(payload)?;
    let signature = hadron::server::webhook::sign(SECRET.as_bytes(), &body);
    let delivery = format!("e2e-{}-{}", std::process::id(), DELIVERY.fetch_add(1, Ordering::Relaxed));
    let resp = http
        .post(format!("{}/hooks/gitea", hadron.base))
        .header("Content-Type", "application/json")
        .header("X-Gitea-Event", event)
        .header("X-Gitea-Delivery", delivery)
        .header("X-Gitea-Signature", signature)
        .body(body)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// `/metrics`, parsed as Prometheus text (parsing fails on malformed output).
async fn scrape(http: &reqwest::Client, hadron: &Hadron) -> Result<prometheus_parse::Scrape> {
    let text = http.get(format!("{}/metrics", hadron.base)).send().await?.text().await?;
    Ok(prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?)
}

/// The sum of the samples of `name` (with `label`, when given).
fn metric(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn fixture(name: &str) -> Result<Value> {
    let path = gitea_fixtures().join("webhooks").join(name);
    Ok(serde_json::from_slice(&std::fs::read(&path)?)?)
}

fn push_payload(repo: &str, after: &str) -> Result<Value> {
    let mut v = fixture("push.json")?;
    v["ref"] = json!("refs/heads/main");
    v["after"] = json!(after);
    v["repository"]["full_name"] = json!(repo);
    v["repository"]["name"] = json!(repo.split('/').nth(1));
    Ok(v)
}

fn merged_payload(number: u64, branch: &str, by: &str, merge_commit: &str) -> Result<Value> {
    let mut v = fixture("pull_request_merged.json")?;
    v["number"] = json!(number);
    v["repository"]["full_name"] = json!("acme/control");
    let pr = &mut v["pull_request"];
    pr["number"] = json!(number);
    pr["merged"] = json!(true);
    pr["merge_commit_sha"] = json!(merge_commit);
    pr["base"]["ref"] = json!("main");
    pr["head"]["ref"] = json!(branch);
    pr["head"]["repo"]["full_name"] = json!("acme/control");
    pr["merged_by"]["login"] = json!(by);
    v["sender"]["login"] = json!(by);
    Ok(v)
}

fn status_of(control: &Path, name: &str) -> Option<RequestStatus> {
    let text = git(control, HUMAN, &["show", &format!("main:status/{name}.yaml")]).ok()?;
    serde_saphyr::from_str(&text).ok()
}

async fn wait_for(hadron: &Hadron, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out waiting for {what}; hadron's output:\n{}", hadron.log())
}

fn phase(control: &Path, name: &str) -> Option<Phase> {
    status_of(control, name).map(|s| s.status.phase)
}

fn request(name: &str, gate: &str) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: {name} for the e2e test\n  repos:\n    - url: ../app.git\n  stages:\n    - name: implement\n    - name: polish\n{gate}"
    )
}

/// `acme/control` and `acme/app` as bare repos behind a Gitea double; Carol
/// (a Gitea user) committed the settings (the script agent, then `extra`
/// settings lines) and the agent.
struct Acme {
    control: PathBuf,
    app: PathBuf,
    carol: Person,
    double: GiteaDouble,
}

async fn acme(root: &Path, extra_settings: &str) -> Result<Acme> {
    let git_root = root.join("git/acme");
    let (control, app) = (git_root.join("control.git"), git_root.join("app.git"));
    bare(&control)?;
    bare(&app)?;
    Person::clone_as(&app, root.join("dev-app"), "dev", "dev@example.com")?.commit_file("README.md", "# app\n", "start")?;
    let carol = Person::clone_as(&control, root.join("carol"), "Carol Requester", "carol@example.com")?;
    let settings = format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: script\n    maxAttempts: 2\n{extra_settings}"
    );
    carol.commit_file("hadron.yaml", &settings, "settings")?;
    let agent = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../example-repo/agents/script.yaml"))?;
    carol.commit_file("agents/script.yaml", &agent, "agent")?;
    let double = GiteaDouble::start(TOKEN, "hadron-bot").await;
    for (repo, dir) in [("acme/control", &control), ("acme/app", &app)] {
        double.add_repo(repo, "main");
        double.link_git_dir(repo, dir);
    }
    double.add_user("carol", "carol@example.com");
    Ok(Acme { control, app, carol, double })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_flow_webhooks_approval_prs_ci_gates_and_target_prs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // Carol asks for work; Alice (listed) and Dave (team acme/maintainers) may approve.
    let Acme { control, app, carol, double } =
        acme(tmp.path(), "  approvers:\n    users: [alice]\n    teams: [acme/maintainers]\n").await?;
    double.add_team("acme", "maintainers", &["dave"]);
    // The first target PR Hadron opens is refused once: that request is
    // Stalled until a later pass succeeds.
    double.fail_next("POST", "/api/v1/repos/acme/app/pulls", &[403], None);

    let hadron = Hadron::start(&control, &tmp.path().join("data"), &double.base_url())?;
    let http = reqwest::Client::new();
    wait_for(&hadron, "readiness", Duration::from_secs(60), || {
        std::net::TcpStream::connect(hadron.base.trim_start_matches("http://")).is_ok()
    })
    .await?;

    // 1. A push webhook starts a new request without waiting for the poll.
    let plain = carol.commit_file("requests/plain.yaml", &request("plain", ""), "ask for plain")?;
    let sent = Instant::now();
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &plain)?).await? == 202);
    let mut seen = false;
    let started = loop {
        let resp = http.get(format!("{}/api/v1/requests/plain", hadron.base)).send().await?;
        if resp.status().is_success() {
            seen = true;
            break sent.elapsed();
        }
        if sent.elapsed() > Duration::from_secs(60) {
            break sent.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    ensure!(seen, "the request never appeared; hadron's output:\n{}", hadron.log());
    println!("webhook → request known to Hadron: {:.1} ms (poll interval 3600 s, no file watch)", started.as_secs_f64() * 1000.0);

    // 2. Approval gate, CI gates.
    let gated = request("gated", "  gates:\n    - name: review\n      type: approval\n      after: implement\n");
    let ci = |name: &str| request(name, "  gates:\n    - name: checks\n      type: ci\n      after: implement\n      contexts: [build]\n");
    carol.commit_file("requests/gated.yaml", &gated, "ask for gated")?;
    carol.commit_file("requests/ci-pass.yaml", &ci("ci-pass"), "ask for ci-pass")?;
    let head = carol.commit_file("requests/ci-fail.yaml", &ci("ci-fail"), "ask for ci-fail")?;
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &head)?).await? == 202);

    wait_for(&hadron, "plain to succeed", Duration::from_secs(120), || phase(&control, "plain") == Some(Phase::Succeeded)).await?;
    wait_for(&hadron, "gated to wait for approval", Duration::from_secs(120), || {
        phase(&control, "gated") == Some(Phase::WaitingForApproval)
    })
    .await?;
    for name in ["ci-pass", "ci-fail"] {
        wait_for(&hadron, "a CI gate to wait", Duration::from_secs(120), || phase(&control, name) == Some(Phase::WaitingForCI)).await?;
    }

    // The approval PR is opened once, and stays one PR after more passes.
    let branch = "hadron/approve/gated/review";
    let approval_prs = || double.pulls("acme/control").into_iter().filter(|p| p.head == branch).collect::<Vec<_>>();
    wait_for(&hadron, "the approval PR", Duration::from_secs(30), || approval_prs().len() == 1).await?;
    // Another pass runs (counted in /metrics) and opens nothing new.
    let before = metric(&scrape(&http, &hadron).await?, "hadron_reconcile_passes_total", Some(("result", "ok")));
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &head)?).await? == 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&scrape(&http, &hadron).await?, "hadron_reconcile_passes_total", Some(("result", "ok"))) <= before {
        ensure!(Instant::now() < deadline, "no pass after the webhook:\n{}", hadron.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prs = approval_prs();
    ensure!(prs.len() == 1 && prs[0].state == "open", "one open approval PR: {prs:?}");
    ensure!(prs[0].body.contains("What merging means"), "the body comes from the template: {}", prs[0].body);

    // 3. CI: the double reports statuses; a webhook from the target repo makes Hadron re-read them.
    let pushed = |name: &str| git(&app, HUMAN, &["rev-parse", &format!("refs/heads/hadron/{name}")]);
    double.add_status("acme/app", &pushed("ci-pass")?, "build", "success");
    double.add_status("acme/app", &pushed("ci-fail")?, "build", "failure");
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/app", &pushed("ci-pass")?)?).await? == 202);
    let ci_latency =
        wait_for(&hadron, "ci-pass to succeed", Duration::from_secs(120), || phase(&control, "ci-pass") == Some(Phase::Succeeded)).await?;
    println!("target-repo webhook → CI gate passed and the request finished: {:.0} ms", ci_latency.as_secs_f64() * 1000.0);
    wait_for(&hadron, "ci-fail to fail", Duration::from_secs(60), || phase(&control, "ci-fail") == Some(Phase::Failed)).await?;
    let failed = status_of(&control, "ci-fail").context("status")?;
    ensure!(failed.status.conditions.iter().any(|c| c.reason == "CIFailed"), "{failed:?}");

    // 3b. Someone pushes the approval file straight to main as committer
    //     "alice" (listed), without merging the PR: it does not count, and
    //     the status says which PR to merge.
    let pusher = Person::clone_as(&control, tmp.path().join("direct-push"), "Mallory", "mallory@example.com")?;
    let file = "approvals/gated/review.yaml";
    pusher.run(&["checkout", &format!("origin/{branch}"), "--", file])?;
    let alice = [("GIT_COMMITTER_NAME", "alice"), ("GIT_COMMITTER_EMAIL", "alice@example.com")];
    git_with(&pusher.dir, (&pusher.name, &pusher.email), &alice, &["commit", "--quiet", "-m", "Approve gated"])?;
    let direct = pusher.push()?;
    ensure!(git(&control, HUMAN, &["log", "-1", "--format=%cn", &direct])? == "alice");
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &direct)?).await? == 202);
    wait_for(&hadron, "the direct push to be refused", Duration::from_secs(60), || {
        status_of(&control, "gated").is_some_and(|s| s.status.message.contains("without a merged approval PR"))
    })
    .await?;
    let status = status_of(&control, "gated").context("status")?.status;
    ensure!(status.phase == Phase::WaitingForApproval, "{status:?}");
    ensure!(status.message.contains(&format!("merge PR #{} on Gitea", prs[0].number)), "{}", status.message);
    ensure!(!git(&app, HUMAN, &["log", "--format=%B", "refs/heads/hadron/gated"])?.contains("Stage: polish"), "polish must not run");
    ensure!(approval_prs().len() == 1, "the same PR stays open: {:?}", approval_prs());

    // 4. The requester merges the approval PR: it does not count, the
    //    request keeps waiting and the branch is opened again as a new PR.
    let merge_as = |who: &str, login: &str, number: u64| -> Result<String> {
        let person = Person::clone_as(&control, tmp.path().join(format!("merge-{login}-{number}")), who, &format!("{login}@example.com"))?;
        let commit = person.merge(branch)?;
        double.merge_pr("acme/control", number, login, &commit);
        Ok(commit)
    };
    let first = prs[0].number;
    let commit = merge_as("Carol Requester", "carol", first)?;
    ensure!(send_hook(&http, &hadron, "pull_request", &merged_payload(first, branch, "carol", &commit)?).await? == 202);
    wait_for(&hadron, "the requester's merge to be rejected", Duration::from_secs(60), || {
        status_of(&control, "gated").is_some_and(|s| s.status.phase == Phase::WaitingForApproval && s.status.message.contains("carol"))
    })
    .await?;
    let message = status_of(&control, "gated").context("status")?.status.message;
    ensure!(message.contains("requester"), "{message}");
    wait_for(&hadron, "a second approval PR", Duration::from_secs(30), || {
        approval_prs().iter().filter(|p| p.state == "open").count() == 1 && approval_prs().len() == 2
    })
    .await?;

    // 5. An outsider merges it: also rejected.
    let second = approval_prs().into_iter().find(|p| p.state == "open").context("open PR")?.number;
    let commit = merge_as("Mallory", "mallory", second)?;
    ensure!(send_hook(&http, &hadron, "pull_request", &merged_payload(second, branch, "mallory", &commit)?).await? == 202);
    wait_for(&hadron, "the outsider's merge to be rejected", Duration::from_secs(60), || {
        status_of(&control, "gated").is_some_and(|s| s.status.message.contains("mallory"))
    })
    .await?;
    ensure!(phase(&control, "gated") == Some(Phase::WaitingForApproval));
    ensure!(!git(&app, HUMAN, &["log", "--format=%B", "refs/heads/hadron/gated"])?.contains("Stage: polish"), "polish must not run yet");

    // 6. Dave, in team acme/maintainers, merges the third: the request finishes.
    wait_for(&hadron, "a third approval PR", Duration::from_secs(30), || approval_prs().len() == 3).await?;
    let third = approval_prs().into_iter().find(|p| p.state == "open").context("open PR")?.number;
    let commit = merge_as("Dave Maintainer", "dave", third)?;
    ensure!(send_hook(&http, &hadron, "pull_request", &merged_payload(third, branch, "dave", &commit)?).await? == 202);
    wait_for(&hadron, "gated to succeed", Duration::from_secs(120), || phase(&control, "gated") == Some(Phase::Succeeded)).await?;

    // 7. Target PRs: one per succeeded request, URL in status.outputs; the
    //    403 stalled one request once, and a later pass opened its PR.
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &commit)?).await? == 202);
    for name in ["plain", "gated", "ci-pass"] {
        wait_for(&hadron, "a target PR URL in the status", Duration::from_secs(60), || {
            status_of(&control, name).is_some_and(|s| s.status.outputs.iter().any(|o| o.pull_request.is_some()))
        })
        .await?;
        let status = status_of(&control, name).context("status")?;
        let url = status.status.outputs[0].pull_request.clone().context("url")?;
        let prs: Vec<_> = double.pulls("acme/app").into_iter().filter(|p| p.head == format!("hadron/{name}")).collect();
        ensure!(prs.len() == 1, "{name}: one target PR: {prs:?}");
        ensure!(url.ends_with(&format!("/acme/app/pulls/{}", prs[0].number)), "{url}");
        ensure!(prs[0].base == "main");
        ensure!(
            !status.status.conditions.iter().any(|c| c.condition_type == "Stalled" && c.status == "True"),
            "{name} is no longer stalled: {:?}",
            status.status.conditions
        );
    }
    ensure!(double.pulls("acme/app").iter().all(|p| p.head != "hadron/ci-fail"), "no PR for a failed request");
    let history = git(&control, HUMAN, &["log", "-p", "main", "--", "status/"])?;
    ensure!(history.contains("reason: GiteaForbidden"), "the 403 showed as a Stalled condition in some status commit");
    // ... and as a line in the terminal, though the phase did not change.
    let log = hadron.log();
    ensure!(
        log.lines().any(|l| l.contains(" plain ") && l.contains("Stalled: ") && l.contains("(403)")),
        "the stall is shown where a person watches:\n{log}"
    );

    // 8. Commit statuses on the requests' commits in the control repo.
    let finals = double.statuses("acme/control", &plain);
    let last = finals.iter().filter(|s| s.context == "hadron/plain").max_by_key(|s| s.id).context("a status for plain")?;
    ensure!(last.state == "success", "{finals:?}");
    ensure!(last.target_url.ends_with("/acme/control/src/branch/main/status/plain.yaml"), "{}", last.target_url);
    ensure!(finals.iter().any(|s| s.context == "hadron/plain" && s.state == "pending"), "pending while it ran: {finals:?}");

    // Every call matched the swagger and carried the token.
    double.assert_all_requests_matched_swagger();
    ensure!(double.requests().iter().all(|r| r.authorized), "every call carried the token");
    // The loop's figures reach /metrics, which parses as Prometheus text.
    let scrape = scrape(&http, &hadron).await?;
    let text = format!("{:?}", scrape.samples);
    let value = |name: &str, label: Option<(&str, &str)>| metric(&scrape, name, label);
    ensure!(value("hadron_ready", None) == 1.0, "{text}");
    ensure!(value("hadron_requests", Some(("phase", "Succeeded"))) == 3.0, "{text}");
    ensure!(value("hadron_requests", Some(("phase", "Failed"))) == 1.0, "{text}");
    ensure!(value("hadron_triggers_total", Some(("kind", "ControlPush"))) >= 3.0, "{text}");
    ensure!(value("hadron_triggers_total", Some(("kind", "ApprovalMerged"))) == 3.0, "{text}");
    ensure!(value("hadron_triggers_total", Some(("kind", "TargetActivity"))) == 1.0, "{text}");
    ensure!(value("hadron_status_commits_total", None) >= 4.0, "{text}");
    ensure!(value("hadron_reconcile_passes_total", Some(("result", "ok"))) >= 5.0, "{text}");
    Ok(())
}

/// What Gitea's API shows of an approval PR while a signed delivery claims
/// "merged by alice" with the commit that reached main.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Truth {
    /// The PR is open.
    Open,
    /// Mallory merged it (with that commit).
    MergedByMallory,
    /// Alice merged it, but Gitea's merge commit is another one.
    OtherCommit,
}

/// Someone with the webhook secret merges an approval branch herself, pushes
/// the merge to main and sends a correctly signed `pull_request` delivery
/// saying alice (an approver) merged the PR with that commit; Gitea's API
/// says otherwise (the PR open, merged by mallory, or merged with another
/// commit). Whichever arrives first, the delivery or the push, no gate
/// passes: the API decides. Then hadron.yaml lists mallory, and the gates
/// Gitea shows merged by her pass at the next pass, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_claiming_a_merge_the_api_does_not_show_passes_no_gate() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Acme { control, app, carol, double } = acme(tmp.path(), "  approvers:\n    users: [alice]\n").await?;
    let hadron = Hadron::start(&control, &tmp.path().join("data"), &double.base_url())?;
    let http = reqwest::Client::new();
    wait_for(&hadron, "readiness", Duration::from_secs(60), || {
        std::net::TcpStream::connect(hadron.base.trim_start_matches("http://")).is_ok()
    })
    .await?;
    let gate = "  gates:\n    - name: review\n      type: approval\n      after: implement\n";
    let cases = [
        ("open-hook-first", Truth::Open, true),
        ("open-push-first", Truth::Open, false),
        ("mallory-hook-first", Truth::MergedByMallory, true),
        ("mallory-push-first", Truth::MergedByMallory, false),
        ("commit-hook-first", Truth::OtherCommit, true),
        ("commit-push-first", Truth::OtherCommit, false),
    ];
    let mut head = String::new();
    for (name, _, _) in &cases {
        head = carol.commit_file(&format!("requests/{name}.yaml"), &request(name, gate), &format!("ask for {name}"))?;
    }
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &head)?).await? == 202);
    let pr_of =
        |name: &str| double.pulls("acme/control").into_iter().find(|p| p.head == format!("hadron/approve/{name}/review")).map(|p| p.number);
    for (name, _, _) in &cases {
        wait_for(&hadron, "the gate and its approval PR", Duration::from_secs(180), || {
            phase(&control, name) == Some(Phase::WaitingForApproval) && pr_of(name).is_some()
        })
        .await?;
    }

    let mallory = Person::clone_as(&control, tmp.path().join("mallory"), "Mallory", "mallory@example.com")?;
    let another = "c0ffee0000000000000000000000000000c0ffee";
    for (name, truth, hook_first) in &cases {
        let branch = format!("hadron/approve/{name}/review");
        let number = pr_of(name).context("approval PR")?;
        let mut landed = None;
        for _ in 0..10 {
            let commit = mallory.merge_locally(&branch)?;
            match truth {
                Truth::Open => {}
                Truth::MergedByMallory => double.merge_pr("acme/control", number, "mallory", &commit),
                Truth::OtherCommit => double.merge_pr("acme/control", number, "alice", another),
            }
            let claim = merged_payload(number, &branch, "alice", &commit)?;
            if *hook_first {
                ensure!(send_hook(&http, &hadron, "pull_request", &claim).await? == 202);
            }
            // A status commit of Hadron's may have moved main meanwhile: merge again.
            if !mallory.push_as_is() {
                continue;
            }
            if !*hook_first {
                ensure!(send_hook(&http, &hadron, "pull_request", &claim).await? == 202);
            }
            landed = Some(commit);
            break;
        }
        let landed = landed.context("mallory's merge never reached main")?;
        ensure!(git(&control, HUMAN, &["merge-base", "--is-ancestor", &landed, "main"]).is_ok(), "{name}: {landed} is on main");
    }
    ensure!(
        send_hook(&http, &hadron, "push", &push_payload("acme/control", &git(&control, HUMAN, &["rev-parse", "main"])?)?).await? == 202
    );

    let refusal = |truth: Truth| match truth {
        Truth::Open => "without a merged approval PR",
        Truth::MergedByMallory => "mallory is not an allowed approver",
        Truth::OtherCommit => "not in the merge of the approval PR",
    };
    for (name, truth, _) in &cases {
        wait_for(&hadron, "the claimed merge to be refused", Duration::from_secs(60), || {
            status_of(&control, name).is_some_and(|s| s.status.message.contains(refusal(*truth)))
        })
        .await?;
    }
    let polished = |name: &str| -> Result<bool> {
        Ok(git(&app, HUMAN, &["log", "--format=%B", &format!("refs/heads/hadron/{name}")])?.contains("Stage: polish"))
    };
    for (name, _, _) in &cases {
        let status = status_of(&control, name).context("status")?.status;
        ensure!(status.phase == Phase::WaitingForApproval, "{name}: {status:?}");
        ensure!(!status.message.contains("alice"), "{name}: the delivery's word is not repeated as fact: {}", status.message);
        ensure!(!polished(name)?, "{name}: polish must not run");
    }

    // hadron.yaml lists mallory now: the merges Gitea shows as hers count
    // at the next pass; the others still do not.
    let settings = "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: script\n    maxAttempts: 2\n  approvers:\n    users: [alice, mallory]\n";
    let head = carol.commit_file("hadron.yaml", settings, "mallory approves too")?;
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &head)?).await? == 202);
    for (name, truth, _) in &cases {
        if *truth == Truth::MergedByMallory {
            wait_for(&hadron, "mallory's approval to count", Duration::from_secs(120), || phase(&control, name) == Some(Phase::Succeeded))
                .await?;
            ensure!(polished(name)?, "{name}: polish ran after the approval");
        }
    }
    for (name, truth, _) in &cases {
        if *truth != Truth::MergedByMallory {
            let status = status_of(&control, name).context("status")?.status;
            ensure!(status.phase == Phase::WaitingForApproval && status.message.contains(refusal(*truth)), "{name}: {status:?}");
            ensure!(!polished(name)?, "{name}: polish must not run");
        }
    }
    double.assert_all_requests_matched_swagger();
    Ok(())
}

/// An approver removed from hadron.yaml after their approval counted: the
/// gate stays passed (the request goes on with its next stage), while the
/// policy of each pass still decides gates not passed yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_that_counted_stays_when_its_approver_is_removed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Acme { control, carol, double, .. } = acme(tmp.path(), "  approvers:\n    users: [dave]\n").await?;
    // An agent whose polish waits for the test's word, so the request is
    // between its gate and its end while the policy changes.
    let witness = tmp.path().join("witness");
    std::fs::create_dir_all(&witness)?;
    let go = witness.join("go");
    let agent = format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: waits\nspec:\n  command:\n    - sh\n    - -c\n    - 'if [ \"$1\" = polish ]; then while [ ! -e \"$2\" ]; do sleep 0.05; done; fi; echo \"$1\" >> CHANGES.md'\n    - waits\n    - \"{{{{stage}}}}\"\n    - {}\n",
        go.display()
    );
    carol.commit_file("agents/waits.yaml", &agent, "agent")?;
    let held = request("held", "  agent: waits\n  gates:\n    - name: review\n      type: approval\n      after: implement\n");
    carol.commit_file("requests/held.yaml", &held, "ask for held")?;
    let hadron = Hadron::start_sharing(&control, &tmp.path().join("data"), &double.base_url(), Some(&witness))?;
    let http = reqwest::Client::new();
    let api = |hadron: &Hadron| {
        let url = format!("{}/api/v1/requests/held", hadron.base);
        let http = http.clone();
        async move { anyhow::Ok(http.get(url).send().await?.json::<Value>().await?) }
    };
    let branch = "hadron/approve/held/review";
    let pr = || double.pulls("acme/control").into_iter().find(|p| p.head == branch).map(|p| p.number);
    wait_for(&hadron, "the gate and its PR", Duration::from_secs(120), || {
        phase(&control, "held") == Some(Phase::WaitingForApproval) && pr().is_some()
    })
    .await?;

    // Dave, an approver, merges the approval PR on Gitea: polish starts.
    let number = pr().context("approval PR")?;
    let dave = Person::clone_as(&control, tmp.path().join("dave"), "Dave", "dave@example.com")?;
    let commit = dave.merge(branch)?;
    double.merge_pr("acme/control", number, "dave", &commit);
    ensure!(send_hook(&http, &hadron, "pull_request", &merged_payload(number, branch, "dave", &commit)?).await? == 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(api(&hadron).await?["phase"] == "Running" && api(&hadron).await?["stage"] == "polish") {
        ensure!(Instant::now() < deadline, "polish never started: {}\n{}", api(&hadron).await?, hadron.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // hadron.yaml no longer lists dave; two passes run after that push.
    let settings = "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: script\n    maxAttempts: 2\n  approvers:\n    users: [alice]\n";
    let head = carol.commit_file("hadron.yaml", settings, "dave no longer approves")?;
    for _ in 0..2 {
        let before = metric(&scrape(&http, &hadron).await?, "hadron_reconcile_passes_total", Some(("result", "ok")));
        ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &head)?).await? == 202);
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&scrape(&http, &hadron).await?, "hadron_reconcile_passes_total", Some(("result", "ok"))) <= before {
            ensure!(Instant::now() < deadline, "no pass after the push:\n{}", hadron.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let now = api(&hadron).await?;
    ensure!(now["phase"] == "Running" && now["stage"] == "polish", "the passed gate is not re-opened: {now}");
    ensure!(double.pulls("acme/control").iter().filter(|p| p.head == branch).count() == 1, "no new approval PR is opened");

    std::fs::write(&go, "go\n")?;
    wait_for(&hadron, "held to succeed", Duration::from_secs(60), || phase(&control, "held") == Some(Phase::Succeeded)).await?;
    double.assert_all_requests_matched_swagger();
    Ok(())
}

/// Asking for changes with a Gitea review: only a `REQUEST_CHANGES` review
/// by an allowed approver, on the approval PR's current head, neither stale
/// nor dismissed nor by the requester, re-runs the stage before the gate,
/// its text and both line comments in the agent's prompt; then the gate
/// asks again on the same PR and a merge approves the new revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_asking_for_changes_re_runs_the_stage_with_its_comments() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Acme { control, app, carol, double } = acme(tmp.path(), "  approvers:\n    users: [dave]\n").await?;
    let gated = request("revised", "  gates:\n    - name: review\n      type: approval\n      after: implement\n");
    carol.commit_file("requests/revised.yaml", &gated, "ask for revised")?;
    let hadron = Hadron::start(&control, &tmp.path().join("data"), &double.base_url())?;
    let http = reqwest::Client::new();
    let branch = "hadron/approve/revised/review";
    let pr = || double.pulls("acme/control").into_iter().find(|p| p.head == branch);
    wait_for(&hadron, "the gate and its PR", Duration::from_secs(120), || {
        phase(&control, "revised") == Some(Phase::WaitingForApproval) && pr().is_some()
    })
    .await?;
    let number = pr().context("approval PR")?.number;
    let notes = || git(&app, HUMAN, &["show", "hadron/revised:hadron-notes/revised.md"]).unwrap_or_default();
    let implements = || notes().matches("## implement").count();
    let review_hook = |pr_head: &str| -> Result<Value> {
        let mut v = fixture("pull_request_review_rejected.json")?;
        v["repository"]["full_name"] = json!("acme/control");
        v["pull_request"]["number"] = json!(number);
        v["pull_request"]["base"]["ref"] = json!("main");
        v["pull_request"]["head"]["ref"] = json!(branch);
        v["pull_request"]["head"]["sha"] = json!(pr_head);
        Ok(v)
    };
    let passes = |scrape: &prometheus_parse::Scrape| metric(scrape, "hadron_reconcile_passes_total", Some(("result", "ok")));

    // Reviews that must not count: by someone not allowed, by the requester,
    // on an older head, and one a maintainer dismissed.
    double.add_user("erin", "erin@example.com");
    let head = git(&control, HUMAN, &["rev-parse", &format!("refs/heads/{branch}")])?;
    let changes = |user, body| NewReview { user, state: "REQUEST_CHANGES", body, ..NewReview::default() };
    double.add_review("acme/control", number, changes("erin", "Erin is no approver."));
    double.add_review("acme/control", number, changes("carol", "Carol asked for this work."));
    let older = "0".repeat(40);
    double.add_review("acme/control", number, NewReview { commit: Some(&older), ..changes("dave", "On an older head.") });
    let dismissed = double.add_review("acme/control", number, changes("dave", "Dismissed."));
    double.dismiss_review(dismissed);
    for _ in 0..2 {
        let before = passes(&scrape(&http, &hadron).await?);
        ensure!(send_hook(&http, &hadron, "pull_request_rejected", &review_hook(&head)?).await? == 202);
        let deadline = Instant::now() + Duration::from_secs(30);
        while passes(&scrape(&http, &hadron).await?) <= before {
            ensure!(Instant::now() < deadline, "no pass after the review:\n{}", hadron.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let waiting = status_of(&control, "revised").context("status")?.status;
    ensure!(waiting.phase == Phase::WaitingForApproval && waiting.revision.is_none(), "{waiting:?}");
    // Those passes did read the reviews (each of those four).
    ensure!(double.count("GET", &format!("/api/v1/repos/acme/control/pulls/{number}/reviews")) >= 2, "the reviews were read");
    ensure!(implements() == 1, "no review that does not count re-ran implement:\n{}", notes());

    // Dave, an approver, asks for changes on the current head, with two line comments.
    let lines = &[("approvals/revised/review.yaml", 3, "Name the health check endpoint."), ("README.md", 12, "Document the exit code.")];
    double.add_review("acme/control", number, NewReview { comments: lines, ..changes("dave", "Close, but not yet.") });
    ensure!(send_hook(&http, &hadron, "pull_request_rejected", &review_hook(&head)?).await? == 202);
    wait_for(&hadron, "the revision to run and the gate to ask again", Duration::from_secs(120), || {
        status_of(&control, "revised")
            .is_some_and(|s| s.status.phase == Phase::WaitingForApproval && s.status.revision.as_ref().is_some_and(|r| r.state == "Ready"))
    })
    .await?;
    let note = notes();
    ensure!(implements() == 2, "implement ran again:\n{note}");
    for said in [
        "Close, but not yet.",
        "`approvals/revised/review.yaml` line 3: Name the health check endpoint.",
        "`README.md` line 12: Document the exit code.",
        "asked by dave at gate review",
    ] {
        ensure!(note.contains(said), "the agent's prompt holds {said:?}:\n{note}");
    }
    let revision = status_of(&control, "revised").context("status")?.status.revision.context("revision")?;
    ensure!((revision.number, revision.max, revision.requested_by.as_str()) == (1, 3, "dave"), "{revision:?}");
    // The gate asks again on the same PR, whose head moved: the review is stale now.
    ensure!(double.pulls("acme/control").iter().filter(|p| p.head == branch).count() == 1, "the same approval PR");
    let moved = git(&control, HUMAN, &["rev-parse", &format!("refs/heads/{branch}")])?;
    ensure!(moved != head, "the approval branch was updated for revision 1");
    let file = git(&control, HUMAN, &["show", &format!("{branch}:approvals/revised/review.yaml")])?;
    ensure!(file.contains("revision: 1"), "{file}");
    // Hadron said so on the PR: when the revision started, and when it was ready.
    let said: Vec<String> = double.comments("acme/control", number).into_iter().map(|c| c.body).collect();
    ensure!(said.iter().filter(|c| c.contains("running revision 1 of 3")).count() == 1, "{said:#?}");
    ensure!(
        said.iter().filter(|c| c.contains("Revision 1 of 3 is ready") && c.contains("@dave please look again")).count() == 1,
        "{said:#?}"
    );

    // Dave merges it: revision 1 is approved and polish runs.
    let dave = Person::clone_as(&control, tmp.path().join("dave"), "Dave", "dave@example.com")?;
    let commit = dave.merge(branch)?;
    double.merge_pr("acme/control", number, "dave", &commit);
    ensure!(send_hook(&http, &hadron, "pull_request", &merged_payload(number, branch, "dave", &commit)?).await? == 202);
    wait_for(&hadron, "revised to succeed", Duration::from_secs(120), || phase(&control, "revised") == Some(Phase::Succeeded)).await?;
    ensure!(implements() == 2, "no third implement");
    double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_on_sigterm_and_leaves_workers_running() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let control = tmp.path().join("git/acme/control.git");
    bare(&control)?;
    let app = tmp.path().join("git/acme/app.git");
    bare(&app)?;
    Person::clone_as(&app, tmp.path().join("dev"), "dev", "dev@example.com")?.commit_file("README.md", "x\n", "start")?;
    let carol = Person::clone_as(&control, tmp.path().join("carol"), "Carol", "carol@example.com")?;
    // A slow agent, so a worker is running when Hadron is told to stop.
    let agent = "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: slow\nspec:\n  command: [sh, -c, 'sleep 3; echo done >> slow.txt']\n  requireChange: true\n";
    carol.commit_file("agents/slow.yaml", agent, "agent")?;
    let req = "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: slow\nspec:\n  title: slow\n  agent: slow\n  repos:\n    - url: ../app.git\n  stages:\n    - name: implement\n";
    carol.commit_file("requests/slow.yaml", req, "ask")?;
    let double = GiteaDouble::start(TOKEN, "hadron-bot").await;
    double.add_repo("acme/control", "main");
    double.add_repo("acme/app", "main");
    let mut hadron = Hadron::start(&control, &tmp.path().join("data"), &double.base_url())?;
    let runs = tmp.path().join("data/runs");
    wait_for(&hadron, "a worker to start", Duration::from_secs(60), || std::fs::read_dir(&runs).map(|d| d.count() > 0).unwrap_or(false))
        .await?;
    let pid = hadron.child.id();
    let out = Command::new("kill").args(["-TERM", &pid.to_string()]).output()?;
    ensure!(out.status.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = hadron.child.try_wait()? {
            break status;
        }
        ensure!(start.elapsed() < Duration::from_secs(30), "hadron did not stop on SIGTERM:\n{}", hadron.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(status.success(), "clean exit on SIGTERM: {status:?}\n{}", hadron.log());
    ensure!(hadron.log().contains("stopped; workers still running"), "{}", hadron.log());
    // The worker was left running and finishes on its own: its push arrives.
    wait_for(&hadron, "the orphaned worker to push", Duration::from_secs(60), || {
        git(&app, HUMAN, &["rev-parse", "--verify", "--quiet", "refs/heads/hadron/slow"]).is_ok()
    })
    .await?;
    Ok(())
}

/// The chaos suite's Gitea row (see `tests/tests/chaos.rs`): Gitea answers
/// only 502/503 (every third call after a hang) for a while; the request
/// runs to the end meanwhile, the outage shows as `Stalled` with a Gitea
/// reason, and once Gitea is back the target PR is opened exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitea_outage_stalls_only_the_forge_and_nothing_is_done_twice() -> Result<()> {
    let length = Duration::from_secs(if std::env::var("HADRON_CHAOS").as_deref() == Ok("long") { 30 } else { 10 });
    let tmp = tempfile::tempdir()?;
    let Acme { control, carol, double, .. } = acme(tmp.path(), "").await?;
    let hadron = Hadron::start(&control, &tmp.path().join("data"), &double.base_url())?;
    let http = reqwest::Client::new();
    wait_for(&hadron, "readiness", Duration::from_secs(60), || {
        std::net::TcpStream::connect(hadron.base.trim_start_matches("http://")).is_ok()
    })
    .await?;

    double.outage(length, Duration::from_secs(2));
    let started = Instant::now();
    let head = carol.commit_file("requests/plain.yaml", &request("plain", ""), "ask for plain")?;
    ensure!(send_hook(&http, &hadron, "push", &push_payload("acme/control", &head)?).await? == 202);
    wait_for(&hadron, "plain to succeed while Gitea is down", length + Duration::from_secs(60), || {
        phase(&control, "plain") == Some(Phase::Succeeded)
    })
    .await?;
    let succeeded = started.elapsed();
    let history = git(&control, HUMAN, &["log", "-p", "main", "--", "status/"])?;
    ensure!(
        history.contains("reason: GiteaServerError") || history.contains("reason: GiteaUnreachable"),
        "the outage showed as a Stalled condition:\n{history}"
    );
    // Gitea is back: the target PR is opened once and the stall clears.
    wait_for(&hadron, "the target PR after the outage", length + Duration::from_secs(60), || {
        status_of(&control, "plain").is_some_and(|s| {
            s.status.outputs.iter().any(|o| o.pull_request.is_some())
                && !s.status.conditions.iter().any(|c| c.condition_type == "Stalled" && c.status == "True")
        })
    })
    .await?;
    let prs: Vec<_> = double.pulls("acme/app").into_iter().filter(|p| p.head == "hadron/plain").collect();
    ensure!(prs.len() == 1, "one target PR: {prs:?}");
    let max_pass = metric(&scrape(&http, &hadron).await?, "hadron_pass_duration_seconds_max", None);
    println!(
        "{:<42} {:>8} {:>8} {:>11} {:>11} {:>13.3}  yes (Succeeded after {succeeded:.1?}, {} calls failed)",
        format!("Gitea 502/503 and hangs for {}s", length.as_secs()),
        1,
        1,
        0,
        0,
        max_pass,
        double.outage_answers()
    );
    ensure!(double.outage_answers() > 0, "the outage was never hit");
    double.assert_all_requests_matched_swagger();
    Ok(())
}

/// A `pull_request` webhook (opened, synchronized, …) for PR `number` of
/// `acme/control`, from `head` (at `sha`) into main.
fn pr_payload(fixture_name: &str, number: u64, head: &str, sha: &str) -> Result<Value> {
    let mut v = fixture(fixture_name)?;
    v["number"] = json!(number);
    v["repository"]["full_name"] = json!("acme/control");
    let pr = &mut v["pull_request"];
    pr["number"] = json!(number);
    pr["base"]["ref"] = json!("main");
    pr["head"]["ref"] = json!(head);
    pr["head"]["sha"] = json!(sha);
    pr["head"]["repo"]["full_name"] = json!("acme/control");
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_into_the_control_repo_gets_one_plan_comment_edited_on_every_push() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Acme { control, carol, double, .. } = acme(tmp.path(), "").await?;
    carol.commit_file("requests/plain.yaml", &request("plain", ""), "ask for plain")?;
    let hadron = Hadron::start(&control, &tmp.path().join("data"), &double.base_url())?;
    let http = reqwest::Client::new();
    wait_for(&hadron, "plain to succeed", Duration::from_secs(120), || phase(&control, "plain") == Some(Phase::Succeeded)).await?;

    // Carol proposes a new request and a rewording of plain on a branch, and
    // opens a PR; Gitea keeps its head as refs/pull/1/head.
    carol.run(&["pull", "--quiet", "--rebase", "origin", "main"])?;
    carol.run(&["checkout", "--quiet", "-b", "proposal"])?;
    std::fs::write(carol.dir.join("requests/docs.yaml"), request("docs", "  budget:\n    maxCostUSD: 1.5\n"))?;
    std::fs::write(carol.dir.join("requests/plain.yaml"), request("plain", "").replace("plain for the e2e test", "plain, reworded"))?;
    carol.run(&["add", "-A"])?;
    carol.run(&["commit", "--quiet", "-m", "Propose docs, reword plain"])?;
    let first = carol.run(&["rev-parse", "HEAD"])?;
    carol.run(&["push", "--quiet", "origin", "proposal", "proposal:refs/pull/1/head"])?;
    let number = double.open_pr("acme/control", "proposal", "main", &first);
    ensure!(number == 1);
    ensure!(send_hook(&http, &hadron, "pull_request", &pr_payload("pull_request_opened.json", number, "proposal", &first)?).await? == 202);

    let comment = |double: &GiteaDouble| double.comments("acme/control", number);
    wait_for(&hadron, "the plan comment", Duration::from_secs(60), || !comment(&double).is_empty()).await?;
    let body = comment(&double)[0].body.clone();
    println!("the plan comment:\n{body}");
    for line in
        ["<!-- hadron:plan -->", "+ docs: created", "budget: at most $1.50", "~ plain: restarted, a new generation", "title changed"]
    {
        ensure!(body.contains(line), "the comment says {line:?}:\n{body}");
    }
    let status_of = |sha: &str| double.statuses("acme/control", sha).into_iter().rfind(|s| s.context == "hadron/plan");
    wait_for(&hadron, "the plan status", Duration::from_secs(30), || status_of(&first).is_some()).await?;
    let status = status_of(&first).context("a status")?;
    ensure!(status.state == "success" && status.description.contains("1 to create, 1 to restart"), "{status:?}");
    ensure!(phase(&control, "plain") == Some(Phase::Succeeded), "a preview changes nothing");

    // A second push with a mistake: the same comment, edited; the status fails.
    std::fs::write(carol.dir.join("requests/docs.yaml"), request("docs", "  budgit: {}\n"))?;
    carol.run(&["commit", "--quiet", "-am", "Oops"])?;
    let second = carol.run(&["rev-parse", "HEAD"])?;
    carol.run(&["push", "--quiet", "--force", "origin", "proposal", "proposal:refs/pull/1/head"])?;
    double.set_pr_head("acme/control", number, &second);
    ensure!(
        send_hook(&http, &hadron, "pull_request", &pr_payload("pull_request_synchronized.json", number, "proposal", &second)?).await?
            == 202
    );
    wait_for(&hadron, "the comment to be edited", Duration::from_secs(60), || {
        comment(&double).first().is_some_and(|c| c.body.contains(&second[..12]))
    })
    .await?;
    let comments = comment(&double);
    println!("after the second push:\n{}", comments[0].body);
    ensure!(comments.len() == 1, "one comment, edited in place: {comments:?}");
    ensure!(comments[0].body.contains("requests/docs.yaml:") && comments[0].body.contains("error["), "{}", comments[0].body);
    ensure!(comments[0].body.contains("**The plan has errors**"), "{}", comments[0].body);
    wait_for(&hadron, "the failing status", Duration::from_secs(30), || status_of(&second).is_some()).await?;
    ensure!(status_of(&second).is_some_and(|s| s.state == "failure"), "{:?}", status_of(&second));

    // A PR whose head Hadron cannot fetch (Gitea has no refs/pull/2/head):
    // its author is told on the PR, and PR 1 is left as it is.
    let ghost = "0123456789abcdef0123456789abcdef01234567";
    let number = double.open_pr("acme/control", "ghost", "main", ghost);
    ensure!(send_hook(&http, &hadron, "pull_request", &pr_payload("pull_request_opened.json", number, "ghost", ghost)?).await? == 202);
    wait_for(&hadron, "the error status on the unreadable PR", Duration::from_secs(60), || status_of(ghost).is_some()).await?;
    let status = status_of(ghost).context("a status")?;
    ensure!(status.state == "error" && status.description.contains("could not read this pull request's head"), "{status:?}");
    ensure!(double.comments("acme/control", number).is_empty() && comment(&double).len() == 1);
    double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_before_a_gitea_write_makes_none_after_the_take_over() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Acme { control, carol, double, .. } = acme(tmp.path(), "  approvers:\n    users: [dave]\n").await?;
    let gated = request("gated", "  gates:\n    - name: review\n      type: approval\n      after: implement\n");
    carol.commit_file("requests/gated.yaml", &gated, "ask for gated")?;
    let db = Postgres::create("gitea_write")?;
    let runs = tmp.path().join("runs");
    // The two replicas call Gitea with tokens of their own: the double tells their calls apart.
    const OLD: &str = "e2e-token-of-the-old-leader";
    double.accept_token(OLD);
    let old_writes = || double.requests().iter().filter(|r| r.method != "GET" && r.token.as_deref() == Some(OLD)).count();
    let mut a = Hadron::replica(&control, &tmp.path().join("a"), &double.base_url(), &db.url(), &runs, OLD, Some("gitea-write"))?;
    a.wait_line("leading (epoch 1)").await?;
    // Its first Gitea write: frozen just before it (as a stopped VM would be).
    let line = a.wait_line("fault: stopping at gitea-write").await?;
    let pid = line.split("(pid ").nth(1).and_then(|r| r.trim_end_matches(')').parse::<u32>().ok()).context("a pid")?;
    let frozen_writes = old_writes();
    let b = Hadron::replica(&control, &tmp.path().join("b"), &double.base_url(), &db.url(), &runs, TOKEN, None)?;
    b.wait_line("leading (epoch 2)").await?;
    let branch = "hadron/approve/gated/review";
    wait_for(&b, "the new leader's approval PR", Duration::from_secs(120), || {
        double.pulls("acme/control").iter().any(|p| p.head == branch)
    })
    .await?;
    // The old leader wakes: it makes no Gitea write, and exits.
    ensure!(Command::new("kill").args(["-CONT", &pid.to_string()]).status()?.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = a.child.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "the old leader did not exit:\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(status.code() == Some(3), "exit {status}:\n{}", a.log());
    ensure!(old_writes() == frozen_writes, "the deposed leader wrote to Gitea after the take-over:\n{}", a.log());
    ensure!(double.pulls("acme/control").iter().filter(|p| p.head == branch).count() == 1, "one approval PR");
    ensure!(a.log().contains("lost the leader lease"), "{}", a.log());
    double.assert_all_requests_matched_swagger();
    Ok(())
}
