//! [`GiteaError`]: the errors of the Gitea client and their stable reason strings.

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
    /// A write was not sent: the leader lease is not held for certain.
    #[error("{method} {path} was not sent: {lost}")]
    LeaseLost {
        /// HTTP method.
        method: String,
        /// Path of the call.
        path: String,
        /// Why the lease is not held.
        lost: crate::leader::LeaseLost,
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
            GiteaError::LeaseLost { .. } => "LeaseLost",
        }
    }

    /// True for errors that may go away by themselves (rate limits, server
    /// errors, an unreachable server); the loop retries those later, while
    /// the others need a person to fix something.
    pub fn is_transient(&self) -> bool {
        matches!(self, GiteaError::RateLimited { .. } | GiteaError::Server { .. } | GiteaError::Unreachable { .. })
    }
}
