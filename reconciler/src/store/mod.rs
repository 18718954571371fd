//! The store: Hadron's observed state, audit log and outbox, in SQLite or PostgreSQL.
//!
//! One type, [`Store`], serves both backends. SQLite (a file in the data
//! directory, WAL mode, foreign keys on) is the embedded default; PostgreSQL is
//! used when the target is a `postgres://` or `postgresql://` URL (the app reads
//! it from `DATABASE_URL`). Each backend has its own migration set
//! (`migrations/sqlite`, `migrations/postgres`), applied on connect.
//!
//! The SQL is written once: both drivers accept `$1`-style placeholders
//! (sqlx-sqlite binds `$N` by number), and the statements use only syntax both
//! databases share (`ON CONFLICT`, `RETURNING`, `excluded.`). The `with_pool!`
//! macro runs one body against whichever pool is open.
//!
//! The store is rebuildable: git holds intent and outcome, the store holds what
//! Hadron observed, the audit log and the outbox of status writes.
//!
//! Timestamps are unix milliseconds given by the caller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// Runs `$body` with `$pool` bound to the open pool, whichever backend it is.
///
/// The body is compiled once per backend, so it must only use SQL both accept.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}

/// Begins a write transaction on `$pool` for `$store`, mapping errors to `$op`.
///
/// A fenced store (the leader's, see [`Store::fenced`]) first checks in the
/// same transaction that its epoch still holds the lease.
///
/// SQLite takes the write lock at once (`BEGIN IMMEDIATE`), so a transaction
/// never fails half-way on a lock upgrade; PostgreSQL additionally takes the
/// event-order lock so event ids are committed in increasing order (readers
/// tailing the log by id never skip an event).
macro_rules! begin_write {
    ($store:expr, $pool:ident, $op:expr) => {
        async {
            let mut tx = $pool.begin_with($store.begin_sql()).await.map_err(|e| $crate::store::StoreError::query($op, e))?;
            if let Some(fence) = &$store.fence {
                // Shares the lease row's lock until commit: a take-over (which
                // updates the row) waits for this write, and every write
                // after it sees the new epoch and is refused.
                let lease: Option<(String, i64)> = sqlx::query_as($crate::store::lease::FENCE_SQL)
                    .bind($crate::store::lease::LEASE_NAME)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| $crate::store::StoreError::query($op, e))?;
                fence.check($op, lease)?;
            }
            if let Some(lock) = $store.event_order_lock_sql() {
                sqlx::query(lock)
                    .bind($crate::store::EVENT_ORDER_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| $crate::store::StoreError::query($op, e))?;
            }
            Ok::<_, $crate::store::StoreError>(tx)
        }
    };
}

/// Runs `$body` (a `Result`, using `$tx`) in one write transaction begun
/// by [`begin_write!`] (so fenced like every write of the leader), and
/// commits it.
macro_rules! write_once {
    ($store:expr, $op:expr, |$tx:ident| $body:expr) => {
        with_pool!($store, pool => {
            async {
                let mut $tx = begin_write!($store, pool, $op).await?;
                let out = $body?;
                $tx.commit().await.map_err(|e| $crate::store::StoreError::query($op, e))?;
                Ok::<_, $crate::store::StoreError>(out)
            }
            .await
        })
    };
}

mod attempts;
mod error;
mod events;
mod kv;
mod lease;
mod misc;
mod outbox;
mod records;
mod relay;
mod requests;
#[cfg(test)]
pub(crate) mod tests;

pub use error::{StoreError, redact_url};
pub use kv::{PassedGate, PlanComment, PrRecord, RequestEntry};
pub use lease::{LEASE_NAME, LeaseHolder};
pub use records::{
    Attempt, AttemptInsert, AttemptState, AttemptUpdate, Event, NewAttempt, NewEvent, OutboxEntry, OutboxFiles, OutboxState, RequestRecord,
};
pub use relay::{RelayListener, TRIGGER_CHANNEL};

/// The SQLite file name inside the data directory.
pub const SQLITE_FILE_NAME: &str = "hadron.db";

/// How long PostgreSQL lets one of Hadron's transactions sit idle (its
/// transactions are short bursts of statements, never held across other work).
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "5s";

/// How long [`Store::connect_postgres`] retries an unreachable server.
pub const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Advisory-lock key (PostgreSQL) that orders event appends; "hadronev" in ASCII.
const EVENT_ORDER_LOCK_KEY: i64 = 0x6861_6472_6f6e_6576;

/// Bound parameters per multi-row statement (SQLite allows 32,766,
/// PostgreSQL 65,535): a pass's writes of 10,000 rows take a handful of
/// statements, not 10,000 round trips to the database thread.
const MAX_BINDS_PER_STATEMENT: usize = 2_000;

/// Rows of `columns` bound parameters each that fit in one statement.
///
/// These statements are built with `persistent(false)`: their text varies
/// with the row count, so each would otherwise stay prepared in every
/// connection's statement cache (megabytes for a statement of thousands of
/// rows, used once).
fn rows_per_statement(columns: usize) -> usize {
    (MAX_BINDS_PER_STATEMENT / columns.max(1)).max(1)
}

/// The last entry of each key, in the order of their first appearance
/// (one multi-row upsert must not touch a row twice: PostgreSQL refuses it).
fn last_per_key<T, K: Ord + Clone>(items: &[T], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut last: BTreeMap<K, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        last.insert(key(item), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| &items[i]).collect()
}

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Which database a [`Store`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Hadron's store. Cheap to clone (clones share the connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Where the store lives, safe to show (path, or URL without password).
    location: String,
    /// The leader's identity and epoch that every write must still hold.
    fence: Option<std::sync::Arc<lease::Fence>>,
}

impl Store {
    /// Opens the store named by `target`, creating and migrating it as needed.
    ///
    /// `postgres://…` and `postgresql://…` URLs select PostgreSQL;
    /// `sqlite:PATH` / `sqlite://PATH` or a plain path select an SQLite file.
    pub async fn connect(target: &str) -> Result<Self, StoreError> {
        if target.starts_with("postgres://") || target.starts_with("postgresql://") {
            return Self::connect_postgres(target).await;
        }
        let path = if let Some(rest) = target.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.contains('?') {
                return Err(StoreError::InvalidTarget {
                    target: redact_url(target),
                    why: "SQLite URL parameters are not supported (Hadron sets WAL mode and foreign keys itself)",
                });
            }
            path
        } else if target.contains("://") {
            return Err(StoreError::InvalidTarget { target: redact_url(target), why: "only PostgreSQL URLs are supported" });
        } else {
            target
        };
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::InvalidTarget {
                target: target.to_owned(),
                why: "the SQLite store must be a file so that it survives restarts",
            });
        }
        Self::open_sqlite(Path::new(path)).await
    }

    /// Opens (or creates) `hadron.db` in `data_dir`, creating the directory if missing.
    pub async fn open_data_dir(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_sqlite(&data_dir.join(SQLITE_FILE_NAME)).await
    }

    /// Opens (or creates) the SQLite file at `path` in WAL mode with foreign keys on,
    /// creating its parent directory if missing, and applies migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::DataDir { path: parent.to_path_buf(), source })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::SqliteOpen { path: path.to_path_buf(), source })?;
        let location = path.display().to_string();
        SQLITE_MIGRATOR.run(&pool).await.map_err(|source| StoreError::Migrate { target: location.clone(), source })?;
        Ok(Self { pool: Pool::Sqlite(pool), location, fence: None })
    }

    /// Connects to PostgreSQL at `url` and applies migrations, waiting up to
    /// [`POSTGRES_CONNECT_TIMEOUT`] for the server (it may still be starting).
    pub async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        Self::connect_postgres_with_timeout(url, POSTGRES_CONNECT_TIMEOUT).await
    }

    /// Like [`Store::connect_postgres`], giving up on the server after `timeout`
    /// (which also bounds how long a query waits for a free connection).
    pub async fn connect_postgres_with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let location = redact_url(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|source| StoreError::PostgresConnect { url: location.clone(), source })?
            // A replica frozen inside a write transaction (a stopped VM) would
            // hold the lease row's share lock and so block every take-over:
            // the server ends such a transaction after this long.
            .options([("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::PostgresConnect { url: location.clone(), source })?;
        POSTGRES_MIGRATOR.run(&pool).await.map_err(|source| StoreError::Migrate { target: location.clone(), source })?;
        Ok(Self { pool: Pool::Postgres(pool), location, fence: None })
    }

    /// Which database this store uses.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Where the store lives: the SQLite path, or the PostgreSQL URL without password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The SQLite file path, when this store is SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match self.pool {
            Pool::Sqlite(_) => Some(PathBuf::from(&self.location)),
            Pool::Postgres(_) => None,
        }
    }

    /// Closes all connections, waiting for them to be returned to the pool.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// Statement that starts a write transaction.
    fn begin_sql(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "BEGIN IMMEDIATE",
            Pool::Postgres(_) => "BEGIN",
        }
    }

    /// Statement that serialises event appends (PostgreSQL only; SQLite writers are serial).
    fn event_order_lock_sql(&self) -> Option<&'static str> {
        match self.pool {
            Pool::Sqlite(_) => None,
            Pool::Postgres(_) => Some("SELECT pg_advisory_xact_lock($1)"),
        }
    }
}

/// Converts a stored `i64` to a `u32`/`u64`, reporting which column was out of range.
fn from_db<T: TryFrom<i64>>(value: i64, column: &str, key: &str) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::corrupt(format!("{column} = {value} out of range for {key:?}")))
}

/// Converts a `u64` to the `i64` the databases store, refusing values that do not fit.
fn to_db(value: u64, op: &'static str, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Conflict { op, detail: format!("{what} = {value} is larger than the store can hold (2^63-1)") })
}
