//! A small Gitea REST API client (API v1, works with Gitea 1.14 to 1.22).
//!
//! Only the calls Hadron makes, each decoded into a struct with only the
//! fields Hadron reads. The token comes from an environment variable or a
//! file, is sent as `Authorization: token <t>` and is never logged or shown
//! in errors. Rate limits (429), server errors (5xx) and transport errors are
//! retried with exponential backoff; 401, 403 and 404 are typed errors.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use handlebars::Handlebars;
use rand::Rng;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApproverDecision, CombinedState, CommitState, approver_allowed};
use crate::gates::{approval_branch, approval_path};
use crate::model::kinds::ApproverPolicy;

/// The approval PR body template shipped with Hadron (`templates/approval-pr.md.hbs`).
pub const APPROVAL_PR_TEMPLATE: &str = include_str!("../../../templates/approval-pr.md.hbs");
/// The target PR body template shipped with Hadron (`templates/target-pr.md.hbs`).
pub const TARGET_PR_TEMPLATE: &str = include_str!("../../../templates/target-pr.md.hbs");

/// Page size for list calls (Gitea's default maximum is 50).
const PAGE_LIMIT: usize = 50;
/// Most pages read from one list call before giving up on finding more.
const MAX_PAGES: u32 = 100;
/// Gitea stores at most this many characters of a status description.
const MAX_DESCRIPTION: usize = 255;
/// Longest PR title Hadron sends.
const MAX_TITLE: usize = 255;

/// Errors of the Gitea client.
#[derive(Debug, thiserror::Error)]
pub enum GiteaError {
    /// The configuration cannot work (bad base URL, bad `owner/repo`, bad `org/team`).
    #[error("invalid Gitea configuration: {0}")]
    Config(String),
    /// The token could not be read.
    #[error("the Gitea token could not be read from {from}: {why}")]
    Token {
        /// Where it was looked for (variable name or file path, never the token).
        from: String,
        /// Why it could not be read.
        why: String,
    },
    /// 401: the token is wrong or expired.
    #[error("Gitea refused the token (401) for {method} {path}")]
    Unauthorized {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
    },
    /// 403: the token may not do this.
    #[error("the Gitea token is not allowed to {method} {path} (403)")]
    Forbidden {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
    },
    /// 404: no such repo, PR, team, …
    #[error("Gitea has no {path} (404 for {method})")]
    NotFound {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
    },
    /// Another 4xx answer (409 conflict, 422 validation, …).
    #[error("Gitea answered {status} to {method} {path}: {message}")]
    Rejected {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// Gitea's `message`, shortened.
        message: String,
    },
    /// 429 on every attempt.
    #[error("Gitea kept rate limiting {method} {path} after {attempts} attempts")]
    RateLimited {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// Attempts made.
        attempts: u32,
    },
    /// 5xx on the last attempt.
    #[error("Gitea answered {status} to {method} {path} after {attempts} attempts")]
    Server {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// HTTP status code of the last answer.
        status: u16,
        /// Attempts made.
        attempts: u32,
    },
    /// No answer (connection refused, timeout, TLS failure) on the last attempt.
    #[error("Gitea could not be reached for {method} {path} after {attempts} attempts: {message}")]
    Unreachable {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// The transport error.
        message: String,
    },
    /// The answer was not the JSON Hadron expects.
    #[error("Gitea's answer to {method} {path} could not be read: {message}")]
    Decode {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// The decoding error.
        message: String,
    },
    /// An `org/team` of the approver policy names no team of that organisation.
    #[error("organisation {org} has no team named {team}")]
    TeamNotFound {
        /// Organisation.
        org: String,
        /// Team name.
        team: String,
    },
    /// A PR template could not be rendered.
    #[error("the {template} template could not be rendered: {message}")]
    Template {
        /// Which template.
        template: &'static str,
        /// The handlebars error.
        message: String,
    },
}

impl GiteaError {
    /// A stable CamelCase reason for conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            GiteaError::Config(_) => "GiteaConfigInvalid",
            GiteaError::Token { .. } => "GiteaTokenUnreadable",
            GiteaError::Unauthorized { .. } => "GiteaUnauthorized",
            GiteaError::Forbidden { .. } => "GiteaForbidden",
            GiteaError::NotFound { .. } => "GiteaNotFound",
            GiteaError::Rejected { .. } => "GiteaRejected",
            GiteaError::RateLimited { .. } => "GiteaRateLimited",
            GiteaError::Server { .. } => "GiteaServerError",
            GiteaError::Unreachable { .. } => "GiteaUnreachable",
            GiteaError::Decode { .. } => "GiteaBadResponse",
            GiteaError::TeamNotFound { .. } => "GiteaTeamNotFound",
            GiteaError::Template { .. } => "GiteaTemplateFailed",
        }
    }

    /// True for errors that may go away by themselves (rate limits, server
    /// errors, an unreachable server); the loop retries those later, while
    /// the others need a person to fix something.
    pub fn is_transient(&self) -> bool {
        matches!(self, GiteaError::RateLimited { .. } | GiteaError::Server { .. } | GiteaError::Unreachable { .. })
    }
}

/// An `owner/repo` on the forge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoRef {
    /// User or organisation.
    pub owner: String,
    /// Repository name.
    pub repo: String,
}

impl RepoRef {
    /// A repo from its two parts.
    pub fn new(owner: impl Into<String>, repo: impl Into<String>) -> Self {
        RepoRef { owner: owner.into(), repo: repo.into() }
    }

    /// Parses `owner/repo`.
    pub fn parse(s: &str) -> Result<Self, GiteaError> {
        match s.trim().split_once('/') {
            Some((o, r)) if !o.is_empty() && !r.is_empty() && !r.contains('/') => Ok(RepoRef::new(o, r)),
            _ => Err(GiteaError::Config(format!("{s:?} is not of the form owner/repo"))),
        }
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.repo)
    }
}

/// Where the API token comes from. Never from the control repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The value of this environment variable.
    Env(String),
    /// The contents of this file (for example a mounted Kubernetes Secret),
    /// surrounding whitespace removed.
    File(PathBuf),
}

impl TokenSource {
    fn load(&self) -> Result<Token, GiteaError> {
        let (from, raw) = match self {
            TokenSource::Env(name) => {
                let from = format!("environment variable {name}");
                let raw = std::env::var(name).map_err(|e| GiteaError::Token { from: from.clone(), why: e.to_string() })?;
                (from, raw)
            }
            TokenSource::File(path) => {
                let from = format!("file {}", path.display());
                let raw = std::fs::read_to_string(path)
                    .map_err(|e| GiteaError::Token { from: from.clone(), why: e.to_string() })?;
                (from, raw)
            }
        };
        let token = raw.trim();
        if token.is_empty() {
            return Err(GiteaError::Token { from, why: "it is empty".to_owned() });
        }
        let mut header = HeaderValue::from_str(&format!("token {token}"))
            .map_err(|_| GiteaError::Token { from, why: "it contains characters not allowed in a header".to_owned() })?;
        header.set_sensitive(true);
        Ok(Token(header))
    }
}

/// The `Authorization` header value; its `Debug` hides the token.
#[derive(Clone)]
struct Token(HeaderValue);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How 429, 5xx and transport errors are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub initial_delay: Duration,
    /// Upper bound of any delay, a `Retry-After` header included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Short on purpose: retries happen inside a pass, and the next pass
        // (and the circuit breaker) handle a longer outage.
        RetryPolicy { max_attempts: 3, initial_delay: Duration::from_millis(500), max_delay: Duration::from_secs(2) }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): exponential with
    /// jitter in its upper half, at least `retry_after`, at most `max_delay`.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.initial_delay.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let capped = exp.min(self.max_delay);
        let nanos = u64::try_from(capped.as_nanos()).unwrap_or(u64::MAX);
        let jittered = if nanos > 1 { Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos)) } else { capped };
        jittered.max(retry_after.unwrap_or(Duration::ZERO)).min(self.max_delay)
    }
}

/// Configuration of a [`GiteaClient`].
#[derive(Debug, Clone)]
pub struct GiteaConfig {
    /// The Gitea web address, e.g. `https://gitea.example.com` (a sub-path is kept).
    pub base_url: String,
    /// Where the token comes from.
    pub token: TokenSource,
    /// The control repo (approval PRs go there).
    pub control: RepoRef,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
}

impl GiteaConfig {
    /// A configuration with default retries and a 30 s request timeout.
    pub fn new(base_url: impl Into<String>, token: TokenSource, control: RepoRef) -> Self {
        GiteaConfig {
            base_url: base_url.into(),
            token,
            control,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A Gitea user (only the login is used).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// User id.
    #[serde(default)]
    pub id: i64,
    /// Login name.
    pub login: String,
}

/// One side (head or base) of a PR.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrBranch {
    /// Branch name.
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// Commit id at the branch tip.
    #[serde(default)]
    pub sha: String,
}

/// A pull request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    /// The PR number (`index` in paths).
    pub number: u64,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Body (Markdown); Gitea may send `null`.
    #[serde(default)]
    pub body: Option<String>,
    /// `open` or `closed`.
    pub state: String,
    /// Web address of the PR.
    pub html_url: String,
    /// Whether it was merged.
    #[serde(default)]
    pub merged: bool,
    /// Who merged it.
    #[serde(default)]
    pub merged_by: Option<User>,
    /// The merge commit.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    /// Source branch.
    pub head: PrBranch,
    /// Target branch.
    pub base: PrBranch,
}

/// One commit status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommitStatus {
    /// Status id (later statuses have larger ids).
    #[serde(default)]
    pub id: i64,
    /// `pending`, `success`, `error`, `failure` (Gitea calls the field `status`).
    #[serde(default)]
    pub status: Option<String>,
    /// Context, e.g. `hadron/<request>`.
    #[serde(default)]
    pub context: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Link.
    #[serde(default)]
    pub target_url: Option<String>,
}

/// The combined status of a ref (the latest status of each context).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CombinedStatus {
    /// Combined state (worst of the statuses); empty with no statuses.
    #[serde(default)]
    pub state: Option<String>,
    /// The commit.
    #[serde(default)]
    pub sha: String,
    /// Number of statuses (contexts) in all pages.
    #[serde(default)]
    pub total_count: u64,
    /// This page of statuses.
    #[serde(default)]
    pub statuses: Option<Vec<CommitStatus>>,
}

/// A team of an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Team {
    /// Team id (used in `/teams/{id}/...`).
    pub id: u64,
    /// Team name.
    pub name: String,
}

#[derive(Debug, Deserialize)]
struct TeamSearchResults {
    #[serde(default)]
    data: Vec<Team>,
}

/// A repository.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Repository {
    /// `owner/repo`.
    pub full_name: String,
    /// The default branch (base of target PRs when none is given).
    #[serde(default)]
    pub default_branch: String,
    /// Web address.
    #[serde(default)]
    pub html_url: String,
}

/// A branch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Branch {
    /// Branch name.
    pub name: String,
    /// Its tip.
    pub commit: BranchCommit,
}

/// The tip commit of a [`Branch`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BranchCommit {
    /// Commit id.
    pub id: String,
}

/// `GET /repos/{owner}/{repo}/git/commits/{sha}`: only the matched author.
#[derive(Debug, Deserialize)]
struct SingleCommit {
    #[serde(default)]
    author: Option<User>,
}

#[derive(Debug, Deserialize)]
struct GiteaMessage {
    #[serde(default)]
    message: Option<String>,
}

/// Who merged a PR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeInfo {
    /// Whether it is merged.
    pub merged: bool,
    /// Login of who merged it.
    pub merged_by: Option<String>,
    /// The merge commit.
    pub merge_commit_sha: Option<String>,
}

/// What [`GiteaClient::ensure_pr`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrAction {
    /// No open PR had that head: one was opened.
    Opened,
    /// An open PR had that head: its title or body was changed.
    Updated,
    /// An open PR had that head with the same title and body.
    Unchanged,
}

/// An open PR after [`GiteaClient::ensure_pr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsuredPr {
    /// PR number.
    pub number: u64,
    /// Web address.
    pub html_url: String,
    /// Tip of its head branch as Gitea saw it.
    pub head_sha: String,
    /// What was done.
    pub action: PrAction,
}

/// A stage line in a PR body.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageView {
    /// Stage name.
    pub name: String,
    /// Target repo (`owner/repo` or a path).
    pub repo: String,
    /// Phase, e.g. `Succeeded`.
    pub state: String,
    /// The agent's summary.
    pub summary: Option<String>,
    /// Cost, formatted (e.g. `$0.42`).
    pub cost: Option<String>,
    /// Web address of the stage's target PR, if any.
    pub pr_url: Option<String>,
}

/// A pushed commit in a PR body.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitView {
    /// Repo it was pushed to.
    pub repo: String,
    /// Full commit id.
    pub sha: String,
    /// The first 10 characters of `sha`.
    pub short: String,
    /// Link to the commit.
    pub url: String,
    /// First line of the message.
    pub subject: String,
}

impl CommitView {
    /// A commit line; `short` is derived from `sha`.
    pub fn new(repo: impl Into<String>, sha: impl Into<String>, url: impl Into<String>, subject: &str) -> Self {
        let sha = sha.into();
        let short = sha.chars().take(10).collect();
        let subject = subject.lines().next().unwrap_or("").to_owned();
        CommitView { repo: repo.into(), sha, short, url: url.into(), subject }
    }
}

/// What goes into an approval PR.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPrView {
    /// Request name.
    pub request: String,
    /// Gate name.
    pub gate: String,
    /// The request's title.
    pub request_title: String,
    /// Spec generation the approval is for.
    pub generation: String,
    /// Who asked for the change.
    pub requester: Option<String>,
    /// Stage results so far.
    pub stages: Vec<StageView>,
    /// Commits pushed so far.
    pub commits: Vec<CommitView>,
    /// Cost spent so far, formatted.
    pub cost: Option<String>,
    /// Budget, formatted.
    pub budget: Option<String>,
}

/// What goes into a PR in a target repo.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetPrView {
    /// Request name (the head branch is `hadron/<request>`).
    pub request: String,
    /// The request's title.
    pub request_title: String,
    /// The request's description.
    pub description: Option<String>,
    /// Stage results on this repo.
    pub stages: Vec<StageView>,
    /// Commits on the branch.
    pub commits: Vec<CommitView>,
    /// Cost, formatted.
    pub cost: Option<String>,
    /// Link to the request's status in the control repo.
    pub status_url: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalPrData<'a> {
    #[serde(flatten)]
    view: &'a ApprovalPrView,
    approval_path: String,
    branch: String,
    base: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TargetPrData<'a> {
    #[serde(flatten)]
    view: &'a TargetPrView,
    branch: String,
    base: &'a str,
}

/// An answer after retries.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    method: Method,
    path: String,
}

impl Answer {
    /// 2xx passes; 401/403/404 and other statuses become typed errors.
    fn ok(self) -> Result<Answer, GiteaError> {
        let (method, path) = (self.method.to_string(), self.path.clone());
        match self.status.as_u16() {
            200..=299 => Ok(self),
            401 => Err(GiteaError::Unauthorized { method, path }),
            403 => Err(GiteaError::Forbidden { method, path }),
            404 => Err(GiteaError::NotFound { method, path }),
            status => {
                let message = serde_json::from_slice::<GiteaMessage>(&self.body)
                    .ok()
                    .and_then(|m| m.message)
                    .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
                Err(GiteaError::Rejected { method, path, status, message: shorten(&message, 300) })
            }
        }
    }

    fn json<T: DeserializeOwned>(self) -> Result<T, GiteaError> {
        serde_json::from_slice(&self.body).map_err(|e| GiteaError::Decode {
            method: self.method.to_string(),
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A Gitea API client. Cheap to clone.
#[derive(Clone)]
pub struct GiteaClient {
    http: reqwest::Client,
    base: Url,
    token: Token,
    control: RepoRef,
    retry: RetryPolicy,
    templates: std::sync::Arc<Handlebars<'static>>,
    /// Open after a call failed for want of Gitea (no answer, or 5xx after
    /// every retry): further calls fail at once until [`Self::close_circuit`],
    /// so one outage costs one call's retries per pass, not every call's.
    circuit: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl fmt::Debug for GiteaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GiteaClient")
            .field("base", &self.base.as_str())
            .field("control", &self.control)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl GiteaClient {
    /// Checks the configuration, reads the token and compiles the templates.
    pub fn new(config: GiteaConfig) -> Result<Self, GiteaError> {
        let base = Url::parse(config.base_url.trim())
            .map_err(|e| GiteaError::Config(format!("base URL {:?}: {e}", config.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(GiteaError::Config(format!("base URL {:?} is not an http(s) address", config.base_url)));
        }
        if !base.username().is_empty() || base.password().is_some() || base.query().is_some() {
            return Err(GiteaError::Config(
                "the base URL must carry no user, password or query; give the token through an environment variable or file"
                    .to_owned(),
            ));
        }
        if config.retry.max_attempts == 0 {
            return Err(GiteaError::Config("retry.max_attempts must be at least 1".to_owned()));
        }
        let token = config.token.load()?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("hadron/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GiteaError::Config(format!("HTTP client: {e}")))?;
        let mut templates = Handlebars::new();
        templates.register_escape_fn(handlebars::no_escape);
        handlebars::handlebars_helper!(cell: |s: str| s.replace('|', "\\|").replace(['\r', '\n'], " "));
        templates.register_helper("cell", Box::new(cell));
        for (name, text) in [("approval-pr", APPROVAL_PR_TEMPLATE), ("target-pr", TARGET_PR_TEMPLATE)] {
            templates
                .register_template_string(name, text)
                .map_err(|e| GiteaError::Template { template: name, message: e.to_string() })?;
        }
        Ok(GiteaClient {
            http,
            base,
            token,
            control: config.control,
            retry: config.retry,
            templates: std::sync::Arc::new(templates),
            circuit: std::sync::Arc::default(),
        })
    }

    /// The control repo.
    pub fn control(&self) -> &RepoRef {
        &self.control
    }

    /// The web address of a commit: `<base>/<owner>/<repo>/commit/<sha>`.
    pub fn commit_url(&self, repo: &RepoRef, sha: &str) -> String {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend([repo.owner.as_str(), repo.repo.as_str(), "commit", sha]);
        }
        url.to_string()
    }

    fn url(&self, segments: &[&str]) -> Result<Url, GiteaError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| GiteaError::Config(format!("base URL {} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        Ok(url)
    }

    /// Sends one request, retrying 429, 5xx and transport errors.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, GiteaError> {
        let mut url = self.url(segments)?;
        let path = url.path().to_owned();
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        if let Some(why) = self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Err(GiteaError::Unreachable {
                method: method.to_string(),
                path,
                attempts: 0,
                message: format!("not tried: Gitea failed earlier in this pass ({why})"),
            });
        }
        let result = self.send_with_retries(method, url, path, body).await;
        if let Err(e @ (GiteaError::Unreachable { .. } | GiteaError::Server { .. })) = &result {
            *self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
        }
        result
    }

    /// Lets calls through again (at the start of a pass).
    pub fn close_circuit(&self) {
        *self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    async fn send_with_retries(
        &self,
        method: Method,
        url: Url,
        path: String,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, GiteaError> {
        let max = self.retry.max_attempts;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, self.token.0.clone())
                .header(ACCEPT, "application/json");
            if let Some(body) = body {
                req = req.json(body);
            }
            let (retry_after, failure) = match req.send().await {
                Err(e) => {
                    let e = e.without_url();
                    if attempt >= max {
                        return Err(GiteaError::Unreachable {
                            method: method.to_string(),
                            path,
                            attempts: attempt,
                            message: e.to_string(),
                        });
                    }
                    (None, format!("transport error: {e}"))
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        if attempt >= max {
                            return Err(GiteaError::RateLimited { method: method.to_string(), path, attempts: attempt });
                        }
                        let retry_after = resp
                            .headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        (retry_after, "429 rate limited".to_owned())
                    } else if status.is_server_error() {
                        if attempt >= max {
                            return Err(GiteaError::Server {
                                method: method.to_string(),
                                path,
                                status: status.as_u16(),
                                attempts: attempt,
                            });
                        }
                        (None, format!("server error {status}"))
                    } else {
                        match resp.bytes().await {
                            Ok(bytes) => {
                                tracing::debug!(%method, %path, status = status.as_u16(), "gitea answered");
                                return Ok(Answer { status, body: bytes.to_vec(), method, path });
                            }
                            Err(e) => {
                                let e = e.without_url();
                                if attempt >= max {
                                    return Err(GiteaError::Unreachable {
                                        method: method.to_string(),
                                        path,
                                        attempts: attempt,
                                        message: e.to_string(),
                                    });
                                }
                                (None, format!("reading the answer: {e}"))
                            }
                        }
                    }
                }
            };
            let delay = self.retry.delay(attempt, retry_after);
            tracing::warn!(%method, %path, attempt, max, delay_ms = delay.as_millis() as u64, %failure, "gitea call failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str], query: &[(&str, String)]) -> Result<T, GiteaError> {
        self.send(Method::GET, segments, query, None).await?.ok()?.json()
    }

    /// The token's user (`GET /user`): checks that the token works.
    pub async fn current_user(&self) -> Result<User, GiteaError> {
        self.get(&["user"], &[]).await
    }

    /// A repository (`GET /repos/{owner}/{repo}`).
    pub async fn repository(&self, repo: &RepoRef) -> Result<Repository, GiteaError> {
        self.get(&["repos", &repo.owner, &repo.repo], &[]).await
    }

    /// The tip of a branch (`GET /repos/{owner}/{repo}/branches/{branch}`),
    /// `None` when there is no such branch.
    pub async fn branch_head(&self, repo: &RepoRef, branch: &str) -> Result<Option<String>, GiteaError> {
        match self.get::<Branch>(&["repos", &repo.owner, &repo.repo, "branches", branch], &[]).await {
            Ok(b) => Ok(Some(b.commit.id)),
            Err(GiteaError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A PR (`GET /repos/{owner}/{repo}/pulls/{index}`).
    pub async fn pull_request(&self, repo: &RepoRef, index: u64) -> Result<PullRequest, GiteaError> {
        let index = index.to_string();
        self.get(&["repos", &repo.owner, &repo.repo, "pulls", &index], &[]).await
    }

    /// Whether a PR is merged and by whom (`merged`, `merged_by.login`).
    pub async fn merge_info(&self, repo: &RepoRef, index: u64) -> Result<MergeInfo, GiteaError> {
        let pr = self.pull_request(repo, index).await?;
        Ok(MergeInfo {
            merged: pr.merged,
            merged_by: pr.merged_by.map(|u| u.login),
            merge_commit_sha: pr.merge_commit_sha,
        })
    }

    /// The open PR whose head branch is `head`, if any
    /// (`GET /repos/{owner}/{repo}/pulls?state=open`, all pages).
    pub async fn find_open_pr(&self, repo: &RepoRef, head: &str) -> Result<Option<PullRequest>, GiteaError> {
        for page in 1..=MAX_PAGES {
            let prs: Vec<PullRequest> = self
                .get(
                    &["repos", &repo.owner, &repo.repo, "pulls"],
                    &[("state", "open".to_owned()), ("page", page.to_string()), ("limit", PAGE_LIMIT.to_string())],
                )
                .await?;
            let n = prs.len();
            if let Some(pr) = prs.into_iter().find(|p| p.head.ref_name == head && p.state == "open") {
                return Ok(Some(pr));
            }
            if n < PAGE_LIMIT {
                break;
            }
        }
        Ok(None)
    }

    /// Opens a PR from `head` to `base`, or updates the title and body of
    /// the open PR that already has that head (never a duplicate).
    pub async fn ensure_pr(
        &self,
        repo: &RepoRef,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<EnsuredPr, GiteaError> {
        let title = shorten(title, MAX_TITLE);
        if let Some(pr) = self.find_open_pr(repo, head).await? {
            return self.update_pr(repo, pr, &title, body).await;
        }
        let create = json!({ "title": title, "head": head, "base": base, "body": body });
        let answer = self.send(Method::POST, &["repos", &repo.owner, &repo.repo, "pulls"], &[], Some(&create)).await?;
        if answer.status == StatusCode::CONFLICT {
            // Opened by someone else (or by an earlier attempt whose answer
            // was lost) since the lookup: update that one.
            if let Some(pr) = self.find_open_pr(repo, head).await? {
                return self.update_pr(repo, pr, &title, body).await;
            }
        }
        let pr: PullRequest = answer.ok()?.json()?;
        tracing::info!(repo = %repo, number = pr.number, head, "opened pull request");
        Ok(EnsuredPr { number: pr.number, html_url: pr.html_url, head_sha: pr.head.sha, action: PrAction::Opened })
    }

    async fn update_pr(&self, repo: &RepoRef, pr: PullRequest, title: &str, body: &str) -> Result<EnsuredPr, GiteaError> {
        if pr.title == title && pr.body.as_deref().unwrap_or("") == body {
            return Ok(EnsuredPr {
                number: pr.number,
                html_url: pr.html_url,
                head_sha: pr.head.sha,
                action: PrAction::Unchanged,
            });
        }
        let index = pr.number.to_string();
        let edit = json!({ "title": title, "body": body });
        let updated: PullRequest = self
            .send(Method::PATCH, &["repos", &repo.owner, &repo.repo, "pulls", &index], &[], Some(&edit))
            .await?
            .ok()?
            .json()?;
        tracing::info!(repo = %repo, number = updated.number, "updated pull request");
        Ok(EnsuredPr {
            number: updated.number,
            html_url: updated.html_url,
            head_sha: updated.head.sha,
            action: PrAction::Updated,
        })
    }

    /// Title and body of an approval PR.
    pub fn render_approval_pr(&self, view: &ApprovalPrView) -> Result<(String, String), GiteaError> {
        let data = ApprovalPrData {
            view,
            approval_path: approval_path(&view.request, &view.gate),
            branch: approval_branch(&view.request, &view.gate),
            base: "main",
        };
        let body = self
            .templates
            .render("approval-pr", &data)
            .map_err(|e| GiteaError::Template { template: "approval-pr", message: e.to_string() })?;
        let title = format!("Approve {} of {}: {}", view.gate, view.request, view.request_title.trim());
        Ok((title, body))
    }

    /// Opens or updates the approval PR of a gate in the control repo, from
    /// `hadron/approve/<request>/<gate>` to `main`.
    pub async fn ensure_approval_pr(&self, view: &ApprovalPrView) -> Result<EnsuredPr, GiteaError> {
        let (title, body) = self.render_approval_pr(view)?;
        let head = approval_branch(&view.request, &view.gate);
        self.ensure_pr(&self.control, &head, "main", &title, &body).await
    }

    /// Title and body of a target-repo PR.
    pub fn render_target_pr(&self, view: &TargetPrView, base: &str) -> Result<(String, String), GiteaError> {
        let data = TargetPrData { view, branch: format!("hadron/{}", view.request), base };
        let body = self
            .templates
            .render("target-pr", &data)
            .map_err(|e| GiteaError::Template { template: "target-pr", message: e.to_string() })?;
        let title = format!("{} (hadron/{})", view.request_title.trim(), view.request);
        Ok((title, body))
    }

    /// Opens or updates the PR from `hadron/<request>` to `base` in a target
    /// repo (to its default branch when `base` is `None`).
    pub async fn ensure_target_pr(
        &self,
        repo: &RepoRef,
        base: Option<&str>,
        view: &TargetPrView,
    ) -> Result<EnsuredPr, GiteaError> {
        let base = match base {
            Some(b) => b.to_owned(),
            None => self.repository(repo).await?.default_branch,
        };
        let (title, body) = self.render_target_pr(view, &base)?;
        let head = format!("hadron/{}", view.request);
        self.ensure_pr(repo, &head, &base, &title, &body).await
    }

    /// Sets the status `hadron/<request>` on a commit
    /// (`POST /repos/{owner}/{repo}/statuses/{sha}`).
    pub async fn set_status(
        &self,
        repo: &RepoRef,
        sha: &str,
        request: &str,
        state: CommitState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<CommitStatus, GiteaError> {
        let mut body = json!({
            "state": state.as_str(),
            "context": format!("hadron/{request}"),
            "description": shorten(description, MAX_DESCRIPTION),
        });
        if let Some(url) = target_url {
            body["target_url"] = json!(url);
        }
        self.send(Method::POST, &["repos", &repo.owner, &repo.repo, "statuses", sha], &[], Some(&body))
            .await?
            .ok()?
            .json()
    }

    /// The combined status of a ref
    /// (`GET /repos/{owner}/{repo}/commits/{ref}/status`).
    ///
    /// With `contexts` (non-empty), only those contexts count and each must
    /// have a status: a missing one is [`CombinedState::Pending`]. Without,
    /// Gitea's combined state counts, and no statuses at all is `Pending`.
    /// `failure`, `error` and any state Hadron does not know are `Failure`.
    pub async fn combined_status(
        &self,
        repo: &RepoRef,
        git_ref: &str,
        contexts: Option<&[String]>,
    ) -> Result<CombinedState, GiteaError> {
        let segs = ["repos", repo.owner.as_str(), repo.repo.as_str(), "commits", git_ref, "status"];
        let mut statuses = Vec::new();
        for page in 1..=MAX_PAGES {
            let combined: CombinedStatus =
                self.get(&segs, &[("page", page.to_string()), ("limit", PAGE_LIMIT.to_string())]).await?;
            let wanted = contexts.filter(|c| !c.is_empty());
            let Some(wanted) = wanted else {
                if combined.total_count == 0 {
                    return Ok(CombinedState::Pending);
                }
                return Ok(state_of(combined.state.as_deref().unwrap_or("")));
            };
            let got = combined.statuses.unwrap_or_default();
            let n = got.len();
            statuses.extend(got);
            if n == 0 || statuses.len() as u64 >= combined.total_count {
                return Ok(combine_contexts(&statuses, wanted));
            }
        }
        match contexts {
            Some(wanted) => Ok(combine_contexts(&statuses, wanted)),
            None => Ok(CombinedState::Pending),
        }
    }

    /// The login of the Gitea user Gitea matched to the author of commit
    /// `sha` (by email), or `None` when the author is no Gitea user.
    pub async fn commit_author_login(&self, repo: &RepoRef, sha: &str) -> Result<Option<String>, GiteaError> {
        let commit: SingleCommit = self.get(&["repos", &repo.owner, &repo.repo, "git", "commits", sha], &[]).await?;
        Ok(commit.author.map(|u| u.login).filter(|l| !l.trim().is_empty()))
    }

    /// The web address of a file on a branch of `repo`
    /// (`<base>/<owner>/<repo>/src/branch/<branch>/<path>`).
    pub fn file_url(&self, repo: &RepoRef, branch: &str, path: &str) -> String {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend([repo.owner.as_str(), repo.repo.as_str(), "src", "branch", branch]);
            segs.extend(path.split('/'));
        }
        url.to_string()
    }

    /// The id of team `team` of organisation `org`
    /// (`GET /orgs/{org}/teams/search?q=`; names compare case-insensitively).
    pub async fn team_id(&self, org: &str, team: &str) -> Result<u64, GiteaError> {
        for page in 1..=MAX_PAGES {
            let found: TeamSearchResults = self
                .get(
                    &["orgs", org, "teams", "search"],
                    &[("q", team.to_owned()), ("page", page.to_string()), ("limit", PAGE_LIMIT.to_string())],
                )
                .await?;
            let n = found.data.len();
            if let Some(t) = found.data.into_iter().find(|t| t.name.eq_ignore_ascii_case(team)) {
                return Ok(t.id);
            }
            if n < PAGE_LIMIT {
                break;
            }
        }
        Err(GiteaError::TeamNotFound { org: org.to_owned(), team: team.to_owned() })
    }

    /// Whether `login` is a member of `org/team`
    /// (`GET /teams/{id}/members/{username}`: 200 yes, 404 no).
    pub async fn is_team_member(&self, org_team: &str, login: &str) -> Result<bool, GiteaError> {
        let (org, team) = match org_team.trim().split_once('/') {
            Some((o, t)) if !o.is_empty() && !t.is_empty() && !t.contains('/') => (o, t),
            _ => return Err(GiteaError::Config(format!("approver team {org_team:?} is not of the form org/team"))),
        };
        let id = self.team_id(org, team).await?.to_string();
        let answer = self.send(Method::GET, &["teams", &id, "members", login], &[], None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        answer.ok()?;
        Ok(true)
    }

    /// The teams of `policy.teams` that `login` is a member of.
    pub async fn teams_of(&self, login: &str, policy: &ApproverPolicy) -> Result<Vec<String>, GiteaError> {
        let mut member_of = Vec::new();
        for team in &policy.teams {
            if self.is_team_member(team, login).await? {
                member_of.push(team.clone());
            }
        }
        Ok(member_of)
    }

    /// [`approver_allowed`] with team membership looked up on Gitea, only
    /// when the users list does not already decide.
    pub async fn approver_decision(
        &self,
        login: &str,
        requester_login: Option<&str>,
        policy: &ApproverPolicy,
    ) -> Result<ApproverDecision, GiteaError> {
        let first = approver_allowed(login, requester_login, policy, &[]);
        if first != ApproverDecision::NotAllowed || policy.teams.is_empty() || login.trim().is_empty() {
            return Ok(first);
        }
        let teams = self.teams_of(login.trim(), policy).await?;
        Ok(approver_allowed(login, requester_login, policy, &teams))
    }
}

fn state_of(s: &str) -> CombinedState {
    match s {
        "success" => CombinedState::Success,
        "pending" => CombinedState::Pending,
        _ => CombinedState::Failure,
    }
}

/// The state over `wanted` contexts: the latest status of each (largest id).
fn combine_contexts(statuses: &[CommitStatus], wanted: &[String]) -> CombinedState {
    let mut pending = false;
    for context in wanted {
        let latest = statuses.iter().filter(|s| &s.context == context).max_by_key(|s| s.id);
        match latest.map(|s| state_of(s.status.as_deref().unwrap_or(""))) {
            None | Some(CombinedState::Pending) => pending = true,
            Some(CombinedState::Failure) => return CombinedState::Failure,
            Some(CombinedState::Success) => {}
        }
    }
    if pending { CombinedState::Pending } else { CombinedState::Success }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: i64, context: &str, status: &str) -> CommitStatus {
        CommitStatus {
            id,
            status: Some(status.to_owned()),
            context: context.to_owned(),
            description: None,
            target_url: None,
        }
    }

    #[test]
    fn contexts_use_latest_status_and_missing_is_pending() {
        let s = vec![st(1, "ci", "failure"), st(2, "ci", "success"), st(3, "lint", "pending")];
        assert_eq!(combine_contexts(&s, &["ci".to_owned()]), CombinedState::Success);
        assert_eq!(combine_contexts(&s, &["ci".to_owned(), "lint".to_owned()]), CombinedState::Pending);
        assert_eq!(combine_contexts(&s, &["ci".to_owned(), "other".to_owned()]), CombinedState::Pending);
        let s = vec![st(1, "ci", "success"), st(2, "lint", "error"), st(3, "x", "pending")];
        assert_eq!(combine_contexts(&s, &["x".to_owned(), "lint".to_owned()]), CombinedState::Failure);
        assert_eq!(state_of("warning"), CombinedState::Failure);
    }

    #[test]
    fn backoff_doubles_is_bounded_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        let d1 = p.delay(1, None);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
        let d3 = p.delay(3, None);
        assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
        assert!(p.delay(30, None) <= Duration::from_millis(1000));
        assert_eq!(p.delay(1, Some(Duration::from_millis(700))), Duration::from_millis(700));
        assert_eq!(p.delay(1, Some(Duration::from_secs(60))), Duration::from_millis(1000));
    }

    #[test]
    fn repo_ref_parses_owner_and_repo_only() {
        assert_eq!(RepoRef::parse("acme/api").expect("valid"), RepoRef::new("acme", "api"));
        for bad in ["acme", "/api", "acme/", "a/b/c"] {
            let e = RepoRef::parse(bad).expect_err("invalid");
            assert_eq!(e.reason(), "GiteaConfigInvalid");
        }
    }

    #[test]
    fn token_debug_is_redacted_and_empty_tokens_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token\n").expect("write");
        let token = TokenSource::File(file.clone()).load().expect("token loads");
        assert_eq!(token.0.to_str().expect("ascii"), "token s3cret-token");
        assert!(!format!("{token:?}").contains("s3cret"));
        std::fs::write(&file, "\n").expect("write");
        let e = TokenSource::File(file).load().expect_err("empty token");
        assert_eq!(e.reason(), "GiteaTokenUnreadable");
        let e = TokenSource::File(dir.path().join("missing")).load().expect_err("missing file");
        assert_eq!(e.reason(), "GiteaTokenUnreadable");
    }
}
