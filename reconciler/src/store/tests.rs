//! One test suite, run against both backends.
//!
//! Each `store_test!` body is written once and instantiated twice: `sqlite`
//! (a file in a fresh tempdir) and `postgres` (a fresh database on the local
//! server, dropped afterwards). PostgreSQL tests fail when the server is
//! unreachable, unless `HADRON_SKIP_PG=1`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::*;

/// The maintenance database used to create and drop test databases.
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL: [`PG_ADMIN_URL`] unless `HADRON_TEST_PG_URL` names another server.
fn pg_admin_url() -> String {
    std::env::var("HADRON_TEST_PG_URL").unwrap_or_else(|_| PG_ADMIN_URL.to_owned())
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

/// A fresh, empty store location for one test.
pub(crate) struct TestDb {
    target: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    /// Creates the location; `None` when PostgreSQL tests are skipped.
    pub(crate) async fn create(kind: Kind) -> anyhow::Result<Option<Self>> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("data").join(SQLITE_FILE_NAME);
                Ok(Some(Self { target: path.display().to_string(), _dir: Some(dir), pg_name: None }))
            }
            Kind::Postgres => {
                if std::env::var("HADRON_SKIP_PG").as_deref() == Ok("1") {
                    eprintln!("HADRON_SKIP_PG=1: skipping this PostgreSQL test");
                    return Ok(None);
                }
                let admin_url = pg_admin_url();
                let mut admin = PgConnection::connect(&admin_url).await.with_context(|| {
                    format!(
                        "PostgreSQL is unreachable at {}; start it (e.g. \
                         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) \
                         or set HADRON_SKIP_PG=1 to skip the PostgreSQL half of the store tests",
                        redact_url(&admin_url)
                    )
                })?;
                let name = format!("hadron_test_{:016x}", rand::random::<u64>());
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("creating test database {name}"))?;
                admin.close().await?;
                let base = admin_url.split('?').next().unwrap_or(&admin_url);
                let server = base.rsplit_once('/').map_or(base, |(server, _db)| server);
                Ok(Some(Self { target: format!("{server}/{name}"), _dir: None, pg_name: Some(name) }))
            }
        }
    }

    /// Opens (and migrates) the store.
    pub(crate) async fn open(&self) -> anyhow::Result<Store> {
        Ok(Store::connect(&self.target).await?)
    }

    /// Drops the PostgreSQL database, best effort.
    pub(crate) async fn cleanup(&self) {
        if let Some(name) = &self.pg_name
            && let Ok(mut admin) = PgConnection::connect(&pg_admin_url()).await
        {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await {
                eprintln!("could not drop test database {name}: {e}");
            }
            let _ = admin.close().await;
        }
    }
}

/// Runs `body` against a fresh database of `kind`, then drops it (even on panic).
async fn run<F, Fut>(kind: Kind, body: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let db = match TestDb::create(kind).await {
        Ok(Some(db)) => Arc::new(db),
        Ok(None) => return,
        Err(e) => panic!("{kind:?} test database: {e:#}"),
    };
    let outcome = tokio::spawn(body(Arc::clone(&db))).await;
    db.cleanup().await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{kind:?}: {e:#}"),
        Err(join) => match join.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(join) => panic!("{kind:?}: test task failed: {join}"),
        },
    }
}

/// Defines `mod $name { fn sqlite(); fn postgres(); }` running `$body` with `$db: Arc<TestDb>`.
macro_rules! store_test {
    ($name:ident, |$db:ident| $body:block) => {
        mod $name {
            use super::*;

            async fn body($db: Arc<TestDb>) -> anyhow::Result<()> $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Kind::Sqlite, body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(Kind::Postgres, body).await
            }
        }
    };
}

fn request(name: &str, phase: &str, at: i64) -> RequestRecord {
    RequestRecord {
        name: name.to_owned(),
        generation: format!("gen-{name}"),
        observed_revision: "rev1".to_owned(),
        phase: phase.to_owned(),
        stage: None,
        message: String::new(),
        updated_at: at,
    }
}

fn new_attempt(request: &str, stage: &str, attempt: u32, at: i64) -> NewAttempt {
    NewAttempt {
        worker_name: format!("hadron-{request}-{stage}-{attempt}"),
        request: request.to_owned(),
        generation: format!("gen-{request}"),
        stage: stage.to_owned(),
        repo: "https://git.example/org/app.git".to_owned(),
        attempt,
        driver: "local".to_owned(),
        created_at: at,
    }
}

fn event(request: Option<&str>, action: &str, at: i64) -> NewEvent {
    NewEvent {
        at,
        request: request.map(str::to_owned),
        actor: "hadron".to_owned(),
        action: action.to_owned(),
        revision: Some("rev1".to_owned()),
        detail: format!("{action} detail"),
    }
}

fn expect_reason<T: std::fmt::Debug>(result: Result<T, StoreError>, reason: &str) -> anyhow::Result<StoreError> {
    match result {
        Err(e) if e.reason() == reason => Ok(e),
        Err(e) => bail!("expected {reason}, got {} ({e})", e.reason()),
        Ok(v) => bail!("expected {reason}, got Ok({v:?})"),
    }
}

async fn applied_migrations(store: &Store) -> anyhow::Result<i64> {
    Ok(with_pool!(store, pool => {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await?
    }))
}

store_test!(migrations_are_idempotent, |db| {
    let first = db.open().await?;
    first.upsert_request(&request("alpha", "Pending", 1)).await?;
    // A second connection while the first is open, then a third after closing both.
    let second = db.open().await?;
    ensure!(second.get_request("alpha").await?.is_some());
    let expected = match first.backend() {
        Backend::Sqlite => SQLITE_MIGRATOR.iter().count(),
        Backend::Postgres => POSTGRES_MIGRATOR.iter().count(),
    };
    ensure!(applied_migrations(&second).await? == i64::try_from(expected)?);
    first.close().await;
    second.close().await;
    let third = db.open().await?;
    ensure!(applied_migrations(&third).await? == i64::try_from(expected)?);
    ensure!(third.list_requests().await?.len() == 1);
    third.close().await;
    Ok(())
});

store_test!(plan_comments_are_kept_per_pull_request_and_forgotten_once_closed, |db| {
    let store = db.open().await?;
    for n in [1u64, 2, 3] {
        let rec = PlanComment { comment: 500 + n, head: format!("head{n}"), base: "base".to_owned() };
        store.set_plan_comment(n, &rec, 1).await?;
    }
    ensure!(store.plan_comment(2).await?.map(|c| c.comment) == Some(502));
    let gone = store.forget_plan_comments(&[2u64].into_iter().collect()).await?;
    ensure!(gone == 2, "PRs 1 and 3 closed: {gone}");
    ensure!(store.plan_comment(1).await?.is_none() && store.plan_comment(3).await?.is_none());
    ensure!(store.plan_comment(2).await?.is_some(), "the open one stays");
    Ok(())
});

store_test!(every_approval_pr_of_a_gate_is_listed_oldest_first, |db| {
    let store = db.open().await?;
    let pr = |number| crate::store::PrRecord { number, url: format!("u{number}"), made_for: "g".into() };
    // A store from before the list: only the last PR's record.
    store.kv_set(&crate::store::RequestEntry::ApprovalPr.key("fix", Some("review")), &serde_json::to_string(&pr(3))?, 1).await?;
    ensure!(store.approval_prs("fix", "review").await? == [3]);
    store.set_approval_pr("fix", "review", &pr(5), 2).await?;
    store.set_approval_pr("fix", "review", &pr(5), 3).await?;
    store.set_approval_pr("fix", "review", &pr(8), 4).await?;
    ensure!(store.approval_prs("fix", "review").await? == [3, 5, 8], "each number once, oldest first");
    ensure!(store.approval_pr("fix", "review").await? == Some(pr(8)), "the record is the last PR's");
    ensure!(store.approval_prs("fix", "other").await?.is_empty());
    Ok(())
});

store_test!(requests_upsert_get_list_delete, |db| {
    let store = db.open().await?;
    ensure!(store.get_request("beta").await?.is_none());
    ensure!(store.list_requests().await?.is_empty());

    store.upsert_request(&request("beta", "Pending", 10)).await?;
    store.upsert_request(&request("alpha", "Running", 11)).await?;
    let mut beta = request("beta", "Running", 12);
    beta.stage = Some("implement".to_owned());
    beta.message = "worker started".to_owned();
    beta.observed_revision = "rev2".to_owned();
    store.upsert_request(&beta).await?;

    ensure!(store.get_request("beta").await? == Some(beta.clone()));
    let names: Vec<String> = store.list_requests().await?.into_iter().map(|r| r.name).collect();
    ensure!(names == ["alpha", "beta"], "list order: {names:?}");
    let ages = store.request_ages().await?;
    ensure!(ages.get("beta") == Some(&10) && ages.get("alpha") == Some(&11), "first recorded, not last updated: {ages:?}");

    // Back to no stage: NULL must round-trip.
    beta.stage = None;
    store.upsert_request(&beta).await?;
    ensure!(store.get_request("beta").await?.and_then(|r| r.stage).is_none());

    ensure!(store.delete_request("beta").await?);
    ensure!(!store.delete_request("beta").await?);
    ensure!(store.get_request("beta").await?.is_none());
    ensure!(store.list_requests().await?.len() == 1);
    Ok(())
});

store_test!(batches_are_one_call_and_keep_their_order, |db| {
    let store = db.open().await?;
    // Request records: several at once, replacing what was there.
    store.upsert_requests(&[request("a", "Pending", 1), request("b", "Pending", 1)]).await?;
    store.upsert_requests(&[request("b", "Running", 2), request("c", "Pending", 2)]).await?;
    store.upsert_requests(&[]).await?;
    let got: Vec<(String, String)> = store.list_requests().await?.into_iter().map(|r| (r.name, r.phase)).collect();
    ensure!(got == [("a".into(), "Pending".into()), ("b".into(), "Running".into()), ("c".into(), "Pending".into())], "{got:?}");
    // Events: appended in the order given, after what was there.
    let first = store.append_event(&event(Some("a"), "first", 1)).await?;
    store.append_events(&[event(Some("a"), "x", 2), event(Some("b"), "y", 2), event(None, "z", 2)]).await?;
    store.append_events(&[]).await?;
    let actions: Vec<String> = store.events_after(first, 10).await?.into_iter().map(|e| e.action).collect();
    ensure!(actions == ["x", "y", "z"], "{actions:?}");
    // Attempts of every request in one query, by request.
    ensure!(store.list_all_attempts().await?.is_empty());
    Ok(())
});

store_test!(large_batches_span_several_statements_and_the_last_entry_wins, |db| {
    let store = db.open().await?;
    // More rows than one multi-row statement holds, with names repeated:
    // one row per name, holding its last record.
    let n = rows_per_statement(7) * 2 + 3;
    let mut records: Vec<RequestRecord> = (0..n).map(|i| request(&format!("r{i:05}"), "Pending", 1)).collect();
    records.push(request("r00001", "Running", 2));
    store.upsert_requests(&records).await?;
    let got = store.list_requests().await?;
    ensure!(got.len() == n, "{} rows for {n} names", got.len());
    ensure!(got.iter().find(|r| r.name == "r00001").map(|r| r.phase.as_str()) == Some("Running"));
    ensure!(got.iter().filter(|r| r.phase == "Pending").count() == n - 1);
    // Events: every one appended, ids in the order given.
    let first = store.append_event(&event(None, "start", 1)).await?;
    let events: Vec<NewEvent> = (0..rows_per_statement(6) * 2 + 5).map(|i| event(None, &format!("e{i}"), 2)).collect();
    store.append_events(&events).await?;
    let got: Vec<String> = store.events_after(first, u32::try_from(events.len() + 10)?).await?.into_iter().map(|e| e.action).collect();
    let want: Vec<String> = events.iter().map(|e| e.action.clone()).collect();
    ensure!(got == want, "{} events back for {} appended, in order: {}", got.len(), want.len(), got == want);
    // kv: sets and removals mixed, a key set then removed, another removed then set.
    let mut entries: Vec<(String, Option<&str>)> = (0..rows_per_statement(3) + 7).map(|i| (format!("k/{i:05}"), Some("v1"))).collect();
    entries.push(("k/00000".to_owned(), None));
    entries.push(("k/gone".to_owned(), None));
    entries.push(("k/gone".to_owned(), Some("back")));
    store.kv_write_all(&entries, 3).await?;
    let kv = store.kv_with_prefix("k/").await?;
    ensure!(kv.len() == rows_per_statement(3) + 7, "{} keys", kv.len());
    ensure!(store.kv_get("k/00000").await?.is_none(), "set then removed: removed");
    ensure!(store.kv_get("k/gone").await?.as_deref() == Some("back"), "removed then set: set");
    Ok(())
});

store_test!(attempt_insert_if_absent_finds_the_earlier_worker, |db| {
    let store = db.open().await?;
    store.upsert_request(&request("alpha", "Running", 1)).await?;
    let new = new_attempt("alpha", "implement", 1, 100);

    let first = store.insert_attempt(&new, Some(&event(Some("alpha"), "attempt.created", 100))).await?;
    ensure!(!first.existed);
    ensure!(first.attempt.state == AttemptState::Pending);
    ensure!(first.attempt.created_at == 100);
    ensure!(first.attempt.started_at.is_none() && first.attempt.result.is_none());

    // The repeated action (later, other generation) finds the earlier row untouched.
    let mut again = new.clone();
    again.created_at = 200;
    again.generation = "gen-other".to_owned();
    let second = store.insert_attempt(&again, Some(&event(Some("alpha"), "attempt.created", 200))).await?;
    ensure!(second.existed);
    ensure!(second.attempt == first.attempt, "{:?}", second.attempt);

    // The event was appended only for the real insert.
    let events = store.events_for_request("alpha", 100).await?;
    ensure!(events.len() == 1 && events[0].at == 100, "{events:?}");

    // Another name for the same (request, generation, stage, repo, attempt) is a conflict.
    let mut clash = new.clone();
    clash.worker_name = "hadron-alpha-implement-1-x".to_owned();
    expect_reason(store.insert_attempt(&clash, None).await, "StoreConflict")?;
    // The same slot of a new spec generation is a new attempt.
    let mut next_generation = clash.clone();
    next_generation.generation = format!("{}-next", new.generation);
    ensure!(!store.insert_attempt(&next_generation, None).await?.existed);

    // An attempt for an unknown request is refused (foreign keys are on), and
    // the failed transaction leaves no event behind.
    let orphan = new_attempt("ghost", "implement", 1, 300);
    expect_reason(store.insert_attempt(&orphan, Some(&event(Some("ghost"), "attempt.created", 300))).await, "StoreConflict")?;
    ensure!(store.events_for_request("ghost", 10).await?.is_empty());
    ensure!(store.list_attempts("alpha").await?.len() == 2, "the first generation's attempt and the next one's");
    Ok(())
});

store_test!(concurrent_inserts_create_one_worker, |db| {
    let store = db.open().await?;
    store.upsert_request(&request("alpha", "Running", 1)).await?;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let new = new_attempt("alpha", "implement", 1, 100 + i);
            store.insert_attempt(&new, Some(&event(Some("alpha"), "attempt.created", 100 + i))).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        if !task.await??.existed {
            created += 1;
        }
    }
    ensure!(created == 1, "{created} inserts claimed to create the worker");
    ensure!(store.list_attempts("alpha").await?.len() == 1);
    ensure!(store.events_for_request("alpha", 100).await?.len() == 1);
    Ok(())
});

// The largest usage the planner accepts for one attempt (a worker's report,
// or the token sum a status file records, adopted as input tokens) fits.
store_test!(attempt_usage_round_trips_the_largest_accepted_values, |db| {
    use crate::workers::usage::{MAX_COST_USD_PER_ATTEMPT, MAX_TOKENS_PER_ATTEMPT, MAX_TOTAL_TOKENS_PER_ATTEMPT};
    let store = db.open().await?;
    store.upsert_request(&request("alpha", "Running", 1)).await?;
    store.insert_attempt(&new_attempt("alpha", "implement", 1, 100), None).await?;
    let mut done = AttemptUpdate::state(AttemptState::Succeeded, 200);
    done.tokens_in = Some(MAX_TOTAL_TOKENS_PER_ATTEMPT);
    done.tokens_out = Some(MAX_TOKENS_PER_ATTEMPT);
    done.cost_usd = Some(MAX_COST_USD_PER_ATTEMPT);
    let stored = store.update_attempt("hadron-alpha-implement-1", &done, None).await?;
    ensure!(stored.tokens_in == Some(MAX_TOTAL_TOKENS_PER_ATTEMPT));
    ensure!(stored.tokens_out == Some(MAX_TOKENS_PER_ATTEMPT));
    let listed = store.list_attempts("alpha").await?;
    ensure!(listed.len() == 1);
    ensure!(
        (listed[0].tokens_in, listed[0].tokens_out, listed[0].cost_usd)
            == (Some(MAX_TOTAL_TOKENS_PER_ATTEMPT), Some(MAX_TOKENS_PER_ATTEMPT), Some(MAX_COST_USD_PER_ATTEMPT)),
        "{:?}",
        listed[0]
    );
    Ok(())
});

store_test!(attempt_state_transitions, |db| {
    let store = db.open().await?;
    store.upsert_request(&request("alpha", "Running", 1)).await?;
    let name = "hadron-alpha-implement-1";
    store.insert_attempt(&new_attempt("alpha", "implement", 1, 100), None).await?;

    let running = store
        .update_attempt(name, &AttemptUpdate::state(AttemptState::Running, 110), Some(&event(Some("alpha"), "attempt.running", 110)))
        .await?;
    ensure!(running.state == AttemptState::Running);
    ensure!(running.started_at == Some(110) && running.finished_at.is_none());

    // A heartbeat while running keeps started_at and records progress.
    let mut progress = AttemptUpdate::state(AttemptState::Running, 150);
    progress.cost_usd = Some(0.25);
    progress.tokens_in = Some(1000);
    let running = store.update_attempt(name, &progress, None).await?;
    ensure!(running.started_at == Some(110));
    ensure!(running.cost_usd == Some(0.25) && running.tokens_in == Some(1000));

    let result = serde_json::json!({"summary": "done", "files": 3});
    let mut done = AttemptUpdate::state(AttemptState::Succeeded, 200);
    done.tokens_out = Some(u64::from(u32::MAX) + 7);
    done.result = Some(result.clone());
    done.pushed_commit = Some("abc123".to_owned());
    let succeeded = store.update_attempt(name, &done, Some(&event(Some("alpha"), "attempt.succeeded", 200))).await?;
    ensure!(succeeded.state == AttemptState::Succeeded);
    ensure!(succeeded.finished_at == Some(200) && succeeded.started_at == Some(110));
    ensure!(succeeded.result.as_ref() == Some(&result));
    ensure!(succeeded.pushed_commit.as_deref() == Some("abc123"));
    ensure!(succeeded.cost_usd == Some(0.25), "unreported cost is kept");
    ensure!(succeeded.tokens_out == Some(u64::from(u32::MAX) + 7));

    // Repeating the terminal report is a no-op: nothing changes, no event.
    let mut repeat = AttemptUpdate::state(AttemptState::Succeeded, 999);
    repeat.pushed_commit = Some("other".to_owned());
    let same = store.update_attempt(name, &repeat, Some(&event(Some("alpha"), "attempt.succeeded", 999))).await?;
    ensure!(same == succeeded);
    let actions: Vec<String> = store.events_for_request("alpha", 10).await?.into_iter().map(|e| e.action).collect();
    ensure!(actions == ["attempt.running", "attempt.succeeded"], "{actions:?}");

    // A finished attempt is final.
    for state in [AttemptState::Running, AttemptState::Failed, AttemptState::Pending] {
        let e = expect_reason(store.update_attempt(name, &AttemptUpdate::state(state, 300), None).await, "StoreConflict")?;
        ensure!(e.to_string().contains("start a new attempt"), "{e}");
    }
    ensure!(store.get_attempt(name).await? == Some(succeeded));

    // Running never goes back to Pending; Pending may be cancelled directly.
    store.insert_attempt(&new_attempt("alpha", "review", 1, 400), None).await?;
    store.insert_attempt(&new_attempt("alpha", "review", 2, 410), None).await?;
    store.update_attempt("hadron-alpha-review-1", &AttemptUpdate::state(AttemptState::Running, 420), None).await?;
    expect_reason(
        store.update_attempt("hadron-alpha-review-1", &AttemptUpdate::state(AttemptState::Pending, 430), None).await,
        "StoreConflict",
    )?;
    let active: Vec<String> = store.active_attempts().await?.into_iter().map(|a| a.worker_name).collect();
    ensure!(active == ["hadron-alpha-review-1", "hadron-alpha-review-2"], "{active:?}");
    let cancelled = store.update_attempt("hadron-alpha-review-2", &AttemptUpdate::state(AttemptState::Cancelled, 440), None).await?;
    ensure!(cancelled.started_at.is_none() && cancelled.finished_at == Some(440));
    ensure!(store.active_attempts().await?.len() == 1);

    expect_reason(store.update_attempt("hadron-nobody", &AttemptUpdate::state(AttemptState::Running, 1), None).await, "StoreNotFound")?;

    let order: Vec<u32> = store.list_attempts("alpha").await?.into_iter().map(|a| a.attempt).collect();
    ensure!(order == [1, 1, 2], "{order:?}");
    Ok(())
});

store_test!(corrupt_rows_are_reported, |db| {
    let store = db.open().await?;
    store.upsert_request(&request("alpha", "Running", 1)).await?;
    store.insert_attempt(&new_attempt("alpha", "implement", 1, 100), None).await?;
    with_pool!(store, pool => {
        sqlx::query("UPDATE attempts SET result = 'not json' WHERE worker_name = $1")
            .bind("hadron-alpha-implement-1")
            .execute(pool)
            .await?;
    });
    let e = expect_reason(store.get_attempt("hadron-alpha-implement-1").await, "StoreCorrupt")?;
    ensure!(e.to_string().contains("hadron-alpha-implement-1"), "{e}");
    Ok(())
});

store_test!(deleting_a_request_removes_attempts_keeps_events, |db| {
    let store = db.open().await?;
    store.upsert_request(&request("alpha", "Running", 1)).await?;
    store.insert_attempt(&new_attempt("alpha", "implement", 1, 100), Some(&event(Some("alpha"), "attempt.created", 100))).await?;
    ensure!(store.delete_request("alpha").await?);
    ensure!(store.list_attempts("alpha").await?.is_empty());
    ensure!(store.get_attempt("hadron-alpha-implement-1").await?.is_none());
    ensure!(store.events_for_request("alpha", 10).await?.len() == 1);
    Ok(())
});

store_test!(events_are_append_only_and_ordered, |db| {
    let store = db.open().await?;
    let mut ids = Vec::new();
    for (i, req) in ["alpha", "beta", "alpha", "alpha"].into_iter().enumerate() {
        let at = 1000 - i64::try_from(i)?; // ids order appends, not timestamps
        ids.push(store.append_event(&event(Some(req), &format!("a{i}"), at)).await?);
    }
    ids.push(store.append_event(&event(None, "settings.changed", 5)).await?);
    ensure!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");

    let alpha: Vec<String> = store.events_for_request("alpha", 10).await?.into_iter().map(|e| e.action).collect();
    ensure!(alpha == ["a0", "a2", "a3"], "{alpha:?}");
    let latest: Vec<String> = store.events_for_request("alpha", 2).await?.into_iter().map(|e| e.action).collect();
    ensure!(latest == ["a2", "a3"], "limit keeps the most recent: {latest:?}");

    let all = store.events_after(0, 100).await?;
    ensure!(all.len() == 5);
    ensure!(
        all[0]
            == Event {
                id: ids[0],
                at: 1000,
                request: Some("alpha".to_owned()),
                actor: "hadron".to_owned(),
                action: "a0".to_owned(),
                revision: Some("rev1".to_owned()),
                detail: "a0 detail".to_owned(),
            }
    );
    ensure!(all[4].request.is_none());
    let tail = store.events_after(ids[2], 1).await?;
    ensure!(tail.len() == 1 && tail[0].id == ids[3], "{tail:?}");
    ensure!(store.events_after(ids[4], 10).await?.is_empty());

    // The database itself refuses to change the log.
    let update = with_pool!(store, pool => {
        sqlx::query("UPDATE events SET actor = 'mallory'").execute(pool).await.map(|_| ())
    });
    ensure!(update.is_err(), "UPDATE of events succeeded");
    let delete = with_pool!(store, pool => {
        sqlx::query("DELETE FROM events").execute(pool).await.map(|_| ())
    });
    ensure!(delete.is_err(), "DELETE of events succeeded");
    ensure!(store.events_after(0, 100).await? == all);
    Ok(())
});

store_test!(retention_prunes_old_rows_and_the_database_guards_the_rest, |db| {
    let store = db.open().await?;
    for at in [10, 20, 30, 40] {
        store.append_event(&event(Some("alpha"), &format!("at{at}"), at)).await?;
    }
    ensure!(store.prune_events(25).await? == 2, "the two events before 25 go");
    let left: Vec<i64> = store.events_after(0, 10).await?.into_iter().map(|e| e.at).collect();
    ensure!(left == [30, 40], "{left:?}");
    // Inside the window the log stays append-only, and the cut-off never moves back.
    let delete = with_pool!(store, pool => {
        sqlx::query("DELETE FROM events WHERE at = 30").execute(pool).await.map(|_| ())
    });
    ensure!(delete.is_err(), "an event inside the retention window was deleted");
    let back = with_pool!(store, pool => {
        sqlx::query("UPDATE event_retention SET pruned_before = 0").execute(pool).await.map(|_| ())
    });
    ensure!(back.is_err(), "the cut-off moved back");
    ensure!(store.prune_events(5).await? == 0, "an older cut-off deletes nothing");

    // Published outbox entries go once old; pending ones never.
    let files: OutboxFiles = [("status/a.yaml".to_owned(), Some("x".to_owned()))].into_iter().collect();
    let old = store.put_outbox("old", &files, 1).await?;
    store.mark_published(old, "c0ffee", 2).await?;
    let pending = store.put_outbox("pending", &files, 1).await?;
    let fresh = store.put_outbox("fresh", &files, 50).await?;
    store.mark_published(fresh, "beef", 60).await?;
    ensure!(store.prune_outbox(30).await? == 1);
    ensure!(store.get_outbox(old).await?.is_none() && store.get_outbox(fresh).await?.is_some());
    let file_rows = with_pool!(store, pool => {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox_files WHERE outbox_id = $1").bind(old).fetch_one(pool).await?
    });
    ensure!(file_rows == 0, "the files of a pruned entry go with it: {file_rows} left");
    ensure!(store.pending_outbox().await?.iter().map(|e| e.id).collect::<Vec<_>>() == [pending]);

    // Entries of requests that are gone go, of every kind; others stay.
    let pr = crate::store::PrRecord { number: 1, url: "u".into(), made_for: "g".into() };
    store.set_status_digests(&[("alpha", Some("d1".into())), ("gone", Some("d2".into()))], 1).await?;
    store.set_approval_pr("gone", "review", &pr, 1).await?;
    store.set_approval_pr("alpha", "review", &pr, 1).await?;
    store.set_target_pr("gone", "../app.git", &pr, 1).await?;
    store.set_control_status("gone", "m", 1).await?;
    store.set_approval_branch_opened_for("gone", "review", "g", 1).await?;
    let passed = crate::store::PassedGate { generation: "g".into(), by: "bob".into(), commit: "c".into(), revision: 0 };
    store.record_approval_passed("gone", "review", &passed, 1).await?;
    store.record_approval_passed("alpha", "review", &passed, 1).await?;
    store.kv_set("other/gone", "v", 1).await?;
    // An approval PR's record and the gate's list of PR numbers, a passed gate: two and one entries.
    ensure!(store.prune_request_entries(|request| request == "alpha").await? == 7);
    ensure!(store.approvals_passed().await?.into_iter().collect::<Vec<_>>() == [(("alpha".to_owned(), "review".to_owned()), passed)]);
    ensure!(store.approval_prs("gone", "review").await?.is_empty() && store.approval_prs("alpha", "review").await? == [1]);
    ensure!(store.status_digests().await?.keys().collect::<Vec<_>>() == ["alpha"]);
    ensure!(store.approval_pr("gone", "review").await?.is_none() && store.target_pr("gone", "../app.git").await?.is_none());
    ensure!(store.control_status("gone").await?.is_none() && store.approval_branch_opened_for("gone", "review").await?.is_none());
    ensure!(store.approval_pr("alpha", "review").await?.as_ref() == Some(&pr) && store.kv_get("other/gone").await?.is_some());
    // An unreadable record counts as none.
    store.kv_set(&crate::store::RequestEntry::TargetPr.key("alpha", Some("x")), "not json", 1).await?;
    ensure!(store.target_pr("alpha", "x").await?.is_none());
    // Digests are recorded and forgotten in one call.
    store.set_status_digests(&[("alpha", None), ("beta", Some("d3".into()))], 2).await?;
    ensure!(store.status_digests().await?.into_iter().collect::<Vec<_>>() == [("beta".to_owned(), "d3".to_owned())]);
    Ok(())
});

store_test!(concurrent_appends_keep_every_event_in_order, |db| {
    let store = db.open().await?;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20 {
                ids.push(store.append_event(&event(None, &format!("t{t}-{i}"), i)).await?);
            }
            Ok::<_, StoreError>(ids)
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        let ids = task.await??;
        ensure!(ids.windows(2).all(|w| w[0] < w[1]));
        written.extend(ids);
    }
    written.sort_unstable();
    // Tail in small pages, as an SSE reader would.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, 7).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        seen.extend(page.into_iter().map(|e| e.id));
    }
    ensure!(seen == written, "tail saw {} of {} events", seen.len(), written.len());
    Ok(())
});

store_test!(outbox_put_pending_published, |db| {
    let store = db.open().await?;
    ensure!(store.pending_outbox().await?.is_empty());
    let files_a: OutboxFiles =
        BTreeMap::from([("status/alpha.yaml".to_owned(), Some("phase: Running\n".to_owned())), ("status/gone.yaml".to_owned(), None)]);
    let files_b: OutboxFiles = BTreeMap::from([("status/beta.yaml".to_owned(), Some("phase: Pending\n".to_owned()))]);
    let a = store.put_outbox("status: alpha running", &files_a, 10).await?;
    let b = store.put_outbox("status: beta pending", &files_b, 11).await?;
    ensure!(a < b);

    let pending = store.pending_outbox().await?;
    ensure!(pending.len() == 2 && pending[0].id == a && pending[1].id == b);
    ensure!(pending[0].files == files_a, "{:?}", pending[0].files);
    ensure!(pending[0].message == "status: alpha running");
    ensure!(pending[0].state == OutboxState::Pending && pending[0].published_commit.is_none());

    store.mark_published(a, "c0ffee", 20).await?;
    let pending = store.pending_outbox().await?;
    ensure!(pending.len() == 1 && pending[0].id == b);
    let published = store.get_outbox(a).await?.context("entry a")?;
    ensure!(published.state == OutboxState::Published);
    ensure!(published.published_commit.as_deref() == Some("c0ffee"));
    ensure!(published.published_at == Some(20) && published.files == files_a);

    // Idempotent with the same commit; a different commit conflicts.
    store.mark_published(a, "c0ffee", 30).await?;
    ensure!(store.get_outbox(a).await?.and_then(|e| e.published_at) == Some(20));
    expect_reason(store.mark_published(a, "deadbeef", 30).await, "StoreConflict")?;
    expect_reason(store.mark_published(b + 100, "c0ffee", 30).await, "StoreNotFound")?;
    ensure!(store.get_outbox(b + 100).await?.is_none());

    // More files than one statement holds come back whole.
    let many: OutboxFiles = (0..rows_per_statement(3) * 2 + 1)
        .map(|i| (format!("status/r{i:05}.yaml"), (i % 7 != 0).then(|| format!("phase: Running\nn: {i}\n"))))
        .collect();
    let c = store.put_outbox("status: many", &many, 40).await?;
    ensure!(store.get_outbox(c).await?.context("entry c")?.files == many);
    // An entry written before files had rows of their own (JSON in `files`) still reads.
    let legacy = with_pool!(store, pool => {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO outbox (created_at, message, files, state) VALUES (50, 'old style', $1, 'pending') RETURNING id",
        )
        .bind(serde_json::to_string(&files_b)?)
        .fetch_one(pool)
        .await?
    });
    let pending = store.pending_outbox().await?;
    ensure!(pending.iter().map(|e| e.id).collect::<Vec<_>>() == [b, c, legacy]);
    ensure!(pending[2].files == files_b && pending[2].message == "old style");
    Ok(())
});

store_test!(webhook_deliveries_are_deduplicated, |db| {
    let store = db.open().await?;
    ensure!(store.record_delivery("d-1", "push", 100).await?);
    ensure!(!store.record_delivery("d-1", "push", 101).await?);
    ensure!(!store.record_delivery("d-1", "pull_request", 102).await?);
    ensure!(store.record_delivery("d-2", "push", 200).await?);
    ensure!(store.prune_deliveries(150).await? == 1);
    // Once pruned, an id is new again; the unpruned one is still known.
    ensure!(store.record_delivery("d-1", "push", 300).await?);
    ensure!(!store.record_delivery("d-2", "push", 300).await?);
    Ok(())
});

store_test!(last_revision_get_set, |db| {
    let store = db.open().await?;
    ensure!(store.last_revision().await?.is_none());
    store.set_last_revision("1111", 1).await?;
    ensure!(store.last_revision().await?.as_deref() == Some("1111"));
    store.set_last_revision("2222", 2).await?;
    ensure!(store.last_revision().await?.as_deref() == Some("2222"));
    Ok(())
});

store_test!(kv_and_commit_statuses, |db| {
    let store = db.open().await?;
    ensure!(store.kv_get("approval/a/review").await?.is_none());
    store.kv_set("approval/a/review", "gen1", 1).await?;
    store.kv_set("approval/a/review", "gen2", 2).await?;
    ensure!(store.kv_get("approval/a/review").await?.as_deref() == Some("gen2"));
    store.set_commit_status("../app.git", "abc", "hadron/local", "pending", 1).await?;
    store.set_commit_status("../app.git", "abc", "hadron/local", "success", 2).await?;
    store.set_commit_status("../app.git", "abc", "ci/lint", "failure", 3).await?;
    store.set_commit_status("../app.git", "def", "ci/lint", "success", 3).await?;
    let got = store.commit_statuses("../app.git", "abc").await?;
    ensure!(got == vec![("ci/lint".to_owned(), "failure".to_owned()), ("hadron/local".to_owned(), "success".to_owned())], "{got:?}");
    ensure!(store.set_commit_status("../app.git", "abc", "x", "maybe", 4).await.is_err(), "unknown states are refused");
    Ok(())
});

store_test!(kv_by_prefix_and_delete, |db| {
    let store = db.open().await?;
    for (k, v) in
        [("status-digest/a", "1"), ("status-digest/b_%", "2"), ("status-digest0", "no"), ("status-digesT/c", "no"), ("other", "no")]
    {
        store.kv_set(k, v, 1).await?;
    }
    let got = store.kv_with_prefix("status-digest/").await?;
    ensure!(
        got == vec![("status-digest/a".to_owned(), "1".to_owned()), ("status-digest/b_%".to_owned(), "2".to_owned())],
        "only keys under the prefix, `_` and `%` taken literally: {got:?}"
    );
    store.kv_write_all(&[("status-digest/a".to_owned(), None), ("status-digest/never".to_owned(), None)], 2).await?;
    ensure!(store.kv_get("status-digest/a").await?.is_none());
    ensure!(store.kv_with_prefix("status-digest/").await?.len() == 1);
    Ok(())
});

store_test!(data_survives_reopen, |db| {
    let store = db.open().await?;
    store.upsert_request(&request("alpha", "Running", 1)).await?;
    store.insert_attempt(&new_attempt("alpha", "implement", 1, 100), Some(&event(Some("alpha"), "attempt.created", 100))).await?;
    store.update_attempt("hadron-alpha-implement-1", &AttemptUpdate::state(AttemptState::Running, 110), None).await?;
    let files: OutboxFiles = BTreeMap::from([("status/alpha.yaml".to_owned(), None)]);
    let outbox_id = store.put_outbox("status", &files, 120).await?;
    store.record_delivery("d-1", "push", 130).await?;
    store.set_last_revision("abcd", 140).await?;
    store.close().await;
    drop(store);

    let store = db.open().await?;
    ensure!(store.get_request("alpha").await? == Some(request("alpha", "Running", 1)));
    let attempt = store.get_attempt("hadron-alpha-implement-1").await?.context("attempt after reopen")?;
    ensure!(attempt.state == AttemptState::Running && attempt.started_at == Some(110));
    ensure!(store.events_for_request("alpha", 10).await?.len() == 1);
    ensure!(store.pending_outbox().await?.iter().map(|e| e.id).eq([outbox_id]));
    ensure!(!store.record_delivery("d-1", "push", 150).await?);
    ensure!(store.last_revision().await?.as_deref() == Some("abcd"));
    // The new insert after reopen still finds the earlier worker.
    let again = store.insert_attempt(&new_attempt("alpha", "implement", 1, 500), None).await?;
    ensure!(again.existed && again.attempt.state == AttemptState::Running);
    Ok(())
});

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_with_foreign_keys() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("nested").join("data");
    let store = Store::open_data_dir(&data_dir).await?;
    ensure!(store.backend() == Backend::Sqlite);
    let path = data_dir.join(SQLITE_FILE_NAME);
    ensure!(path.is_file(), "{} was not created", path.display());
    ensure!(store.sqlite_path() == Some(path.clone()));
    let Pool::Sqlite(pool) = &store.pool else { bail!("not SQLite") };
    // Check every pooled connection, not just one.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(pool.acquire().await?);
    }
    for conn in &mut conns {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut **conn).await?;
        ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode = {mode}");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut **conn).await?;
        ensure!(fk == 1, "foreign_keys = {fk}");
    }
    drop(conns);
    store.close().await;

    // The same file through the URL and plain-path forms of `connect`.
    for target in [format!("sqlite://{}", path.display()), format!("sqlite:{}", path.display()), path.display().to_string()] {
        let store = Store::connect(&target).await?;
        ensure!(store.backend() == Backend::Sqlite);
        ensure!(store.sqlite_path() == Some(path.clone()), "{target}");
        store.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn unsupported_targets_are_refused() -> anyhow::Result<()> {
    for target in ["mysql://root:pw@db/hadron", ":memory:", "", "sqlite::memory:?mode=rwc"] {
        let e = expect_reason(Store::connect(target).await, "StoreInvalidTarget")?;
        ensure!(!e.to_string().contains(":pw@"), "password leaked: {e}");
    }
    Ok(())
}

#[tokio::test]
async fn unreachable_postgres_names_the_url_without_password() -> anyhow::Result<()> {
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let url = "postgresql://hadron:s3cret@127.0.0.1:1/hadron";
    let e = expect_reason(Store::connect_postgres_with_timeout(url, std::time::Duration::from_secs(1)).await, "StoreConnect")?;
    let message = e.to_string();
    ensure!(!message.contains("s3cret"), "password leaked: {message}");
    ensure!(message.contains("postgresql://hadron:***@127.0.0.1:1/hadron"), "{message}");
    ensure!(message.contains("DATABASE_URL"), "{message}");
    Ok(())
}

#[test]
fn redact_url_hides_passwords_only() {
    assert_eq!(
        redact_url("postgres://u:p%40ss@h:5432/db?sslmode=require&password=x"),
        "postgres://u:***@h:5432/db?sslmode=require&password=***"
    );
    assert_eq!(redact_url("postgres://postgres@127.0.0.1:5432/postgres"), "postgres://postgres@127.0.0.1:5432/postgres");
    assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    assert_eq!(redact_url("/var/lib/hadron/hadron.db"), "/var/lib/hadron/hadron.db");
}

#[test]
fn attempt_states_round_trip_and_know_their_predecessors() {
    for state in AttemptState::ALL {
        assert_eq!(state.as_str().parse::<AttemptState>().ok(), Some(state));
        let from = state.allowed_predecessors();
        assert!(!from.is_empty() && from.len() <= 2, "{state}: {from:?}");
        assert!(from.iter().all(|s| !s.is_terminal()));
    }
    assert!("Done".parse::<AttemptState>().is_err());
    assert_eq!("published".parse::<OutboxState>().ok(), Some(OutboxState::Published));
}

// ------------------------------------------------------------- leader lease

/// Runs `body` on a fresh PostgreSQL database (the lease is PostgreSQL's alone).
async fn run_postgres<F, Fut>(body: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    run(Kind::Postgres, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_taken_once_and_taken_over_only_after_it_expires() {
    run_postgres(|db| async move {
        let (a, b) = (db.open().await?, db.open().await?);
        let ttl = std::time::Duration::from_millis(600);
        ensure!(a.lease_holder().await?.is_none(), "nobody holds a new database's lease");
        ensure!(a.try_acquire_lease("a", ttl).await? == Some(1), "the first holder gets epoch 1");
        ensure!(b.try_acquire_lease("b", ttl).await?.is_none(), "b cannot take a lease that has not expired");
        ensure!(a.renew_lease("a", 1, ttl).await?, "the holder renews");
        let held = b.lease_holder().await?.context("held")?;
        ensure!(held.holder == "a" && held.epoch == 1 && held.expires_in_ms > 0, "{held:?}");
        // a stops renewing (a dead process): once expired, b takes over under a new epoch.
        tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
        ensure!(a.lease_holder().await?.context("held")?.expires_in_ms <= 0, "expired by the database clock");
        ensure!(b.try_acquire_lease("b", ttl).await? == Some(2), "every take-over bumps the epoch");
        ensure!(!a.renew_lease("a", 1, ttl).await?, "the old holder cannot renew a lease taken over");
        ensure!(!a.release_lease("a", 1).await?, "nor give it up");
        // A clean shutdown gives the lease up at once.
        ensure!(b.release_lease("b", 2).await?, "the holder releases");
        ensure!(a.try_acquire_lease("a", ttl).await? == Some(3), "taken at once after a release, under a new epoch");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leaders_writes_are_refused_in_their_own_transaction() {
    run_postgres(|db| async move {
        let store = db.open().await?;
        let ttl = std::time::Duration::from_millis(400);
        let epoch_a = store.try_acquire_lease("replica-a", ttl).await?.context("a leads")?;
        let a = store.fenced("replica-a", epoch_a);
        ensure!(a.fence_epoch() == Some(epoch_a));
        a.upsert_request(&request("r1", "Pending", 1)).await?;
        a.set_last_revision("rev-1", 1).await?;
        // a stalls past its lease; b takes over.
        tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
        let epoch_b = store.try_acquire_lease("replica-b", ttl).await?.context("b takes over")?;
        let b = store.fenced("replica-b", epoch_b);
        // Every kind of write of a is refused, and none of it lands.
        let e = expect_reason(a.upsert_request(&request("r1", "Running", 2)).await, "StoreFenced")?;
        let message = e.to_string();
        ensure!(
            message.contains("replica-a") && message.contains("replica-b") && message.contains(&format!("epoch {epoch_b}")),
            "{message}"
        );
        expect_reason(a.set_last_revision("rev-2", 2).await, "StoreFenced")?;
        expect_reason(a.delete_request("r1").await, "StoreFenced")?;
        expect_reason(a.append_event(&event(Some("r1"), "stale", 3)).await, "StoreFenced")?;
        ensure!(store.get_request("r1").await?.context("r1")?.phase == "Pending", "a's refused write did not land");
        ensure!(store.last_revision().await?.as_deref() == Some("rev-1"));
        // The new leader writes; the unfenced store (webhook records, reads) is untouched by fencing.
        b.upsert_request(&request("r1", "Running", 4)).await?;
        ensure!(store.get_request("r1").await?.context("r1")?.phase == "Running");
        ensure!(store.record_delivery("d-1", "push", 5).await?, "any replica records a webhook delivery");
        // A released lease fences its last holder too.
        ensure!(store.release_lease("replica-b", epoch_b).await?);
        let epoch_c = store.try_acquire_lease("replica-c", ttl).await?.context("c")?;
        ensure!(epoch_c == epoch_b + 1);
        expect_reason(b.set_last_revision("rev-3", 6).await, "StoreFenced")?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_sqlite_store_refuses_leader_election_with_the_way_out() -> anyhow::Result<()> {
    let db = TestDb::create(Kind::Sqlite).await?.context("sqlite")?;
    let store = db.open().await?;
    let e = expect_reason(store.try_acquire_lease("a", std::time::Duration::from_secs(1)).await, "LeaseUnsupported")?;
    ensure!(e.to_string().contains("DATABASE_URL"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_waits_for_the_old_leaders_write_in_flight() {
    run_postgres(|db| async move {
        let store = db.open().await?;
        let ttl = std::time::Duration::from_millis(300);
        let epoch = store.try_acquire_lease("a", ttl).await?.context("a leads")?;
        let super::Pool::Postgres(pool) = &store.pool else { bail!("a PostgreSQL store") };
        // a's write has passed its fence check and is still in flight when its lease expires.
        let mut tx = pool.begin().await?;
        let held: (String, i64) = sqlx::query_as(super::lease::FENCE_SQL).bind(LEASE_NAME).fetch_one(&mut *tx).await?;
        ensure!(held == ("a".to_owned(), epoch));
        tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
        let other = store.clone();
        let take_over = tokio::spawn(async move { other.try_acquire_lease("b", std::time::Duration::from_secs(5)).await });
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        ensure!(!take_over.is_finished(), "the take-over waits while a's write holds the lease row");
        sqlx::query("INSERT INTO kv (key, value, updated_at) VALUES ('in-flight', 'a', 1)").execute(&mut *tx).await?;
        tx.commit().await?;
        ensure!(take_over.await?? == Some(epoch + 1), "then b takes over under the next epoch");
        ensure!(store.kv_get("in-flight").await?.as_deref() == Some("a"), "a's write, checked before the take-over, landed whole");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_trigger_reaches_every_listening_replica() {
    run_postgres(|db| async move {
        let (follower, leader) = (db.open().await?, db.open().await?);
        let mut listener = leader.relay_listener().await?;
        let relayed = crate::reconcile::trigger::Relayed {
            from: "replica-b".to_owned(),
            trigger: crate::reconcile::trigger::Trigger::ControlPush { after: "0123abcd".to_owned() },
        };
        ensure!(follower.relay(&relayed.to_payload()).await?, "sent on PostgreSQL");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), listener.next()).await??;
        ensure!(crate::reconcile::trigger::Relayed::from_payload(&got) == Some(relayed), "{got}");
        ensure!(crate::reconcile::trigger::Relayed::from_payload("not a trigger").is_none(), "anything else on the channel is no trigger");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_sqlite_store_has_nobody_to_relay_to() -> anyhow::Result<()> {
    let db = TestDb::create(Kind::Sqlite).await?.context("sqlite")?;
    let store = db.open().await?;
    ensure!(!store.relay("{}").await?, "nothing is sent on SQLite");
    expect_reason(store.relay_listener().await, "LeaseUnsupported")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_inside_a_write_does_not_block_the_take_over_for_long() {
    run_postgres(|db| async move {
        let store = db.open().await?;
        let ttl = std::time::Duration::from_millis(300);
        let epoch = store.try_acquire_lease("a", ttl).await?.context("a leads")?;
        let super::Pool::Postgres(pool) = &store.pool else { bail!("a PostgreSQL store") };
        // a passed its fence check, then froze: its transaction never goes on.
        let mut frozen = pool.begin().await?;
        sqlx::query(super::lease::FENCE_SQL).bind(LEASE_NAME).fetch_one(&mut *frozen).await?;
        tokio::time::sleep(ttl).await;
        let started = std::time::Instant::now();
        let taken = tokio::time::timeout(std::time::Duration::from_secs(20), store.try_acquire_lease("b", ttl)).await??;
        ensure!(taken == Some(epoch + 1), "b takes over once the server ends a's idle transaction: {taken:?}");
        let waited = started.elapsed();
        ensure!(waited >= std::time::Duration::from_secs(3), "it did wait for the frozen transaction: {waited:?}");
        // The frozen transaction is gone: its commit fails, nothing of it lands.
        ensure!(frozen.commit().await.is_err(), "a's transaction was ended by the server");
        Ok(())
    })
    .await
}
