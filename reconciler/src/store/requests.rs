//! The `requests` table: what Hadron last observed about each change request.

use super::{RequestRecord, Store, StoreError};

impl Store {
    /// Inserts or replaces the record for `record.name`.
    pub async fn upsert_request(&self, record: &RequestRecord) -> Result<(), StoreError> {
        self.upsert_requests(std::slice::from_ref(record)).await
    }

    /// Inserts or replaces several records in one transaction (one fsync
    /// for a whole pass, not one per request) and a few multi-row
    /// statements; the last record of a name wins.
    pub async fn upsert_requests(&self, records: &[RequestRecord]) -> Result<(), StoreError> {
        const OP: &str = "upsert requests";
        if records.is_empty() {
            return Ok(());
        }
        let records = super::last_per_key(records, |r| r.name.clone());
        with_pool!(self, pool => {
            let mut tx = begin_write!(self, pool, OP).await?;
            for chunk in records.chunks(super::rows_per_statement(8)) {
                // `created_at` is set by the insert only: a conflict keeps it.
                let mut query = sqlx::QueryBuilder::new(
                    "INSERT INTO requests (name, generation, observed_revision, phase, stage, message, updated_at, created_at) ",
                );
                query.push_values(chunk, |mut row, record| {
                    row.push_bind(&record.name)
                        .push_bind(&record.generation)
                        .push_bind(&record.observed_revision)
                        .push_bind(&record.phase)
                        .push_bind(&record.stage)
                        .push_bind(&record.message)
                        .push_bind(record.updated_at)
                        .push_bind(record.updated_at);
                });
                query.push(
                    " ON CONFLICT (name) DO UPDATE SET \
                         generation = excluded.generation, \
                         observed_revision = excluded.observed_revision, \
                         phase = excluded.phase, \
                         stage = excluded.stage, \
                         message = excluded.message, \
                         updated_at = excluded.updated_at",
                );
                query.build().persistent(false).execute(&mut *tx).await.map_err(|e| StoreError::query(OP, e))?;
            }
            tx.commit().await.map_err(|e| StoreError::query(OP, e))
        })
    }

    /// The record for request `name`, if any.
    pub async fn get_request(&self, name: &str) -> Result<Option<RequestRecord>, StoreError> {
        with_pool!(self, pool => {
            sqlx::query_as::<_, RequestRecord>(
                "SELECT name, generation, observed_revision, phase, stage, message, updated_at \
                 FROM requests WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(|e| StoreError::query("get request", e))
        })
    }

    /// When each request was first recorded (unix ms), by name.
    pub async fn request_ages(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        with_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64)>("SELECT name, COALESCE(created_at, updated_at) FROM requests")
                .fetch_all(pool)
                .await
                .map(|rows| rows.into_iter().collect())
                .map_err(|e| StoreError::query("request ages", e))
        })
    }

    /// All request records, ordered by name.
    pub async fn list_requests(&self) -> Result<Vec<RequestRecord>, StoreError> {
        with_pool!(self, pool => {
            sqlx::query_as::<_, RequestRecord>(
                "SELECT name, generation, observed_revision, phase, stage, message, updated_at \
                 FROM requests ORDER BY name",
            )
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("list requests", e))
        })
    }

    /// Deletes the record for `name` together with its attempts (events stay).
    /// Returns whether a record existed.
    pub async fn delete_request(&self, name: &str) -> Result<bool, StoreError> {
        write_once!(self, "delete request", |tx| {
            sqlx::query("DELETE FROM requests WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected() > 0)
                .map_err(|e| StoreError::query("delete request", e))
        })
    }
}
