//! A small Gitea REST API client (API v1, works with Gitea 1.14 to 1.22).
//!
//! Only the calls Hadron makes, each decoded into a struct with only the
//! fields Hadron reads. The token comes from an environment variable or a
//! file, is sent as `Authorization: token <t>` and is never logged or shown
//! in errors. Rate limits (429), server errors (5xx) and transport errors are
//! retried with exponential backoff; 401, 403 and 404 are typed errors.
//!
//! The client is split by seam: `error` (the error enum and its reasons),
//! `config` (repo references, the token, the client configuration), `retry`
//! (the backoff policy), `transport` (HTTP sending, retries and the circuit
//! breaker), `wire` (the JSON Gitea sends), `templates` (PR bodies) and one
//! file per endpoint group: `repos`, `pulls`, `statuses` and `teams`.

mod comments;
mod config;
mod error;
mod pulls;
mod repos;
mod retry;
mod statuses;
mod teams;
mod templates;
mod transport;
mod wire;

use std::fmt;

use handlebars::Handlebars;
use reqwest::Url;

pub use config::{GiteaConfig, MEMBERSHIP_TTL, RepoRef, TokenSource};
pub use error::GiteaError;
pub use pulls::{EnsuredPr, MergeInfo, PrAction};
pub use retry::RetryPolicy;
pub use templates::{APPROVAL_PR_TEMPLATE, ApprovalPrView, CommitView, StageView, TARGET_PR_TEMPLATE, TargetPrView};
pub use wire::{CombinedStatus, Comment, CommitStatus, PrBranch, PullRequest, Repository, Team, User};

use config::Token;

/// Page size for list calls (Gitea's default maximum is 50).
const PAGE_LIMIT: usize = 50;
/// Most pages read from one list call before giving up on finding more.
const MAX_PAGES: u32 = 100;

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
    /// Checked before every call that changes something (not GET).
    lease: crate::leader::LeaseGuard,
    /// Team ids and memberships, each kept for the configured time to live.
    teams: std::sync::Arc<std::sync::Mutex<teams::TeamCache>>,
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
    /// Checks `lease` before every write (POST, PATCH, PUT, DELETE): a
    /// deposed leader sends none.
    pub fn set_lease(&mut self, lease: crate::leader::LeaseGuard) {
        self.lease = lease;
    }

    /// Checks the configuration, reads the token and compiles the templates.
    pub fn new(config: GiteaConfig) -> Result<Self, GiteaError> {
        let base = Url::parse(config.base_url.trim()).map_err(|e| GiteaError::Config(format!("base URL {:?}: {e}", config.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(GiteaError::Config(format!("base URL {:?} is not an http(s) address", config.base_url)));
        }
        if !base.username().is_empty() || base.password().is_some() || base.query().is_some() {
            return Err(GiteaError::Config(
                "the base URL must carry no user, password or query; give the token through an environment variable or file".to_owned(),
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
        let templates = templates::markdown_templates_fencing_agent_text()?;
        Ok(GiteaClient {
            http,
            base,
            token,
            control: config.control,
            retry: config.retry,
            templates: std::sync::Arc::new(templates),
            circuit: std::sync::Arc::default(),
            lease: crate::leader::LeaseGuard::unguarded(),
            teams: std::sync::Arc::new(std::sync::Mutex::new(teams::TeamCache::new(config.membership_ttl))),
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
}
