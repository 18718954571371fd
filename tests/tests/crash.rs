//! Crash tests: `kill -9` Hadron at random moments while 50 requests run
//! with a script agent, restart it each time; every request ends terminal,
//! and the agent's own append-only log shows each worker (request, stage,
//! repo, attempt) ran exactly once per attempt that the status reports. The
//! same again with the store deleted between restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hadron_tests::{git_as, hadron_bin};

const REQUESTS: usize = 50;
const KILLS: usize = 20;

/// A control-repo folder: 50 requests, two stages, an agent that logs every
/// run to `log` (outside any repo) and changes a file in the target repo.
fn control_folder(root: &Path, log: &Path) -> std::path::PathBuf {
    let dir = root.join("ctl");
    std::fs::create_dir_all(dir.join("agents")).expect("mkdir");
    std::fs::create_dir_all(dir.join("requests")).expect("mkdir");
    std::fs::create_dir_all(dir.join("targets/app")).expect("mkdir");
    std::fs::write(dir.join("targets/app/README.md"), "# app\n").expect("write");
    std::fs::write(
        dir.join("hadron.yaml"),
        "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: counter\n    maxAttempts: 3\n    stages:\n      - name: implement\n      - name: review\n  limits:\n    maxConcurrentWorkers: 4\n",
    )
    .expect("write");
    let agent = format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: counter\nspec:\n  command:\n    - sh\n    - -c\n    - |\n      set -eu\n      printf '%s %s %s\\n' \"$HADRON_WORKER\" \"$2\" \"$3\" >> \"$AGENT_LOG\"\n      mkdir -p notes\n      printf '%s\\n' \"$3\" >> \"notes/$2.md\"\n      sleep 0.$(( $(od -An -N1 -tu1 /dev/urandom) % 5 + 1 ))\n    - counter\n    - \"{{{{promptFile}}}}\"\n    - \"{{{{request}}}}\"\n    - \"{{{{stage}}}}\"\n  env:\n    - name: AGENT_LOG\n      value: {}\n",
        log.display()
    );
    std::fs::write(dir.join("agents/counter.yaml"), agent).expect("write");
    for i in 0..REQUESTS {
        std::fs::write(
            dir.join(format!("requests/req-{i:02}.yaml")),
            format!("apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: req-{i:02}\nspec:\n  title: Change {i}\n  repos:\n    - url: ../app.git\n"),
        )
        .expect("write");
    }
    dir
}

fn up(cwd: &Path, dir: &Path, exit_when_idle: bool) -> std::process::Child {
    let mut cmd = Command::new(hadron_bin!());
    let log =
        |name: &str| std::fs::OpenOptions::new().create(true).append(true).open(cwd.join(name)).map_or_else(|_| Stdio::null(), Stdio::from);
    cmd.args(["up", dir.to_str().expect("utf-8"), "--poll-seconds", "1", "--backoff-ms", "100", "--listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env_remove("HADRON_DATA_DIR")
        .env("RUST_LOG", "hadron=info")
        .env(hadron::workers::sandbox::SHARED_ENV, hadron_tests::witness_dir(cwd))
        .stdout(log("up.out"))
        .stderr(log("up.err"));
    if exit_when_idle {
        cmd.arg("--exit-when-idle");
    }
    cmd.spawn().expect("hadron up starts")
}

/// A small deterministic pseudo-random sequence (no clock, no extra crate).
struct Lcg(u64);
impl Lcg {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

fn crash_and_restart(delete_store: bool, seed: u64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    // The agents' witness: the one folder of the test shared with their sandboxes.
    let log = hadron_tests::witness_dir(tmp.path()).join("agent.log");
    std::fs::create_dir_all(hadron_tests::witness_dir(tmp.path())).expect("witness dir");
    let dir = control_folder(tmp.path(), &log);
    let data = tmp.path().join(".hadron");
    let mut rng = Lcg(seed);
    for _ in 0..KILLS {
        let mut child = up(tmp.path(), &dir, false);
        std::thread::sleep(Duration::from_millis(rng.next_ms(200, 2500)));
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        if delete_store {
            for f in ["hadron.db", "hadron.db-wal", "hadron.db-shm"] {
                let _ = std::fs::remove_file(data.join(f));
            }
        }
    }
    // Let it finish: a last run that exits when idle (with a generous guard).
    let mut child = up(tmp.path(), &dir, true);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            if !status.success() {
                let tail = |name: &str| hadron_tests::tail(&std::fs::read_to_string(tmp.path().join(name)).unwrap_or_default(), 40);
                panic!("the final hadron up failed: {status}\n--- stdout\n{}\n--- stderr\n{}", tail("up.out"), tail("up.err"));
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let tail = |name: &str| {
                let text = std::fs::read_to_string(tmp.path().join(name)).unwrap_or_default();
                text.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            };
            panic!("hadron up did not become idle in 4 minutes\n--- stdout\n{}\n--- stderr\n{}", tail("up.out"), tail("up.err"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let control = data.join("repos/control.git");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for line in log_text.lines() {
        let worker = line.split_whitespace().next().unwrap_or("").to_owned();
        *runs.entry(worker).or_default() += 1;
    }
    let mut reported = 0;
    for i in 0..REQUESTS {
        let status = git_as(&control, "tester", &["show", &format!("main:status/req-{i:02}.yaml")]);
        assert!(status.contains("phase: Succeeded"), "req-{i:02} is not terminal:\n{status}");
        let workers: Vec<&str> = status.lines().filter_map(|l| l.trim().strip_prefix("worker: ")).collect();
        assert_eq!(workers.len(), 2, "two stages, one repo, one attempt each:\n{status}");
        for w in workers {
            reported += 1;
            assert_eq!(runs.get(w).copied().unwrap_or(0), 1, "worker {w} ran {} times", runs.get(w).copied().unwrap_or(0));
        }
    }
    assert_eq!(runs.values().sum::<usize>(), reported, "the agent ran for attempts the status does not report: {runs:?}");
    println!("crash test (delete_store={delete_store}): {KILLS} kills, {reported} attempts, each run exactly once");
}

#[test]
fn kill_9_at_random_moments_runs_every_stage_exactly_once() {
    crash_and_restart(false, 7);
}

#[test]
fn kill_9_with_the_store_deleted_between_restarts_runs_every_stage_exactly_once() {
    crash_and_restart(true, 11);
}

/// Waits for `child` up to `limit`; kills it and fails with its output when it does not end.
fn finishes(mut child: std::process::Child, cwd: &Path, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = std::fs::read_to_string(cwd.join("up.out")).unwrap_or_default();
            let err = std::fs::read_to_string(cwd.join("up.err")).unwrap_or_default();
            assert!(status.success(), "{what}: hadron up failed: {status}\n{out}\n{err}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = std::fs::read_to_string(cwd.join("up.out")).unwrap_or_default();
            panic!("{what}: hadron up --exit-when-idle did not finish in {limit:?}\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_during_seeding_never_leaves_a_half_made_repo() {
    const ROUNDS: usize = 20;
    let mut rng = Lcg(23);
    let mut staged_left = 0;
    let mut missing_left = 0;
    for round in 0..ROUNDS {
        let tmp = tempfile::tempdir().expect("temp dir");
        // A control folder with two target repos and no requests: the finishing run is quick.
        let dir = tmp.path().join("ctl");
        for target in ["app", "docs"] {
            std::fs::create_dir_all(dir.join("targets").join(target)).expect("mkdir");
            std::fs::write(dir.join("targets").join(target).join("README.md"), format!("# {target}\n")).expect("write");
        }
        std::fs::write(dir.join("hadron.yaml"), "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec: {}\n")
            .expect("write");
        // In a process group of its own, so the kill takes its git children
        // too, as a machine crash would (an orphaned `git init` finishing
        // after the next run's clean-up would otherwise re-create a staging
        // folder under the test's feet).
        let mut cmd = Command::new(hadron_bin!());
        cmd.args(["up", dir.to_str().expect("utf-8"), "--exit-when-idle", "--listen", "127.0.0.1:0"])
            .current_dir(tmp.path())
            .env_remove("DATABASE_URL")
            .env_remove("HADRON_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("hadron up starts");
        // Seeding three repos takes about 200 ms with a debug build: kill anywhere in it.
        std::thread::sleep(Duration::from_millis(rng.next_ms(0, 260)));
        let group = format!("-{}", child.id());
        let killed = Command::new("kill").args(["-KILL", "--", &group]).status().expect("kill runs");
        assert!(killed.success(), "kill -9 of the process group");
        child.wait().expect("reap");
        // Let the kernel finish tearing the group down.
        std::thread::sleep(Duration::from_millis(20));
        let repos = tmp.path().join(".hadron/repos");
        let names: Vec<String> = std::fs::read_dir(&repos)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        staged_left += usize::from(names.iter().any(|n| n.starts_with(".seeding-")));
        missing_left += usize::from(!names.iter().any(|n| n == "control.git"));
        finishes(up(tmp.path(), &dir, true), tmp.path(), Duration::from_secs(60), &format!("round {round}"));
        for repo in ["control.git", "app.git", "docs.git"] {
            let head = git_as(&repos.join(repo), "tester", &["rev-parse", "--verify", "refs/heads/main"]);
            assert_eq!(head.trim().len(), 40, "round {round}: {repo} has main");
        }
        let settings = git_as(&repos.join("control.git"), "tester", &["show", "main:hadron.yaml"]);
        assert!(settings.contains("kind: Settings"), "round {round}: the control repo holds the folder");
        let left: Vec<String> = std::fs::read_dir(&repos)
            .expect("repos")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".seeding-"))
            .collect();
        assert!(left.is_empty(), "round {round}: staging folders left: {left:?}");
    }
    println!(
        "seeding crash test: {ROUNDS} kills; {staged_left} left a staging folder, {missing_left} left no control repo; every restart finished"
    );
}
