//! Probes, metrics, the read-only JSON API and the server-sent event stream.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::conn::{Peer, Scope, StreamSlot};
use super::metrics::CONTENT_TYPE;
use super::{ServerError, ServerState};
use crate::store::RequestRecord;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the store answers and the control repo was fetched once.
pub async fn readyz(State(state): State<ServerState>) -> Response {
    if let Err(e) = state.store().last_revision().await {
        let e = ServerError::from(e);
        tracing::warn!(reason = e.reason(), error = %e, "readiness: store does not answer");
        return e.into_response();
    }
    if !state.is_ready() {
        return ServerError::NotReady.into_response();
    }
    if let Some(why) = state.failing() {
        return ServerError::PassesFailing(why).into_response();
    }
    Json(serde_json::json!({ "status": "ready" })).into_response()
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub async fn metrics(State(state): State<ServerState>) -> Response {
    let text = state.metrics().render(state.is_ready());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// A request as the API shows it: the fields of `status:` in
/// `status/<request>.yaml` the store holds, plus the request's name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRequest {
    /// The request's `metadata.name`.
    pub name: String,
    /// Control-repo commit the status was computed from.
    pub observed_revision: String,
    /// Spec generation the status describes.
    pub observed_generation: String,
    /// Where the request is in its lifecycle, e.g. `Running`.
    pub phase: String,
    /// Stage running or last run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// One human sentence about the present state.
    pub message: String,
    /// When the store record was written (unix ms).
    pub updated_at: i64,
}

impl From<RequestRecord> for ApiRequest {
    fn from(r: RequestRecord) -> Self {
        Self {
            name: r.name,
            observed_revision: r.observed_revision,
            observed_generation: r.generation,
            phase: r.phase,
            stage: r.stage,
            message: r.message,
            updated_at: r.updated_at,
        }
    }
}

/// Longest `message` of a request in the list, in characters (cut with `…`;
/// `GET /api/v1/requests/{name}` has it whole).
pub const LIST_MESSAGE_CHARS: usize = 500;

/// `GET /api/v1/requests`: `{ "items": [ApiRequest…] }`, ordered by name,
/// each message cut to [`LIST_MESSAGE_CHARS`].
pub async fn list_requests(State(state): State<ServerState>) -> Result<Response, ServerError> {
    let items: Vec<ApiRequest> = state
        .store()
        .list_requests()
        .await?
        .into_iter()
        .map(|r| ApiRequest { message: super::shown(&r.message, LIST_MESSAGE_CHARS), ..r.into() })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

/// `GET /api/v1/requests/{name}`: one [`ApiRequest`], or 404.
pub async fn get_request(State(state): State<ServerState>, Path(name): Path<String>) -> Result<Json<ApiRequest>, ServerError> {
    match state.store().get_request(&name).await? {
        Some(record) => Ok(Json(record.into())),
        None => Err(ServerError::NotFound { kind: "request", name }),
    }
}

/// `GET /api/v1/events`: one `phase` event per [`crate::reconcile::PhaseChange`] sent on
/// the broadcast channel, as JSON. A client too slow to keep up gets a
/// `lagged` event with the number of events it missed. The stream ends when
/// the server shuts down. Beyond the per-peer or total limit of streams, the
/// client is refused at once (429 / 503, `Retry-After`).
pub async fn events(State(state): State<ServerState>, peer: Option<Extension<Peer>>) -> Response {
    let peer = peer.map(|Extension(Peer(ip))| ip);
    let slot = match state.streams().open_stream(peer) {
        Ok(slot) => slot,
        Err(scope) => {
            let (total, per_peer) = state.streams().limits();
            return match (scope, peer) {
                (Scope::Peer, Some(peer)) => ServerError::TooManyStreamsFromPeer { peer, limit: per_peer },
                _ => ServerError::TooManyStreams { limit: total },
            }
            .into_response();
        }
    };
    stream(state, slot).into_response()
}

fn stream(state: ServerState, slot: StreamSlot) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.subscribe_events();
    let closing = state.closing();
    // The slot lives as long as the stream: its end frees the place.
    let stream = futures_util::stream::unfold((rx, closing, slot), |(mut rx, mut closing, slot)| async move {
        loop {
            let got = tokio::select! {
                _ = closing.wait_for(|c| *c) => return None,
                got = rx.recv() => got,
            };
            let event = match got {
                Ok(phase) => match serde_json::to_string(&phase) {
                    Ok(json) => Event::default().event("phase").data(json),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot encode a phase event; skipped");
                        continue;
                    }
                },
                Err(RecvError::Lagged(missed)) => Event::default().event("lagged").data(missed.to_string()),
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok(event), (rx, closing, slot)));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Any other path: a JSON 404.
pub async fn not_found() -> impl IntoResponse {
    let body = serde_json::json!({ "error": "NotFound", "message": "no such endpoint" });
    (StatusCode::NOT_FOUND, Json(body))
}
