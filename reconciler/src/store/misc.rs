//! Small tables: webhook delivery dedup (`webhook_deliveries`), CI results
//! (`commit_statuses`) and the key-value table (`kv`) under the typed API of
//! [`super::kv`].

use super::{Store, StoreError};

/// `kv` key of the last control-repo revision fully reconciled.
const LAST_REVISION_KEY: &str = "source.last_revision";

impl Store {
    /// Records webhook delivery `delivery_id`; returns `false` when it was seen before.
    pub async fn record_delivery(&self, delivery_id: &str, event: &str, received_at: i64) -> Result<bool, StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO webhook_deliveries (delivery_id, event, received_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (delivery_id) DO NOTHING",
            )
            .bind(delivery_id)
            .bind(event)
            .bind(received_at)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(|e| StoreError::query("record webhook delivery", e))
        })
    }

    /// Forgets deliveries received before `before` (unix ms); returns how many.
    pub async fn prune_deliveries(&self, before: i64) -> Result<u64, StoreError> {
        write_once!(self, "prune webhook deliveries", |tx| {
            sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected())
                .map_err(|e| StoreError::query("prune webhook deliveries", e))
        })
    }

    /// The last control-repo revision fully reconciled, if any.
    pub async fn last_revision(&self) -> Result<Option<String>, StoreError> {
        self.kv_get(LAST_REVISION_KEY).await
    }

    /// Sets the last control-repo revision fully reconciled.
    pub async fn set_last_revision(&self, revision: &str, at: i64) -> Result<(), StoreError> {
        self.kv_set(LAST_REVISION_KEY, revision, at).await
    }

    /// A value of the `kv` table.
    pub(crate) async fn kv_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>("SELECT value FROM kv WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(|e| StoreError::query("read kv", e))
        })
    }

    /// Sets a value of the `kv` table.
    pub(crate) async fn kv_set(&self, key: &str, value: &str, at: i64) -> Result<(), StoreError> {
        write_once!(self, "set kv", |tx| {
            sqlx::query(
                "INSERT INTO kv (key, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(key)
            .bind(value)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::query("set kv", e))
        })
    }

    /// Every `kv` entry whose key starts with `prefix`, in key order (one query).
    pub(crate) async fn kv_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        // A key range instead of LIKE: no escaping of `%` and `_` in names.
        let mut upper = prefix.to_owned();
        let last = upper.pop().map_or('\u{10FFFF}', |c| char::from_u32(u32::from(c) + 1).unwrap_or('\u{10FFFF}'));
        upper.push(last);
        with_pool!(self, pool => {
            sqlx::query_as::<_, (String, String)>("SELECT key, value FROM kv WHERE key >= $1 AND key < $2 ORDER BY key")
                .bind(prefix)
                .bind(&upper)
                .fetch_all(pool)
                .await
                .map_err(|e| StoreError::query("read kv by prefix", e))
        })
    }

    /// Forgets CI results recorded before `before` (unix ms); returns how many.
    pub async fn prune_commit_statuses(&self, before: i64) -> Result<u64, StoreError> {
        write_once!(self, "prune commit statuses", |tx| {
            sqlx::query("DELETE FROM commit_statuses WHERE at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected())
                .map_err(|e| StoreError::query("prune commit statuses", e))
        })
    }

    /// Sets (`Some`) or removes (`None`) several `kv` entries in one
    /// transaction and a few multi-row statements; the last entry of a key wins.
    pub(crate) async fn kv_write_all(&self, entries: &[(String, Option<&str>)], at: i64) -> Result<(), StoreError> {
        const OP: &str = "write kv";
        if entries.is_empty() {
            return Ok(());
        }
        let entries = super::last_per_key(entries, |(key, _)| key.clone());
        let sets: Vec<(&str, &str)> = entries.iter().filter_map(|(key, value)| Some((key.as_str(), (*value)?))).collect();
        let removes: Vec<&str> = entries.iter().filter(|(_, value)| value.is_none()).map(|(key, _)| key.as_str()).collect();
        with_pool!(self, pool => {
            let mut tx = begin_write!(self, pool, OP).await?;
            for chunk in removes.chunks(super::rows_per_statement(1)) {
                let mut query = sqlx::QueryBuilder::new("DELETE FROM kv WHERE key IN (");
                let mut keys = query.separated(", ");
                for key in chunk {
                    keys.push_bind(*key);
                }
                query.push(")");
                query.build().persistent(false).execute(&mut *tx).await.map_err(|e| StoreError::query(OP, e))?;
            }
            for chunk in sets.chunks(super::rows_per_statement(3)) {
                let mut query = sqlx::QueryBuilder::new("INSERT INTO kv (key, value, updated_at) ");
                query.push_values(chunk, |mut row, (key, value)| {
                    row.push_bind(*key).push_bind(*value).push_bind(at);
                });
                query.push(" ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at");
                query.build().persistent(false).execute(&mut *tx).await.map_err(|e| StoreError::query(OP, e))?;
            }
            tx.commit().await.map_err(|e| StoreError::query(OP, e))
        })
    }

    /// Records a commit status (`pending`, `success` or `failure`) of a target-repo commit.
    pub async fn set_commit_status(&self, repo: &str, commit: &str, context: &str, state: &str, at: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO commit_statuses (repo, commit_sha, context, state, at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (repo, commit_sha, context) DO UPDATE SET state = excluded.state, at = excluded.at",
            )
            .bind(repo)
            .bind(commit)
            .bind(context)
            .bind(state)
            .bind(at)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::query("set commit status", e))
        })
    }

    /// Every commit status of one commit: (context, state).
    pub async fn commit_statuses(&self, repo: &str, commit: &str) -> Result<Vec<(String, String)>, StoreError> {
        with_pool!(self, pool => {
            sqlx::query_as::<_, (String, String)>(
                "SELECT context, state FROM commit_statuses WHERE repo = $1 AND commit_sha = $2 ORDER BY context",
            )
            .bind(repo)
            .bind(commit)
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("read commit statuses", e))
        })
    }
}
