//! The `attempts` table: one row per worker run, keyed by its deterministic name.

use super::events::insert_event;
use super::{Attempt, AttemptInsert, AttemptUpdate, NewAttempt, NewEvent, Store, StoreError, from_db, to_db};

/// An `attempts` row as the databases return it.
#[derive(sqlx::FromRow)]
struct AttemptRow {
    worker_name: String,
    request: String,
    generation: String,
    stage: String,
    repo: String,
    attempt: i64,
    driver: String,
    state: String,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    cost_usd: Option<f64>,
    tokens_in: Option<i64>,
    tokens_out: Option<i64>,
    result: Option<String>,
    pushed_commit: Option<String>,
}

impl TryFrom<AttemptRow> for Attempt {
    type Error = StoreError;

    fn try_from(row: AttemptRow) -> Result<Self, StoreError> {
        let key = row.worker_name.as_str();
        let result = match &row.result {
            Some(text) => {
                Some(serde_json::from_str(text).map_err(|e| StoreError::corrupt(format!("result of attempt {key:?} is not JSON: {e}")))?)
            }
            None => None,
        };
        Ok(Attempt {
            attempt: from_db(row.attempt, "attempt", key)?,
            state: row.state.parse()?,
            tokens_in: row.tokens_in.map(|v| from_db(v, "tokens_in", key)).transpose()?,
            tokens_out: row.tokens_out.map(|v| from_db(v, "tokens_out", key)).transpose()?,
            result,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            cost_usd: row.cost_usd,
            pushed_commit: row.pushed_commit,
            worker_name: row.worker_name,
            request: row.request,
            generation: row.generation,
            stage: row.stage,
            repo: row.repo,
            driver: row.driver,
        })
    }
}

/// Every `attempts` column, in [`AttemptRow`] order.
macro_rules! attempt_columns {
    () => {
        "worker_name, request, generation, stage, repo, attempt, driver, state, created_at, \
         started_at, finished_at, cost_usd, tokens_in, tokens_out, result, pushed_commit"
    };
}

impl Store {
    /// Records the intent to run `new.worker_name`, unless a row with that name exists.
    ///
    /// Returns the stored attempt and whether it already existed: this is how a
    /// repeated action finds the earlier worker instead of starting a second one.
    /// `event` is appended in the same transaction, only when the row is new.
    /// A different worker name for the same (request, generation, stage, repo, attempt) is a
    /// [`StoreError::Conflict`], as is an unknown request.
    pub async fn insert_attempt(&self, new: &NewAttempt, event: Option<&NewEvent>) -> Result<AttemptInsert, StoreError> {
        const OP: &str = "insert attempt";
        let row = with_pool!(self, pool => {
            let mut tx = begin_write!(self, pool, OP).await?;
            let inserted = sqlx::query(
                "INSERT INTO attempts \
                     (worker_name, request, generation, stage, repo, attempt, driver, state, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'Pending', $8) \
                 ON CONFLICT (worker_name) DO NOTHING",
            )
            .bind(&new.worker_name)
            .bind(&new.request)
            .bind(&new.generation)
            .bind(&new.stage)
            .bind(&new.repo)
            .bind(i64::from(new.attempt))
            .bind(&new.driver)
            .bind(new.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::query(OP, e))?
            .rows_affected()
                == 1;
            if inserted && let Some(event) = event {
                insert_event!(tx, event, OP)?;
            }
            let row = sqlx::query_as::<_, AttemptRow>(concat!(
                "SELECT ", attempt_columns!(), " FROM attempts WHERE worker_name = $1"
            ))
            .bind(&new.worker_name)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::query(OP, e))?;
            tx.commit().await.map_err(|e| StoreError::query(OP, e))?;
            (row, inserted)
        });
        Ok(AttemptInsert { attempt: row.0.try_into()?, existed: !row.1 })
    }

    /// Moves attempt `worker_name` to `update.state` and stores what the worker reported.
    ///
    /// Allowed: `Pending → Pending | Running | terminal`, `Running → Running | terminal`.
    /// Repeating the terminal state an attempt is already in is a no-op (returns the
    /// stored attempt, appends nothing). Any other change of a finished attempt, or
    /// `Running → Pending`, is a [`StoreError::Conflict`]; an unknown worker is
    /// [`StoreError::NotFound`]. `event` is appended in the same transaction when the
    /// update applies.
    pub async fn update_attempt(&self, worker_name: &str, update: &AttemptUpdate, event: Option<&NewEvent>) -> Result<Attempt, StoreError> {
        const OP: &str = "update attempt";
        let tokens_in = update.tokens_in.map(|v| to_db(v, OP, "tokens_in")).transpose()?;
        let tokens_out = update.tokens_out.map(|v| to_db(v, OP, "tokens_out")).transpose()?;
        let result = update.result.as_ref().map(|v| v.to_string());
        let started_at = (update.state == super::AttemptState::Running).then_some(update.at);
        let finished_at = update.state.is_terminal().then_some(update.at);
        let from = update.state.allowed_predecessors();
        let from_first = from[0].as_str();
        let from_last = from[from.len() - 1].as_str();

        let (updated, current) = with_pool!(self, pool => {
            let mut tx = begin_write!(self, pool, OP).await?;
            let updated = sqlx::query_as::<_, AttemptRow>(concat!(
                "UPDATE attempts SET \
                     state = $2, \
                     started_at = COALESCE(started_at, $3), \
                     finished_at = COALESCE(finished_at, $4), \
                     cost_usd = COALESCE($5, cost_usd), \
                     tokens_in = COALESCE($6, tokens_in), \
                     tokens_out = COALESCE($7, tokens_out), \
                     result = COALESCE($8, result), \
                     pushed_commit = COALESCE($9, pushed_commit) \
                 WHERE worker_name = $1 AND state IN ($10, $11) \
                 RETURNING ", attempt_columns!()
            ))
            .bind(worker_name)
            .bind(update.state.as_str())
            .bind(started_at)
            .bind(finished_at)
            .bind(update.cost_usd)
            .bind(tokens_in)
            .bind(tokens_out)
            .bind(&result)
            .bind(&update.pushed_commit)
            .bind(from_first)
            .bind(from_last)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::query(OP, e))?;
            if updated.is_some() {
                if let Some(event) = event {
                    insert_event!(tx, event, OP)?;
                }
                tx.commit().await.map_err(|e| StoreError::query(OP, e))?;
                (updated, None)
            } else {
                let current = sqlx::query_as::<_, AttemptRow>(concat!(
                    "SELECT ", attempt_columns!(), " FROM attempts WHERE worker_name = $1"
                ))
                .bind(worker_name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| StoreError::query(OP, e))?;
                tx.rollback().await.map_err(|e| StoreError::query(OP, e))?;
                (None, current)
            }
        });

        if let Some(row) = updated {
            return row.try_into();
        }
        let Some(current) = current else {
            return Err(StoreError::NotFound { kind: "attempt", key: worker_name.to_owned() });
        };
        let current = Attempt::try_from(current)?;
        if current.state == update.state && current.state.is_terminal() {
            return Ok(current);
        }
        Err(StoreError::Conflict {
            op: OP,
            detail: format!(
                "worker {worker_name:?} is {} and cannot become {}; a finished attempt is \
                 final and a running one never goes back to Pending (start a new attempt instead)",
                current.state, update.state
            ),
        })
    }

    /// The attempt named `worker_name`, if recorded.
    pub async fn get_attempt(&self, worker_name: &str) -> Result<Option<Attempt>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as::<_, AttemptRow>(concat!(
                "SELECT ", attempt_columns!(), " FROM attempts WHERE worker_name = $1"
            ))
            .bind(worker_name)
            .fetch_optional(pool)
            .await
            .map_err(|e| StoreError::query("get attempt", e))?
        });
        row.map(Attempt::try_from).transpose()
    }

    /// The attempts of `request`, oldest first (by creation time, then worker name).
    pub async fn list_attempts(&self, request: &str) -> Result<Vec<Attempt>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, AttemptRow>(concat!(
                "SELECT ", attempt_columns!(),
                " FROM attempts WHERE request = $1 ORDER BY created_at, worker_name"
            ))
            .bind(request)
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("list attempts", e))?
        });
        rows.into_iter().map(Attempt::try_from).collect()
    }

    /// Every attempt of every request, by request, then oldest first: what
    /// a pass observes, in one query.
    pub async fn list_all_attempts(&self) -> Result<Vec<Attempt>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, AttemptRow>(concat!(
                "SELECT ", attempt_columns!(),
                " FROM attempts ORDER BY request, created_at, worker_name"
            ))
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("list all attempts", e))?
        });
        rows.into_iter().map(Attempt::try_from).collect()
    }

    /// Every attempt that is not finished (Pending or Running), oldest first:
    /// the workers the reconciler must watch, adopt or cancel.
    pub async fn active_attempts(&self) -> Result<Vec<Attempt>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, AttemptRow>(concat!(
                "SELECT ", attempt_columns!(),
                " FROM attempts WHERE state IN ('Pending', 'Running') \
                  ORDER BY created_at, worker_name"
            ))
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("list active attempts", e))?
        });
        rows.into_iter().map(Attempt::try_from).collect()
    }
}
