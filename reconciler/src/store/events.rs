//! The `events` table: the append-only audit log.
//!
//! There is no update API and the database refuses updates (triggers); the
//! only deletion is [`Store::prune_events`], which first moves the retention
//! cut-off forward: the database refuses to delete any event newer than it.

use super::{Event, NewEvent, Store, StoreError};

/// Appends `$event` inside the open transaction `$tx`; evaluates to the new id.
macro_rules! insert_event {
    ($tx:expr, $event:expr, $op:expr) => {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO events (at, request, actor, action, revision, detail) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind($event.at)
        .bind(&$event.request)
        .bind(&$event.actor)
        .bind(&$event.action)
        .bind(&$event.revision)
        .bind(&$event.detail)
        .fetch_one(&mut *$tx)
        .await
        .map_err(|e| $crate::store::StoreError::query($op, e))
    };
}
pub(super) use insert_event;

impl Store {
    /// Appends an event and returns its id (larger than every earlier id).
    pub async fn append_event(&self, event: &NewEvent) -> Result<i64, StoreError> {
        const OP: &str = "append event";
        with_pool!(self, pool => {
            let mut tx = begin_write!(self, pool, OP).await?;
            let id = insert_event!(tx, event, OP)?;
            tx.commit().await.map_err(|e| StoreError::query(OP, e))?;
            Ok(id)
        })
    }

    /// Appends several events in one transaction, in order (one fsync for
    /// a pass's phase changes, not one per request).
    pub async fn append_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        const OP: &str = "append events";
        if events.is_empty() {
            return Ok(());
        }
        with_pool!(self, pool => {
            let mut tx = begin_write!(self, pool, OP).await?;
            // Multi-row statements: ids are given in the order of the rows.
            for chunk in events.chunks(super::rows_per_statement(6)) {
                let mut query = sqlx::QueryBuilder::new("INSERT INTO events (at, request, actor, action, revision, detail) ");
                query.push_values(chunk, |mut row, event| {
                    row.push_bind(event.at)
                        .push_bind(&event.request)
                        .push_bind(&event.actor)
                        .push_bind(&event.action)
                        .push_bind(&event.revision)
                        .push_bind(&event.detail);
                });
                query.build().persistent(false).execute(&mut *tx).await.map_err(|e| StoreError::query(OP, e))?;
            }
            tx.commit().await.map_err(|e| StoreError::query(OP, e))
        })
    }

    /// Deletes the events older than `before` (unix ms), the retention
    /// window's end; returns how many. The cut-off never moves back.
    pub async fn prune_events(&self, before: i64) -> Result<u64, StoreError> {
        const OP: &str = "prune events";
        with_pool!(self, pool => {
            let mut tx = begin_write!(self, pool, OP).await?;
            sqlx::query("UPDATE event_retention SET pruned_before = $1 WHERE id = 1 AND pruned_before < $1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::query(OP, e))?;
            let deleted = sqlx::query("DELETE FROM events WHERE at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::query(OP, e))?
                .rows_affected();
            tx.commit().await.map_err(|e| StoreError::query(OP, e))?;
            Ok(deleted)
        })
    }

    /// The events about `request`, oldest first; at most `limit`, the most recent ones.
    pub async fn events_for_request(&self, request: &str, limit: u32) -> Result<Vec<Event>, StoreError> {
        let mut events = with_pool!(self, pool => {
            sqlx::query_as::<_, Event>(
                "SELECT id, at, request, actor, action, revision, detail FROM events \
                 WHERE request = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(request)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("list events of a request", e))?
        });
        events.reverse();
        Ok(events)
    }

    /// The events with an id greater than `after_id`, oldest first, at most `limit`.
    ///
    /// Pass `0` to read from the start, then the last id seen to tail the log.
    pub async fn events_after(&self, after_id: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        with_pool!(self, pool => {
            sqlx::query_as::<_, Event>(
                "SELECT id, at, request, actor, action, revision, detail FROM events \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("tail events", e))
        })
    }
}
