//! A Gitea double for tests: an axum server on 127.0.0.1:0 that implements
//! the endpoints the Hadron client calls, answers with the fixture JSON of
//! `tests/fixtures/gitea/api/` (fields adjusted) and checks every request
//! against BOTH Gitea API descriptions (1.22 `swagger.v1.json` and 1.14
//! `swagger.v1.14.json`): the method and templated path exist, integer path
//! parameters are integers, query parameters are declared, and a JSON body
//! validates against the operation's body schema (stricter than Gitea: an
//! unknown field is a mismatch, because Gitea would silently ignore it).
//!
//! Needs the tests' `git` module beside it (`#[path = "support/git.rs"] mod git;`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `tests/fixtures/gitea` in the workspace (copies of Gitea's own data, see its README).
pub fn gitea_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gitea")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    Param(String),
}

#[derive(Debug, Clone)]
struct Param {
    name: String,
    location: String,
    ty: Option<String>,
    required: bool,
}

#[derive(Debug, Clone)]
struct Op {
    method: String,
    template: String,
    segs: Vec<Seg>,
    params: Vec<Param>,
    body_def: Option<String>,
    operation_id: String,
}

/// One API description, ready to check requests.
pub struct Swagger {
    name: String,
    base_path: String,
    ops: Vec<Op>,
    definitions: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// The operation a request matched.
#[derive(Debug, Clone)]
pub struct Matched {
    /// operationId, e.g. `repoCreatePullRequest`.
    pub operation_id: String,
    /// Path parameters by name, percent-decoded.
    pub params: BTreeMap<String, String>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=b&c=d` (percent-decoded, `+` as space).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

impl Swagger {
    /// Loads a Swagger 2.0 file.
    pub fn load(path: &Path) -> Swagger {
        let doc = read_json(path);
        let base_path = doc["basePath"].as_str().expect("swagger has a basePath").to_owned();
        let mut ops = Vec::new();
        for (template, item) in doc["paths"].as_object().expect("swagger has paths") {
            let shared: Vec<Value> = item.get("parameters").and_then(|p| p.as_array()).cloned().unwrap_or_default();
            for (method, op) in item.as_object().expect("path item is an object") {
                if method == "parameters" {
                    continue;
                }
                let mut params = Vec::new();
                let mut body_def = None;
                let all = shared.iter().chain(op["parameters"].as_array().into_iter().flatten());
                for p in all {
                    let location = p["in"].as_str().unwrap_or("").to_owned();
                    if location == "body" {
                        body_def = p["schema"]["$ref"].as_str().and_then(|r| r.strip_prefix("#/definitions/")).map(str::to_owned);
                    }
                    params.push(Param {
                        name: p["name"].as_str().unwrap_or("").to_owned(),
                        location,
                        ty: p["type"].as_str().map(str::to_owned),
                        required: p["required"].as_bool().unwrap_or(false),
                    });
                }
                let segs = template
                    .trim_start_matches('/')
                    .split('/')
                    .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => Seg::Param(name.to_owned()),
                        None => Seg::Lit(s.to_owned()),
                    })
                    .collect();
                ops.push(Op {
                    method: method.to_uppercase(),
                    template: template.clone(),
                    segs,
                    params,
                    body_def,
                    operation_id: op["operationId"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
        // Strict bodies: every object definition with properties and no
        // additionalProperties rule refuses unknown fields.
        let mut definitions = doc["definitions"].clone();
        for def in definitions.as_object_mut().expect("swagger has definitions").values_mut() {
            if def.get("properties").is_some() && def.get("additionalProperties").is_none() {
                def["additionalProperties"] = Value::Bool(false);
            }
        }
        Swagger {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            base_path,
            ops,
            definitions,
            validators: Mutex::new(HashMap::new()),
        }
    }

    fn validator(&self, def: &str) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self.validators.lock().expect("validator cache lock");
        if let Some(v) = cache.get(def) {
            return Ok(v.clone());
        }
        if self.definitions.get(def).is_none() {
            return Err(format!("definition {def} is missing"));
        }
        let schema = json!({ "$ref": format!("#/definitions/{def}"), "definitions": self.definitions });
        let v = Arc::new(jsonschema::draft4::new(&schema).map_err(|e| format!("schema for {def}: {e}"))?);
        cache.insert(def.to_owned(), v.clone());
        Ok(v)
    }

    /// Checks one request; `Err` lists what does not match.
    pub fn check(
        &self,
        method: &str,
        raw_path: &str,
        query: &[(String, String)],
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Matched, Vec<String>> {
        let who = &self.name;
        let Some(rest) = raw_path.strip_prefix(&self.base_path) else {
            return Err(vec![format!("{who}: {raw_path} is not under basePath {}", self.base_path)]);
        };
        let segs: Vec<String> = rest.trim_start_matches('/').split('/').map(percent_decode).collect();
        let mut best: Option<(usize, &Op, BTreeMap<String, String>)> = None;
        for op in self.ops.iter().filter(|o| o.method == method && o.segs.len() == segs.len()) {
            let mut params = BTreeMap::new();
            let mut literals = 0;
            let fits = op.segs.iter().zip(&segs).all(|(t, s)| match t {
                Seg::Lit(l) => {
                    literals += 1;
                    l == s
                }
                Seg::Param(name) => {
                    params.insert(name.clone(), s.clone());
                    !s.is_empty()
                }
            });
            if fits && best.as_ref().is_none_or(|(n, _, _)| literals > *n) {
                best = Some((literals, op, params));
            }
        }
        let Some((_, op, params)) = best else {
            return Err(vec![format!("{who}: no operation {method} {rest}")]);
        };
        let mut problems = Vec::new();
        for p in op.params.iter().filter(|p| p.location == "path") {
            let value = params.get(&p.name).map(String::as_str).unwrap_or("");
            if p.ty.as_deref() == Some("integer") && value.parse::<i64>().is_err() {
                problems.push(format!("{who}: {} {}: path parameter {} = {value:?} is not an integer", method, op.template, p.name));
            }
        }
        for (k, v) in query {
            match op.params.iter().find(|p| p.location == "query" && &p.name == k) {
                None => problems.push(format!("{who}: {} {}: undeclared query parameter {k}", method, op.template)),
                Some(p) if p.ty.as_deref() == Some("integer") && v.parse::<i64>().is_err() => {
                    problems.push(format!("{who}: {} {}: query {k} = {v:?} is not an integer", method, op.template))
                }
                Some(_) => {}
            }
        }
        let has_body = !body.is_empty();
        match (&op.body_def, has_body) {
            (Some(def), true) => {
                if !content_type.is_some_and(|c| c.starts_with("application/json")) {
                    problems.push(format!("{who}: {} {}: body sent as {content_type:?}, not JSON", method, op.template));
                }
                match serde_json::from_slice::<Value>(body) {
                    Err(e) => problems.push(format!("{who}: {} {}: body is not JSON: {e}", method, op.template)),
                    Ok(instance) => match self.validator(def) {
                        Err(e) => problems.push(format!("{who}: {e}")),
                        Ok(v) => {
                            for err in v.iter_errors(&instance) {
                                problems.push(format!(
                                    "{who}: {} {}: body does not match {def}: {err} at {}",
                                    method,
                                    op.template,
                                    err.instance_path()
                                ));
                            }
                        }
                    },
                }
            }
            (Some(def), false) => {
                if op.params.iter().any(|p| p.location == "body" && p.required) {
                    problems.push(format!("{who}: {} {}: required body {def} missing", method, op.template));
                }
            }
            (None, true) => problems.push(format!("{who}: {} {}: takes no body but got one", method, op.template)),
            (None, false) => {}
        }
        if problems.is_empty() { Ok(Matched { operation_id: op.operation_id.clone(), params }) } else { Err(problems) }
    }
}

/// A PR the double holds.
#[derive(Debug, Clone, PartialEq)]
pub struct PrRec {
    /// `owner/repo`.
    pub repo: String,
    /// Number.
    pub number: u64,
    /// Head branch.
    pub head: String,
    /// Base branch.
    pub base: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// open / closed.
    pub state: String,
    /// Merged?
    pub merged: bool,
    /// Merged by.
    pub merged_by: Option<String>,
    /// The merge commit Gitea made (set with `merged`).
    pub merge_commit_sha: Option<String>,
    /// Head sha.
    pub head_sha: String,
}

/// A commit status the double holds.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRec {
    /// `owner/repo`.
    pub repo: String,
    /// Commit.
    pub sha: String,
    /// Id.
    pub id: i64,
    /// State.
    pub state: String,
    /// Context.
    pub context: String,
    /// Description.
    pub description: String,
    /// Link.
    pub target_url: String,
}

#[derive(Debug, Clone)]
struct TeamRec {
    id: u64,
    org: String,
    name: String,
    members: Vec<String>,
}

#[derive(Debug, Clone)]
struct Fault {
    method: String,
    path: String,
    status: u16,
    retry_after: Option<u64>,
}

/// A request the double received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path (raw).
    pub path: String,
    /// Query pairs.
    pub query: Vec<(String, String)>,
    /// JSON body, if any.
    pub body: Option<Value>,
    /// Whether it had the right `Authorization: token <t>`.
    pub authorized: bool,
    /// The token it carried, if any (two replicas given different tokens
    /// tell their calls apart).
    pub token: Option<String>,
}

/// A comment on an issue or PR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentRec {
    /// Comment id.
    pub id: u64,
    /// `owner/repo`.
    pub repo: String,
    /// Issue (PR) number.
    pub issue: u64,
    /// Markdown text.
    pub body: String,
    /// Author's login.
    pub user: String,
}

/// A review a person submits (see [`GiteaDouble::add_review`]).
#[derive(Debug, Clone, Default)]
pub struct NewReview<'a> {
    /// Reviewer's login.
    pub user: &'a str,
    /// `APPROVED`, `COMMENT`, `REQUEST_CHANGES`, …
    pub state: &'a str,
    /// The review's text.
    pub body: &'a str,
    /// The head it was given on (default: the PR's current head).
    pub commit: Option<&'a str>,
    /// `(path, line, text)` of each line comment.
    pub comments: &'a [(&'a str, u64, &'a str)],
}

/// A review of a PR, with its line comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRec {
    /// Review id.
    pub id: u64,
    /// `owner/repo`.
    pub repo: String,
    /// PR number.
    pub pr: u64,
    /// Reviewer's login.
    pub user: String,
    /// `APPROVED`, `COMMENT`, `REQUEST_CHANGES`, …
    pub state: String,
    /// The review's text.
    pub body: String,
    /// The PR head it was given on.
    pub commit_id: String,
    /// Dismissed by a maintainer.
    pub dismissed: bool,
    /// `(path, line, text)` of each line comment.
    pub comments: Vec<(String, u64, String)>,
}

#[derive(Default)]
struct StateInner {
    /// Tokens accepted besides the one the double started with.
    more_tokens: Vec<String>,
    repos: BTreeMap<String, String>,
    pulls: Vec<PrRec>,
    comments: Vec<CommentRec>,
    reviews: Vec<ReviewRec>,
    statuses: Vec<StatusRec>,
    teams: Vec<TeamRec>,
    orgs: Vec<String>,
    branches: BTreeMap<(String, String), String>,
    faults: VecDeque<Fault>,
    stale_lists: Vec<String>,
    requests: Vec<Recorded>,
    mismatches: Vec<String>,
    /// email → login, as Gitea matches commit authors to users.
    users: BTreeMap<String, String>,
    /// `owner/repo` → the real bare repository behind it.
    git_dirs: BTreeMap<String, PathBuf>,
    /// Until when every call fails, and how.
    outage: Option<Outage>,
    /// Calls answered during an outage.
    outage_answers: usize,
}

/// A Gitea that is down: every call answers 502 or 503, and every third one
/// first hangs (a slow proxy in front of a dead backend), until `until`.
#[derive(Clone, Copy)]
struct Outage {
    until: std::time::Instant,
    hang: std::time::Duration,
}

struct Inner {
    token: String,
    login: String,
    base_url: String,
    specs: Vec<Swagger>,
    fixtures: BTreeMap<&'static str, Value>,
    state: Mutex<StateInner>,
}

/// The running double.
#[derive(Clone)]
pub struct GiteaDouble {
    inner: Arc<Inner>,
}

fn json_response(status: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(status).expect("valid status code");
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn message(status: u16, text: &str) -> Response {
    json_response(status, &json!({ "message": text, "url": "https://gitea.example/api/swagger" }))
}

impl GiteaDouble {
    /// Starts the double; requests must carry `Authorization: token <token>`
    /// and `GET /user` answers with `login`.
    pub async fn start(token: &str, login: &str) -> GiteaDouble {
        let dir = gitea_fixtures();
        let specs = vec![Swagger::load(&dir.join("swagger.v1.json")), Swagger::load(&dir.join("swagger.v1.14.json"))];
        let mut fixtures = BTreeMap::new();
        for name in ["pr", "status", "repo", "user", "branch", "organization", "commit", "comment"] {
            fixtures.insert(name, read_json(&dir.join("api").join(format!("{name}.json"))));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            token: token.to_owned(),
            login: login.to_owned(),
            base_url: format!("http://{addr}"),
            specs,
            fixtures,
            state: Mutex::new(StateInner::default()),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("double serves");
        });
        GiteaDouble { inner }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, StateInner> {
        self.inner.state.lock().expect("double state lock")
    }

    /// Accepts `token` as well as the one it started with.
    pub fn accept_token(&self, token: &str) {
        self.st().more_tokens.push(token.to_owned());
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// Adds a repo `owner/repo` with its default branch.
    pub fn add_repo(&self, repo: &str, default_branch: &str) {
        self.st().repos.insert(repo.to_owned(), default_branch.to_owned());
    }

    /// Adds a branch tip.
    pub fn add_branch(&self, repo: &str, branch: &str, sha: &str) {
        self.st().branches.insert((repo.to_owned(), branch.to_owned()), sha.to_owned());
    }

    /// Adds a team with members; returns its id.
    pub fn add_team(&self, org: &str, name: &str, members: &[&str]) -> u64 {
        let mut st = self.st();
        if !st.orgs.iter().any(|o| o == org) {
            st.orgs.push(org.to_owned());
        }
        let id = 100 + st.teams.len() as u64;
        st.teams.push(TeamRec {
            id,
            org: org.to_owned(),
            name: name.to_owned(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        });
        id
    }

    /// A Gitea user with this email: commits authored with it map to `login`.
    pub fn add_user(&self, login: &str, email: &str) {
        self.st().users.insert(email.to_ascii_lowercase(), login.to_owned());
    }

    /// The real bare repository behind `owner/repo`: commits and branch
    /// heads are read from it with the `git` CLI, as Gitea reads its own.
    pub fn link_git_dir(&self, repo: &str, dir: &Path) {
        self.st().git_dirs.insert(repo.to_owned(), dir.to_owned());
    }

    /// Reads the linked repository of `repo` with `git args…` (through the
    /// tests' `git` module): its trimmed output, `None` when git fails.
    fn read_git(&self, repo: &str, args: &[&str]) -> Option<String> {
        let dir = self.st().git_dirs.get(repo).cloned()?;
        crate::git::git(&dir, crate::git::HUMAN, args).ok()
    }

    /// A person merges PR `number` of `repo`; Gitea's merge made commit
    /// `merge_commit` (the commit the API then names as `merge_commit_sha`).
    pub fn merge_pr(&self, repo: &str, number: u64, by: &str, merge_commit: &str) {
        let mut st = self.st();
        let pr = st.pulls.iter_mut().find(|p| p.repo == repo && p.number == number).expect("PR exists");
        pr.merged = true;
        pr.state = "closed".to_owned();
        pr.merged_by = Some(by.to_owned());
        pr.merge_commit_sha = Some(merge_commit.to_owned());
    }

    /// The members of team `org/name` are now `members` (someone joined or left).
    pub fn set_team_members(&self, org: &str, name: &str, members: &[&str]) {
        let mut st = self.st();
        let team = st.teams.iter_mut().find(|t| t.org == org && t.name == name).expect("team exists");
        team.members = members.iter().map(|m| (*m).to_owned()).collect();
    }

    /// An outside CI sets a status.
    pub fn add_status(&self, repo: &str, sha: &str, context: &str, state: &str) {
        let mut st = self.st();
        let id = st.statuses.len() as i64 + 1;
        st.statuses.push(StatusRec {
            repo: repo.to_owned(),
            sha: sha.to_owned(),
            id,
            state: state.to_owned(),
            context: context.to_owned(),
            description: String::new(),
            target_url: String::new(),
        });
    }

    /// The next requests `method path` (raw path, e.g. `/api/v1/user`) are
    /// answered with these statuses, one each, before normal service.
    pub fn fail_next(&self, method: &str, path: &str, statuses: &[u16], retry_after: Option<u64>) {
        let mut st = self.st();
        for s in statuses {
            st.faults.push_back(Fault { method: method.to_owned(), path: path.to_owned(), status: *s, retry_after });
        }
    }

    /// From now on, for `length`, every call fails with 502 or 503, and
    /// every third call first hangs for `hang`.
    pub fn outage(&self, length: std::time::Duration, hang: std::time::Duration) {
        self.st().outage = Some(Outage { until: std::time::Instant::now() + length, hang });
    }

    /// How many calls the outage answered.
    pub fn outage_answers(&self) -> usize {
        self.st().outage_answers
    }

    /// The next PR list of `repo` answers as if no PR existed (a lagging
    /// replica or a PR opened by someone else right after the list).
    pub fn stale_pr_list_once(&self, repo: &str) {
        self.st().stale_lists.push(repo.to_owned());
    }

    /// PRs of a repo.
    pub fn pulls(&self, repo: &str) -> Vec<PrRec> {
        self.st().pulls.iter().filter(|p| p.repo == repo).cloned().collect()
    }

    /// Statuses of a commit.
    pub fn statuses(&self, repo: &str, sha: &str) -> Vec<StatusRec> {
        self.st().statuses.iter().filter(|s| s.repo == repo && s.sha == sha).cloned().collect()
    }

    /// All requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.st().requests.clone()
    }

    /// How many `method path` requests arrived (raw path, no query).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.st().requests.iter().filter(|r| r.method == method && r.path == path).count()
    }

    /// Mismatches with the swagger so far.
    pub fn mismatches(&self) -> Vec<String> {
        self.st().mismatches.clone()
    }

    /// Panics unless at least one request arrived and every one matched both
    /// API descriptions.
    pub fn assert_all_requests_matched_swagger(&self) {
        let (requests, mismatches) = {
            let st = self.st();
            (st.requests.len(), st.mismatches.clone())
        };
        assert!(requests > 0, "the double received no requests");
        assert!(mismatches.is_empty(), "{} request(s) did not match the Gitea swagger:\n{}", mismatches.len(), mismatches.join("\n"));
    }

    fn pr_json(&self, pr: &PrRec) -> Value {
        let mut v = self.inner.fixtures["pr"].clone();
        let (owner, name) = pr.repo.split_once('/').expect("owner/repo");
        let html = format!("{}/{}/pulls/{}", self.inner.base_url, pr.repo, pr.number);
        v["id"] = json!(1000 + pr.number);
        v["number"] = json!(pr.number);
        v["title"] = json!(pr.title);
        v["body"] = json!(pr.body);
        v["state"] = json!(pr.state);
        v["html_url"] = json!(html);
        v["diff_url"] = json!(format!("{html}.diff"));
        v["patch_url"] = json!(format!("{html}.patch"));
        v["merged"] = json!(pr.merged);
        v["merged_by"] = match &pr.merged_by {
            Some(login) => self.user_json(login),
            None => Value::Null,
        };
        v["merge_commit_sha"] = match (&pr.merge_commit_sha, pr.merged) {
            (Some(sha), true) => json!(sha),
            _ => Value::Null,
        };
        for (side, branch) in [("head", &pr.head), ("base", &pr.base)] {
            v[side]["ref"] = json!(branch);
            v[side]["label"] = json!(branch);
            v[side]["repo"]["name"] = json!(name);
            v[side]["repo"]["full_name"] = json!(pr.repo);
            v[side]["repo"]["owner"]["login"] = json!(owner);
            v[side]["repo"]["owner"]["username"] = json!(owner);
        }
        v["head"]["sha"] = json!(self.head_of(pr));
        v
    }

    /// An open PR's head as Gitea reports it: the head branch's tip in the
    /// linked repository (a push moves it at once), else the head it was
    /// opened or last set with.
    fn head_of(&self, pr: &PrRec) -> String {
        let branch = format!("refs/heads/{}", pr.head);
        let from_git = (pr.state == "open").then(|| self.read_git(&pr.repo, &["rev-parse", "--verify", "-q", &branch])).flatten();
        from_git.filter(|s| s.len() == 40).unwrap_or_else(|| pr.head_sha.clone())
    }

    /// A person opens PR `head` → `base` in `repo` (head at `sha`); its number.
    pub fn open_pr(&self, repo: &str, head: &str, base: &str, sha: &str) -> u64 {
        let mut st = self.st();
        let number = st.pulls.iter().filter(|pr| pr.repo == repo).count() as u64 + 1;
        st.pulls.push(PrRec {
            repo: repo.to_owned(),
            number,
            head: head.to_owned(),
            base: base.to_owned(),
            title: format!("Proposal {number}"),
            body: String::new(),
            state: "open".to_owned(),
            merged: false,
            merged_by: None,
            merge_commit_sha: None,
            head_sha: sha.to_owned(),
        });
        number
    }

    /// A push to a PR's head branch: its head is now `sha`.
    pub fn set_pr_head(&self, repo: &str, number: u64, sha: &str) {
        if let Some(pr) = self.st().pulls.iter_mut().find(|pr| pr.repo == repo && pr.number == number) {
            pr.head_sha = sha.to_owned();
        }
    }

    /// A person submits a review of PR `number` on its current head (or on
    /// `commit`, an older head), with line comments `(path, line, text)`;
    /// returns its id. Gitea calls a review stale once the head moves on.
    pub fn add_review(&self, repo: &str, number: u64, review: NewReview) -> u64 {
        let NewReview { user, state, body, commit, comments } = review;
        let pr = self.st().pulls.iter().find(|pr| pr.repo == repo && pr.number == number).cloned();
        let head = pr.map(|pr| self.head_of(&pr)).unwrap_or_default();
        let mut st = self.st();
        let id = 900 + st.reviews.len() as u64 + 1;
        st.reviews.push(ReviewRec {
            id,
            repo: repo.to_owned(),
            pr: number,
            user: user.to_owned(),
            state: state.to_owned(),
            body: body.to_owned(),
            commit_id: commit.map_or(head, str::to_owned),
            dismissed: false,
            comments: comments.iter().map(|(p, l, t)| ((*p).to_owned(), *l, (*t).to_owned())).collect(),
        });
        id
    }

    /// A maintainer dismisses review `id`.
    pub fn dismiss_review(&self, id: u64) {
        if let Some(r) = self.st().reviews.iter_mut().find(|r| r.id == id) {
            r.dismissed = true;
        }
    }

    /// The review as Gitea's API shows it (`PullReview`).
    fn review_json(&self, r: &ReviewRec) -> Value {
        let pr = self.st().pulls.iter().find(|pr| pr.repo == r.repo && pr.number == r.pr).cloned();
        let head = pr.map(|pr| self.head_of(&pr)).unwrap_or_default();
        json!({
            "id": r.id,
            "body": r.body,
            "comments_count": r.comments.len(),
            "commit_id": r.commit_id,
            "dismissed": r.dismissed,
            "html_url": format!("{}/{}/pulls/{}#issuecomment-{}", self.inner.base_url, r.repo, r.pr, r.id),
            "official": true,
            "pull_request_url": format!("{}/{}/pulls/{}", self.inner.base_url, r.repo, r.pr),
            "stale": r.commit_id != head,
            "state": r.state,
            "submitted_at": "2026-12-01T10:00:00Z",
            "updated_at": "2026-12-01T10:00:00Z",
            "user": self.user_json(&r.user),
        })
    }

    /// The comments on issue (PR) `issue` of `repo`, oldest first.
    pub fn comments(&self, repo: &str, issue: u64) -> Vec<CommentRec> {
        self.st().comments.iter().filter(|c| c.repo == repo && c.issue == issue).cloned().collect()
    }

    fn comment_json(&self, c: &CommentRec) -> Value {
        let mut v = self.inner.fixtures["comment"].clone();
        v["id"] = json!(c.id);
        v["body"] = json!(c.body);
        v["user"] = self.user_json(&c.user);
        v["html_url"] = json!(format!("{}/{}/pulls/{}#issuecomment-{}", self.inner.base_url, c.repo, c.issue, c.id));
        v
    }

    fn user_json(&self, login: &str) -> Value {
        let mut u = self.inner.fixtures["user"].clone();
        u["login"] = json!(login);
        u["username"] = json!(login);
        u
    }

    fn status_json(&self, s: &StatusRec) -> Value {
        let mut v = self.inner.fixtures["status"].clone();
        v["id"] = json!(s.id);
        v["status"] = json!(s.state);
        v["context"] = json!(s.context);
        v["description"] = json!(s.description);
        v["target_url"] = json!(s.target_url);
        v["url"] = json!(format!("{}/api/v1/repos/{}/statuses/{}", self.inner.base_url, s.repo, s.sha));
        v
    }

    fn route(&self, op: &str, p: &BTreeMap<String, String>, query: &[(String, String)], body: Option<&Value>) -> Response {
        let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let page: usize = q("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        let limit: usize = q("limit").and_then(|v| v.parse().ok()).unwrap_or(30).max(1);
        let paged = |items: Vec<Value>| -> Vec<Value> { items.into_iter().skip((page - 1) * limit).take(limit).collect() };
        let repo = match (p.get("owner"), p.get("repo")) {
            (Some(o), Some(r)) => Some(format!("{o}/{r}")),
            _ => None,
        };
        if let Some(repo) = &repo
            && !self.st().repos.contains_key(repo)
        {
            return message(404, "repository does not exist");
        }
        let repo = repo.unwrap_or_default();
        let str_field = |k: &str| body.and_then(|b| b.get(k)).and_then(|v| v.as_str()).map(str::to_owned);
        match op {
            "userGetCurrent" => json_response(200, &self.user_json(&self.inner.login)),
            "repoGet" => {
                let mut v = self.inner.fixtures["repo"].clone();
                let (owner, name) = repo.split_once('/').expect("owner/repo");
                v["name"] = json!(name);
                v["full_name"] = json!(repo);
                v["owner"]["login"] = json!(owner);
                v["default_branch"] = json!(self.st().repos[&repo]);
                v["html_url"] = json!(format!("{}/{repo}", self.inner.base_url));
                json_response(200, &v)
            }
            "repoGetBranch" => {
                let branch = p["branch"].clone();
                let sha = self.st().branches.get(&(repo.clone(), branch.clone())).cloned();
                match sha {
                    None => message(404, "branch does not exist"),
                    Some(sha) => {
                        let mut v = self.inner.fixtures["branch"].clone();
                        v["name"] = json!(branch);
                        v["commit"]["id"] = json!(sha);
                        json_response(200, &v)
                    }
                }
            }
            "repoListPullRequests" => {
                let state = q("state").unwrap_or_else(|| "open".to_owned());
                {
                    let mut st = self.st();
                    if let Some(i) = st.stale_lists.iter().position(|r| r == &repo) {
                        st.stale_lists.remove(i);
                        return json_response(200, &json!([]));
                    }
                }
                let prs: Vec<PrRec> =
                    self.st().pulls.iter().filter(|pr| pr.repo == repo && (state == "all" || pr.state == state)).cloned().collect();
                let items = prs.iter().map(|pr| self.pr_json(pr)).collect();
                json_response(200, &Value::Array(paged(items)))
            }
            "repoCreatePullRequest" => {
                let (Some(head), Some(base)) = (str_field("head"), str_field("base")) else {
                    return message(422, "head and base are required");
                };
                let st = self.st();
                if st.pulls.iter().any(|pr| pr.repo == repo && pr.head == head && pr.base == base && pr.state == "open") {
                    return message(409, "pull request already exists for these targets");
                }
                let number = st.pulls.iter().filter(|pr| pr.repo == repo).count() as u64 + 1;
                let known = st.branches.get(&(repo.clone(), head.clone())).cloned();
                drop(st);
                let from_git = self.read_git(&repo, &["rev-parse", "--verify", "--quiet", &format!("refs/heads/{head}")]);
                let mut st = self.st();
                let head_sha = known.or(from_git).unwrap_or_else(|| format!("{:040x}", 0xabc000 + number));
                let pr = PrRec {
                    repo: repo.clone(),
                    number,
                    head,
                    base,
                    title: str_field("title").unwrap_or_default(),
                    body: str_field("body").unwrap_or_default(),
                    state: "open".to_owned(),
                    merged: false,
                    merged_by: None,
                    merge_commit_sha: None,
                    head_sha,
                };
                st.pulls.push(pr.clone());
                drop(st);
                json_response(201, &self.pr_json(&pr))
            }
            "repoGetPullRequest" | "repoEditPullRequest" => {
                let Ok(index) = p["index"].parse::<u64>() else { return message(404, "no such PR") };
                let mut st = self.st();
                let Some(pr) = st.pulls.iter_mut().find(|pr| pr.repo == repo && pr.number == index) else {
                    return message(404, "pull request does not exist");
                };
                if op == "repoEditPullRequest" {
                    if let Some(t) = str_field("title") {
                        pr.title = t;
                    }
                    if let Some(b) = str_field("body") {
                        pr.body = b;
                    }
                    if let Some(s) = str_field("state") {
                        pr.state = s;
                    }
                }
                let pr = pr.clone();
                drop(st);
                json_response(if op == "repoEditPullRequest" { 201 } else { 200 }, &self.pr_json(&pr))
            }
            "repoCreateStatus" => {
                let mut st = self.st();
                let rec = StatusRec {
                    repo: repo.clone(),
                    sha: p["sha"].clone(),
                    id: st.statuses.len() as i64 + 1,
                    state: str_field("state").unwrap_or_default(),
                    context: str_field("context").unwrap_or_default(),
                    description: str_field("description").unwrap_or_default(),
                    target_url: str_field("target_url").unwrap_or_default(),
                };
                st.statuses.push(rec.clone());
                drop(st);
                json_response(201, &self.status_json(&rec))
            }
            "repoGetCombinedStatusByRef" => {
                let sha = p["ref"].clone();
                let mut latest: BTreeMap<String, StatusRec> = BTreeMap::new();
                for s in self.statuses(&repo, &sha) {
                    latest.insert(s.context.clone(), s);
                }
                let rank = |s: &str| match s {
                    "error" => 0,
                    "failure" => 1,
                    "warning" => 2,
                    "pending" => 3,
                    _ => 4,
                };
                let state = latest.values().map(|s| s.state.clone()).min_by_key(|s| rank(s)).unwrap_or_default();
                let all: Vec<Value> = latest.values().map(|s| self.status_json(s)).collect();
                let total = all.len();
                let body = json!({
                    "state": state,
                    "sha": sha,
                    "total_count": total,
                    "statuses": paged(all),
                    "commit_url": format!("{}/api/v1/repos/{repo}/git/commits/{sha}", self.inner.base_url),
                    "url": format!("{}/api/v1/repos/{repo}/commits/{sha}/status", self.inner.base_url),
                    "repository": self.inner.fixtures["repo"],
                });
                json_response(200, &body)
            }
            "teamSearch" => {
                let org = p["org"].clone();
                let st = self.st();
                if !st.orgs.contains(&org) {
                    return message(404, "organization does not exist");
                }
                let needle = q("q").unwrap_or_default().to_lowercase();
                let items: Vec<Value> = st
                    .teams
                    .iter()
                    .filter(|t| t.org == org && t.name.to_lowercase().contains(&needle))
                    .map(|t| {
                        let mut o = self.inner.fixtures["organization"].clone();
                        o["username"] = json!(t.org);
                        json!({ "id": t.id, "name": t.name, "description": "", "organization": o,
                                "permission": "write", "includes_all_repositories": false,
                                "units": ["repo.code", "repo.pulls"] })
                    })
                    .collect();
                drop(st);
                json_response(200, &json!({ "data": paged(items), "ok": true }))
            }
            "orgListTeamMember" => {
                let Ok(id) = p["id"].parse::<u64>() else { return message(404, "no such team") };
                let user = p["username"].clone();
                let member = self.st().teams.iter().find(|t| t.id == id).map(|t| t.members.iter().any(|m| m.eq_ignore_ascii_case(&user)));
                match member {
                    Some(true) => json_response(200, &self.user_json(&user)),
                    Some(false) => message(404, "user is not a member of the team"),
                    None => message(404, "team does not exist"),
                }
            }
            "repoGetSingleCommit" => {
                let sha = p["sha"].clone();
                let Some(email) = self.read_git(&repo, &["log", "-1", "--format=%ae", &sha, "--"]) else {
                    return message(404, "commit does not exist");
                };
                let login = self.st().users.get(&email.to_ascii_lowercase()).cloned();
                let mut v = self.inner.fixtures["commit"].clone();
                v["sha"] = json!(sha);
                v["author"] = match login {
                    Some(l) => self.user_json(&l),
                    None => Value::Null,
                };
                json_response(200, &v)
            }
            "repoListPullReviews" => {
                let Ok(index) = p["index"].parse::<u64>() else { return message(404, "no such PR") };
                let reviews: Vec<ReviewRec> = self.st().reviews.iter().filter(|r| r.repo == repo && r.pr == index).cloned().collect();
                json_response(200, &Value::Array(paged(reviews.iter().map(|r| self.review_json(r)).collect())))
            }
            "repoGetPullReviewComments" => {
                let (Ok(index), Ok(id)) = (p["index"].parse::<u64>(), p["id"].parse::<u64>()) else {
                    return message(404, "no such review");
                };
                let Some(review) = self.st().reviews.iter().find(|r| r.repo == repo && r.pr == index && r.id == id).cloned() else {
                    return message(404, "review does not exist");
                };
                let items: Vec<Value> = review
                    .comments
                    .iter()
                    .enumerate()
                    .map(|(i, (path, line, text))| {
                        json!({
                            "id": review.id * 100 + i as u64,
                            "body": text,
                            "commit_id": review.commit_id,
                            "original_commit_id": review.commit_id,
                            "created_at": "2026-12-01T10:00:00Z",
                            "updated_at": "2026-12-01T10:00:00Z",
                            "diff_hunk": format!("@@ -{line},1 +{line},1 @@"),
                            "html_url": format!("{}/{}/pulls/{}/files#issuecomment-{}", self.inner.base_url, repo, index, review.id * 100 + i as u64),
                            "path": path,
                            "position": line,
                            "original_position": 0,
                            "pull_request_review_id": review.id,
                            "pull_request_url": format!("{}/{}/pulls/{}", self.inner.base_url, repo, index),
                            "user": self.user_json(&review.user),
                        })
                    })
                    .collect();
                json_response(200, &Value::Array(items))
            }
            "issueGetComments" => {
                let Ok(index) = p["index"].parse::<u64>() else { return message(404, "no such issue") };
                let items: Vec<Value> = self.comments(&repo, index).iter().map(|c| self.comment_json(c)).collect();
                json_response(200, &Value::Array(items))
            }
            "issueCreateComment" => {
                let Ok(index) = p["index"].parse::<u64>() else { return message(404, "no such issue") };
                let Some(body) = str_field("body") else { return message(422, "body is required") };
                let mut st = self.st();
                if !st.pulls.iter().any(|pr| pr.repo == repo && pr.number == index) {
                    return message(404, "issue does not exist");
                }
                let id = 500 + st.comments.len() as u64 + 1;
                let rec = CommentRec { id, repo: repo.clone(), issue: index, body, user: self.inner.login.clone() };
                st.comments.push(rec.clone());
                drop(st);
                json_response(201, &self.comment_json(&rec))
            }
            "issueEditComment" => {
                let Ok(id) = p["id"].parse::<u64>() else { return message(404, "no such comment") };
                let Some(body) = str_field("body") else { return message(422, "body is required") };
                let mut st = self.st();
                let Some(c) = st.comments.iter_mut().find(|c| c.repo == repo && c.id == id) else {
                    return message(404, "comment does not exist");
                };
                if c.user != self.inner.login {
                    return message(403, "only the author can edit a comment");
                }
                c.body = body;
                let rec = c.clone();
                drop(st);
                json_response(200, &self.comment_json(&rec))
            }
            other => message(501, &format!("the double does not implement {other}")),
        }
    }
}

async fn handle(State(inner): State<Arc<Inner>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let double = GiteaDouble { inner: inner.clone() };
    let down = {
        let mut st = double.st();
        let outage = st.outage.filter(|o| std::time::Instant::now() < o.until);
        if outage.is_some() {
            st.outage_answers += 1;
        }
        outage.map(|o| (o, st.outage_answers))
    };
    if let Some((outage, n)) = down {
        if n % 3 == 0 {
            tokio::time::sleep(outage.hang).await;
        }
        return message(if n % 2 == 0 { 502 } else { 503 }, "Gitea is down (injected by the test)");
    }
    let path = uri.path().to_owned();
    let query = parse_query(uri.query().unwrap_or(""));
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("token ")).map(str::to_owned);
    let authorized = token.as_deref().is_some_and(|t| t == inner.token || double.st().more_tokens.iter().any(|m| m == t));
    let json_body = if body.is_empty() { None } else { serde_json::from_slice::<Value>(&body).ok() };
    let mut matched = None;
    let mut problems = Vec::new();
    for spec in &inner.specs {
        match spec.check(method.as_str(), &path, &query, content_type.as_deref(), &body) {
            Ok(m) => {
                if matched.is_none() {
                    matched = Some(m);
                }
            }
            Err(p) => problems.extend(p),
        }
    }
    {
        let mut st = double.st();
        st.requests.push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            body: json_body.clone(),
            authorized,
            token: token.clone(),
        });
        st.mismatches.extend(problems.iter().cloned());
        let fault = st.faults.iter().position(|f| f.method == method.as_str() && f.path == path);
        if let Some(i) = fault {
            let f = st.faults.remove(i).expect("index from position");
            drop(st);
            let mut resp = message(f.status, "injected by the test");
            if let Some(secs) = f.retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            return resp;
        }
    }
    if !authorized {
        return message(401, "token is required");
    }
    let Some(m) = matched.filter(|_| problems.is_empty()) else {
        return message(404, "not an operation of the Gitea API (see the double's mismatches)");
    };
    double.route(&m.operation_id, &m.params, &query, json_body.as_ref())
}
