//! What the HA suites share: a control repo seeded with an agent that logs
//! each run (and sleeps as long as the test says), a person who pushes
//! requests with the real git CLI, replicas of `hadron serve` on one
//! PostgreSQL, and the checks of what landed on `main`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hadron_tests::{Live, git_as, hadron_bin, hadron_command};

/// Two stages, no gate.
pub const TWO_STAGES: &str = "      - name: implement\n      - name: review\n";

/// A seeded control repo and the person's clone of it.
pub struct Seeded {
    /// The bare control repo Hadron watches.
    pub control: PathBuf,
    /// The person's work tree.
    pub human: PathBuf,
    /// The agents' log: one line `<request> <stage>` per run.
    pub log: PathBuf,
    /// A file the agent reads: how many seconds each run sleeps.
    pub sleep: PathBuf,
}

/// Seeds a control repo (one target repo `app`, the default `stages`, an
/// agent that logs each run) with `hadron up --exit-when-idle`, and clones
/// it for the person. `gates` is the settings' default gates block (or empty).
pub fn seed(root: &Path, stages: &str) -> Seeded {
    let ctl = root.join("ctl");
    // The agents' witness: the one folder of the test shared with their sandboxes.
    let witness = hadron_tests::witness_dir(root);
    std::fs::create_dir_all(&witness).expect("witness dir");
    let log = witness.join("agent.log");
    for d in ["agents", "targets/app"] {
        std::fs::create_dir_all(ctl.join(d)).expect("mkdir");
    }
    std::fs::write(ctl.join("targets/app/README.md"), "# app\n").expect("write");
    std::fs::write(
        ctl.join("hadron.yaml"),
        format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: logger\n    stages:\n{stages}  approvers:\n    users: [bob]\n"
        ),
    )
    .expect("write");
    std::fs::write(
        ctl.join("agents/logger.yaml"),
        format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: logger\nspec:\n  command:\n    - sh\n    - -c\n    - |\n      printf '%s %s\\n' \"$1\" \"$2\" >> \"$AGENT_LOG\"\n      sleep \"$(cat \"$(dirname \"$AGENT_LOG\")/sleep\" 2>/dev/null || echo 0)\"\n      printf '%s\\n' \"$2\" >> \"notes-$1.md\"\n    - logger\n    - \"{{{{request}}}}\"\n    - \"{{{{stage}}}}\"\n  env:\n    - name: AGENT_LOG\n      value: {}\n",
            log.display()
        ),
    )
    .expect("write");
    let seeded = hadron_command(hadron_bin!(), root)
        .args(["up", "ctl", "--exit-when-idle", "--listen", "127.0.0.1:0"])
        .output()
        .expect("hadron runs");
    assert!(seeded.status.success(), "seeding: {}", String::from_utf8_lossy(&seeded.stderr));
    git_as(root, "alice", &["clone", "-q", ".hadron/repos/control.git", "human"]);
    Seeded { control: root.join(".hadron/repos/control.git"), human: root.join("human"), log, sleep: witness.join("sleep") }
}

/// The request file of `name` (one target repo).
pub fn request_yaml(name: &str) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: Change {name}\n  repos:\n    - url: ../app.git\n"
    )
}

/// Commits what the person changed in their work tree and pushes it,
/// rebasing onto Hadron's status commits as often as needed.
pub fn commit_and_push(human: &Path, message: &str) {
    git_as(human, "alice", &["add", "-A"]);
    git_as(human, "alice", &["commit", "-q", "-m", message]);
    for _ in 0..100 {
        git_as(human, "alice", &["pull", "-q", "--rebase"]);
        if hadron_tests::git_try(human, "alice", &["push", "-q", "origin", "HEAD:main"]) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("alice could not push {message:?}");
}

/// Asks for request `name`.
pub fn push_request(human: &Path, name: &str) {
    std::fs::create_dir_all(human.join("requests")).expect("mkdir");
    std::fs::write(human.join(format!("requests/{name}.yaml")), request_yaml(name)).expect("write");
    commit_and_push(human, &format!("Ask for {name}"));
}

/// Waits until `main` holds `status/<name>.yaml` with phase `phase`.
pub fn wait_phase(control: &Path, name: &str, phase: &str, who: &[&Live]) {
    let started = Instant::now();
    loop {
        let shown = hadron_tests::git_stdout(control, "x", &["show", &format!("main:status/{name}.yaml")]);
        if shown.lines().any(|l| l == format!("  phase: {phase}")) {
            return;
        }
        let logs: Vec<String> = who.iter().map(|l| l.logs()).collect();
        assert!(started.elapsed() < Duration::from_secs(120), "{name} is not {phase} on main:\n{shown}\n{}", logs.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `Hadron-Epoch` trailers of Hadron's status commits on `main`, newest
/// first, after checking that they never go back: no commit of an older
/// epoch landed after one of a newer epoch.
pub fn status_commit_epochs(control: &Path) -> Vec<i64> {
    let text =
        hadron_tests::git_stdout(control, "x", &["log", "--author=hadron", "--format=%(trailers:key=Hadron-Epoch,valueonly)", "main"]);
    let epochs: Vec<i64> = text.split_whitespace().map(|e| e.parse().expect("an epoch is a number")).collect();
    assert!(epochs.windows(2).all(|w| w[0] >= w[1]), "newest first, epochs never go back: {epochs:?}");
    epochs
}

/// The epoch `refs/hadron/leader` of the control repo names, if any.
pub fn leader_ref_epoch(control: &Path) -> Option<i64> {
    let text =
        hadron_tests::git_stdout(control, "x", &["log", "-1", "--format=%(trailers:key=Hadron-Epoch,valueonly)", "refs/hadron/leader"]);
    text.trim().parse().ok()
}

/// Checks that no status file on `main` was ever rolled back: along its
/// history, within one generation, a finished request never becomes
/// unfinished again and its stage entries never shrink.
pub fn assert_no_status_rollback(control: &Path) {
    let files = hadron_tests::git_stdout(control, "x", &["ls-tree", "-r", "--name-only", "main", "status/"]);
    for file in files.lines() {
        let commits = hadron_tests::git_stdout(control, "x", &["log", "--reverse", "--format=%H", "main", "--", file]);
        let mut last: Option<(String, bool, usize, String)> = None;
        for commit in commits.lines() {
            let text = hadron_tests::git_stdout(control, "x", &["show", &format!("{commit}:{file}")]);
            if text.is_empty() {
                // Deleted here (the request was deleted): a new life starts.
                last = None;
                continue;
            }
            let generation =
                text.lines().find_map(|l| l.trim().strip_prefix("observedGeneration:").map(|g| g.trim().to_owned())).unwrap_or_default();
            let finished = text.lines().any(|l| l == "  phase: Succeeded" || l == "  phase: Failed");
            let entries = text.lines().filter(|l| l.trim_start().starts_with("worker:")).count();
            if let Some((gen_before, finished_before, entries_before, commit_before)) = &last
                && *gen_before == generation
            {
                assert!(
                    !*finished_before || finished,
                    "{file} was rolled back from finished (in {commit_before}) to unfinished (in {commit}):\n{text}"
                );
                assert!(
                    entries >= *entries_before,
                    "{file} lost stage entries between {commit_before} ({entries_before}) and {commit} ({entries}):\n{text}"
                );
            }
            last = Some((generation, finished, entries, commit.to_owned()));
        }
    }
}

/// Every line of the agents' log, counted: panics on a run made twice.
pub fn assert_each_ran_once(log: &Path, expected: &[&str]) {
    let runs = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in runs.lines() {
        *counts.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "started more than once: {twice:?}");
    let mut ran: Vec<&str> = counts.keys().copied().collect();
    ran.sort_unstable();
    let mut expected = expected.to_vec();
    expected.sort_unstable();
    assert_eq!(ran, expected, "every stage of every request ran, once");
}

/// The witness folder of the test a replica folder is in.
pub fn witness(replica: &Path) -> String {
    hadron_tests::witness_dir(replica.parent().expect("a replica folder is in the test's")).display().to_string()
}

/// A replica of `hadron serve` in `root/<name>` on `database_url`, with a
/// 2 s lease, sharing `runs` (the local driver's run directories) with the
/// other replicas, and `env` besides.
pub fn replica(root: &Path, name: &str, control: &Path, database_url: &str, runs: &Path, env: &[(&str, &str)]) -> Live {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (control, runs) = (control.display().to_string(), runs.display().to_string());
    let args = [
        "serve",
        "--repo",
        &control,
        "--database-url",
        database_url,
        "--lease-seconds",
        "2",
        "--poll-seconds",
        "1",
        "--backoff-ms",
        "100",
        "--runs-dir",
        &runs,
        "--listen",
        "127.0.0.1:0",
    ];
    let witness = witness(&dir);
    let mut all: Vec<(&str, &str)> = vec![(hadron::workers::sandbox::SHARED_ENV, &witness)];
    all.extend_from_slice(env);
    Live::start_with_env(hadron_bin!(), &dir, &args, &all)
}

/// A TCP proxy in front of the local PostgreSQL that a test can cut, as a
/// network partition or a stopped database would: cut, it drops every
/// connection it carries and refuses new ones; restored, it carries again.
pub struct PgProxy {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl PgProxy {
    /// Listens on a free loopback port and forwards to 127.0.0.1:5432.
    pub fn start() -> PgProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("its address");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect("127.0.0.1:5432") else { continue };
                let mut kept = open2.lock().expect("lock");
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        kept.push(s);
                    }
                }
                drop(kept);
                for (mut from, mut to) in [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        PgProxy { addr, cut, open }
    }

    /// The URL of database `url` (on 127.0.0.1:5432) through this proxy.
    pub fn url(&self, url: &str) -> String {
        url.replace("127.0.0.1:5432", &self.addr.to_string())
    }

    /// Cuts every connection and refuses new ones (`true`), or carries again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Release);
        if cut {
            for s in self.open.lock().expect("lock").drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
