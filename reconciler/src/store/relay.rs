//! Triggers relayed between replicas (PostgreSQL `LISTEN`/`NOTIFY`): a
//! webhook that reaches a follower is verified and recorded there, then
//! sent on [`TRIGGER_CHANNEL`] to the replica that leads, which runs a pass
//! at once instead of at its next poll. Notifications are not stored: one
//! sent while the leader reconnects is lost, and the poll catches up.

use sqlx::postgres::PgListener;

use super::{Pool, Store, StoreError};
use crate::reconcile::trigger::Trigger;

/// The channel relayed triggers go on.
pub const TRIGGER_CHANNEL: &str = "hadron_triggers";

/// A trigger one replica relays to the others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Relayed {
    /// The identity of the replica that received it (its own relays are
    /// not taken back by a leader that received the webhook itself).
    pub from: String,
    /// The trigger.
    pub trigger: Trigger,
}

/// Where a leader hears relayed triggers.
pub struct RelayListener(PgListener);

impl std::fmt::Debug for RelayListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayListener")
    }
}

impl RelayListener {
    /// The next relayed trigger. A payload that is not a [`Relayed`] (sent
    /// by something else on the channel) is skipped with a warning; a lost
    /// connection is re-established (notifications meanwhile are lost).
    pub async fn next(&mut self) -> Result<Relayed, StoreError> {
        loop {
            let note = self.0.recv().await.map_err(|e| StoreError::query("receive a relayed trigger", e))?;
            match serde_json::from_str::<Relayed>(note.payload()) {
                Ok(relayed) => return Ok(relayed),
                Err(e) => tracing::warn!(channel = TRIGGER_CHANNEL, "ignored a notification that is not a relayed trigger: {e}"),
            }
        }
    }
}

impl Store {
    /// Sends `relayed` to every replica listening; `false` (nothing sent) on
    /// SQLite, which runs one replica.
    pub async fn relay(&self, relayed: &Relayed) -> Result<bool, StoreError> {
        let Pool::Postgres(pool) = &self.pool else { return Ok(false) };
        let payload = serde_json::to_string(relayed).map_err(|e| StoreError::corrupt(format!("a trigger that cannot be relayed: {e}")))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(TRIGGER_CHANNEL)
            .bind(payload)
            .execute(pool)
            .await
            .map(|_| true)
            .map_err(|e| StoreError::query("relay a trigger", e))
    }

    /// Listens for relayed triggers (PostgreSQL only).
    pub async fn relay_listener(&self) -> Result<RelayListener, StoreError> {
        let pool = match &self.pool {
            Pool::Postgres(pool) => pool,
            Pool::Sqlite(_) => return Err(StoreError::LeaseUnsupported { location: self.location.clone() }),
        };
        let mut listener = PgListener::connect_with(pool).await.map_err(|e| StoreError::query("listen for relayed triggers", e))?;
        listener.listen(TRIGGER_CHANNEL).await.map_err(|e| StoreError::query("listen for relayed triggers", e))?;
        Ok(RelayListener(listener))
    }
}
