//! The `outbox` table: status writes recorded before they are pushed, so a
//! crash between commit and push loses nothing.

use std::collections::BTreeMap;

use super::{OutboxEntry, OutboxFiles, OutboxState, Store, StoreError};

/// An `outbox` row as the databases return it.
#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    created_at: i64,
    message: String,
    files: String,
    state: String,
    published_commit: Option<String>,
    published_at: Option<i64>,
}

impl TryFrom<OutboxRow> for OutboxEntry {
    type Error = StoreError;

    fn try_from(row: OutboxRow) -> Result<Self, StoreError> {
        let files: OutboxFiles = serde_json::from_str(&row.files).map_err(|e| {
            StoreError::corrupt(format!("files of outbox entry {} are not a JSON map of path to content or null: {e}", row.id))
        })?;
        Ok(OutboxEntry {
            id: row.id,
            created_at: row.created_at,
            message: row.message,
            files,
            state: row.state.parse()?,
            published_commit: row.published_commit,
            published_at: row.published_at,
        })
    }
}

macro_rules! outbox_columns {
    () => {
        "id, created_at, message, files, state, published_commit, published_at"
    };
}

impl Store {
    /// Records a pending status write (commit `message` changing `files`:
    /// path → new content, or `None` to remove) and returns its id.
    pub async fn put_outbox<K, V>(&self, message: &str, files: &BTreeMap<K, Option<V>>, created_at: i64) -> Result<i64, StoreError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        const OP: &str = "put outbox entry";
        let rows: Vec<(&str, Option<&str>)> = files.iter().map(|(k, v)| (k.as_ref(), v.as_ref().map(AsRef::as_ref))).collect();
        with_pool!(self, pool => {
            let mut tx = begin_write!(self, pool, OP).await?;
            let id = sqlx::query_scalar::<_, i64>(
                "INSERT INTO outbox (created_at, message, files, state) \
                 VALUES ($1, $2, '{}', 'pending') RETURNING id",
            )
            .bind(created_at)
            .bind(message)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::query(OP, e))?;
            for chunk in rows.chunks(super::rows_per_statement(3)) {
                let mut query = sqlx::QueryBuilder::new("INSERT INTO outbox_files (outbox_id, path, content) ");
                query.push_values(chunk, |mut row, (path, content)| {
                    row.push_bind(id).push_bind(*path).push_bind(*content);
                });
                query.build().persistent(false).execute(&mut *tx).await.map_err(|e| StoreError::query(OP, e))?;
            }
            tx.commit().await.map_err(|e| StoreError::query(OP, e))?;
            Ok(id)
        })
    }

    /// The files of outbox entry `id` kept in rows of their own, added to
    /// what its `files` column holds (entries written before there were rows).
    async fn with_file_rows(&self, mut entry: OutboxEntry) -> Result<OutboxEntry, StoreError> {
        const OP: &str = "read outbox files";
        let rows: Vec<(String, Option<String>)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT path, content FROM outbox_files WHERE outbox_id = $1 ORDER BY path")
                .bind(entry.id)
                .fetch_all(pool)
                .await
                .map_err(|e| StoreError::query(OP, e))?
        });
        entry.files.extend(rows);
        Ok(entry)
    }

    /// The pending entries, oldest first (publish them in this order).
    pub async fn pending_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, OutboxRow>(concat!(
                "SELECT ", outbox_columns!(), " FROM outbox WHERE state = 'pending' ORDER BY id"
            ))
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("list pending outbox entries", e))?
        });
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            entries.push(self.with_file_rows(OutboxEntry::try_from(row)?).await?);
        }
        Ok(entries)
    }

    /// The entry with `id`, pending or published.
    pub async fn get_outbox(&self, id: i64) -> Result<Option<OutboxEntry>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as::<_, OutboxRow>(concat!(
                "SELECT ", outbox_columns!(), " FROM outbox WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(|e| StoreError::query("get outbox entry", e))?
        });
        match row {
            Some(row) => Ok(Some(self.with_file_rows(OutboxEntry::try_from(row)?).await?)),
            None => Ok(None),
        }
    }

    /// Marks entry `id` as published by `commit`.
    ///
    /// Repeating it with the same commit is a no-op; a different commit for an
    /// entry already published is a [`StoreError::Conflict`]; an unknown id is
    /// [`StoreError::NotFound`].
    pub async fn mark_published(&self, id: i64, commit: &str, published_at: i64) -> Result<(), StoreError> {
        const OP: &str = "mark outbox entry published";
        let changed = write_once!(self, OP, |tx| {
            sqlx::query(
                "UPDATE outbox SET state = 'published', published_commit = $2, published_at = $3 \
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(commit)
            .bind(published_at)
            .execute(&mut *tx)
            .await
            .map(|done| done.rows_affected())
            .map_err(|e| StoreError::query(OP, e))
        })?;
        if changed == 1 {
            return Ok(());
        }
        match self.get_outbox(id).await? {
            None => Err(StoreError::NotFound { kind: "outbox entry", key: id.to_string() }),
            Some(entry) if entry.state == OutboxState::Published && entry.published_commit.as_deref() == Some(commit) => Ok(()),
            Some(entry) => Err(StoreError::Conflict {
                op: OP,
                detail: format!(
                    "outbox entry {id} was already published as {}; it cannot also be {commit}",
                    entry.published_commit.as_deref().unwrap_or("an unknown commit")
                ),
            }),
        }
    }

    /// Deletes entries published before `before` (unix ms), dead letters
    /// included; pending entries are never touched. Returns how many.
    pub async fn prune_outbox(&self, before: i64) -> Result<u64, StoreError> {
        write_once!(self, "prune outbox", |tx| {
            sqlx::query("DELETE FROM outbox WHERE state = 'published' AND published_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected())
                .map_err(|e| StoreError::query("prune outbox", e))
        })
    }
}
