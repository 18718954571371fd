//! What a [`GiteaClient`](super::GiteaClient) is built from: [`RepoRef`],
//! [`TokenSource`] (and the redacted [`Token`] it loads) and [`GiteaConfig`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::HeaderValue;

use super::error::GiteaError;
use super::retry::RetryPolicy;

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
    pub(super) fn load(&self) -> Result<Token, GiteaError> {
        let (from, raw) = match self {
            TokenSource::Env(name) => {
                let from = format!("environment variable {name}");
                let raw = std::env::var(name).map_err(|e| GiteaError::Token { from: from.clone(), why: e.to_string() })?;
                (from, raw)
            }
            TokenSource::File(path) => {
                let from = format!("file {}", path.display());
                let raw = std::fs::read_to_string(path).map_err(|e| GiteaError::Token { from: from.clone(), why: e.to_string() })?;
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
pub(super) struct Token(pub(super) HeaderValue);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
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
    /// How long an answer about a team (its id, whether a user is a member)
    /// is used before Gitea is asked again.
    pub membership_ttl: Duration,
}

/// How long team ids and memberships are kept by default: someone added to
/// or removed from an approver team counts within a minute.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(60);

impl GiteaConfig {
    /// A configuration with default retries, a 30 s request timeout and
    /// team answers kept for [`MEMBERSHIP_TTL`].
    pub fn new(base_url: impl Into<String>, token: TokenSource, control: RepoRef) -> Self {
        GiteaConfig {
            base_url: base_url.into(),
            token,
            control,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
            membership_ttl: MEMBERSHIP_TTL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
