//! The leader lease (PostgreSQL only): which replica runs the loop, and the
//! epoch that fences its writes.
//!
//! One row of `leader_lease` names the holder, its epoch and when the lease
//! expires, all by the database clock. A replica takes the lease only when
//! it is free or expired, and every take-over bumps the epoch. The leader's
//! store is [`Store::fenced`]: each of its write transactions first reads the
//! row `FOR SHARE` and is refused ([`StoreError::Fenced`]) unless the holder
//! and epoch are still its own. A take-over updates the row, so it waits for
//! the old leader's write in flight and every later one is refused: a stale
//! leader's write is rejected, not merely unlikely.

use std::sync::Arc;
use std::time::Duration;

use super::{Pool, Store, StoreError};

/// The lease's row (one per database: one control repo per database).
pub const LEASE_NAME: &str = "hadron";

/// What a fenced write reads first, in its own transaction.
pub(crate) const FENCE_SQL: &str = "SELECT holder, epoch FROM leader_lease WHERE name = $1 FOR SHARE";

/// Who holds the lease, as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The holder's identity (e.g. the pod name).
    pub holder: String,
    /// The epoch: the fencing token, one more on every take-over.
    pub epoch: i64,
    /// Milliseconds until the lease expires by the database clock
    /// (negative once expired).
    pub expires_in_ms: i64,
}

/// The identity and epoch a fenced store writes under.
#[derive(Debug)]
pub(crate) struct Fence {
    holder: String,
    epoch: i64,
}

impl Fence {
    /// Refuses the write `op` unless `lease` (holder, epoch) is this fence's.
    pub(crate) fn check(&self, op: &'static str, lease: Option<(String, i64)>) -> Result<(), StoreError> {
        let current = match lease {
            Some((holder, epoch)) if holder == self.holder && epoch == self.epoch => return Ok(()),
            Some((holder, epoch)) => format!("the lease is held by {holder} under epoch {epoch}"),
            None => "nobody holds the lease".to_owned(),
        };
        Err(StoreError::Fenced { op, holder: self.holder.clone(), epoch: self.epoch, current })
    }
}

/// Seconds as PostgreSQL's `make_interval` takes them.
fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl Store {
    /// This store, with every write fenced by `holder`'s lease under `epoch`
    /// (the connections are shared with `self`).
    pub fn fenced(&self, holder: &str, epoch: i64) -> Store {
        Store { fence: Some(Arc::new(Fence { holder: holder.to_owned(), epoch })), ..self.clone() }
    }

    /// The epoch this store's writes are fenced by, if any.
    pub fn fence_epoch(&self) -> Option<i64> {
        self.fence.as_ref().map(|f| f.epoch)
    }

    /// This store on a connection of its own (PostgreSQL), for the leader
    /// election: a renewal never waits for a connection the loop's writes
    /// hold, nor behind a reconnect of the loop's pool, and gives up on a
    /// server it cannot reach after `acquire_timeout`. Unfenced; connects on
    /// first use.
    pub fn on_own_connection(&self, acquire_timeout: Duration) -> Result<Store, StoreError> {
        let options = (*self.lease_pool()?.connect_options()).clone();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Ok(Store { pool: Pool::Postgres(pool), location: self.location.clone(), fence: None })
    }

    /// The PostgreSQL pool (tests that exhaust it).
    #[cfg(test)]
    pub(crate) fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        self.lease_pool().ok()
    }

    fn lease_pool(&self) -> Result<&sqlx::PgPool, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => Ok(pool),
            Pool::Sqlite(_) => Err(StoreError::LeaseUnsupported { location: self.location.clone() }),
        }
    }

    /// Takes the lease for `holder` for `ttl` if it is free or expired, and
    /// returns the new epoch; `None` while someone holds it.
    pub async fn try_acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO leader_lease AS l (name, holder, epoch, acquired_at, renewed_at, expires_at) \
             VALUES ($1, $2, 1, now(), now(), now() + make_interval(secs => $3)) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = l.epoch + 1, \
                 acquired_at = now(), renewed_at = now(), expires_at = excluded.expires_at \
             WHERE l.expires_at <= now() \
             RETURNING epoch",
        )
        .bind(LEASE_NAME)
        .bind(holder)
        .bind(seconds(ttl))
        .fetch_optional(self.lease_pool()?)
        .await
        .map_err(|e| StoreError::query("take the leader lease", e))
    }

    /// Extends `holder`'s lease under `epoch` to `ttl` from now; `false`
    /// when the lease is no longer its own (taken over).
    pub async fn renew_lease(&self, holder: &str, epoch: i64, ttl: Duration) -> Result<bool, StoreError> {
        sqlx::query(
            "UPDATE leader_lease SET renewed_at = now(), expires_at = now() + make_interval(secs => $4) \
             WHERE name = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(LEASE_NAME)
        .bind(holder)
        .bind(epoch)
        .bind(seconds(ttl))
        .execute(self.lease_pool()?)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(|e| StoreError::query("renew the leader lease", e))
    }

    /// Gives the lease up at once (a clean shutdown), so another replica
    /// takes over without waiting for it to expire; `false` when it was not
    /// `holder`'s under `epoch` any more.
    pub async fn release_lease(&self, holder: &str, epoch: i64) -> Result<bool, StoreError> {
        sqlx::query("UPDATE leader_lease SET expires_at = now() WHERE name = $1 AND holder = $2 AND epoch = $3")
            .bind(LEASE_NAME)
            .bind(holder)
            .bind(epoch)
            .execute(self.lease_pool()?)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(|e| StoreError::query("release the leader lease", e))
    }

    /// Who holds the lease (expired or not), if anybody ever took it.
    pub async fn lease_holder(&self) -> Result<Option<LeaseHolder>, StoreError> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT holder, epoch, (extract(epoch FROM (expires_at - now())) * 1000)::bigint \
             FROM leader_lease WHERE name = $1",
        )
        .bind(LEASE_NAME)
        .fetch_optional(self.lease_pool()?)
        .await
        .map_err(|e| StoreError::query("read the leader lease", e))?;
        Ok(row.map(|(holder, epoch, expires_in_ms)| LeaseHolder { holder, epoch, expires_in_ms }))
    }
}
