//! Two `hadron serve` replicas on one PostgreSQL store and one control repo:
//! one leads (holds the lease and runs the loop), the other follows (serves
//! health, metrics and the API, ready, not leading); `kill -9` of the
//! leader makes the follower take over under the next epoch and carry on
//! with work pushed after the kill. A second process on a data dir in use
//! refuses to start and names the one that holds it.
//!
//! Real processes, the real git CLI as the person, the real PostgreSQL on
//! 127.0.0.1:5432 (a database of its own, dropped at the end).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod ha_support;

use ha_support::{push_request, status_commit_epochs, wait_phase, witness};
use hadron_tests::{Database, Live, api_phases, hadron_bin, hadron_command, http_get};

/// Seeds the control repo (two stages, an agent that logs each run).
fn seed(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let s = ha_support::seed(root, ha_support::TWO_STAGES);
    (s.control, s.human, s.log)
}

fn metric(addr: &str, name: &str) -> Option<f64> {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    body.lines().find(|l| l.starts_with(&format!("{name} "))).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn serve(dir: &Path, control: &Path, db: &Database) -> Live {
    std::fs::create_dir_all(dir).expect("mkdir");
    let control = control.display().to_string();
    let url = db.url();
    Live::start_with_env(
        hadron_bin!(),
        dir,
        &["serve", "--repo", &control, "--database-url", &url, "--lease-seconds", "3", "--poll-seconds", "1", "--listen", "127.0.0.1:0"],
        &[(hadron::workers::sandbox::SHARED_ENV, &witness(dir))],
    )
}

const SECRET: &str = "relay-test-secret";

/// A replica that hears of pushes only through webhooks (no watch, an hour's poll).
fn serve_hooked(dir: &Path, control: &Path, db: &Database) -> Live {
    std::fs::create_dir_all(dir).expect("mkdir");
    let control = control.display().to_string();
    let url = db.url();
    Live::start_with_env(
        hadron_bin!(),
        dir,
        &["serve", "--repo", &control, "--database-url", &url, "--no-watch", "--poll-seconds", "3600", "--listen", "127.0.0.1:0"],
        &[("HADRON_WEBHOOK_SECRET", SECRET), (hadron::workers::sandbox::SHARED_ENV, &witness(dir))],
    )
}

/// POSTs a signed Gitea webhook (raw HTTP/1.1) and returns the status code.
fn post_hook(addr: &str, event: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let signature = hadron::server::webhook::sign(SECRET.as_bytes(), body);
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST /hooks/gitea HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Gitea-Event: {event}\r\n\
         X-Gitea-Delivery: relay-{}\r\nX-Gitea-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        std::process::id(),
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn the_follower_takes_over_when_the_leader_is_killed_and_a_busy_data_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let (control, human, log) = seed(root);
    let db = Database::create("ha", "failover");

    let a = serve(&root.join("replica-a"), &control, &db);
    a.wait_for_line(&["leading (epoch 1)"], "the first replica takes the lease");
    let b = serve(&root.join("replica-b"), &control, &db);
    let following = b.wait_for_line(&["following: the leader is"], "the second replica follows");
    assert!(following.contains("(epoch 1)"), "{following}");
    let (addr_a, addr_b) = (a.address(), b.address());
    assert_eq!(metric(&addr_a, "hadron_leader"), Some(1.0), "{}", a.logs());
    assert_eq!(metric(&addr_b, "hadron_leader"), Some(0.0), "{}", b.logs());
    assert_eq!(metric(&addr_b, "hadron_leader_epoch"), Some(1.0));
    assert_eq!(http_get(&addr_b, "/readyz").0, 200, "a follower is ready: it serves health, metrics, the API and webhooks");
    assert_eq!(http_get(&addr_b, "/healthz").0, 200);

    // The leader does the work.
    push_request(&human, "before");
    wait_phase(&control, "before", "Succeeded", &[&a, &b]);
    assert!(!b.out().contains("leading"), "the follower did not act:\n{}", b.logs());

    // A second process on a data dir in use refuses to start, naming the holder.
    let refused = hadron_command(hadron_bin!(), &root.join("replica-b"))
        .args(["serve", "--repo", &control.display().to_string(), "--database-url", &db.url(), "--listen", "127.0.0.1:0"])
        .output()
        .expect("hadron runs");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains(&format!("pid {}", b.pid())) && said.contains("--data-dir"), "{said}");

    // kill -9 the leader: the follower takes over once the lease expires.
    let killed = Instant::now();
    a.kill9();
    b.wait_for_line(&["leading (epoch 2)"], "the follower takes over under the next epoch");
    let failover = killed.elapsed();
    assert_eq!(metric(&addr_b, "hadron_leader"), Some(1.0));
    assert_eq!(metric(&addr_b, "hadron_leader_epoch"), Some(2.0));
    push_request(&human, "after");
    wait_phase(&control, "after", "Succeeded", &[&b]);
    eprintln!("failover (kill -9 → the follower leads): {:.2} s with a 3 s lease", failover.as_secs_f64());

    // Every status commit says the epoch it was made under; none of epoch 1 came after epoch 2's first.
    let epochs = status_commit_epochs(&control);
    assert!(epochs.contains(&1) && epochs.contains(&2), "{epochs:?}");

    // Each stage of each request ran once.
    let runs = std::fs::read_to_string(&log).expect("agent log");
    let mut lines: Vec<&str> = runs.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["after implement", "after review", "before implement", "before review"], "{runs}");
    drop(b);
}

#[test]
fn a_webhook_taken_by_a_follower_is_relayed_to_the_leader() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let (control, human, _log) = seed(root);
    let db = Database::create("ha", "relay");
    let leader = serve_hooked(&root.join("replica-a"), &control, &db);
    leader.wait_for_line(&["leading (epoch 1)"], "the first replica leads");
    let follower = serve_hooked(&root.join("replica-b"), &control, &db);
    follower.wait_for_line(&["following: the leader is"], "the second follows");

    // A push the leader does not watch and will not poll for an hour...
    push_request(&human, "hooked");
    let after = hadron_tests::git_stdout(&control, "x", &["rev-parse", "main"]).trim().to_owned();
    // ...announced by Gitea's webhook, which the load balancer sends to the follower.
    let mut payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hadron_tests::fixtures().join("gitea/webhooks/push.json")).expect("push fixture"))
            .expect("json");
    payload["ref"] = serde_json::json!("refs/heads/main");
    payload["after"] = serde_json::json!(after);
    payload["repository"]["full_name"] = serde_json::json!("repos/control");
    payload["repository"]["name"] = serde_json::json!("control");
    let body = serde_json::to_vec(&payload).expect("json");
    let sent = Instant::now();
    assert_eq!(post_hook(&follower.address(), "push", &body), 202, "{}", follower.logs());
    wait_phase(&control, "hooked", "Succeeded", &[&leader, &follower]);
    eprintln!("webhook to the follower → request Succeeded by the leader: {:.2} s", sent.elapsed().as_secs_f64());
    assert!(!follower.out().contains("leading"), "the follower did not act:\n{}", follower.logs());
}

#[test]
fn three_replicas_lose_no_work_and_start_nothing_twice_when_the_leader_is_killed_ten_times() {
    const REQUESTS: usize = 50;
    const KILLS: usize = 10;
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let (control, human, log) = seed(root);
    let db = Database::create("ha", "kills");
    // One host: the replicas share the local driver's run directories, so a
    // new leader finds the workers the killed one started (they outlive it).
    let runs = root.join("runs");
    let start = |name: &str| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (control, url, runs) = (control.display().to_string(), db.url(), runs.display().to_string());
        let args =
            ["serve", "--repo", &control, "--database-url", &url, "--lease-seconds", "2", "--poll-seconds", "1", "--backoff-ms", "100"];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--runs-dir", &runs, "--listen", "127.0.0.1:0"]);
        Live::start_with_env(hadron_bin!(), &dir, &args, &[(hadron::workers::sandbox::SHARED_ENV, &witness(&dir))])
    };
    let names = ["replica-0", "replica-1", "replica-2"];
    let mut replicas: Vec<Option<Live>> = names.iter().map(|n| Some(start(n))).collect();
    let first = Instant::now();
    while !replicas.iter().flatten().any(|r| r.out().contains("leading (epoch 1)")) {
        assert!(first.elapsed() < Duration::from_secs(30), "no replica leads");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut pushed = 0;
    let mut failovers: Vec<f64> = Vec::new();
    let mut epoch = 1;
    let mut seed_state: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut random = |below: u64| {
        seed_state ^= seed_state << 13;
        seed_state ^= seed_state >> 7;
        seed_state ^= seed_state << 17;
        seed_state % below
    };
    for kill in 0..KILLS {
        // Requests keep coming while leaders die.
        let batch = REQUESTS / KILLS;
        for i in 0..batch {
            push_request(&human, &format!("r{}", pushed + i));
        }
        pushed += batch;
        std::thread::sleep(Duration::from_millis(200 + random(1500)));
        let leader = (0..names.len())
            .find(|i| replicas[*i].as_ref().is_some_and(|r| r.out().contains(&format!("leading (epoch {epoch})"))))
            .unwrap_or_else(|| panic!("kill {kill}: no replica leads under epoch {epoch}"));
        let killed = Instant::now();
        replicas[leader].take().expect("live").kill9();
        epoch += 1;
        let needle = format!("leading (epoch {epoch})");
        loop {
            if replicas.iter().flatten().any(|r| r.out().contains(&needle)) {
                break;
            }
            let logs: Vec<String> = replicas.iter().flatten().map(Live::logs).collect();
            assert!(killed.elapsed() < Duration::from_secs(30), "kill {kill}: nobody took over:\n{}", logs.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
        failovers.push(killed.elapsed().as_secs_f64());
        // The killed replica comes back (as its supervisor would restart it) and follows.
        replicas[leader] = Some(start(names[leader]));
    }

    // Every request ends, every status file on main says so.
    let started = Instant::now();
    loop {
        let live = replicas.iter().flatten().next().expect("a replica");
        let phases = api_phases(&live.address());
        let done = phases.len() == REQUESTS && phases.values().all(|p| p == "Succeeded");
        let published = done
            && phases.keys().all(|name| {
                hadron_tests::git_stdout(&control, "x", &["show", &format!("main:status/{name}.yaml")]).contains("  phase: Succeeded")
            });
        if published {
            break;
        }
        let logs: Vec<String> = replicas.iter().flatten().map(Live::logs).collect();
        assert!(started.elapsed() < Duration::from_secs(180), "not every request Succeeded: {phases:?}\n{}", logs.join("\n"));
        std::thread::sleep(Duration::from_millis(300));
    }

    // Every (request, stage) started exactly once, by the agent's own log.
    let runs_log = std::fs::read_to_string(&log).expect("agent log");
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in runs_log.lines() {
        *counts.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "started more than once: {twice:?}");
    assert_eq!(counts.len(), REQUESTS * 2, "every stage of every request ran");

    // No status commit of an older epoch landed after a newer one.
    status_commit_epochs(&control);

    failovers.sort_by(f64::total_cmp);
    eprintln!(
        "failover (kill -9 → the next leader), {KILLS} kills, 2 s lease: min {:.2} s / median {:.2} s / max {:.2} s",
        failovers[0],
        failovers[failovers.len() / 2],
        failovers[failovers.len() - 1]
    );
}

#[test]
fn a_paused_leader_that_wakes_up_after_a_take_over_stops_acting_and_exits() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let (control, human, log) = seed(root);
    let db = Database::create("ha", "paused");
    let mut a = serve(&root.join("replica-a"), &control, &db);
    a.wait_for_line(&["leading (epoch 1)"], "the first replica leads");
    let b = serve(&root.join("replica-b"), &control, &db);
    b.wait_for_line(&["following: the leader is"], "the second follows");
    push_request(&human, "before");
    wait_phase(&control, "before", "Succeeded", &[&a, &b]);

    // The leader freezes (a long GC pause, a stopped VM): the follower takes over.
    a.signal("STOP");
    b.wait_for_line(&["leading (epoch 2)"], "the follower takes over from a frozen leader");
    push_request(&human, "during");
    // The old leader wakes up: it learns it lost the lease and exits with code 3.
    a.signal("CONT");
    let status = a.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("the old leader did not exit:\n{}", a.logs()));
    assert_eq!(status.code(), Some(3), "{}", a.logs());
    assert!(a.out().contains("lost the leader lease"), "{}", a.logs());
    wait_phase(&control, "during", "Succeeded", &[&b]);

    // Nothing ran twice, and no commit of epoch 1 came after one of epoch 2.
    let runs = std::fs::read_to_string(&log).expect("agent log");
    let mut lines: Vec<&str> = runs.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["before implement", "before review", "during implement", "during review"], "{runs}");
    status_commit_epochs(&control);
}
