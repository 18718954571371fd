//! The rows the store keeps, as plain Rust values.
//!
//! All timestamps are unix milliseconds (`i64`), given by the caller so that
//! tests and the planner control time.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::StoreError;

/// What Hadron last observed and decided about one change request.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RequestRecord {
    /// The request's `metadata.name`.
    pub name: String,
    /// Hash of the request's spec (the `observedGeneration` in status).
    pub generation: String,
    /// The control-repo commit this record was computed from.
    pub observed_revision: String,
    /// The phase, e.g. `Running` (the model owns the list).
    pub phase: String,
    /// The current stage, if any.
    pub stage: Option<String>,
    /// A human-readable message.
    pub message: String,
    /// When this record was written (unix ms).
    pub updated_at: i64,
}

/// The life cycle of one worker run, stored by name.
pub use crate::attempt::AttemptState;

impl FromStr for AttemptState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttemptState::parse(s).ok_or_else(|| StoreError::corrupt(format!("unknown attempt state {s:?}")))
    }
}

/// The intent to run one worker, recorded before the worker is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttempt {
    /// Deterministic worker name, e.g. `hadron-<request>-<stage>-<attempt>`.
    pub worker_name: String,
    /// The request this worker serves (must already be recorded).
    pub request: String,
    /// The request generation the worker was started for.
    pub generation: String,
    /// The stage name.
    pub stage: String,
    /// The target repository (URL) the worker changes.
    pub repo: String,
    /// The attempt number within (request, stage, repo), from 1.
    pub attempt: u32,
    /// The driver that runs the worker, e.g. `local` or `kubernetes`.
    pub driver: String,
    /// When the intent was recorded (unix ms).
    pub created_at: i64,
}

/// One worker run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Deterministic worker name (primary key).
    pub worker_name: String,
    /// The request this worker serves.
    pub request: String,
    /// The request generation the worker was started for.
    pub generation: String,
    /// The stage name.
    pub stage: String,
    /// The target repository.
    pub repo: String,
    /// The attempt number.
    pub attempt: u32,
    /// The driver that runs the worker.
    pub driver: String,
    /// The current state.
    pub state: AttemptState,
    /// When the intent was recorded (unix ms).
    pub created_at: i64,
    /// When the worker was first seen running (unix ms).
    pub started_at: Option<i64>,
    /// When the attempt reached a terminal state (unix ms).
    pub finished_at: Option<i64>,
    /// Reported cost in US dollars.
    pub cost_usd: Option<f64>,
    /// Reported input tokens.
    pub tokens_in: Option<u64>,
    /// Reported output tokens.
    pub tokens_out: Option<u64>,
    /// The worker's result document.
    pub result: Option<serde_json::Value>,
    /// The commit the worker pushed, if any.
    pub pushed_commit: Option<String>,
}

/// A state change of an attempt, with whatever the worker reported.
///
/// `None` fields keep the stored value.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptUpdate {
    /// The new state.
    pub state: AttemptState,
    /// When the change was observed (unix ms). Sets `started_at` on the first
    /// `Running` and `finished_at` on the first terminal state.
    pub at: i64,
    /// Reported cost in US dollars.
    pub cost_usd: Option<f64>,
    /// Reported input tokens.
    pub tokens_in: Option<u64>,
    /// Reported output tokens.
    pub tokens_out: Option<u64>,
    /// The worker's result document.
    pub result: Option<serde_json::Value>,
    /// The commit the worker pushed.
    pub pushed_commit: Option<String>,
}

impl AttemptUpdate {
    /// An update to `state` at `at` that reports nothing else.
    pub fn state(state: AttemptState, at: i64) -> Self {
        Self { state, at, cost_usd: None, tokens_in: None, tokens_out: None, result: None, pushed_commit: None }
    }
}

/// What [`Store::insert_attempt`](super::Store::insert_attempt) found.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptInsert {
    /// The stored attempt: the new one, or the earlier one with the same worker name.
    pub attempt: Attempt,
    /// `true` when a row with this worker name already existed (nothing was written).
    pub existed: bool,
}

/// An audit event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When it happened (unix ms).
    pub at: i64,
    /// The request it concerns, if any.
    pub request: Option<String>,
    /// Who did it: `hadron`, a worker name, or a person.
    pub actor: String,
    /// What happened, e.g. `attempt.created`.
    pub action: String,
    /// The control-repo revision it was decided at, if any.
    pub revision: Option<String>,
    /// Free-form detail.
    pub detail: String,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Event {
    /// Increasing id; later appends have larger ids.
    pub id: i64,
    /// When it happened (unix ms).
    pub at: i64,
    /// The request it concerns, if any.
    pub request: Option<String>,
    /// Who did it.
    pub actor: String,
    /// What happened.
    pub action: String,
    /// The control-repo revision, if any.
    pub revision: Option<String>,
    /// Free-form detail.
    pub detail: String,
}

/// Files of a status write: path → new content, or `None` to delete the file.
pub type OutboxFiles = BTreeMap<String, Option<String>>;

/// Whether an outbox entry has reached the control repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    /// Not yet pushed.
    Pending,
    /// Pushed as `published_commit`.
    Published,
}

impl OutboxState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
        }
    }
}

impl FromStr for OutboxState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "published" => Ok(Self::Published),
            other => Err(StoreError::corrupt(format!("unknown outbox state {other:?}"))),
        }
    }
}

/// A status write waiting for (or done with) its push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Increasing id; publish in id order.
    pub id: i64,
    /// When it was put (unix ms).
    pub created_at: i64,
    /// The commit message.
    pub message: String,
    /// The files to write or delete.
    pub files: OutboxFiles,
    /// Pending or published.
    pub state: OutboxState,
    /// The commit that published it.
    pub published_commit: Option<String>,
    /// When it was published (unix ms).
    pub published_at: Option<i64>,
}
