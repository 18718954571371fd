//! Errors of the store, each with a stable reason string.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
///
/// Messages say what happened and what to do about it. They never contain a
/// password: PostgreSQL URLs are shown with the password replaced by `***`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store target is neither a PostgreSQL URL nor a usable SQLite path.
    #[error(
        "unsupported store target {target:?}: {why}; use a PostgreSQL URL \
         (postgres://user@host:5432/db) or a path to a SQLite file"
    )]
    InvalidTarget {
        /// The target as given (password redacted).
        target: String,
        /// Why it was refused.
        why: &'static str,
    },

    /// The data directory for the SQLite file could not be created.
    #[error(
        "cannot create the data directory {}: {source}; check that the parent \
         exists and is writable by Hadron",
        path.display()
    )]
    DataDir {
        /// The directory Hadron tried to create.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The SQLite file could not be opened or created.
    #[error(
        "cannot open the SQLite store {}: {source}; check that the data directory \
         is writable and that the file is a Hadron SQLite database",
        path.display()
    )]
    SqliteOpen {
        /// The database file.
        path: PathBuf,
        /// The driver error.
        source: sqlx::Error,
    },

    /// PostgreSQL could not be reached or refused the connection.
    #[error(
        "cannot connect to PostgreSQL at {url}: {source}; check DATABASE_URL and \
         that the server is running and accepts connections from this host"
    )]
    PostgresConnect {
        /// The URL with its password redacted.
        url: String,
        /// The driver error.
        source: sqlx::Error,
    },

    /// Applying the schema migrations failed.
    #[error(
        "cannot migrate the store {target}: {source}; if the database was used by a \
         newer Hadron, run that version or point Hadron at a fresh database"
    )]
    Migrate {
        /// The store (path, or URL with its password redacted).
        target: String,
        /// The migration error.
        source: sqlx::migrate::MigrateError,
    },

    /// A query failed for a reason other than a constraint conflict.
    #[error("store query failed while trying to {op}: {source}; check that the database is reachable and not full")]
    Query {
        /// What the store was doing, e.g. `insert attempt`.
        op: &'static str,
        /// The driver error.
        source: sqlx::Error,
    },

    /// A write conflicts with what is already stored.
    #[error("store conflict while trying to {op}: {detail}")]
    Conflict {
        /// What the store was doing.
        op: &'static str,
        /// What conflicts and what to do.
        detail: String,
    },

    /// A row the caller named does not exist.
    #[error("no {kind} named {key:?} in the store; it may have been deleted or never recorded")]
    NotFound {
        /// The kind of row, e.g. `attempt`.
        kind: &'static str,
        /// The key that was looked up.
        key: String,
    },

    /// A write of a replica that no longer holds the leader lease (or holds
    /// it under another epoch): refused in the write's own transaction.
    #[error(
        "refused to {op}: this replica ({holder}) writes under leader epoch {epoch}, but {current}; \
         it stops acting as leader (the new leader carries on, nothing is lost)"
    )]
    Fenced {
        /// What the store was about to do.
        op: &'static str,
        /// This replica's identity.
        holder: String,
        /// The epoch it acted under.
        epoch: i64,
        /// Who holds the lease now, in words.
        current: String,
    },

    /// Leader election was asked of a store that cannot hold a lease.
    #[error(
        "leader election needs PostgreSQL, and this store is SQLite ({location}); \
         run one replica on SQLite, or set DATABASE_URL to a PostgreSQL database to run several"
    )]
    LeaseUnsupported {
        /// The SQLite file.
        location: String,
    },

    /// A stored value cannot be read back (edited by hand or by another program).
    #[error(
        "corrupt store row: {detail}; the store is rebuildable, so deleting the \
         database and restarting Hadron recovers from git"
    )]
    Corrupt {
        /// What is wrong with which row.
        detail: String,
    },
}

impl StoreError {
    /// A stable CamelCase reason for status conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidTarget { .. } => "StoreInvalidTarget",
            Self::DataDir { .. } | Self::SqliteOpen { .. } | Self::PostgresConnect { .. } => "StoreConnect",
            Self::Migrate { .. } => "StoreMigrate",
            Self::Query { .. } => "StoreQuery",
            Self::Conflict { .. } => "StoreConflict",
            Self::NotFound { .. } => "StoreNotFound",
            Self::Corrupt { .. } => "StoreCorrupt",
            Self::Fenced { .. } => "StoreFenced",
            Self::LeaseUnsupported { .. } => "LeaseUnsupported",
        }
    }

    /// Wraps a driver error from `op`; constraint violations become [`StoreError::Conflict`].
    pub(crate) fn query(op: &'static str, source: sqlx::Error) -> Self {
        if let Some(db) = source.as_database_error() {
            let detail = if db.is_unique_violation() {
                Some("a row with the same unique key already exists")
            } else if db.is_foreign_key_violation() {
                Some("it refers to a row that does not exist (record the request first)")
            } else if db.is_check_violation() {
                Some("a value is outside the allowed range")
            } else {
                None
            };
            if let Some(detail) = detail {
                return Self::Conflict { op, detail: format!("{detail} ({})", db.message()) };
            }
        }
        Self::Query { op, source }
    }

    /// Shorthand for a [`StoreError::Corrupt`] error.
    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        Self::Corrupt { detail: detail.into() }
    }
}

/// Returns `url` with any password replaced by `***` (userinfo and `password=` query
/// parameters), so it can be shown in messages and logs.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            // The authority ends at the first '/'; userinfo ends at its last '@'.
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}
