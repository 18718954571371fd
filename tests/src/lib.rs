//! Shared helpers for the integration tests: run the real `hadron` binary,
//! run `git` as a person (one isolated command builder: [`git_as`], [`git_try`], [`git_stdout`]),
//! copy fixture trees.

pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (the folder with the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("because tests/ sits in the workspace root").to_owned()
}

/// `tests/fixtures` in the workspace: copies of real third-party data (see its README).
pub fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures")
}

/// Path of the built `hadron` binary. A macro because Cargo defines
/// `CARGO_BIN_EXE_*` only while compiling the integration tests themselves.
#[macro_export]
macro_rules! hadron_bin {
    () => {
        env!("CARGO_BIN_EXE_hadron-under-test")
    };
}

/// Runs the built binary with `args` and returns its output.
pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("because the hadron binary was built for these tests")
}

/// Copies a folder tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `hadron` run in `cwd` without the store, data-dir and listen settings of
/// the test's own environment (so every test gets the defaults it expects).
pub fn hadron_command(bin: &str, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd).env_remove("DATABASE_URL").env_remove("HADRON_DATA_DIR").env_remove("HADRON_LISTEN");
    share_witness(&mut cmd, cwd);
    cmd
}

/// The folder beside a test's Hadron where its agents may write what they
/// did (a log of every run that outlives workspaces): shared with every
/// agent's sandbox through `HADRON_SANDBOX_SHARED`. Nothing else of the
/// test's folder is.
pub fn witness_dir(cwd: &Path) -> PathBuf {
    cwd.join("witness")
}

fn share_witness(cmd: &mut Command, cwd: &Path) {
    let dir = witness_dir(cwd);
    if dir.is_dir() {
        cmd.env(hadron::workers::sandbox::SHARED_ENV, dir);
    }
}

/// `git` in `cwd` as the person `who` (`who@example.com`), reading no global or system git config.
fn git_command(cwd: &Path, who: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.args(["-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"])
        .args(["-c", &format!("user.name={who}"), "-c", &format!("user.email={who}@example.com")])
        .args(args)
        .current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

/// [`git_as`] that says whether git succeeded instead of panicking.
pub fn git_try(cwd: &Path, who: &str, args: &[&str]) -> bool {
    git_command(cwd, who, args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// [`git_as`] that hands back git's standard output whatever its exit
/// (empty when, say, the file to show is not there yet).
pub fn git_stdout(cwd: &Path, who: &str, args: &[&str]) -> String {
    let out = git_command(cwd, who, args).output().expect("git runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `git` in `cwd` as the person `who` (`who@example.com`), reading no
/// global or system git config; panics with git's words when it fails.
pub fn git_as(cwd: &Path, who: &str, args: &[&str]) -> String {
    let out = git_command(cwd, who, args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?} in {}: {}", cwd.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET path` on a live server over plain HTTP/1.1: the status code and the whole response text.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

/// How long a test waits for Hadron to show a reaction.
pub const WAIT: Duration = Duration::from_secs(90);

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A live `hadron` process (`up` or `serve`) started in `cwd`, its standard
/// output in `cwd/up.out`, its log in `cwd/up.err`; stopped with SIGTERM on drop.
pub struct Live {
    cwd: PathBuf,
    child: Child,
}

impl Live {
    /// Starts `bin args…` in `cwd` with the data dir, store and listen
    /// address left to their defaults (unless `args` name them).
    pub fn start(bin: &str, cwd: &Path, args: &[&str]) -> Self {
        Self::start_with_env(bin, cwd, args, &[])
    }

    /// [`Live::start`] with extra environment variables.
    pub fn start_with_env(bin: &str, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let file = |name: &str| std::fs::File::create(cwd.join(name)).expect("because the test folder is writable");
        let child = Command::new(bin)
            .args(args)
            .env_remove("MALLOC_ARENA_MAX")
            .env_remove("MALLOC_MMAP_THRESHOLD_")
            .env(hadron::workers::sandbox::SHARED_ENV, witness_dir(cwd))
            .envs(env.iter().copied())
            .current_dir(cwd)
            .env_remove("DATABASE_URL")
            .env_remove("HADRON_DATA_DIR")
            .env_remove("HADRON_LISTEN")
            .env("RUST_LOG", "hadron=info")
            .stdout(Stdio::from(file("up.out")))
            .stderr(Stdio::from(file("up.err")))
            .spawn()
            .expect("because the hadron binary was built for these tests");
        Live { cwd: cwd.to_owned(), child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far.
    pub fn out(&self) -> String {
        std::fs::read_to_string(self.cwd.join("up.out")).unwrap_or_default()
    }

    /// Its output and the tail of its log, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- up.out\n{}\n--- up.err (tail)\n{}",
            self.out(),
            tail(&std::fs::read_to_string(self.cwd.join("up.err")).unwrap_or_default(), 40)
        )
    }

    /// Waits (up to [`WAIT`]) for an output line holding every needle and returns it.
    pub fn wait_for_line(&self, needles: &[&str], why: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.out().lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(started.elapsed() < WAIT, "{why}: no line with {needles:?} after {WAIT:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of its HTTP server, as printed.
    pub fn address(&self) -> String {
        let line = self.wait_for_line(&["serving http://"], "the server address is printed");
        line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).expect("because the line names an address").to_owned()
    }
}

impl Live {
    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (up to `limit`) for the process to exit by itself; its exit status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {}", self.child.id());
    }

    /// Sends SIGTERM and waits (up to `limit`) for the process to exit; returns how long it took.
    pub fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        while started.elapsed() < limit {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Already reaped (stopped by the test): its pid may be someone else's now.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database of its own on the local server, dropped on drop.
pub struct Database {
    name: String,
}

impl Database {
    /// Runs `sql` as `postgres` on the local server, asserting it succeeded.
    pub fn psql(sql: &str) {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql])
            .output()
            .expect("psql runs (.ci/run installs PostgreSQL)");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Creates `hadron_<suite>_<test>_<pid>`, dropping a leftover of that name first.
    pub fn create(suite: &str, test: &str) -> Database {
        let name = format!("hadron_{suite}_{test}_{}", std::process::id());
        Self::psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        Self::psql(&format!("CREATE DATABASE {name}"));
        Database { name }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        Self::psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// The API's phase of every request, by name (empty while it does not answer).
pub fn api_phases(addr: &str) -> std::collections::BTreeMap<String, String> {
    let (_, text) = http_get(addr, "/api/v1/requests");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    value["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|r| Some((r["name"].as_str()?.to_owned(), r["phase"].as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}
