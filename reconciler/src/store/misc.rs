//! Small tables: webhook delivery dedup (`webhook_deliveries`) and the
//! key-value table holding the last reconciled revision (`kv`).

use super::{MergeRecord, Store, StoreError};

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
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
                .bind(before)
                .execute(pool)
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
    pub async fn kv_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>("SELECT value FROM kv WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(|e| StoreError::query("read kv", e))
        })
    }

    /// Sets a value of the `kv` table.
    pub async fn kv_set(&self, key: &str, value: &str, at: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO kv (key, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(key)
            .bind(value)
            .bind(at)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::query("set kv", e))
        })
    }

    /// Every `kv` entry whose key starts with `prefix`, in key order (one query).
    pub async fn kv_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
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

    /// Records who merged the approval PR of `request`'s `gate` (from a webhook).
    pub async fn record_approval_merge(&self, request: &str, gate: &str, record: &MergeRecord, at: i64) -> Result<(), StoreError> {
        let text = serde_json::to_string(record).expect("because a merge record of strings serialises");
        self.kv_set(&approval_merged_key(request, gate), &text, at).await
    }

    /// The merge of the approval PR of `request`'s `gate`, if a webhook
    /// reported one; an unreadable record counts as none.
    pub async fn approval_merge(&self, request: &str, gate: &str) -> Result<Option<MergeRecord>, StoreError> {
        Ok(self.kv_get(&approval_merged_key(request, gate)).await?.and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Removes the `kv` entries of requests that are gone: every key
    /// `<prefix><request>` or `<prefix><request>/…` under one of `prefixes`
    /// whose request is not in `keep`. Returns how many.
    pub async fn kv_prune_requests(&self, prefixes: &[&str], keep: &std::collections::BTreeSet<String>) -> Result<u64, StoreError> {
        let mut removed = 0;
        for prefix in prefixes {
            for (key, _) in self.kv_with_prefix(prefix).await? {
                let request = key[prefix.len()..].split('/').next().unwrap_or("");
                if !keep.contains(request) {
                    self.kv_delete(&key).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Forgets CI results recorded before `before` (unix ms); returns how many.
    pub async fn prune_commit_statuses(&self, before: i64) -> Result<u64, StoreError> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM commit_statuses WHERE at < $1")
                .bind(before)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(|e| StoreError::query("prune commit statuses", e))
        })
    }

    /// Removes a `kv` entry (nothing when absent).
    pub async fn kv_delete(&self, key: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM kv WHERE key = $1")
                .bind(key)
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::query("delete kv", e))
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

/// `kv` key prefix of approval merges reported by webhooks.
pub const APPROVAL_MERGED_PREFIX: &str = "approval-merged/";

/// `kv` key: the merger of an approval PR, as the webhook reported it.
pub fn approval_merged_key(request: &str, gate: &str) -> String {
    format!("{APPROVAL_MERGED_PREFIX}{request}/{gate}")
}
