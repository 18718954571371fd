//! A leader frozen at the worst moments for its side effects (as a stopped
//! VM or a long pause would freeze it), and a PostgreSQL outage: the
//! replica that takes over does the work, and the old one, when it wakes,
//! makes no change at all. It exits (code 3) instead.
//!
//! The leader stops itself at a fault point (`HADRON_FAULT_STOP`, see
//! `reconciler/src/fault.rs`), its git command in flight stopped with it;
//! the second replica starts once it is frozen, so the person's pushes in
//! between are what the new leader finds. Each test asserts:
//! - no status commit of an older epoch after one of a newer epoch, and
//!   one failover per fault (epoch 2 is the last);
//! - no status file on `main` ever rolled back;
//! - every stage ran exactly once (a worker started or cancelled by the
//!   deposed leader after the take-over would make one run twice);
//! - the deposed leader exits with code 3 and says why.
//!
//! Real processes, the real git CLI as the person, the real PostgreSQL on
//! 127.0.0.1:5432 (a database per test, dropped at the end).

mod ha_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ha_support::{Seeded, TWO_STAGES, assert_each_ran_once, assert_no_status_rollback, status_commit_epochs, wait_phase};
use hadron_tests::{Database, Live, git_as, git_stdout};

/// One test's control repo, database and shared runs dir.
struct Cluster {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    seeded: Seeded,
    db: Database,
    runs: PathBuf,
}

impl Cluster {
    fn new(test: &str, stages: &str) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_owned();
        let seeded = ha_support::seed(&root, stages);
        // Every update of a ref of the control repo is logged: an approval
        // branch pushed twice shows.
        git_as(&seeded.control, "x", &["config", "core.logAllRefUpdates", "always"]);
        let db = Database::create("hafault", test);
        Cluster { runs: root.join("runs"), _tmp: tmp, root, seeded, db }
    }

    /// A replica; `fault` arms a fault point in it.
    fn replica(&self, name: &str, fault: Option<&str>) -> Live {
        let env: Vec<(&str, &str)> = fault.map(|f| ("HADRON_FAULT_STOP", f)).into_iter().collect();
        ha_support::replica(&self.root, name, &self.seeded.control, &self.db.url(), &self.runs, &env)
    }

    fn control(&self) -> &Path {
        &self.seeded.control
    }

    fn human(&self) -> &Path {
        &self.seeded.human
    }

    /// How long each agent run sleeps from now on.
    fn agents_sleep(&self, seconds: u32) {
        std::fs::write(&self.seeded.sleep, seconds.to_string()).expect("write");
    }

    /// The checks every scenario ends with.
    fn assert_landed_in_order(&self, runs: &[&str]) {
        let epochs = status_commit_epochs(self.control());
        assert!(epochs.contains(&2), "the new leader committed status: {epochs:?}");
        assert!(epochs.iter().all(|e| *e <= 2), "one failover for one fault: {epochs:?}");
        assert_no_status_rollback(self.control());
        assert_each_ran_once(&self.seeded.log, runs);
    }
}

/// The first replica leads under epoch 1 with `point` armed.
fn first_leader(c: &Cluster, point: &str) -> Live {
    let a = c.replica("replica-a", Some(point));
    a.wait_for_line(&["leading (epoch 1)"], "the first replica leads");
    a
}

/// Waits for `live` to stop itself at `point`: its pid and its git child's.
fn stopped_at(live: &Live, point: &str) -> (u32, Option<u32>) {
    let line = live.wait_for_line(&["fault: stopping at", point], "the leader reaches its fault point");
    let number = |key: &str| line.split(key).nth(1).and_then(|r| r.trim_end_matches(')').split([',', ')']).next()?.trim().parse().ok());
    let pid: u32 = number("(pid ").expect("a pid");
    let child = number("child ");
    let started = Instant::now();
    while process_state(pid) != Some('T') {
        assert!(started.elapsed() < Duration::from_secs(10), "pid {pid} did not stop:\n{}", live.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    (pid, child)
}

/// A process's state letter (`T` when stopped), from `/proc`.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.chars().next()
}

/// Wakes a frozen leader and its git child.
fn wake(pid: u32, child: Option<u32>) {
    for p in child.into_iter().chain([pid]) {
        let _ = std::process::Command::new("kill").args(["-CONT", &p.to_string()]).status();
    }
}

/// The old leader, awake, exits with code 3 and says it lost the lease.
fn assert_deposed(old: &mut Live) {
    let status = old.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| panic!("the old leader did not exit:\n{}", old.logs()));
    assert_eq!(status.code(), Some(3), "{}", old.logs());
    assert!(old.out().contains("lost the leader lease"), "{}", old.logs());
}

fn wait_until(what: &str, who: &[&Live], mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        let logs: Vec<String> = who.iter().map(|l| l.logs()).collect();
        assert!(started.elapsed() < Duration::from_secs(90), "{what}: not after 90 s\n{}", logs.join("\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn agent_log(c: &Cluster) -> String {
    std::fs::read_to_string(&c.seeded.log).unwrap_or_default()
}

#[test]
fn a_leader_frozen_with_its_status_push_in_flight_never_lands_it_after_the_take_over() {
    let c = Cluster::new("push", TWO_STAGES);
    let mut a = first_leader(&c, "status-push");
    ha_support::push_request(c.human(), "r1");
    let (pid, child) = stopped_at(&a, "status-push");
    assert!(child.is_some(), "the git push is frozen too");
    let b = c.replica("replica-b", None);
    b.wait_for_line(&["leading (epoch 2)"], "the second replica takes over from the frozen leader");
    // The new leader claims the control repo before the old push goes on.
    wait_until("the new leader claims refs/hadron/leader", &[&b], || ha_support::leader_ref_epoch(c.control()) == Some(2));
    wake(pid, child);
    assert_deposed(&mut a);
    wait_phase(c.control(), "r1", "Succeeded", &[&b]);
    c.assert_landed_in_order(&["r1 implement", "r1 review"]);
}

#[test]
fn a_leader_frozen_while_its_status_writer_fetches_pushes_nothing_onto_the_new_head() {
    let c = Cluster::new("fetch", TWO_STAGES);
    let mut a = first_leader(&c, "status-fetch");
    ha_support::push_request(c.human(), "r1");
    let (pid, child) = stopped_at(&a, "status-fetch");
    let b = c.replica("replica-b", None);
    b.wait_for_line(&["leading (epoch 2)"], "the second replica takes over from the frozen leader");
    // The new leader finishes the request; the old one's fetched head is now stale.
    wait_phase(c.control(), "r1", "Succeeded", &[&b]);
    wake(pid, child);
    assert_deposed(&mut a);
    // A pass of the new leader after the wake-up: still Succeeded, nothing rolled back.
    ha_support::push_request(c.human(), "r2");
    wait_phase(c.control(), "r2", "Succeeded", &[&b]);
    wait_phase(c.control(), "r1", "Succeeded", &[&b]);
    c.assert_landed_in_order(&["r1 implement", "r1 review", "r2 implement", "r2 review"]);
}

#[test]
fn a_leader_frozen_while_cancelling_workers_cancels_none_of_the_new_leaders_after_the_person_restores_them() {
    let c = Cluster::new("cancel", TWO_STAGES);
    c.agents_sleep(8);
    let mut a = first_leader(&c, "worker-cancel");
    ha_support::push_request(c.human(), "r1");
    ha_support::push_request(c.human(), "r2");
    wait_until("both first stages run", &[&a], || {
        let log = agent_log(&c);
        log.contains("r1 implement") && log.contains("r2 implement")
    });
    // The person deletes both requests: the leader goes to cancel their workers, and freezes.
    git_as(c.human(), "alice", &["rm", "-q", "requests/r1.yaml", "requests/r2.yaml"]);
    ha_support::commit_and_push(c.human(), "Drop r1 and r2");
    let (pid, child) = stopped_at(&a, "worker-cancel");
    // She changes her mind while it is frozen.
    git_as(c.human(), "alice", &["pull", "-q", "--rebase"]);
    let drop_commit = git_stdout(c.human(), "alice", &["log", "-1", "--format=%H", "--grep=Drop r1 and r2"]);
    git_as(c.human(), "alice", &["revert", "--no-edit", drop_commit.trim()]);
    for _ in 0..100 {
        if hadron_tests::git_try(c.human(), "alice", &["push", "-q", "origin", "HEAD:main"]) {
            break;
        }
        git_as(c.human(), "alice", &["pull", "-q", "--rebase"]);
    }
    let b = c.replica("replica-b", None);
    b.wait_for_line(&["leading (epoch 2)"], "the second replica takes over from the frozen leader");
    wake(pid, child);
    assert_deposed(&mut a);
    c.agents_sleep(0);
    wait_phase(c.control(), "r1", "Succeeded", &[&b]);
    wait_phase(c.control(), "r2", "Succeeded", &[&b]);
    for (who, dir, live) in [("the old leader", "replica-a", &a), ("the new leader", "replica-b", &b)] {
        let log = std::fs::read_to_string(c.root.join(dir).join("up.err")).unwrap_or_default();
        assert!(!log.contains("worker cancelled"), "{who} cancelled a worker:\n{}", live.logs());
    }
    c.assert_landed_in_order(&["r1 implement", "r1 review", "r2 implement", "r2 review"]);
}

#[test]
fn a_leader_frozen_before_starting_a_worker_starts_none_after_the_take_over() {
    let c = Cluster::new("start", TWO_STAGES);
    let mut a = first_leader(&c, "worker-start");
    ha_support::push_request(c.human(), "r1");
    // Frozen with the attempt's intent stored and the worker not started.
    let (pid, child) = stopped_at(&a, "worker-start");
    let b = c.replica("replica-b", None);
    b.wait_for_line(&["leading (epoch 2)"], "the second replica takes over from the frozen leader");
    wait_until("the new leader starts the worker the old one meant to", &[&b], || agent_log(&c).contains("r1 implement"));
    wake(pid, child);
    assert_deposed(&mut a);
    wait_phase(c.control(), "r1", "Succeeded", &[&b]);
    c.assert_landed_in_order(&["r1 implement", "r1 review"]);
}

#[test]
fn a_leader_frozen_before_pushing_an_approval_branch_pushes_none_after_the_take_over() {
    let c = Cluster::new("approval", "      - name: implement\n      - name: polish\n");
    let mut a = first_leader(&c, "approval-push");
    let request = format!("{}  gates:\n    - name: review\n      type: approval\n      after: implement\n", ha_support::request_yaml("r1"));
    std::fs::create_dir_all(c.human().join("requests")).expect("mkdir");
    std::fs::write(c.human().join("requests/r1.yaml"), request).expect("write");
    ha_support::commit_and_push(c.human(), "Ask for r1, with a review");
    let (pid, child) = stopped_at(&a, "approval-push");
    let b = c.replica("replica-b", None);
    b.wait_for_line(&["leading (epoch 2)"], "the second replica takes over from the frozen leader");
    let branch = "refs/heads/hadron/approve/r1/review";
    wait_until("the new leader opens the approval branch", &[&b], || {
        !git_stdout(c.control(), "x", &["rev-parse", "-q", "--verify", branch]).is_empty()
    });
    wake(pid, child);
    assert_deposed(&mut a);
    // The branch was pushed once, by the new leader.
    let updates = git_stdout(c.control(), "x", &["reflog", "show", "--format=%H %gs", branch]);
    assert_eq!(updates.lines().count(), 1, "one push of the approval branch:\n{updates}");
    // Bob approves by merging it; the request goes on.
    git_as(c.human(), "bob", &["pull", "-q", "--rebase"]);
    git_as(c.human(), "bob", &["fetch", "-q", "origin", "hadron/approve/r1/review"]);
    git_as(c.human(), "bob", &["merge", "-q", "--no-ff", "-m", "Approve r1", "FETCH_HEAD"]);
    for _ in 0..100 {
        if hadron_tests::git_try(c.human(), "bob", &["push", "-q", "origin", "HEAD:main"]) {
            break;
        }
        git_as(c.human(), "bob", &["pull", "-q", "--rebase=merges"]);
    }
    wait_phase(c.control(), "r1", "Succeeded", &[&b]);
    c.assert_landed_in_order(&["r1 implement", "r1 polish"]);
}

#[test]
fn a_postgresql_outage_costs_one_failover_and_no_write_of_the_deposed_leader() {
    let c = Cluster::new("outage", TWO_STAGES);
    c.agents_sleep(3);
    let proxy = ha_support::PgProxy::start();
    let url = proxy.url(&c.db.url());
    let start = |name: &str| ha_support::replica(&c.root, name, c.control(), &url, &c.runs, &[]);
    let mut a = start("replica-a");
    a.wait_for_line(&["leading (epoch 1)"], "the first replica leads");
    let b = start("replica-b");
    b.wait_for_line(&["following: the leader is"], "the second follows");
    ha_support::push_request(c.human(), "r1");
    ha_support::push_request(c.human(), "r2");
    wait_until("the first stages run", &[&a], || agent_log(&c).contains("r1 implement"));
    // PostgreSQL is gone for 8 s: the leader stops acting by its renew
    // deadline and exits; nobody leads meanwhile.
    proxy.set_cut(true);
    assert_deposed(&mut a);
    std::thread::sleep(Duration::from_secs(6));
    proxy.set_cut(false);
    let back = Instant::now();
    b.wait_for_line(&["leading (epoch 2)"], "the follower leads once PostgreSQL is back");
    let failover = back.elapsed();
    c.agents_sleep(0);
    wait_phase(c.control(), "r1", "Succeeded", &[&b]);
    wait_phase(c.control(), "r2", "Succeeded", &[&b]);
    // The new leader kept its lease: no second failover.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!b.out().contains("lost the leader lease") && !b.out().contains("leading (epoch 3)"), "{}", b.logs());
    c.assert_landed_in_order(&["r1 implement", "r1 review", "r2 implement", "r2 review"]);
    eprintln!("PostgreSQL back → a leader again: {:.2} s (2 s lease)", failover.as_secs_f64());
}
