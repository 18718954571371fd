//! The chaos suite: a real `hadron up` (real git CLI, SQLite or PostgreSQL,
//! child-process workers running a script agent that logs every run) driven
//! through the faults of a bad day, one scenario after another:
//!
//! * Hadron's status pushes declined by the control repo for a while;
//! * 100 human pushes racing Hadron's status commits;
//! * status files forged by a person while requests run;
//! * a request file whose name holds a newline;
//! * `kill -9` twenty times at random moments, then with the store deleted
//!   before each restart;
//! * PostgreSQL restarted while requests run.
//!
//! It prints one table (fault, requests, terminal, stages run twice, human
//! commits lost, longest pass, recovered without a restart) and asserts:
//! every request terminal, no stage run twice, no human commit lost, and no
//! restart needed where the fault was not a restart. `HADRON_CHAOS=long`
//! runs the long form (longer outages, more requests).
//! Gitea returning 5xx and timeouts is covered by the Gitea tests of the
//! `hadron` crate (`reconciler/tests/gitea_e2e.rs`) and the Gitea-down test
//! in `local_flow.rs`, which have the Gitea double.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hadron_tests::{Database, Live, api_phases, git_as, hadron_bin, hadron_command, http_get};

fn long() -> bool {
    std::env::var("HADRON_CHAOS").as_deref() == Ok("long")
}

const TERMINAL: &[&str] = &["Succeeded", "Failed", "Invalid"];

/// One row of the table.
struct Row {
    fault: String,
    requests: usize,
    terminal: usize,
    twice: usize,
    lost: usize,
    max_pass: f64,
    recovered: &'static str,
}

/// A control repo seeded by a first `hadron up`, a person's clone of it, and
/// an agent that appends `worker request stage` to a log outside any repo.
struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    log: PathBuf,
    human: PathBuf,
    pushed: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_owned();
        // The agents' witness: the one folder of the test shared with their sandboxes.
        let log = hadron_tests::witness_dir(&root).join("agent.log");
        std::fs::create_dir_all(hadron_tests::witness_dir(&root)).expect("witness dir");
        let ctl = root.join("ctl");
        for d in ["agents", "targets/app"] {
            std::fs::create_dir_all(ctl.join(d)).expect("mkdir");
        }
        std::fs::write(ctl.join("targets/app/README.md"), "# app\n").expect("write");
        std::fs::write(
            ctl.join("hadron.yaml"),
            "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: counter\n    maxAttempts: 3\n    stages:\n      - name: implement\n      - name: review\n  limits:\n    maxConcurrentWorkers: 4\n",
        )
        .expect("write");
        std::fs::write(
            ctl.join("agents/counter.yaml"),
            format!(
                "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: counter\nspec:\n  command:\n    - sh\n    - -c\n    - |\n      set -eu\n      printf '%s %s %s\\n' \"$HADRON_WORKER\" \"$2\" \"$3\" >> \"$AGENT_LOG\"\n      mkdir -p notes\n      printf '%s\\n' \"$3\" >> \"notes/$2.md\"\n      sleep 0.$(( $(od -An -N1 -tu1 /dev/urandom) % 3 + 1 ))\n    - counter\n    - \"{{{{promptFile}}}}\"\n    - \"{{{{request}}}}\"\n    - \"{{{{stage}}}}\"\n  env:\n    - name: AGENT_LOG\n      value: {}\n",
                log.display()
            ),
        )
        .expect("write");
        let seeded = hadron_command(hadron_bin!(), &root)
            .args(["up", "ctl", "--exit-when-idle", "--listen", "127.0.0.1:0"])
            .output()
            .expect("hadron runs");
        assert!(seeded.status.success(), "seeding: {}", String::from_utf8_lossy(&seeded.stderr));
        let human = root.join("human");
        git_as(&root, "alice", &["clone", "-q", ".hadron/repos/control.git", "human"]);
        Lab { _tmp: tmp, root, log, human, pushed: Vec::new() }
    }

    fn control(&self) -> PathBuf {
        self.root.join(".hadron/repos/control.git")
    }

    /// `hadron up` on the seeded repos, polling every second.
    fn start(&self, extra: &[&str]) -> Live {
        let mut args = vec!["up", "ctl", "--poll-seconds", "1", "--backoff-ms", "100", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Live::start(hadron_bin!(), &self.root, &args)
    }

    fn request_yaml(name: &str) -> String {
        format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: Change {name}\n  repos:\n    - url: ../app.git\n"
        )
    }

    /// Commits what `write` put in `clone` as `who` and pushes it, pulling
    /// Hadron's commits in first (a rejected push is pulled and pushed
    /// again); returns the pushed commit.
    fn commit_and_push(clone: &Path, who: &str, message: &str, write: impl FnOnce(&Path)) -> String {
        write(clone);
        git_as(clone, who, &["add", "-A"]);
        git_as(clone, who, &["commit", "-q", "-m", message]);
        for _ in 0..100 {
            git_as(clone, who, &["pull", "-q", "--rebase"]);
            let pushed = hadron_tests::git_try(clone, who, &["push", "-q", "origin", "HEAD:main"]);
            if pushed {
                return git_as(clone, who, &["rev-parse", "HEAD"]).trim().to_owned();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{who} could not push {message}");
    }

    /// A person pushes `names` as new requests.
    fn push_requests(&mut self, names: &[String]) {
        let sha = Lab::commit_and_push(&self.human, "alice", "Add requests", |clone| {
            std::fs::create_dir_all(clone.join("requests")).expect("mkdir");
            for name in names {
                std::fs::write(clone.join(format!("requests/{name}.yaml")), Lab::request_yaml(name)).expect("write");
            }
        });
        self.pushed.push(sha);
    }

    /// Human commits that are not in `main` any more.
    fn lost(&self) -> usize {
        let control = self.control();
        self.pushed.iter().filter(|sha| !hadron_tests::git_try(&control, "x", &["merge-base", "--is-ancestor", sha, "main"])).count()
    }

    /// (request, stage) pairs the agent ran more than once.
    fn twice(&self) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut runs: BTreeMap<(String, String), usize> = BTreeMap::new();
        for line in text.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [_, request, stage] = parts[..] {
                *runs.entry((request.to_owned(), stage.to_owned())).or_default() += 1;
            }
        }
        runs.values().filter(|n| **n > 1).count()
    }

    /// Phases from the store (the API), once every request is terminal and
    /// every status file in git says the same; panics after `limit`.
    fn wait_terminal(&self, live: &Live, expected: usize, limit: Duration) -> BTreeMap<String, String> {
        let addr = live.address();
        let started = Instant::now();
        loop {
            let phases = api_phases(&addr);
            let all_terminal = phases.len() >= expected && phases.values().all(|p| TERMINAL.contains(&p.as_str()));
            if all_terminal && self.published(&phases) {
                return phases;
            }
            assert!(started.elapsed() < limit, "not every request ended in {limit:?}: {phases:?}\n{}", live.logs());
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Whether every status file in `main` holds the phase the store has.
    fn published(&self, phases: &BTreeMap<String, String>) -> bool {
        let control = self.control();
        phases.iter().filter(|(name, _)| is_dns_label(name)).all(|(name, phase)| {
            let shown = hadron_tests::git_stdout(&control, "x", &["show", &format!("main:status/{name}.yaml")]);
            shown.lines().any(|l| l == format!("  phase: {phase}"))
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The longest pass of this process (waiting for its first pass to end).
fn max_pass(addr: &str) -> f64 {
    let started = Instant::now();
    loop {
        let (_, text) = http_get(addr, "/metrics");
        let max = text
            .lines()
            .find_map(|l| l.strip_prefix("hadron_pass_duration_seconds_max "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
        if max > 0.0 || started.elapsed() > Duration::from_secs(30) {
            return max;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

fn row(fault: String, lab: &Lab, live: &Live, phases: &BTreeMap<String, String>, recovered: &'static str) -> Row {
    Row {
        fault,
        requests: phases.len(),
        terminal: phases.values().filter(|p| TERMINAL.contains(&p.as_str())).count(),
        twice: lab.twice(),
        lost: lab.lost(),
        max_pass: max_pass(&live.address()),
        recovered,
    }
}

const LIMIT: Duration = Duration::from_secs(240);

fn declined_pushes() -> Row {
    let outage = Duration::from_secs(if long() { 30 } else { 8 });
    let mut lab = Lab::new();
    let marker = lab.root.join("decline");
    std::fs::write(&marker, "").expect("marker");
    let hook = lab.control().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nwhile read old new ref; do\n  if [ -e '{}' ] && [ \"$(git log -1 --format=%an \"$new\")\" = hadron ]; then\n    echo 'protected branch' >&2; exit 1\n  fi\ndone\n",
            marker.display()
        ),
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let live = lab.start(&[]);
    lab.push_requests(&names("declined", 20));
    std::thread::sleep(outage);
    std::fs::remove_file(&marker).expect("lift");
    let phases = lab.wait_terminal(&live, 20, LIMIT);
    row(format!("status pushes declined {}s", outage.as_secs()), &lab, &live, &phases, "yes")
}

fn racing_pushes() -> Row {
    let mut lab = Lab::new();
    let live = lab.start(&[]);
    lab.push_requests(&names("race", 10));
    let control = lab.control();
    let shas: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let root = lab.root.clone();
                let control = control.clone();
                s.spawn(move || {
                    let who = format!("human{t}");
                    git_as(&root, &who, &["clone", "-q", control.to_str().expect("utf-8"), &who]);
                    let clone = root.join(&who);
                    (0..25)
                        .map(|i| {
                            Lab::commit_and_push(&clone, &who, &format!("{who} change {i}"), |c| {
                                std::fs::create_dir_all(c.join("notes")).expect("mkdir");
                                std::fs::write(c.join(format!("notes/{who}-{i}.md")), format!("{i}\n")).expect("write");
                                if i % 5 == 0 {
                                    std::fs::create_dir_all(c.join("requests")).expect("mkdir");
                                    let name = format!("h{t}-{i:02}");
                                    std::fs::write(c.join(format!("requests/{name}.yaml")), Lab::request_yaml(&name)).expect("write");
                                }
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("pusher")).collect()
    });
    assert_eq!(shas.len(), 100);
    lab.pushed.extend(shas);
    let phases = lab.wait_terminal(&live, 30, LIMIT);
    row("100 racing human pushes".into(), &lab, &live, &phases, "yes")
}

fn forged_statuses() -> Row {
    let mut lab = Lab::new();
    let live = lab.start(&[]);
    let forged_names = names("forged", 20);
    lab.push_requests(&forged_names);
    // As soon as Hadron wrote status files, a person marks them all Succeeded.
    let started = Instant::now();
    while !hadron_tests::git_try(&lab.control(), "x", &["cat-file", "-e", "main:status/forged-00.yaml"]) {
        assert!(started.elapsed() < LIMIT, "no status file appeared\n{}", live.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let clone = lab.human.clone();
    let mut forged = None;
    for _ in 0..50 {
        git_as(&clone, "mallory", &["fetch", "-q", "origin"]);
        git_as(&clone, "mallory", &["reset", "-q", "--hard", "origin/main"]);
        for entry in std::fs::read_dir(clone.join("status")).expect("status dir").filter_map(Result::ok) {
            let text = std::fs::read_to_string(entry.path()).expect("read");
            let edited: Vec<String> = text
                .lines()
                .map(|l| {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    if l.trim_start().starts_with("phase: ") { format!("{indent}phase: Succeeded") } else { l.to_owned() }
                })
                .collect();
            std::fs::write(entry.path(), edited.join("\n") + "\n").expect("write");
        }
        git_as(&clone, "mallory", &["commit", "-q", "-am", "Mark everything done"]);
        if hadron_tests::git_try(&clone, "mallory", &["push", "-q", "origin", "HEAD:main"]) {
            forged = Some(git_as(&clone, "mallory", &["rev-parse", "HEAD"]).trim().to_owned());
            break;
        }
    }
    let sha = forged.expect("the forged statuses could be pushed");
    lab.pushed.push(sha);
    let phases = lab.wait_terminal(&live, 20, LIMIT);
    // Every request really ran both stages, whatever the forged files said.
    let log = std::fs::read_to_string(&lab.log).unwrap_or_default();
    for name in &forged_names {
        for stage in ["implement", "review"] {
            assert!(
                log.lines().any(|l| l.ends_with(&format!(" {name} {stage}"))),
                "{name}/{stage} never ran: the forged status was obeyed"
            );
        }
    }
    row("status files forged".into(), &lab, &live, &phases, "yes")
}

fn newline_name() -> Row {
    let mut lab = Lab::new();
    let live = lab.start(&[]);
    let sha = Lab::commit_and_push(&lab.human.clone(), "alice", "A bad file name", |clone| {
        std::fs::create_dir_all(clone.join("requests")).expect("mkdir");
        std::fs::write(clone.join("requests/bad\nname.yaml"), Lab::request_yaml("bad-name")).expect("write");
    });
    lab.pushed.push(sha);
    lab.push_requests(&names("newline", 10));
    let phases = lab.wait_terminal(&live, 10, LIMIT);
    assert!(names("newline", 10).iter().all(|n| phases.get(n).map(String::as_str) == Some("Succeeded")), "{phases:?}");
    row("request file name with a newline".into(), &lab, &live, &phases, "yes")
}

fn kills(delete_store: bool, seed: u64) -> Row {
    let kills = 20;
    let mut lab = Lab::new();
    lab.push_requests(&names(if delete_store { "store" } else { "kill" }, if long() { 50 } else { 30 }));
    let mut rng = seed;
    for _ in 0..kills {
        let live = lab.start(&[]);
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(200 + (rng >> 33) % 2300));
        live.kill9();
        if delete_store {
            for f in ["hadron.db", "hadron.db-wal", "hadron.db-shm"] {
                let _ = std::fs::remove_file(lab.root.join(".hadron").join(f));
            }
        }
    }
    let live = lab.start(&[]);
    let expected = if long() { 50 } else { 30 };
    let phases = lab.wait_terminal(&live, expected, LIMIT);
    let fault = if delete_store { format!("kill -9 x{kills}, store deleted each time") } else { format!("kill -9 x{kills}") };
    row(fault, &lab, &live, &phases, "n/a (restart is the fault)")
}

fn postgres_restart() -> Row {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|d| d.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).max())
        .expect("a PostgreSQL cluster under /etc/postgresql (.ci/run installs one)");
    let db = Database::create("chaos", "pg");
    let url = db.url();
    let mut lab = Lab::new();
    let live = lab.start(&["--database-url", &url]);
    lab.push_requests(&names("pg", 20));
    std::thread::sleep(Duration::from_millis(1500));
    let restarted = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .output()
        .expect("pg_ctlcluster runs");
    assert!(
        restarted.status.success(),
        "restarting PostgreSQL (needs root or the postgres user): {}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let phases = lab.wait_terminal(&live, 20, LIMIT);
    let row = row(format!("PostgreSQL {version} restarted mid-run"), &lab, &live, &phases, "yes");
    drop(live);
    drop(db);
    row
}

#[test]
fn chaos_every_request_ends_no_stage_runs_twice_nothing_is_lost() {
    let started = Instant::now();
    type Scenario = (&'static str, fn() -> Row);
    let scenarios: Vec<Scenario> = vec![
        ("declined", declined_pushes),
        ("racing", racing_pushes),
        ("forged", forged_statuses),
        ("newline", newline_name),
        ("kill", || kills(false, 7)),
        ("store", || kills(true, 11)),
        ("postgres", postgres_restart),
    ];
    let mut rows = Vec::new();
    for (name, scenario) in scenarios {
        let t = Instant::now();
        let row = scenario();
        eprintln!("chaos scenario {name} took {:?}", t.elapsed());
        rows.push(row);
    }
    eprintln!(
        "\n{:<42} {:>8} {:>8} {:>11} {:>11} {:>13}  recovered without restart",
        "fault", "requests", "terminal", "run twice", "human lost", "max pass (s)"
    );
    for r in &rows {
        eprintln!(
            "{:<42} {:>8} {:>8} {:>11} {:>11} {:>13.3}  {}",
            r.fault, r.requests, r.terminal, r.twice, r.lost, r.max_pass, r.recovered
        );
    }
    eprintln!(
        "chaos suite: {:?} ({} form); for the kill rows the longest pass is the last process's",
        started.elapsed(),
        if long() { "long" } else { "short" }
    );
    for r in &rows {
        assert_eq!(r.terminal, r.requests, "{}: not every request ended", r.fault);
        assert_eq!(r.twice, 0, "{}: a stage ran twice", r.fault);
        assert_eq!(r.lost, 0, "{}: a human commit was lost", r.fault);
        assert!(r.requests > 0, "{}: no request was seen", r.fault);
    }
}
