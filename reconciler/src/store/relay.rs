//! Triggers relayed between replicas (PostgreSQL `LISTEN`/`NOTIFY`): a
//! webhook that reaches a follower is verified and recorded there, then
//! sent on [`TRIGGER_CHANNEL`] to the replica that leads, which runs a pass
//! at once instead of at its next poll. Notifications are not stored: one
//! sent while the leader reconnects is lost, and the poll catches up. The
//! store carries payloads; `reconcile::trigger::Relayed` is what they hold.

use sqlx::postgres::PgListener;

use super::{Pool, Store, StoreError};

/// The channel relayed triggers go on.
pub const TRIGGER_CHANNEL: &str = "hadron_triggers";

/// Where a leader hears relayed triggers.
pub struct RelayListener(PgListener);

impl std::fmt::Debug for RelayListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayListener")
    }
}

impl RelayListener {
    /// The next payload on [`TRIGGER_CHANNEL`]; a lost connection is
    /// re-established (notifications meanwhile are lost).
    pub async fn next(&mut self) -> Result<String, StoreError> {
        let note = self.0.recv().await.map_err(|e| StoreError::query("receive a relayed trigger", e))?;
        Ok(note.payload().to_owned())
    }
}

impl Store {
    /// Sends `payload` to every replica listening; `false` (nothing sent) on
    /// SQLite, which runs one replica.
    pub async fn relay(&self, payload: &str) -> Result<bool, StoreError> {
        let Pool::Postgres(pool) = &self.pool else { return Ok(false) };
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
