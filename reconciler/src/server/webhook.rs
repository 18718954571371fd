//! `POST /hooks/gitea`: verify, record, trigger. No other work happens here.
//!
//! Order of checks, each before the next: the body is read with the size
//! limit (413), the `X-Gitea-Signature` is verified over the raw bytes with a
//! constant-time compare (401), the headers are read (400), the payload of an
//! event Hadron acts on is parsed (400), a slot in the trigger queue is
//! reserved (503, nothing recorded), the delivery id is recorded (a
//! redelivery answers 200 `duplicate` and triggers nothing), and the trigger
//! is sent (202). What a delivery says happened is never evidence: the loop
//! reads the forge's own record (for an approval, the PR as Gitea's API
//! shows it).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::mpsc::error::TrySendError;

use super::{ControlRepoId, ServerError, ServerState, Trigger, WebhookSecret};

/// Header carrying the event name, e.g. `push`.
pub const EVENT_HEADER: &str = "X-Gitea-Event";
/// Header carrying the delivery's UUID.
pub const DELIVERY_HEADER: &str = "X-Gitea-Delivery";
/// Header carrying the lowercase hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "X-Gitea-Signature";

/// Longest delivery id accepted (Gitea sends a 36-character UUID).
const MAX_DELIVERY_ID: usize = 128;

/// The lowercase hex HMAC-SHA256 of `body` keyed by `secret`, as Gitea sends it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    hex::encode(mac(secret, body).finalize().into_bytes())
}

/// Whether `signature` (hex, as in `X-Gitea-Signature`) is the HMAC-SHA256 of
/// `body` under `secret`. The comparison of the MAC is constant-time.
pub fn verify_signature(secret: &[u8], body: &[u8], signature: &str) -> bool {
    match hex::decode(signature.trim()) {
        Ok(given) => mac(secret, body).verify_slice(&given).is_ok(),
        Err(_) => false,
    }
}

fn mac(secret: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("because HMAC accepts keys of any length");
    mac.update(body);
    mac
}

/// What Hadron makes of a verified delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send this trigger to the loop.
    Trigger(Trigger),
    /// Nothing to do; the reason says why.
    Ignore(&'static str),
}

/// Decides what a verified delivery of `event` with `body` means for Hadron.
///
/// Only `push`, `pull_request` and `status` payloads are parsed; any other
/// event is ignored unread. The deprecated `secret` field of old payloads is
/// never read.
pub fn classify(event: &str, body: &[u8], control: &ControlRepoId) -> Result<Decision, ServerError> {
    let invalid = |source| ServerError::InvalidPayload { event: event.to_owned(), source };
    match event {
        "push" => {
            let push: PushPayload = serde_json::from_slice(body).map_err(invalid)?;
            let repo = &push.repository.full_name;
            let branch = push.git_ref.strip_prefix("refs/heads/");
            if control.is_control(repo) && branch == Some(control.branch.as_str()) {
                return Ok(Decision::Trigger(Trigger::ControlPush { after: push.after }));
            }
            if control.watches(repo) {
                let commit = Some(push.after).filter(|c| !is_zero_oid(c));
                return Ok(Decision::Trigger(Trigger::TargetActivity { repo: repo.clone(), commit }));
            }
            Ok(Decision::Ignore("push to a repository or branch Hadron does not watch"))
        }
        "status" => {
            let status: StatusPayload = serde_json::from_slice(body).map_err(invalid)?;
            let repo = &status.repository.full_name;
            if control.watches(repo) {
                let commit = Some(status.sha).filter(|c| !c.is_empty());
                return Ok(Decision::Trigger(Trigger::TargetActivity { repo: repo.clone(), commit }));
            }
            Ok(Decision::Ignore("commit status of a repository Hadron does not watch"))
        }
        "pull_request" => {
            let pr: PullRequestPayload = serde_json::from_slice(body).map_err(invalid)?;
            if matches!(pr.action.as_str(), "opened" | "reopened" | "synchronized") {
                return Ok(plan_preview(&pr, control));
            }
            approval_merge(pr, control)
        }
        // A review asking for changes (Gitea's X-Gitea-Event for it, and its
        // Event-Type): a reason to read the approval PR's reviews, nothing more.
        "pull_request_rejected" | "pull_request_review_rejected" => {
            let pr: PullRequestPayload = serde_json::from_slice(body).map_err(invalid)?;
            Ok(approval_review(&pr, control))
        }
        _ => Ok(Decision::Ignore("event Hadron does not act on")),
    }
}

/// A pull request into the control branch that was opened, reopened or
/// pushed to: its plan preview is due (Hadron's own approval branches need none).
fn plan_preview(pr: &PullRequestPayload, control: &ControlRepoId) -> Decision {
    let p = &pr.pull_request;
    if !control.is_control(&pr.repository.full_name) {
        return Decision::Ignore("pull request outside the control repo");
    }
    if strip_heads(&p.base.git_ref) != control.branch {
        return Decision::Ignore("pull request into another branch than the control branch");
    }
    if parse_approval_branch(strip_heads(&p.head.git_ref)).is_some() {
        return Decision::Ignore("Hadron's own approval pull request");
    }
    match p.number.or(pr.number) {
        Some(number) => Decision::Trigger(Trigger::PullRequestChanged { number }),
        None => Decision::Ignore("pull request event without a number"),
    }
}

/// A review of one of Hadron's approval PRs in the control repo.
fn approval_review(pr: &PullRequestPayload, control: &ControlRepoId) -> Decision {
    let p = &pr.pull_request;
    if !control.is_control(&pr.repository.full_name) || strip_heads(&p.base.git_ref) != control.branch {
        return Decision::Ignore("review of a pull request Hadron does not watch");
    }
    match parse_approval_branch(strip_heads(&p.head.git_ref)) {
        Some((request, gate)) => Decision::Trigger(Trigger::ApprovalReviewed { request, gate }),
        None => Decision::Ignore("review of a pull request that is not an approval"),
    }
}

/// An approval PR merged into the control branch (a reason to ask Gitea who
/// merged it, never the answer), or nothing.
fn approval_merge(pr: PullRequestPayload, control: &ControlRepoId) -> Result<Decision, ServerError> {
    let p = pr.pull_request;
    if pr.action != "closed" || p.merged != Some(true) {
        return Ok(Decision::Ignore("pull request event other than a merge"));
    }
    if !control.is_control(&pr.repository.full_name) {
        return Ok(Decision::Ignore("pull request merged outside the control repo"));
    }
    if strip_heads(&p.base.git_ref) != control.branch {
        return Ok(Decision::Ignore("pull request merged into another branch than the control branch"));
    }
    // A PR from a fork could carry any branch name: only the control repo's own branches count.
    if p.head.repo.as_ref().is_some_and(|r| !control.is_control(&r.full_name)) {
        return Ok(Decision::Ignore("pull request from another repository"));
    }
    let Some((request, gate)) = parse_approval_branch(strip_heads(&p.head.git_ref)) else {
        return Ok(Decision::Ignore("merged pull request is not an approval"));
    };
    let merged_by_login = p.merged_by.map(|u| u.login).filter(|l| !l.is_empty()).or(pr.sender.map(|u| u.login).filter(|l| !l.is_empty()));
    let Some(merged_by_login) = merged_by_login else {
        return Err(ServerError::InvalidPayload {
            event: "pull_request".to_owned(),
            source: serde::de::Error::custom("merged approval PR names no merger (merged_by and sender are empty)"),
        });
    };
    let merge_commit = p.merge_commit_sha.filter(|c| !c.is_empty());
    Ok(Decision::Trigger(Trigger::ApprovalMerged { request, gate, merged_by_login, merge_commit }))
}

pub use crate::gates::parse_approval_branch;

fn strip_heads(git_ref: &str) -> &str {
    git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref)
}

fn is_zero_oid(oid: &str) -> bool {
    !oid.is_empty() && oid.bytes().all(|b| b == b'0')
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Debug, Deserialize)]
struct User {
    login: String,
}

#[derive(Debug, Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct StatusPayload {
    sha: String,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct PullRequestPayload {
    action: String,
    #[serde(default)]
    number: Option<u64>,
    pull_request: PullRequest,
    repository: Repository,
    sender: Option<User>,
}

#[derive(Debug, Deserialize)]
struct PullRequest {
    #[serde(default)]
    number: Option<u64>,
    merged: Option<bool>,
    merged_by: Option<User>,
    merge_commit_sha: Option<String>,
    head: BranchRef,
    base: BranchRef,
}

#[derive(Debug, Deserialize)]
struct BranchRef {
    #[serde(rename = "ref")]
    git_ref: String,
    repo: Option<Repository>,
}

/// What a successful delivery came to.
enum Outcome {
    Accepted(&'static str),
    Ignored(&'static str),
    Duplicate,
}

/// The handler of `POST /hooks/gitea`.
pub async fn gitea(State(state): State<ServerState>, headers: HeaderMap, body: Body) -> Response {
    match handle(&state, &headers, body).await {
        Ok(Outcome::Accepted(kind)) => {
            state.metrics().inc_delivery("accepted", None);
            state.metrics().inc_trigger(kind);
            let body = serde_json::json!({ "result": "accepted", "trigger": kind });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Ok(Outcome::Ignored(reason)) => {
            state.metrics().inc_delivery("ignored", None);
            let body = serde_json::json!({ "result": "ignored", "message": reason });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Ok(Outcome::Duplicate) => {
            state.metrics().inc_delivery("duplicate", None);
            let body = serde_json::json!({
                "result": "duplicate",
                "message": "this delivery was received before; nothing to do",
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            state.metrics().inc_delivery(e.delivery_result(), Some(e.reason()));
            tracing::warn!(reason = e.reason(), error = %e, "webhook delivery refused");
            e.into_response()
        }
    }
}

async fn handle(state: &ServerState, headers: &HeaderMap, body: Body) -> Result<Outcome, ServerError> {
    let limit = state.body_limit();
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ServerError::TooLarge { limit });
    }
    let timeout = state.limits().body_read_timeout;
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ServerError::BodyTimeout { seconds: timeout.as_secs() })?;
    let body = collected.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            ServerError::TooLarge { limit }
        } else {
            ServerError::BodyRead { detail: e.to_string() }
        }
    })?;
    let body = body.to_bytes();

    verify(state.webhook_secret(), headers, &body)?;

    let event = text_header(headers, EVENT_HEADER)?;
    let delivery = text_header(headers, DELIVERY_HEADER)?;
    if delivery.len() > MAX_DELIVERY_ID {
        return Err(ServerError::MissingHeader { header: DELIVERY_HEADER });
    }

    let trigger = match classify(event, &body, state.control())? {
        Decision::Trigger(trigger) => trigger,
        Decision::Ignore(reason) => {
            if !state.store().record_delivery(delivery, event, crate::time::now()).await? {
                return Ok(Outcome::Duplicate);
            }
            tracing::debug!(event, delivery, reason, "webhook delivery ignored");
            return Ok(Outcome::Ignored(reason));
        }
    };
    // Reserve the queue slot first: a delivery that cannot be queued is not recorded,
    // so a redelivery from Gitea is not mistaken for a duplicate.
    let permit = state.triggers().try_reserve().map_err(|e| match e {
        TrySendError::Full(()) => ServerError::QueueFull,
        TrySendError::Closed(()) => ServerError::ShuttingDown,
    })?;
    // A merged approval PR is only a reason to look: what the delivery says
    // (who merged, which commit) is not recorded, and the loop asks Gitea's
    // API instead. A signed delivery is no more evidence than an unsigned one
    // would be: whoever holds the secret could have written it.
    if !state.store().record_delivery(delivery, event, crate::time::now()).await? {
        return Ok(Outcome::Duplicate);
    }
    let kind = trigger.kind();
    tracing::info!(event, delivery, trigger = kind, "webhook delivery accepted");
    // With several replicas, the one that leads may be another: it hears
    // of the delivery too (best effort: its poll is the safety net).
    if let Some(from) = state.relay_from() {
        let relayed = crate::reconcile::trigger::Relayed { from: from.to_owned(), trigger: trigger.clone() };
        if let Err(e) = state.store().relay(&relayed.to_payload()).await {
            tracing::warn!(
                delivery,
                reason = e.reason(),
                "relaying the webhook to the leader failed: {e}; it sees the change at its next poll"
            );
        }
    }
    permit.send(trigger);
    Ok(Outcome::Accepted(kind))
}

/// Checks `X-Gitea-Signature` against `body`.
fn verify(secret: Option<&WebhookSecret>, headers: &HeaderMap, body: &[u8]) -> Result<(), ServerError> {
    let secret = secret.ok_or(ServerError::SecretNotConfigured)?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(ServerError::SignatureMissing)?;
    if verify_signature(secret.expose(), body, signature) { Ok(()) } else { Err(ServerError::SignatureMismatch) }
}

fn text_header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, ServerError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(ServerError::MissingHeader { header: name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_branches_parse_only_with_two_labels() {
        assert_eq!(parse_approval_branch("hadron/approve/fix/review"), Some(("fix".to_owned(), "review".to_owned())));
        assert_eq!(parse_approval_branch("hadron/approve/fix"), None);
        assert_eq!(parse_approval_branch("hadron/approve/fix/review/x"), None);
        assert_eq!(parse_approval_branch("hadron/approve/Fix/review"), None);
        assert_eq!(parse_approval_branch("feature"), None);
    }

    #[test]
    fn signature_rejects_bad_hex_and_wrong_length() {
        let good = sign(b"k", b"body");
        assert!(verify_signature(b"k", b"body", &good));
        assert!(!verify_signature(b"k", b"body", "zz"));
        assert!(!verify_signature(b"k", b"body", &good[..62]));
        assert!(!verify_signature(b"other", b"body", &good));
    }
}
