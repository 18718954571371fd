//! Errors of the git source, with a stable reason string for each kind.

use gix::error::Class;

/// Everything that can go wrong while fetching or reading the control repo.
///
/// Each variant maps to a stable CamelCase [`reason`](SourceError::reason) used in
/// status conditions, metrics and logs. Messages never contain credentials: URLs are
/// shown with any user info stripped (see [`crate::redact::url_credentials`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration itself is unusable (bad URL, bad branch name).
    #[error("invalid source configuration: {message}")]
    InvalidConfig {
        /// What is wrong, in plain words.
        message: String,
    },
    /// The remote refused our credentials or asked for credentials we do not have.
    #[error("authentication to {url} failed: {message}")]
    AuthFailed {
        /// The (redacted) remote URL.
        url: String,
        /// The underlying error chain.
        message: String,
    },
    /// The repository does not exist at the configured location (or is not a git repository).
    #[error("repository {url} not found: {message}")]
    RepoNotFound {
        /// The (redacted) remote URL.
        url: String,
        /// The underlying error chain.
        message: String,
    },
    /// The repository exists but has no such branch (or no commits at all).
    #[error("branch {branch:?} not found in {url}")]
    BranchNotFound {
        /// The (redacted) remote URL.
        url: String,
        /// The configured branch.
        branch: String,
    },
    /// A transient transport problem (connection refused, timeout, 5xx, …). Worth retrying.
    #[error("network error talking to {url}: {message}")]
    Network {
        /// The (redacted) remote URL.
        url: String,
        /// The underlying error chain.
        message: String,
    },
    /// The remote or the local mirror holds data that is not valid git data.
    #[error("corrupt repository data: {message}")]
    Corrupt {
        /// The underlying error chain.
        message: String,
    },
    /// A revision asked for is not present in the local mirror.
    #[error("revision {revision} is not in the local mirror")]
    UnknownRevision {
        /// The hex object id that was asked for.
        revision: String,
    },
    /// Local file-system trouble (data dir not writable, …).
    #[error("i/o error while {context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// git reported the operation as cancelled.
    #[error("fetch interrupted")]
    Interrupted,
    /// A git error that fits none of the classes above.
    #[error("git error: {message}")]
    Git {
        /// The underlying error chain.
        message: String,
    },
}

impl SourceError {
    /// Stable CamelCase reason string for status conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::InvalidConfig { .. } => "InvalidConfig",
            SourceError::AuthFailed { .. } => "AuthFailed",
            SourceError::RepoNotFound { .. } => "RepoNotFound",
            SourceError::BranchNotFound { .. } => "BranchNotFound",
            SourceError::Network { .. } => "Network",
            SourceError::Corrupt { .. } => "Corrupt",
            SourceError::UnknownRevision { .. } => "UnknownRevision",
            SourceError::Io { .. } => "Io",
            SourceError::Interrupted => "Interrupted",
            SourceError::Git { .. } => "GitError",
        }
    }

    /// `true` for the repository-or-branch-is-missing errors.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SourceError::RepoNotFound { .. } | SourceError::BranchNotFound { .. })
    }

    /// `true` if retrying the same operation soon may succeed without anyone changing
    /// anything: network trouble, local I/O trouble and unclassified git errors.
    /// Authentication, missing repos or branches, corrupt data and bad configuration
    /// need a human (the regular poll interval will still try again later).
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Network { .. } | SourceError::Io { .. } | SourceError::Git { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SourceError::Io { context: context.into(), source }
    }

    /// Classify a gix error that happened while talking to the remote at `url`.
    ///
    /// gix classifies most of its errors itself ([`gix::error::Class`]); we map the
    /// dominant class, then fall back to the I/O error kinds found in the chain.
    ///
    /// For a local remote (`local`: plain path or `file://`) the "server" is a
    /// `git upload-pack` child process; if it ends mid-conversation while the path exists,
    /// the repository is damaged (git refuses to serve broken objects), so such
    /// end-of-stream errors are reported as [`SourceError::Corrupt`] rather than
    /// [`SourceError::Network`].
    pub(crate) fn from_remote(err: &gix::Error, url: &str, local: bool) -> Self {
        let url = crate::redact::url_credentials(url);
        let message = chain_message(err);
        match err.dominant_class() {
            Some(Class::Cancelled) => return SourceError::Interrupted,
            Some(Class::Unauthenticated | Class::PermissionDenied) => {
                return SourceError::AuthFailed { url, message };
            }
            Some(Class::Corruption) => return SourceError::Corrupt { message },
            Some(Class::NotFound) => return SourceError::RepoNotFound { url, message },
            Some(Class::Retryable | Class::ResourceExhaustion(_)) => {
                return SourceError::Network { url, message };
            }
            Some(_) | None => {}
        }
        for cause in err.iter_errors() {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as K;
                match io.kind() {
                    K::NotFound => return SourceError::RepoNotFound { url, message },
                    K::UnexpectedEof | K::BrokenPipe if local => {
                        return SourceError::Corrupt {
                            message: format!("git upload-pack for {url} ended unexpectedly (damaged repository?): {message}"),
                        };
                    }
                    K::PermissionDenied => return SourceError::AuthFailed { url, message },
                    K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::TimedOut
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::NetworkDown
                    | K::AddrNotAvailable => return SourceError::Network { url, message },
                    _ => {}
                }
            }
        }
        // gix reports a local path that exists but is no repository as a
        // validation error mentioning the path; git calls that "not a git repository".
        let lower = message.to_ascii_lowercase();
        if lower.contains("not a git repository")
            || lower.contains("could not find a git repository")
            || lower.contains("does not appear to be a git repository")
        {
            return SourceError::RepoNotFound { url, message };
        }
        SourceError::Git { message }
    }

    /// Classify a gix error that happened while reading the local mirror.
    pub(crate) fn from_local(err: &gix::Error) -> Self {
        let message = chain_message(err);
        match err.dominant_class() {
            Some(Class::Corruption) => SourceError::Corrupt { message },
            Some(Class::Cancelled) => SourceError::Interrupted,
            _ => {
                for cause in err.iter_errors() {
                    if let Some(io) = cause.downcast_ref::<std::io::Error>()
                        && io.kind() != std::io::ErrorKind::NotFound
                    {
                        return SourceError::Io { context: message, source: std::io::Error::new(io.kind(), io.to_string()) };
                    }
                }
                SourceError::Git { message }
            }
        }
    }
}

/// All messages of an error chain joined by `: `, deduplicating repeats.
fn chain_message(err: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.iter_errors() {
        let text = cause.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p == &text) {
            parts.push(text);
        }
    }
    if parts.is_empty() { err.to_string() } else { parts.join(": ") }
}
