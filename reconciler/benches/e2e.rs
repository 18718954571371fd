//! End-to-end benchmark of issue "Cost in proportion to the change: end-to-end
//! speed, latency and memory at 10,000 requests". Prints figures; asserts only
//! correctness (the status commits really hold what they must), never time.
//!
//! It drives the real `hadron` binary as a subprocess, the way a person does:
//! control repos are bare git repos in a temporary folder, the person is the
//! `git` CLI, `hadron up <bare repo> --poll-seconds 3600 --data-dir <fresh>
//! --listen 127.0.0.1:0` runs them, and every time is read from outside:
//! `refs/heads/main` of the bare repo changing to a commit by Hadron, the
//! marker file an agent writes as its first act, `/proc/<pid>/status`, and
//! `/metrics` for the in-process share. Beside every figure stands its "git
//! floor": the same git work done by hand with the git CLI in the same run.
//!
//! a. first pass: process start → the status commit with N status files on main;
//! b. push one changed request → its status commit on main (Hadron long-running);
//! c. peak RSS (VmHWM) of the `hadron up` process after a, after b and after d;
//! d. push of a new runnable request → its agent started (p50/p99), at N ≤ 1,000;
//! e. 200 requests × 2 stages, 4 workers at once: push → all 200 Succeeded.
//!
//! Run: `cargo bench --bench e2e`. Environment:
//! `HADRON_BENCH_SIZES=100,1000,10000` (sizes of a/b/c/d; d runs at sizes ≤ 1,000),
//! `HADRON_BENCH_SAMPLES=5` (samples of a, b and e), `HADRON_BENCH_LATENCY_SAMPLES=20`
//! (samples of d), `HADRON_BENCH_PARTS=a,b,c,d,e`, `HADRON_BENCH_E_REQUESTS=200`,
//! `HADRON_BENCH_SETTLE_SECONDS=12` (pause before each run of e),
//! `HADRON_BENCH_LOG=<file>` (append Hadron's output there; with `RUST_LOG=hadron=debug`
//! it holds each pass's step timings).
//! `HADRON_BENCH_BINARY=<path>` drives that binary instead of the bench
//! profile's (e.g. `target/release/hadron` from `cargo build --release`).
//! Progress goes to stderr, the markdown tables to stdout.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HADRON: &str = env!("CARGO_BIN_EXE_hadron");

/// The binary to drive: `HADRON_BENCH_BINARY` when set (say, one built with
/// `cargo build --release`, which uses LTO), else the bench profile's own.
fn hadron_binary() -> PathBuf {
    std::env::var_os("HADRON_BENCH_BINARY").map_or_else(|| PathBuf::from(HADRON), PathBuf::from)
}
/// Longest wait for anything Hadron is expected to do.
const TIMEOUT: Duration = Duration::from_secs(1800);
/// Target repos per scenario; request `i` works on `../app-{i % TARGETS}.git`.
const TARGETS: usize = 7;

// ---------------------------------------------------------------- settings

struct Config {
    sizes: Vec<usize>,
    samples: usize,
    latency_samples: usize,
    e_requests: usize,
    parts: BTreeSet<String>,
}

impl Config {
    fn from_env() -> Self {
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.to_owned())
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let number = |name: &str, default: usize| -> usize {
            std::env::var(name).ok().map_or(default, |v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
        };
        let sizes = list("HADRON_BENCH_SIZES", "100,1000,10000")
            .iter()
            .map(|s| s.replace(['_', ' '], "").parse().unwrap_or_else(|_| panic!("HADRON_BENCH_SIZES: `{s}` is not a number")))
            .collect();
        Config {
            sizes,
            samples: number("HADRON_BENCH_SAMPLES", 5).max(1),
            latency_samples: number("HADRON_BENCH_LATENCY_SAMPLES", 20).max(1),
            e_requests: number("HADRON_BENCH_E_REQUESTS", 200).max(1),
            parts: list("HADRON_BENCH_PARTS", "a,b,c,d,e").into_iter().collect(),
        }
    }

    fn has(&self, part: &str) -> bool {
        self.parts.contains(part)
    }
}

// ---------------------------------------------------------------- git, the person

/// The person's `git`: a fixed identity, no system or global configuration.
fn git_cmd(cwd: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "gc.auto=0"])
        .args(["-c", "user.name=bench-person", "-c", "user.email=person@example.com"]);
    cmd
}

fn git(cwd: &Path, args: &[&str]) -> String {
    let out = git_cmd(cwd).args(args).stdin(Stdio::null()).output().expect("git runs");
    assert!(out.status.success(), "git {args:?} in {}: {}", cwd.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git_ok(cwd: &Path, args: &[&str]) -> bool {
    git_cmd(cwd).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Pushes the person's HEAD to `main`, pulling (rebase) and trying again when
/// Hadron pushed in between. Returns when the successful push started and how
/// long it took.
fn push_main(work: &Path) -> (Instant, u128, Duration) {
    for _ in 0..20 {
        let (t0, ns) = (Instant::now(), now_ns());
        if git_ok(work, &["push", "-q", "origin", "HEAD:main"]) {
            return (t0, ns, t0.elapsed());
        }
        pull(work);
    }
    panic!("the person's push to main was rejected 20 times in {}", work.display());
}

fn pull(work: &Path) {
    git(work, &["pull", "-q", "--rebase", "origin", "main"]);
}

/// `refs/heads/main` of a bare repo, read as the file git keeps it in.
fn read_main(bare: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(bare.join("refs/heads/main")) {
        let id = text.trim();
        if id.len() == 40 {
            return Some(id.to_owned());
        }
    }
    let packed = std::fs::read_to_string(bare.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| l.strip_suffix(" refs/heads/main").map(str::to_owned))
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- control repo content

const SETTINGS: &str = "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: script\n    stages:\n      - name: implement\n      - name: review\n  limits:\n    maxConcurrentWorkers: 4\n";

/// The agent: its first act writes a timestamp to `$BENCH_MARKERS/<request>.<stage>`,
/// then it makes a small change for the worker to commit.
fn agent(markers: &Path) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: script\nspec:\n  command:\n    - sh\n    - -c\n    - |\n      date +%s%N > \"$BENCH_MARKERS/$1.$2\"\n      printf '%s %s\\n' \"$1\" \"$2\" >> bench-notes.txt\n    - bench-agent\n    - \"{{{{request}}}}\"\n    - \"{{{{stage}}}}\"\n  concurrency: 4\n  env:\n    - name: BENCH_MARKERS\n      value: \"{}\"\n",
        markers.display()
    )
}

/// A request of about 600 bytes (`load.rs`'s, with a longer description).
fn request(name: &str, i: usize, rev: usize, suspend: bool) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\n  labels:\n    team: t{}\nspec:\n  title: Change number {i} revision {rev}\n  description: |\n    Update the thing in module {i}. Keep the change small and add a test.\n    Mention it in CHANGES.md, keep the public interface stable and run the tests before pushing.\n    Leave generated files alone; a migration, if one is needed, goes in a commit of its own.\n  agent: script\n  repos:\n    - url: ../app-{}.git\n      branch: main\n  stages:\n    - name: implement\n    - name: review\n  budget:\n    maxCostUSD: 2.5\n    maxWallTime: 30m\n{}",
        i % 7,
        i % TARGETS,
        if suspend { "  suspend: true\n" } else { "" }
    )
}

/// A runnable request with one stage: the probe of part d.
fn probe(name: &str) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: Probe {name}\n  description: |\n    Write a note.\n  repos:\n    - url: ../app-0.git\n  stages:\n    - name: implement\n"
    )
}

/// A status file as big as Hadron's for a suspended request (the floor's payload).
fn status_like(name: &str, rev: usize) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: RequestStatus\nmetadata:\n  name: {name}\nstatus:\n  observedRevision: {:040}\n  observedGeneration: {rev:064}\n  phase: Cancelled\n  conditions:\n  - type: Ready\n    status: 'False'\n    reason: Suspended\n    message: 'suspended: no worker runs until `suspend` is false'\n    lastTransitionTime: 2026-01-01T00:00:00Z\n  totalCostUSD: 0.0\n  totalTokens: 0\n  message: 'suspended: no worker runs until `suspend` is false'\n",
        0
    )
}

/// One folder of bare repos: the control repo, its target repos, the person's clone.
struct Scenario {
    dir: PathBuf,
    control: PathBuf,
    person: PathBuf,
    markers: PathBuf,
    seed: String,
}

impl Scenario {
    /// A control repo with `n` requests `req-<i>` (suspended when `suspend`),
    /// `TARGETS` target repos, and the person's clone.
    fn new(dir: &Path, n: usize, suspend: bool) -> Self {
        let t = Instant::now();
        std::fs::create_dir_all(dir).expect("mkdir");
        let markers = dir.join("markers");
        std::fs::create_dir_all(&markers).expect("mkdir");
        for k in 0..TARGETS {
            make_target(dir, &format!("app-{k}.git"));
        }
        let control = dir.join("control.git");
        let person = dir.join("person");
        std::fs::create_dir_all(person.join("requests")).expect("mkdir");
        std::fs::create_dir_all(person.join("agents")).expect("mkdir");
        std::fs::write(person.join("hadron.yaml"), SETTINGS).expect("write");
        std::fs::write(person.join("agents/script.yaml"), agent(&markers)).expect("write");
        for i in 0..n {
            let name = format!("req-{i}");
            std::fs::write(person.join(format!("requests/{name}.yaml")), request(&name, i, 0, suspend)).expect("write");
        }
        git(dir, &["init", "-q", "--bare", s(&control)]);
        git(&person, &["init", "-q"]);
        git(&person, &["add", "-A"]);
        git(&person, &["commit", "-q", "-m", &format!("Ask for {n} changes")]);
        git(&person, &["remote", "add", "origin", s(&control)]);
        git(&person, &["push", "-q", "-u", "origin", "HEAD:main"]);
        let seed = read_main(&control).expect("main after the seed push");
        eprintln!("  scenario {}: {n} requests seeded in {:.1} s", dir.display(), t.elapsed().as_secs_f64());
        Scenario { dir: dir.to_owned(), control, person, markers, seed }
    }

    /// A bare copy of the control repo as seeded, with a clone of it: where the floors work.
    fn floor_copy(&self, name: &str) -> (PathBuf, PathBuf) {
        let bare = self.dir.join(format!("{name}.git"));
        let work = self.dir.join(format!("{name}-person"));
        git(&self.dir, &["clone", "-q", "--bare", "--no-local", s(&self.control), s(&bare)]);
        git(&bare, &["update-ref", "refs/heads/main", &self.seed]);
        git(&self.dir, &["clone", "-q", s(&bare), s(&work)]);
        (bare, work)
    }
}

/// A bare target repo with one commit on `main`.
fn make_target(dir: &Path, name: &str) -> PathBuf {
    let bare = dir.join(name);
    let work = dir.join(format!("{name}.seed"));
    std::fs::create_dir_all(&work).expect("mkdir");
    std::fs::write(work.join("README.md"), "# target\n").expect("write");
    git(dir, &["init", "-q", "--bare", s(&bare)]);
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "seed"]);
    git(&work, &["push", "-q", s(&bare), "HEAD:refs/heads/main"]);
    std::fs::remove_dir_all(&work).expect("rm");
    bare
}

// ---------------------------------------------------------------- the hadron process

/// A running `hadron up`, its output lines (with the instant each arrived).
struct Hadron {
    child: Child,
    started: Instant,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    addr: Option<String>,
}

impl Hadron {
    fn start(control: &Path, data: &Path) -> Self {
        let mut cmd = Command::new(hadron_binary());
        cmd.args(["up", s(control), "--data-dir", s(data), "--poll-seconds", "3600", "--listen", "127.0.0.1:0"])
            .current_dir(data.parent().expect("data dir has a parent"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The bench's own settings and any HADRON_*/DATABASE_URL of the caller stay out.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("HADRON_") || k == "DATABASE_URL") {
                cmd.env_remove(key);
            }
        }
        // The agents' markers are the one folder of the scenario shared
        // with their sandboxes.
        cmd.env("HADRON_SANDBOX_SHARED", data.parent().expect("data dir has a parent").join("markers"));
        // Hadron's `worker started` lines time d's spawn (one line per worker).
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn,hadron::reconcile::execute=info");
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("hadron starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in
            [Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>, Box::new(child.stderr.take().expect("stderr"))]
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().expect("lines").push((Instant::now(), line));
                }
            });
        }
        Hadron { child, started, lines, addr: None }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with Hadron's last lines when it exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("hadron exited ({status}); its last lines:\n{}", self.tail(40));
        }
    }

    fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().expect("lines");
        lines[lines.len().saturating_sub(n)..].iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// The first line (after `from` lines) for which `pred` holds, waiting up to `timeout`.
    fn wait_line(&mut self, from: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(hit) = self.lines.lock().expect("lines").iter().skip(from).find(|(_, l)| pred(l)).cloned() {
                return Some(hit);
            }
            if Instant::now() > deadline {
                return None;
            }
            self.check_alive();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until `count` lines after `from` satisfy `pred`; returns when the last arrived.
    fn wait_lines(&mut self, from: usize, count: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().expect("lines");
                if let Some((at, _)) = lines.iter().skip(from).filter(|(_, l)| pred(l)).nth(count.saturating_sub(1)) {
                    return Some(*at);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            self.check_alive();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The HTTP address Hadron printed (`serving http://ADDR …`).
    fn addr(&mut self) -> String {
        if let Some(addr) = &self.addr {
            return addr.clone();
        }
        let (_, line) = self.wait_line(0, Duration::from_secs(120), |l| l.starts_with("serving http://")).expect("hadron serves HTTP");
        let addr = line["serving http://".len()..].split_whitespace().next().expect("address").to_owned();
        self.addr = Some(addr.clone());
        addr
    }

    /// Peak resident set size (VmHWM) so far, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        vm_hwm_mib(self.pid()).expect("VmHWM of hadron")
    }

    /// `/metrics`, as `name{labels}` → value.
    fn metrics(&mut self) -> BTreeMap<String, f64> {
        let addr = self.addr();
        let body = http_get(&addr, "/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with("hadron_"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
            .collect()
    }

    /// Waits until every pass Hadron has started has finished and none came
    /// for `quiet` (the loop is idle), judged by `/metrics`.
    fn settle(&mut self, quiet: Duration) -> BTreeMap<String, f64> {
        let mut last = self.metrics();
        let mut since = Instant::now();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.metrics();
            if sum(&now, "hadron_reconcile_passes_total") != sum(&last, "hadron_reconcile_passes_total") {
                since = Instant::now();
                last = now;
            } else if since.elapsed() >= quiet || Instant::now() > deadline {
                return now;
            }
        }
    }

    /// SIGTERM, then SIGKILL if it does not stop within 30 s.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("  hadron did not stop on SIGTERM within 30 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hadron {
    fn drop(&mut self) {
        // `HADRON_BENCH_LOG=<file>`: Hadron's output (with the time since the
        // bench started it) is appended there, to see where a run's time went.
        if let Ok(path) = std::env::var("HADRON_BENCH_LOG") {
            let lines = self.lines.lock().expect("lines");
            let text: String = lines.iter().map(|(at, line)| format!("{:>10.1} {line}\n", ms(*at - self.started))).collect();
            let appended = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = appended {
                eprintln!("  HADRON_BENCH_LOG={path}: {e}");
            }
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// Sum of every series of a metric (all label sets).
fn sum(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    metrics.iter().filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{"))).map(|(_, v)| v).sum()
}

/// Watches `refs/heads/main` of `bare` (polling the ref file every
/// millisecond) until it moves to a commit for which `done` holds; returns
/// the instant that commit was first seen. Every new value is checked once.
fn wait_main(bare: &Path, hadron: &mut Hadron, what: &str, mut done: impl FnMut(&str) -> bool) -> (Instant, String) {
    let start = Instant::now();
    let mut last = None;
    let mut polls = 0u32;
    loop {
        let current = read_main(bare);
        let seen = Instant::now();
        if current != last {
            if let Some(commit) = current.as_deref().filter(|c| done(c)) {
                return (seen, commit.to_owned());
            }
            last = current;
        }
        polls += 1;
        if polls.is_multiple_of(500) {
            hadron.check_alive();
            assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}; hadron's last lines:\n{}", hadron.tail(40));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn author(bare: &Path, commit: &str) -> String {
    git(bare, &["log", "-1", "--format=%an", commit]).trim().to_owned()
}

fn status_files(bare: &Path, commit: &str) -> usize {
    let out = git_cmd(bare).args(["ls-tree", "--name-only", &format!("{commit}:status")]).output().expect("git runs");
    if out.status.success() { out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() } else { 0 }
}

/// How many of the status files of `commit` contain `text`.
fn status_files_with(bare: &Path, commit: &str, text: &str) -> usize {
    let out = git_cmd(bare).args(["grep", "-l", "-F", "-e", text, commit, "--", "status/"]).output().expect("git runs");
    out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()
}

/// The paths `commit` changed against its first parent.
fn changed_paths(bare: &Path, commit: &str) -> Vec<String> {
    git(bare, &["diff-tree", "--no-commit-id", "--name-only", "-r", &format!("{commit}^"), commit]).lines().map(str::to_owned).collect()
}

// ---------------------------------------------------------------- statistics and the table

#[derive(Default, Clone)]
struct Stats(Vec<f64>);

impl Stats {
    fn push(&mut self, v: f64) {
        self.0.push(v);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    }
}

/// A duration in milliseconds, readable: `8.4 ms`, `153 ms`, `2.41 s`.
fn t(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 100.0 {
        format!("{v:.1} ms")
    } else if v < 10_000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.2} s", v / 1000.0)
    }
}

fn mib(v: f64) -> String {
    if v.is_nan() { "–".into() } else { format!("{v:.1} MiB") }
}

fn three(st: &Stats, f: fn(f64) -> String) -> String {
    if st.0.len() == 1 { f(st.0[0]) } else { format!("{} / {} / {}", f(st.min()), f(st.median()), f(st.max())) }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b <= 0.0 { "–".into() } else { format!("{:.1}×", a / b) }
}

fn n_str(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What each floor is, printed under the table.
const FLOORS: &str = "Times of a from the spawn of `hadron up`; of b, d and e from the start of the person's `git push`. Floors, with the git CLI in the same run:

- a: `git clone --no-checkout`, `git ls-tree -r` + `git cat-file --batch` over every blob, `git read-tree HEAD`, N status files written, `git add`, `git commit`, `git push`;
- b: the same push, then in a clone `git fetch`, `git reset FETCH_HEAD`, one file written, `git add`, `git commit`, `git push`;
- c: VmHWM of that `git cat-file --batch` once it has read every blob;
- d: the same push, then `sh -c 'date +%s%N'` spawned (p50/p99: nearest rank);
- e: per request and stage `git clone --no-local` of the target, the same agent script, `git add -A`, `git commit`, `git push` of `hadron/<request>`, 4 threads (no status commits).";

#[derive(Default)]
struct Report {
    rows: Vec<[String; 6]>,
    notes: Vec<[String; 3]>,
}

impl Report {
    fn row(&mut self, measure: &str, n: usize, hadron: String, floor: String, ratio: String, samples: usize) {
        let row = [measure.to_owned(), n_str(n), hadron, floor, ratio, samples.to_string()];
        eprintln!("  | {} |", row.join(" | "));
        self.rows.push(row);
    }

    fn note(&mut self, part: &str, n: usize, text: String) {
        eprintln!("  note {part} n={n}: {text}");
        self.notes.push([part.to_owned(), n_str(n), text]);
    }

    fn print(&self) {
        // Grouped by part (the first letter), in the order measured within a part.
        let mut rows: Vec<&[String; 6]> = self.rows.iter().collect();
        rows.sort_by_key(|r| r[0].chars().next());
        println!("| measure | requests | hadron min / median / max | git floor min / median / max | ratio (medians) | samples |");
        println!("|---|---|---|---|---|---|");
        for r in rows {
            println!("| {} |", r.join(" | "));
        }
        println!();
        println!("{FLOORS}");
        if !self.notes.is_empty() {
            let mut notes: Vec<&[String; 3]> = self.notes.iter().collect();
            notes.sort_by_key(|r| r[0].clone());
            println!();
            println!("| part | requests | where the time goes (medians) |");
            println!("|---|---|---|");
            for r in notes {
                println!("| {} |", r.join(" | "));
            }
        }
    }
}

/// Starts Hadron on a scenario without requests and waits until its first pass is over.
fn start_idle(sc: &Scenario) -> Hadron {
    let mut hadron = Hadron::start(&sc.control, &sc.dir.join("data"));
    hadron.wait_line(0, TIMEOUT, |l| l.starts_with("watching ")).expect("hadron watches");
    while sum(&hadron.metrics(), "hadron_reconcile_passes_total") < 1.0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    hadron.settle(Duration::from_millis(300));
    hadron
}

/// Peak RSS of `hadron up` once idle on a control repo without requests: its baseline.
fn idle_rss(root: &Path, sample: usize) -> f64 {
    let sc = Scenario::new(&root.join(format!("idle-{sample}")), 0, true);
    let hadron = start_idle(&sc);
    let rss = hadron.peak_rss_mib();
    hadron.stop();
    std::fs::remove_dir_all(&sc.dir).expect("rm");
    rss
}

// ---------------------------------------------------------------- a: first pass

struct FirstPass {
    total: f64,
    startup: f64,
    pass_end: f64,
    pass_seconds: f64,
    fetch_seconds: f64,
    rss: f64,
}

/// Starts Hadron on `sc` with a fresh data dir and waits for the status
/// commit with all `n` status files; the process is returned running.
fn first_pass(sc: &Scenario, n: usize, sample: usize) -> (Hadron, FirstPass) {
    git(&sc.control, &["update-ref", "refs/heads/main", &sc.seed]);
    let data = sc.dir.join(format!("data-{sample}"));
    let _ = std::fs::remove_dir_all(&data);
    let mut hadron = Hadron::start(&sc.control, &data);
    let t0 = hadron.started;
    let (landed, commit) = wait_main(&sc.control, &mut hadron, &format!("the first status commit of {n} requests"), |c| {
        c != sc.seed && author(&sc.control, c) == "hadron" && status_files(&sc.control, c) == n
    });
    let total = ms(landed - t0);
    // Correctness: N status files, every one saying the request is suspended.
    assert_eq!(status_files_with(&sc.control, &commit, "phase: Cancelled"), n, "every status file says Cancelled (suspended)");
    assert_eq!(status_files_with(&sc.control, &commit, "reason: Suspended"), n, "every status file gives the reason Suspended");
    let startup = hadron.wait_line(0, Duration::from_secs(60), |l| l.starts_with("watching ")).map_or(f64::NAN, |(at, _)| ms(at - t0));
    // The pass prints one line per request once it is over.
    let pass_end = hadron.wait_lines(0, n, Duration::from_secs(60), |l| l.contains("new -> Cancelled")).map_or(f64::NAN, |at| ms(at - t0));
    let m = hadron.settle(Duration::from_millis(300));
    let rss = hadron.peak_rss_mib();
    let fp = FirstPass {
        total,
        startup,
        pass_end,
        pass_seconds: sum(&m, "hadron_pass_duration_seconds_max"),
        fetch_seconds: sum(&m, "hadron_fetch_duration_seconds_sum"),
        rss,
    };
    (hadron, fp)
}

/// The git floor of a: a clone, `git cat-file --batch` over every blob of the
/// tree, N files written, one commit, one push. Returns (ms, VmHWM of cat-file in MiB).
fn floor_first_pass(floor_bare: &Path, dir: &Path, seed: &str, n: usize, sample: usize) -> (f64, f64) {
    git(floor_bare, &["update-ref", "refs/heads/main", seed]);
    let clone = dir.join(format!("floor-a-{sample}"));
    let _ = std::fs::remove_dir_all(&clone);
    let t0 = Instant::now();
    git(dir, &["clone", "-q", "--no-checkout", s(floor_bare), s(&clone)]);
    let listing = git(&clone, &["ls-tree", "-r", "HEAD"]);
    let ids: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let (bytes, cat_rss) = cat_file_batch(&clone, &ids);
    assert!(bytes > n * 500, "cat-file read every request");
    git(&clone, &["read-tree", "HEAD"]);
    std::fs::create_dir_all(clone.join("status")).expect("mkdir");
    for i in 0..n {
        let name = format!("req-{i}");
        std::fs::write(clone.join(format!("status/{name}.yaml")), status_like(&name, sample)).expect("write");
    }
    git(&clone, &["add", "status"]);
    git(&clone, &["commit", "-q", "-m", "status"]);
    git(&clone, &["push", "-q", "origin", "HEAD:main"]);
    let elapsed = ms(t0.elapsed());
    assert_eq!(status_files(floor_bare, &read_main(floor_bare).expect("main")), n);
    std::fs::remove_dir_all(&clone).expect("rm");
    (elapsed, cat_rss)
}

/// `git cat-file --batch` over `ids`; returns the bytes read and the process's
/// VmHWM (MiB), read once all output is in and before its input is closed.
fn cat_file_batch(repo: &Path, ids: &[&str]) -> (usize, f64) {
    let mut child = git_cmd(repo).args(["cat-file", "--batch"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cat-file");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = ids.join("\n") + "\n";
    let writer = std::thread::spawn(move || {
        stdin.write_all(input.as_bytes()).expect("write ids");
        stdin
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut bytes = 0;
    let mut header = String::new();
    for _ in ids {
        header.clear();
        out.read_line(&mut header).expect("header");
        let size: usize = header.split_whitespace().nth(2).and_then(|s| s.parse().ok()).expect("object size");
        let mut body = vec![0; size + 1];
        out.read_exact(&mut body).expect("object");
        bytes += size;
    }
    let rss = vm_hwm_mib(child.id()).unwrap_or(f64::NAN);
    drop(writer.join().expect("join"));
    child.wait().expect("wait");
    (bytes, rss)
}

// ---------------------------------------------------------------- b: one changed request

/// Pushes a change of one request; waits for Hadron's status commit touching it.
/// Returns (push → status commit ms, push ms, in-process pass seconds of the sample, passes).
fn one_change(sc: &Scenario, hadron: &mut Hadron, n: usize, sample: usize) -> (f64, f64, f64, f64) {
    pull(&sc.person);
    let i = (sample * 37 + 1) % n;
    let name = format!("req-{i}");
    std::fs::write(sc.person.join(format!("requests/{name}.yaml")), request(&name, i, sample + 1, true)).expect("write");
    git(&sc.person, &["commit", "-q", "-am", &format!("Reword {name}")]);
    let before = hadron.metrics();
    let (t0, _, push) = push_main(&sc.person);
    let path = format!("status/{name}.yaml");
    let (landed, commit) = wait_main(&sc.control, hadron, &format!("the status commit of {name}"), |c| {
        author(&sc.control, c) == "hadron" && changed_paths(&sc.control, c).contains(&path)
    });
    let changed = changed_paths(&sc.control, &commit);
    assert_eq!(changed, vec![path.clone()], "the status commit touches only the changed request's status");
    let text = git(&sc.control, &["show", &format!("{commit}:{path}")]);
    assert!(text.contains("phase: Cancelled"), "{path} says Cancelled:\n{text}");
    let after = hadron.settle(Duration::from_millis(300));
    let pass = sum(&after, "hadron_reconcile_pass_duration_seconds_sum") - sum(&before, "hadron_reconcile_pass_duration_seconds_sum");
    let passes = sum(&after, "hadron_reconcile_passes_total") - sum(&before, "hadron_reconcile_passes_total");
    (ms(landed - t0), ms(push), pass, passes)
}

/// The git floor of b: the same person's push, then fetch, write one file,
/// commit and push in a clone of Hadron's. Returns (total ms, person's push ms).
fn floor_one_change(person: &Path, status_clone: &Path, n: usize, sample: usize) -> (f64, f64) {
    pull(person);
    let i = (sample * 37 + 1) % n;
    let name = format!("req-{i}");
    std::fs::write(person.join(format!("requests/{name}.yaml")), request(&name, i, sample + 1, true)).expect("write");
    git(person, &["commit", "-q", "-am", &format!("Reword {name}")]);
    let (t0, _, push) = push_main(person);
    git(status_clone, &["fetch", "-q", "origin", "main"]);
    git(status_clone, &["reset", "-q", "FETCH_HEAD"]);
    std::fs::create_dir_all(status_clone.join("status")).expect("mkdir");
    std::fs::write(status_clone.join(format!("status/{name}.yaml")), status_like(&name, 1_000 + sample)).expect("write");
    git(status_clone, &["add", &format!("status/{name}.yaml")]);
    git(status_clone, &["commit", "-q", "-m", &format!("status: {name}")]);
    git(status_clone, &["push", "-q", "origin", "HEAD:main"]);
    (ms(t0.elapsed()), ms(push))
}

// ---------------------------------------------------------------- d: push → worker started

/// What one sample of d measured, in ms from the start of the person's push.
struct Latency {
    /// The agent's first act.
    agent: f64,
    /// The person's push itself.
    push: f64,
    /// Hadron's `worker started` line (the worker process spawned), if seen.
    spawned: Option<f64>,
    /// The status commit saying Succeeded on main.
    done: f64,
}

/// Pushes a new runnable request and times it (see [`Latency`]).
fn worker_latency(sc: &Scenario, hadron: &mut Hadron, sample: usize) -> Latency {
    pull(&sc.person);
    let name = format!("probe-{sample}");
    std::fs::write(sc.person.join(format!("requests/{name}.yaml")), probe(&name)).expect("write");
    git(&sc.person, &["add", "requests"]);
    git(&sc.person, &["commit", "-q", "-m", &format!("Ask for {name}")]);
    let marker = sc.markers.join(format!("{name}.implement"));
    let (t0, t0_ns, push) = push_main(&sc.person);
    let started_ns = wait_marker(&marker, hadron);
    let latency = (started_ns as f64 - t0_ns as f64) / 1e6;
    let path = format!("status/{name}.yaml");
    let (done, commit) = wait_main(&sc.control, hadron, &format!("{name} to finish"), |c| {
        let text = git_cmd(&sc.control).args(["show", &format!("{c}:{path}")]).output().expect("git runs");
        let text = String::from_utf8_lossy(&text.stdout);
        text.contains("phase: Succeeded") || text.contains("phase: Failed")
    });
    let text = git(&sc.control, &["show", &format!("{commit}:{path}")]);
    assert!(text.contains("phase: Succeeded"), "{name} succeeded:\n{text}");
    let needle = format!("request={name} ");
    let spawned = hadron
        .lines
        .lock()
        .expect("lines")
        .iter()
        .find(|(at, line)| *at >= t0 && line.contains("worker started") && line.contains(&needle))
        .map(|(at, _)| ms(*at - t0));
    Latency { agent: latency, push: ms(push), spawned, done: ms(done - t0) }
}

/// Waits for the agent's marker file and returns the nanoseconds it holds.
fn wait_marker(marker: &Path, hadron: &mut Hadron) -> u128 {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        if let Ok(text) = std::fs::read_to_string(marker)
            && text.ends_with('\n')
            && let Ok(ns) = text.trim().parse()
        {
            return ns;
        }
        polls += 1;
        if polls.is_multiple_of(500) {
            hadron.check_alive();
            assert!(start.elapsed() < TIMEOUT, "timed out waiting for {}; hadron's last lines:\n{}", marker.display(), hadron.tail(40));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The floor of d: the same push, then spawning `sh -c 'date +%s%N'`.
fn floor_worker_latency(person: &Path, sample: usize) -> f64 {
    pull(person);
    let name = format!("probe-{sample}");
    std::fs::write(person.join(format!("requests/{name}.yaml")), probe(&name)).expect("write");
    git(person, &["add", "requests"]);
    git(person, &["commit", "-q", "-m", &format!("Ask for {name}")]);
    let (_, t0_ns, _) = push_main(person);
    let out = Command::new("sh").args(["-c", "date +%s%N"]).output().expect("sh runs");
    let ns: u128 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("date +%s%N");
    (ns as f64 - t0_ns as f64) / 1e6
}

// ---------------------------------------------------------------- e: 200 requests × 2 stages

struct Throughput {
    total: f64,
    first_agent: f64,
    last_agent: f64,
    rss: f64,
    passes: f64,
    status_commits: f64,
    /// CPU seconds of Hadron itself, and of the children it waited for (workers, git).
    cpu: (f64, f64),
}

/// Writes back what is dirty and waits out ext4's memory of freed inodes
/// (`HADRON_BENCH_SETTLE_SECONDS`, default 12).
fn settle_fs() {
    let secs = std::env::var("HADRON_BENCH_SETTLE_SECONDS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(12);
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(secs));
}

/// CPU seconds (user + system) of `pid`, and of its children it has waited for.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    let tick = 100.0; // USER_HZ on Linux
    let at = |i: usize| f.get(i - 3).copied().unwrap_or(0.0);
    ((at(14) + at(15)) / tick, (at(16) + at(17)) / tick)
}

fn throughput(root: &Path, requests: usize, sample: usize) -> Throughput {
    let sc = Scenario::new(&root.join(format!("e-{sample}")), 0, false);
    let mut hadron = start_idle(&sc);
    for i in 0..requests {
        let name = format!("req-{i}");
        std::fs::write(sc.person.join(format!("requests/{name}.yaml")), request(&name, i, 0, false)).expect("write");
    }
    git(&sc.person, &["add", "requests"]);
    git(&sc.person, &["commit", "-q", "-m", &format!("Ask for {requests} changes")]);
    let (t0, t0_ns, _) = push_main(&sc.person);
    let (done, commit) = wait_main(&sc.control, &mut hadron, &format!("all {requests} requests to succeed"), |c| {
        author(&sc.control, c) == "hadron" && status_files_with(&sc.control, c, "phase: Succeeded") == requests
    });
    let total = ms(done - t0);
    assert_eq!(status_files(&sc.control, &commit), requests);
    // Every request's branch holds both stages' commits.
    for i in 0..requests {
        let log = git(&sc.dir.join(format!("app-{}.git", i % TARGETS)), &["log", "--format=%s", &format!("hadron/req-{i}")]);
        assert!(log.lines().count() >= 3, "hadron/req-{i} holds the seed and two stage commits:\n{log}");
    }
    let mut agent_ns: Vec<u128> = Vec::new();
    for entry in std::fs::read_dir(&sc.markers).expect("markers") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("marker");
        agent_ns.push(text.trim().parse().expect("marker ns"));
    }
    assert_eq!(agent_ns.len(), requests * 2, "one agent run per request and stage");
    agent_ns.sort_unstable();
    let rel = |ns: u128| (ns as f64 - t0_ns as f64) / 1e6;
    let metrics = hadron.metrics();
    let out = Throughput {
        total,
        first_agent: rel(agent_ns[0]),
        last_agent: rel(agent_ns[agent_ns.len() - 1]),
        rss: hadron.peak_rss_mib(),
        passes: sum(&metrics, "hadron_reconcile_passes_total"),
        status_commits: sum(&metrics, "hadron_status_commits_total"),
        cpu: cpu_seconds(hadron.pid()),
    };
    hadron.stop();
    std::fs::remove_dir_all(&sc.dir).expect("rm");
    out
}

/// The floor of e: the workers' git work by hand, 4 at once: per request and
/// stage, clone the target, run the same agent, commit, push `hadron/<request>`.
fn floor_throughput(root: &Path, requests: usize, sample: usize) -> (f64, f64) {
    let dir = root.join(format!("floor-e-{sample}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let targets: Vec<PathBuf> = (0..TARGETS).map(|k| make_target(&dir, &format!("app-{k}.git"))).collect();
    let markers = dir.join("markers");
    std::fs::create_dir_all(&markers).expect("mkdir");
    let next = AtomicUsize::new(0);
    let cpu0 = cpu_seconds(std::process::id()).1;
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return;
                    }
                    let branch = format!("hadron/req-{i}");
                    for (k, stage) in ["implement", "review"].into_iter().enumerate() {
                        let work = dir.join(format!("w-{i}-{stage}"));
                        let target = s(&targets[i % TARGETS]);
                        if k == 0 {
                            git(&dir, &["clone", "-q", "--no-local", target, s(&work)]);
                            git(&work, &["checkout", "-q", "-b", &branch]);
                        } else {
                            git(&dir, &["clone", "-q", "--no-local", "-b", &branch, target, s(&work)]);
                        }
                        let status = Command::new("sh")
                            .args([
                                "-c",
                                "date +%s%N > \"$BENCH_MARKERS/$1.$2\"\nprintf '%s %s\\n' \"$1\" \"$2\" >> bench-notes.txt",
                                "bench-agent",
                                &format!("req-{i}"),
                                stage,
                            ])
                            .env("BENCH_MARKERS", &markers)
                            .current_dir(&work)
                            .status()
                            .expect("agent");
                        assert!(status.success());
                        git(&work, &["add", "-A"]);
                        git(&work, &["commit", "-q", "-m", &format!("{stage}: req-{i}")]);
                        git(&work, &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")]);
                        std::fs::remove_dir_all(&work).expect("rm");
                    }
                }
            });
        }
    });
    let elapsed = ms(t0.elapsed());
    let cpu = cpu_seconds(std::process::id()).1 - cpu0;
    std::fs::remove_dir_all(&dir).expect("rm");
    (elapsed, cpu)
}

// ---------------------------------------------------------------- main

fn main() {
    let cfg = Config::from_env();
    let root = tempfile::Builder::new().prefix("hadron-e2e-").tempdir().expect("temp dir");
    let git_version = git(root.path(), &["--version"]);
    eprintln!(
        "e2e bench: sizes {:?}, {} samples ({} for d), parts {:?}, in {}",
        cfg.sizes,
        cfg.samples,
        cfg.latency_samples,
        cfg.parts,
        root.path().display()
    );
    let mut report = Report::default();
    let started = Instant::now();

    if cfg.has("c") {
        let mut idle = Stats::default();
        for k in 0..cfg.samples {
            idle.push(idle_rss(root.path(), k));
        }
        eprintln!("  idle peak RSS: {}", three(&idle, mib));
        report.row("c. peak RSS, idle on a control repo without requests", 0, three(&idle, mib), "–".into(), "–".into(), idle.0.len());
    }

    for &n in &cfg.sizes {
        let run_d = cfg.has("d") && n <= 1_000;
        if !(cfg.has("a") || cfg.has("b") || cfg.has("c") || run_d) {
            continue;
        }
        eprintln!("n = {n}: setting up");
        let sc = Scenario::new(&root.path().join(format!("n-{n}")), n, true);
        let (floor_bare, floor_person) = sc.floor_copy("floor");
        let status_clone = sc.dir.join("floor-status");
        git(&sc.dir, &["clone", "-q", "--no-checkout", s(&floor_bare), s(&status_clone)]);

        // a (and c after the first pass): a fresh process and data dir per sample.
        let a_samples = if cfg.has("a") || cfg.has("c") { cfg.samples } else { 1 };
        let (mut a, mut a_floor, mut rss_first, mut cat_rss) = (Stats::default(), Stats::default(), Stats::default(), Stats::default());
        let (mut startup, mut pass_end, mut pass_s, mut fetch_s) = (Stats::default(), Stats::default(), Stats::default(), Stats::default());
        let mut running = None;
        for k in 0..a_samples {
            let (hadron, fp) = first_pass(&sc, n, k);
            let (floor_ms, floor_rss) = floor_first_pass(&floor_bare, &sc.dir, &sc.seed, n, k);
            eprintln!(
                "  a n={n} sample {k}: {} (floor {}), peak RSS {}, startup {}, pass over at {}",
                t(fp.total),
                t(floor_ms),
                mib(fp.rss),
                t(fp.startup),
                t(fp.pass_end)
            );
            a.push(fp.total);
            a_floor.push(floor_ms);
            rss_first.push(fp.rss);
            cat_rss.push(floor_rss);
            startup.push(fp.startup);
            pass_end.push(fp.pass_end);
            pass_s.push(fp.pass_seconds * 1000.0);
            fetch_s.push(fp.fetch_seconds * 1000.0);
            if k + 1 < a_samples {
                hadron.stop();
                std::fs::remove_dir_all(sc.dir.join(format!("data-{k}"))).expect("rm data");
            } else {
                running = Some(hadron);
            }
        }
        let mut hadron = running.expect("a running hadron");
        if cfg.has("a") {
            report.row(
                "a. first pass: start → status commit with N files",
                n,
                three(&a, t),
                three(&a_floor, t),
                ratio(a.median(), a_floor.median()),
                a.0.len(),
            );
            report.note(
                "a",
                n,
                format!(
                    "process start → `watching` line {}; the first pass (longest pass in `/metrics`) {}, fetches {}; status commit lands at {}, the pass's last line at {}",
                    t(startup.median()),
                    t(pass_s.median()),
                    t(fetch_s.median()),
                    t(a.median()),
                    t(pass_end.median())
                ),
            );
        }
        if cfg.has("c") {
            report.row(
                "c. peak RSS after the first pass",
                n,
                three(&rss_first, mib),
                three(&cat_rss, mib),
                ratio(rss_first.median(), cat_rss.median()),
                rss_first.0.len(),
            );
        }

        // b: one changed request at a time, the same process.
        if cfg.has("b") {
            pull(&floor_person);
            let (mut b, mut b_floor, mut b_push, mut b_pass, mut b_passes) =
                (Stats::default(), Stats::default(), Stats::default(), Stats::default(), Stats::default());
            for k in 0..cfg.samples {
                let (total, push, pass, passes) = one_change(&sc, &mut hadron, n, k);
                let (floor_ms, _) = floor_one_change(&floor_person, &status_clone, n, k);
                eprintln!("  b n={n} sample {k}: {} (push {}, passes {}), floor {}", t(total), t(push), t(pass * 1000.0), t(floor_ms));
                b.push(total);
                b_floor.push(floor_ms);
                b_push.push(push);
                b_pass.push(pass * 1000.0);
                b_passes.push(passes);
            }
            report.row(
                "b. push one changed request → its status commit",
                n,
                three(&b, t),
                three(&b_floor, t),
                ratio(b.median(), b_floor.median()),
                b.0.len(),
            );
            report.note(
                "b",
                n,
                format!(
                    "the person's push {}; in-process passes (`/metrics`, from the push until idle again, the one after Hadron's own push included): {} passes, {} in all",
                    t(b_push.median()),
                    b_passes.median(),
                    t(b_pass.median()),
                ),
            );
            if cfg.has("c") {
                let rss = hadron.peak_rss_mib();
                report.row(
                    &format!("c. peak RSS after b's {} pushes", cfg.samples),
                    n,
                    mib(rss),
                    three(&cat_rss, mib),
                    ratio(rss, cat_rss.median()),
                    1,
                );
            }
        }

        // d: push → worker started, the same process.
        if run_d {
            pull(&floor_person);
            let (mut d, mut d_floor, mut d_push, mut d_done) = (Stats::default(), Stats::default(), Stats::default(), Stats::default());
            let mut d_spawned = Stats::default();
            for k in 0..cfg.latency_samples {
                let sample = worker_latency(&sc, &mut hadron, k);
                let floor_ms = floor_worker_latency(&floor_person, k);
                eprintln!(
                    "  d n={n} sample {k}: agent started {} after the push started (push {}, worker spawned at {}), Succeeded at {}; floor {}",
                    t(sample.agent),
                    t(sample.push),
                    sample.spawned.map_or_else(|| "?".to_owned(), t),
                    t(sample.done),
                    t(floor_ms)
                );
                d.push(sample.agent);
                d_floor.push(floor_ms);
                d_push.push(sample.push);
                d_done.push(sample.done);
                if let Some(at) = sample.spawned {
                    d_spawned.push(at);
                }
            }
            let p = |st: &Stats| format!("p50 {} / p99 {}", t(st.pct(50.0)), t(st.pct(99.0)));
            report.row(
                "d. push a runnable request → its agent started",
                n,
                p(&d),
                p(&d_floor),
                ratio(d.pct(50.0), d_floor.pct(50.0)),
                d.0.len(),
            );
            report.note(
                "d",
                n,
                format!(
                    "min {} / max {}; the person's push {}; worker process spawned (Hadron's `worker started` line) at {}; push → status Succeeded {}",
                    t(d.min()),
                    t(d.max()),
                    t(d_push.median()),
                    t(d_spawned.median()),
                    t(d_done.median())
                ),
            );
            if cfg.has("c") {
                let rss = hadron.peak_rss_mib();
                report.row(
                    &format!("c. peak RSS after d's {} workers", cfg.latency_samples),
                    n,
                    mib(rss),
                    three(&cat_rss, mib),
                    ratio(rss, cat_rss.median()),
                    1,
                );
            }
        }
        hadron.stop();
        std::fs::remove_dir_all(&sc.dir).expect("rm scenario");
    }

    if cfg.has("e") {
        let requests = cfg.e_requests;
        let (mut e, mut e_floor, mut first, mut last, mut rss) =
            (Stats::default(), Stats::default(), Stats::default(), Stats::default(), Stats::default());
        for k in 0..cfg.samples {
            eprintln!("e: sample {k}: {requests} requests × 2 stages");
            // Each run starts on a file system at rest, and Hadron and the
            // floor take turns going first: on ext4 without a journal (these
            // machines) an inode freed in the last 5–10 s is skipped when a
            // new one is allocated, so a run that follows another's clean-up
            // of thousands of files pays for it in every file it creates.
            let (tp, (floor_ms, floor_cpu)) = if k % 2 == 0 {
                settle_fs();
                let tp = throughput(root.path(), requests, k);
                settle_fs();
                (tp, floor_throughput(root.path(), requests, k))
            } else {
                settle_fs();
                let floor = floor_throughput(root.path(), requests, k);
                settle_fs();
                (throughput(root.path(), requests, k), floor)
            };
            eprintln!(
                "  e sample {k}: {} (first agent at {}, last at {}), floor {} (CPU {floor_cpu:.1} s); {} passes, {} status commits, CPU {:.1} s Hadron + {:.1} s its children",
                t(tp.total),
                t(tp.first_agent),
                t(tp.last_agent),
                t(floor_ms),
                tp.passes,
                tp.status_commits,
                tp.cpu.0,
                tp.cpu.1,
            );
            e.push(tp.total);
            e_floor.push(floor_ms);
            first.push(tp.first_agent);
            last.push(tp.last_agent);
            rss.push(tp.rss);
        }
        report.row(
            &format!("e. {requests} requests × 2 stages, 4 workers: push → all Succeeded"),
            requests,
            three(&e, t),
            three(&e_floor, t),
            ratio(e.median(), e_floor.median()),
            e.0.len(),
        );
        report.note(
            "e",
            requests,
            format!(
                "first agent started {} after the push, last agent started at {}, all Succeeded on main at {}; peak RSS {}",
                t(first.median()),
                t(last.median()),
                t(e.median()),
                mib(rss.median())
            ),
        );
    }

    println!(
        "machine: {} cores, {}; {}; bench took {:.0} s; binary {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH,
        git_version.trim(),
        started.elapsed().as_secs_f64(),
        hadron_binary().display()
    );
    println!();
    report.print();
}
