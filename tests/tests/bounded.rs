//! Nothing grows without bound: 500 requests go through a live `hadron up`
//! in ten waves (50 pushed, run, deleted), and what Hadron keeps on disk and
//! in its store per request stays flat from wave to wave.
//!
//! Run with `--nocapture` to see the table. Sizes are asserted (they are not
//! timings); the figures show where the bytes are.

use std::path::Path;
use std::time::Instant;

use hadron_tests::{Live, copy_tree, git_as, git_try, hadron_bin, http_get, workspace_root};

const WAVES: usize = 10;
const PER_WAVE: usize = 50;

/// Pushes after pulling in Hadron's status commits (retrying a raced push).
fn push(clone: &Path) {
    for _ in 0..20 {
        git_as(clone, "alice", &["pull", "-q", "--rebase"]);
        if git_try(clone, "alice", &["push", "-q", "origin", "main"]) {
            return;
        }
    }
    panic!("could not push");
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |entries| entries.filter_map(Result::ok).map(|e| size_of(&e.path())).sum())
}

/// Requests the store knows, and how many of them succeeded.
fn requests(addr: &str) -> (usize, usize) {
    let (_, text) = http_get(addr, "/api/v1/requests");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let list: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let done = items.iter().filter(|r| r["phase"] == "Succeeded").count();
    (items.len(), done)
}

fn wait(live: &Live, what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < std::time::Duration::from_secs(300), "{what}\n{}", live.logs());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn five_hundred_requests_leave_flat_disk_and_store_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    copy_tree(&workspace_root().join("example-repo"), &root.join("example-repo")).expect("copy the example");
    for f in ["add-greeting", "add-healthz", "document-usage"] {
        std::fs::remove_file(root.join(format!("example-repo/requests/{f}.yaml"))).expect("remove");
    }
    let live = Live::start(
        hadron_bin!(),
        root,
        &[
            "up",
            "example-repo",
            "--listen",
            "127.0.0.1:0",
            "--poll-seconds",
            "3600",
            "--run-retention-hours",
            "0",
            "--housekeeping-seconds",
            "1",
        ],
    );
    let addr = live.address();
    live.wait_for_line(&["watching"], "up is running");
    let data = root.join(".hadron");
    let control = data.join("repos/control.git");
    let clone = root.join("alice");
    git_as(root, "alice", &["clone", "-q", control.to_str().expect("utf-8"), "alice"]);

    let mut rows = Vec::new();
    let started = Instant::now();
    for wave in 0..WAVES {
        let names: Vec<String> = (0..PER_WAVE).map(|i| format!("w{wave}-r{i}")).collect();
        // Deleting every request of a wave removes the folder too.
        std::fs::create_dir_all(clone.join("requests")).expect("requests folder");
        for name in &names {
            std::fs::write(
                clone.join(format!("requests/{name}.yaml")),
                format!(
                    "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: Request {name}\n  repos:\n    - url: ../demo-app.git\n  stages:\n    - name: implement\n"
                ),
            )
            .expect("write request");
        }
        git_as(&clone, "alice", &["add", "-A"]);
        git_as(&clone, "alice", &["commit", "-q", "-m", &format!("wave {wave}")]);
        push(&clone);
        wait(&live, &format!("wave {wave} did not finish"), || requests(&addr) == (PER_WAVE, PER_WAVE));
        for name in &names {
            std::fs::remove_file(clone.join(format!("requests/{name}.yaml"))).expect("remove request");
        }
        git_as(&clone, "alice", &["add", "-A"]);
        git_as(&clone, "alice", &["commit", "-q", "-m", &format!("wave {wave} done")]);
        push(&clone);
        wait(&live, &format!("wave {wave} was not forgotten"), || {
            let statuses =
                git_as(&control.parent().expect("repos").join("control.git"), "alice", &["ls-tree", "--name-only", "main", "status/"]);
            requests(&addr).0 == 0 && statuses.trim().is_empty()
        });
        // Housekeeping runs every second; give it one sweep after the last publish.
        let runs = data.join("runs");
        wait(&live, "finished run directories were not removed", || {
            std::fs::read_dir(&runs).map_or(0, |d| d.filter_map(Result::ok).count()) == 0
        });
        let db = size_of(&data.join("hadron.db")) + size_of(&data.join("hadron.db-wal"));
        let kept = size_of(&data) - size_of(&data.join("repos"));
        rows.push((wave, (wave + 1) * PER_WAVE, kept, db, size_of(&runs)));
    }
    eprintln!("{} requests in {:?}", WAVES * PER_WAVE, started.elapsed());
    eprintln!("{:>5} {:>9} {:>14} {:>12} {:>12} {:>10}", "wave", "requests", "hadron data", "per request", "store (db)", "runs/");
    for (wave, total, kept, db, runs) in &rows {
        eprintln!("{wave:>5} {total:>9} {kept:>14} {:>12} {db:>12} {runs:>10}", kept / *total as u64);
    }
    // Hadron's own data (mirrors of the history, the store) grows with the
    // control repo's history, not with leftovers: the bytes each wave adds
    // stay flat, and no run directory, workspace or published outbox entry
    // stays behind.
    let growth: Vec<u64> = rows.windows(2).map(|w| w[1].2.saturating_sub(w[0].2)).collect();
    let early = growth[..3].iter().copied().max().expect("waves");
    let late = growth[growth.len() - 3..].iter().copied().max().expect("waves");
    eprintln!("bytes added per wave: {growth:?}");
    assert!(late <= early * 2 + 256 * 1024, "later waves add more than earlier ones: {growth:?}");
    assert!(rows.iter().all(|r| r.4 == 0), "run directories were left behind");
    // Hadron records what it published right after its push: give the
    // bookkeeping of the last deletion a moment before reading the store.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let left = || {
        rt.block_on(async {
            let store = hadron::store::Store::open_data_dir(&data).await.expect("store");
            let pending = store.pending_outbox().await.expect("outbox").len();
            let kv = store.status_digests().await.expect("kv");
            store.close().await;
            (pending, kv)
        })
    };
    let started = Instant::now();
    let (pending, kv) = loop {
        let (pending, kv) = left();
        if (pending, kv.len()) == (0, 0) || started.elapsed() > std::time::Duration::from_secs(30) {
            break (pending, kv);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!((pending, kv.len()), (0, 0), "no outbox entry waits and no key of a deleted request is left: {kv:?}");
}
