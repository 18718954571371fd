//! Errors of the HTTP server, each with a stable reason string and an HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// Everything the server can answer with an error, or fail on at start.
///
/// Messages never contain the webhook secret nor the signature a client sent.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request body is larger than the configured limit.
    #[error("the request body is larger than {limit} bytes; Gitea payloads are far smaller, check the sender")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },

    /// The request body could not be read from the connection.
    #[error("cannot read the request body: {detail}")]
    BodyRead {
        /// What the transport reported.
        detail: String,
    },

    /// No webhook secret is configured, so no delivery can be verified.
    #[error("webhooks are disabled: Hadron has no webhook secret configured; set one in Hadron and in the Gitea webhook")]
    SecretNotConfigured,

    /// The delivery carries no (or an empty) `X-Gitea-Signature` header.
    #[error("the delivery is not signed (no X-Gitea-Signature); give the Gitea webhook the same secret as Hadron")]
    SignatureMissing,

    /// The signature does not match the body under the configured secret.
    #[error("the X-Gitea-Signature does not match the body; the webhook secret in Gitea differs from Hadron's, or the body was altered")]
    SignatureMismatch,

    /// A header Gitea always sends is missing or not valid text.
    #[error("the header {header} is missing or not valid; Hadron accepts deliveries from Gitea webhooks only")]
    MissingHeader {
        /// The header name.
        header: &'static str,
    },

    /// A signed payload of an event Hadron acts on does not have the expected shape.
    #[error("the {event} payload does not have the shape Hadron expects: {source}")]
    InvalidPayload {
        /// The `X-Gitea-Event` value.
        event: String,
        /// What serde reported.
        source: serde_json::Error,
    },

    /// The trigger queue of the reconcile loop is full; the delivery was not recorded.
    #[error("the reconcile loop is busy (trigger queue full); the delivery was not recorded, redeliver it from Gitea")]
    QueueFull,

    /// The reconcile loop no longer takes triggers (Hadron is stopping).
    #[error("Hadron is shutting down and takes no more triggers; redeliver once it is back")]
    ShuttingDown,

    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The control repo has not been fetched yet.
    #[error("not ready: the control repo has not been fetched yet")]
    NotReady,

    /// Reconcile passes keep failing.
    #[error("reconcile passes keep failing: {0}")]
    PassesFailing(String),

    /// A dashboard page could not be rendered from its template.
    #[error("cannot render the page: {0}")]
    Render(String),

    /// No object of that kind and name exists.
    #[error("no {kind} named {name:?}")]
    NotFound {
        /// The kind, e.g. `request`.
        kind: &'static str,
        /// The name looked up.
        name: String,
    },

    /// The configured webhook secret is empty.
    #[error("the webhook secret is empty; use a long random string, or configure no secret to disable webhooks")]
    EmptySecret,

    /// The client did not send the body in time.
    #[error("the request body did not arrive within {seconds} s; send the whole body at once")]
    BodyTimeout {
        /// The limit.
        seconds: u64,
    },

    /// A peer already holds as many event streams as it may.
    #[error(
        "{peer} already holds {limit} event streams, the most one address may (--max-event-streams-per-peer raises it); close one, or retry later"
    )]
    TooManyStreamsFromPeer {
        /// The peer's address.
        peer: std::net::IpAddr,
        /// The limit.
        limit: usize,
    },

    /// As many event streams are open as the server holds.
    #[error("the server holds {limit} event streams already, its most (--max-event-streams raises it); retry later")]
    TooManyStreams {
        /// The limit.
        limit: usize,
    },

    /// A peer's connections are all busy and as many as it may open.
    #[error(
        "{peer} already has {limit} connections open, all busy, the most one address may (--max-connections-per-peer raises it); retry later"
    )]
    TooManyConnectionsFromPeer {
        /// The peer's address.
        peer: std::net::IpAddr,
        /// The limit.
        limit: usize,
    },

    /// The server's connections are all busy and as many as it takes.
    #[error("the server has {limit} connections open, all busy, its most (--max-connections raises it); retry later")]
    TooManyConnections {
        /// The limit.
        limit: usize,
    },

    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}; check that the address is free and allowed")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The server stopped with an I/O error.
    #[error("the HTTP server failed: {source}")]
    Serve {
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ServerError {
    /// A stable CamelCase reason for HTTP bodies, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "PayloadTooLarge",
            Self::BodyRead { .. } => "BodyRead",
            Self::BodyTimeout { .. } => "BodyTimeout",
            Self::SecretNotConfigured => "WebhookSecretNotConfigured",
            Self::SignatureMissing => "SignatureMissing",
            Self::SignatureMismatch => "SignatureMismatch",
            Self::MissingHeader { .. } => "MissingHeader",
            Self::InvalidPayload { .. } => "InvalidPayload",
            Self::QueueFull => "TriggerQueueFull",
            Self::ShuttingDown => "ShuttingDown",
            Self::Store(e) => e.reason(),
            Self::NotReady => "NotReady",
            Self::PassesFailing(_) => "PassesFailing",
            Self::NotFound { .. } => "NotFound",
            Self::Render(_) => "RenderFailed",
            Self::EmptySecret => "EmptyWebhookSecret",
            Self::TooManyStreamsFromPeer { .. } => "TooManyEventStreamsFromPeer",
            Self::TooManyStreams { .. } => "TooManyEventStreams",
            Self::TooManyConnectionsFromPeer { .. } => "TooManyConnectionsFromPeer",
            Self::TooManyConnections { .. } => "TooManyConnections",
            Self::Bind { .. } => "Bind",
            Self::Serve { .. } => "Serve",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead { .. } | Self::MissingHeader { .. } | Self::InvalidPayload { .. } => StatusCode::BAD_REQUEST,
            Self::SecretNotConfigured | Self::SignatureMissing | Self::SignatureMismatch => StatusCode::UNAUTHORIZED,
            Self::QueueFull
            | Self::ShuttingDown
            | Self::Store(_)
            | Self::NotReady
            | Self::PassesFailing(_)
            | Self::TooManyStreams { .. }
            | Self::TooManyConnections { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyStreamsFromPeer { .. } | Self::TooManyConnectionsFromPeer { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::EmptySecret | Self::Bind { .. } | Self::Serve { .. } | Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `result` label of `hadron_webhook_deliveries_total` for a delivery failing so.
    pub fn delivery_result(&self) -> &'static str {
        match self.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::REQUEST_TIMEOUT => "timeout",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "error",
        }
    }
}

impl ServerError {
    /// Whether this refuses a client over a limit: answered with
    /// `Retry-After` and `Connection: close`.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::TooManyStreamsFromPeer { .. }
                | Self::TooManyStreams { .. }
                | Self::TooManyConnectionsFromPeer { .. }
                | Self::TooManyConnections { .. }
        )
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.reason(), "message": self.to_string() })
    }

    /// The whole HTTP/1.1 response, as written to a connection refused at
    /// accept (before any request of it was read).
    pub fn raw_response(&self) -> Vec<u8> {
        let body = self.body().to_string();
        let status = self.status();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            super::RETRY_AFTER_SECONDS,
            body.len()
        )
        .into_bytes()
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let limit = self.is_limit();
        let mut response = (self.status(), Json(self.body())).into_response();
        if limit {
            let headers = response.headers_mut();
            headers.insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(super::RETRY_AFTER_SECONDS));
            headers.insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}
