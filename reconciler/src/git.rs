//! The one way Hadron runs the `git` CLI.
//!
//! gix reads, diffs and writes objects; everything else (push, clone, the
//! worker's checkout and commit, seeding, `ci-status`'s `ls-remote`) runs
//! `git`, and every such run is built here, so that what is in the machine's
//! git configuration or in Hadron's environment changes nothing:
//!
//! * **config isolated**: no system config (`GIT_CONFIG_NOSYSTEM`), the global
//!   config is `/dev/null` unless the operator names a file of their own for
//!   Hadron's git in [`OPERATOR_CONFIG_ENV`] (credential helpers,
//!   `http.sslCAInfo`, `core.sshCommand`), and git starts from an empty
//!   environment plus the allow-list [`PROCESS_ENV`] + [`GIT_TRANSPORT_ENV`] (so no
//!   `GIT_CONFIG_PARAMETERS`, `GIT_CONFIG_COUNT`, `GIT_DIR`, `GIT_EXEC_PATH`,
//!   ... reaches it);
//! * **fixed safety settings** on the command line, which outrank any config
//!   file: hooks off, `ext::` remotes refused, no signing, no fsmonitor, no
//!   submodule recursion, no prompts;
//! * **an explicit identity** for author and committer;
//! * untrusted text only after `--`, or validated by the caller first;
//! * **one redaction**: stdout and stderr pass through
//!   [`crate::redact::url_credentials`] before anyone sees them.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Environment variable naming a git config file the operator wants Hadron's
/// git to read as its global config (for example a credential helper for
/// the Gitea host). Unset: git reads no global or system config at all.
pub const OPERATOR_CONFIG_ENV: &str = "HADRON_GIT_CONFIG";

/// The variables every process Hadron starts (git, a worker, an agent)
/// inherits from Hadron's environment: where programs are, the locale and
/// time zone, and how to reach the network (proxies, CA bundles), all set
/// by the operator. Nothing else of Hadron's environment is passed on.
pub const PROCESS_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "TZ",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// What git inherits besides [`PROCESS_ENV`]: how it reaches a remote
/// (the SSH agent and command, its CA bundle).
pub const GIT_TRANSPORT_ENV: &[&str] = &["SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "GIT_SSL_CAINFO"];

/// Settings passed with `-c` on every run; they outrank every config file.
const SAFE_CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.askPass=",
    "credential.interactive=never",
    "protocol.ext.allow=never",
    "protocol.file.allow=always",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "push.gpgSign=false",
    "push.followTags=false",
    "push.recurseSubmodules=no",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "init.defaultBranch=main",
    // Never `git gc --auto` inside a fetch or commit (seconds, in the
    // middle of a pass): Hadron's private clones are packed by
    // housekeeping instead (`StatusWriter::maintain`).
    "gc.auto=0",
    "maintenance.auto=false",
    "gc.autoDetach=false",
    "advice.detachedHead=false",
    // No reflogs: nothing of Hadron reads them, and in a worker's one-run
    // workspace they are a dozen files (and folders) to create and delete.
    "core.logAllRefUpdates=false",
];

/// The `git` to run: its full path, found once on Hadron's `PATH` (the
/// `PATH` its children get), else plain `git`.
///
/// A full path matters for speed: given a bare name and an environment
/// that sets `PATH`, the standard library must search `PATH` itself and
/// starts the child with `fork`, which copies the page tables of Hadron's
/// whole heap (and makes its next writes fault) on every git run; with a
/// full path it uses `posix_spawn`, which does not.
pub fn program() -> &'static Path {
    static GIT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    GIT.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join("git"))
            .find(|candidate| is_executable(candidate))
            .unwrap_or_else(|| PathBuf::from("git"))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why a git run failed. [`GitError::reason`] is the stable reason string.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started at all.
    #[error("cannot run git (install git and put it on PATH): {source}")]
    Unavailable {
        /// What starting it said.
        #[source]
        source: std::io::Error,
    },
    /// git ran and exited non-zero; `detail` is its redacted standard error.
    #[error("git {op} failed: {detail}")]
    Failed {
        /// What was being done (`clone`, `push`, ...).
        op: &'static str,
        /// git's standard error, credentials hidden.
        detail: String,
    },
}

impl GitError {
    /// Stable reason string for conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            GitError::Unavailable { .. } => "GitUnavailable",
            GitError::Failed { .. } => "GitCommandFailed",
        }
    }
}

/// Author and committer of the commits a run makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `user.name`.
    pub name: String,
    /// `user.email`.
    pub email: String,
}

impl Identity {
    /// An identity from its parts.
    pub fn new(name: impl Into<String>, email: impl Into<String>) -> Identity {
        Identity { name: name.into(), email: email.into() }
    }
}

impl Default for Identity {
    /// Hadron's own identity, `hadron <hadron@localhost>`.
    fn default() -> Identity {
        Identity::new("hadron", "hadron@localhost")
    }
}

/// Where git runs.
#[derive(Debug, Clone)]
enum Place {
    /// A working tree (or a bare repo) given as the current directory.
    Dir(PathBuf),
    /// A bare repository given as `GIT_DIR`.
    GitDir(PathBuf),
    /// No repository: commands such as `ls-remote` against a URL. Runs in
    /// the temporary folder with discovery stopped there, so a repository
    /// the caller happens to stand in is never read.
    Nowhere,
}

/// What a finished run printed, credentials hidden.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Whether git exited 0.
    pub success: bool,
    /// Standard output, redacted.
    pub stdout: String,
    /// Standard error, redacted.
    pub stderr: String,
}

impl Ran {
    /// What a finished git printed, redacted.
    fn of(out: &std::process::Output) -> Ran {
        Ran {
            success: out.status.success(),
            stdout: crate::redact::url_credentials(&String::from_utf8_lossy(&out.stdout)),
            stderr: crate::redact::url_credentials(&String::from_utf8_lossy(&out.stderr)),
        }
    }
}

/// A git runner bound to one place and one identity.
#[derive(Debug, Clone)]
pub struct Git {
    place: Place,
    identity: Identity,
}

impl Git {
    /// Runs git with `dir` as its current directory.
    pub fn in_dir(dir: impl Into<PathBuf>, identity: Identity) -> Git {
        Git { place: Place::Dir(dir.into()), identity }
    }

    /// Runs git on the bare repository `git_dir`.
    pub fn bare(git_dir: impl Into<PathBuf>, identity: Identity) -> Git {
        Git { place: Place::GitDir(git_dir.into()), identity }
    }

    /// Runs git outside any repository (for `ls-remote` and `clone`).
    pub fn nowhere(identity: Identity) -> Git {
        Git { place: Place::Nowhere, identity }
    }

    /// The hardened command for `args`, for callers that need to wire its
    /// standard streams themselves. Prefer [`Git::run`].
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command_in(&|name| std::env::var_os(name), args)
    }

    /// [`Git::command`] with `inherited` standing for Hadron's environment.
    fn command_in<I, S>(&self, inherited: &dyn Fn(&str) -> Option<OsString>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program());
        cmd.env_clear();
        for name in PROCESS_ENV.iter().chain(GIT_TRANSPORT_ENV) {
            if let Some(value) = inherited(name) {
                cmd.env(name, value);
            }
        }
        let global: OsString = match inherited(OPERATOR_CONFIG_ENV) {
            Some(path) if !path.is_empty() => path,
            _ => "/dev/null".into(),
        };
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", global)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_MERGE_AUTOEDIT", "no")
            .env("GIT_AUTHOR_NAME", &self.identity.name)
            .env("GIT_AUTHOR_EMAIL", &self.identity.email)
            .env("GIT_COMMITTER_NAME", &self.identity.name)
            .env("GIT_COMMITTER_EMAIL", &self.identity.email)
            .env("LC_ALL", "C");
        for setting in SAFE_CONFIG {
            cmd.arg("-c").arg(setting);
        }
        match &self.place {
            Place::Dir(dir) => {
                cmd.current_dir(dir);
            }
            Place::GitDir(dir) => {
                cmd.env("GIT_DIR", dir);
            }
            Place::Nowhere => {
                let tmp = std::env::temp_dir();
                cmd.env("GIT_CEILING_DIRECTORIES", &tmp).current_dir(tmp);
            }
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// Runs `git <args>` and returns what it printed (redacted), whatever its exit code.
    pub fn run<I, S>(&self, args: I) -> Result<Ran, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out =
            self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).output().map_err(|source| GitError::Unavailable { source })?;
        Ok(Ran::of(&out))
    }

    /// [`Git::run`], with the fault point `point` (see [`crate::fault`])
    /// reached once the command runs: the HA tests freeze a leader with
    /// its git command in flight.
    pub fn run_at<I, S>(&self, point: &str, args: I) -> Result<Ran, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        if !crate::fault::any_armed() {
            return self.run(args);
        }
        let child =
            self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|source| GitError::Unavailable { source })?;
        crate::fault::reach(point, Some(child.id()));
        let out = child.wait_with_output().map_err(|source| GitError::Unavailable { source })?;
        Ok(Ran::of(&out))
    }

    /// Runs `git <args>`; its standard output when it exits 0, else [`GitError::Failed`].
    pub fn run_ok<I, S>(&self, op: &'static str, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let ran = self.run(args)?;
        if ran.success { Ok(ran.stdout) } else { Err(GitError::Failed { op, detail: ran.stderr.trim().to_owned() }) }
    }
}

/// Opens a repository with gix as the CLI runs: its own config only, no
/// global or system config and no `GIT_*` overrides from the environment (a
/// `url.<x>.insteadOf` in `~/.gitconfig` must not send Hadron's fetch elsewhere).
pub fn open(path: &Path) -> Result<gix::Repository, gix::Error> {
    gix::open_opts(path, gix::open::Options::isolated())
}

/// `url` made absolute when it is a relative local path, so it means the same
/// to [`Git::nowhere`] (which runs in the temporary folder) as to the caller.
pub fn absolute_local(url: &str) -> String {
    let scp_like = url.split_once(':').is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'));
    if url.contains("://") || scp_like || url.starts_with('/') {
        return url.to_owned();
    }
    std::path::absolute(url).map_or_else(|_| url.to_owned(), |p| p.display().to_string())
}

/// A lock file older than this in one of Hadron's private repositories was
/// left by a killed process: a live git holds its locks for milliseconds.
pub const STALE_LOCK_AGE: Duration = Duration::from_secs(10);

/// Removes `*.lock` files older than `age` from a git dir's top level and
/// `refs/` (left by a `kill -9` during a fetch or a ref update; git and gix
/// would otherwise refuse every later update of that ref). Only for
/// repositories Hadron alone writes: its mirrors and private clones.
pub fn remove_stale_locks(git_dir: &Path, age: Duration) -> usize {
    fn walk(dir: &Path, age: Duration, recurse: bool, removed: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                if recurse {
                    walk(&path, age, true, removed);
                }
                continue;
            }
            let stale = path.extension().is_some_and(|e| e == "lock")
                && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age));
            if stale && std::fs::remove_file(&path).is_ok() {
                tracing::warn!(file = %path.display(), "removed a stale lock file left by an interrupted git run");
                *removed += 1;
            }
        }
    }
    let mut removed = 0;
    walk(git_dir, age, false, &mut removed);
    walk(&git_dir.join("refs"), age, true, &mut removed);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity::new("hadron-test", "hadron-test@localhost")
    }

    #[test]
    fn git_is_run_by_its_full_path_from_path() {
        let git = program();
        assert!(git.is_absolute(), "{}", git.display());
        assert!(is_executable(git));
        let ran = Git::nowhere(me()).run(["--version"]).expect("git runs");
        assert!(ran.success && ran.stdout.starts_with("git version"), "{}", ran.stdout);
        assert!(!is_executable(Path::new("/nonexistent/git")));
    }

    /// A home whose `.gitconfig` sets hooks, URL rewrites, signing and an
    /// identity; none of it may reach Hadron's git.
    fn hostile_home(dir: &Path) -> PathBuf {
        let home = dir.join("home");
        let hooks = home.join("hooks");
        std::fs::create_dir_all(&hooks).expect("hooks dir");
        let marker = dir.join("hook-ran");
        for hook in ["pre-commit", "post-commit", "reference-transaction", "post-checkout"] {
            let path = hooks.join(hook);
            std::fs::write(&path, format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("hook");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        }
        std::fs::write(
            home.join(".gitconfig"),
            format!(
                "[core]\n\thooksPath = {}\n[user]\n\tname = mallory\n\temail = mallory@evil\n[commit]\n\tgpgSign = true\n[url \"/nonexistent/\"]\n\tinsteadOf = /\n",
                hooks.display()
            ),
        )
        .expect("gitconfig");
        home
    }

    #[test]
    fn a_hostile_environment_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = hostile_home(tmp.path());
        let bare = tmp.path().join("r.git");
        let work = tmp.path().join("w");
        std::fs::create_dir_all(&work).expect("work dir");

        // Every hostile setting at once, standing for Hadron's environment.
        let hostile: Vec<(&str, OsString)> = vec![
            ("PATH", std::env::var_os("PATH").expect("PATH is set")),
            ("HOME", home.clone().into()),
            ("GIT_CONFIG_PARAMETERS", format!("'core.hookspath'='{}'", home.join("hooks").display()).into()),
            ("GIT_CONFIG_COUNT", "1".into()),
            ("GIT_CONFIG_KEY_0", "url./nonexistent/.insteadOf".into()),
            ("GIT_CONFIG_VALUE_0", "/".into()),
            ("GIT_DIR", "/nonexistent".into()),
            ("GIT_EXEC_PATH", "/nonexistent".into()),
            ("GIT_AUTHOR_NAME", "mallory".into()),
        ];
        let env = |name: &str| hostile.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        let run = |git: &Git, args: &[&str]| {
            let out = git.command_in(&env, args).output().expect("git runs");
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let bare_s = bare.display().to_string();
        run(&Git::nowhere(me()), &["init", "-q", "--bare", "--", &bare_s]);
        let w = Git::in_dir(&work, me());
        run(&w, &["init", "-q"]);
        std::fs::write(work.join("f"), "x").expect("file");
        run(&w, &["add", "-A"]);
        run(&w, &["commit", "-q", "-m", "one"]);
        run(&w, &["push", "-q", "--", &bare_s, "HEAD:refs/heads/main"]);
        let listed = run(&Git::nowhere(me()), &["ls-remote", "--", &bare_s, "refs/heads/main"]);
        assert_eq!(listed.split_whitespace().count(), 2, "{listed}");
        let author = run(&Git::bare(&bare, me()), &["log", "-1", "--format=%an <%ae>", "main"]);
        assert_eq!(author.trim(), "hadron-test <hadron-test@localhost>");
        assert!(!tmp.path().join("hook-ran").exists(), "a hook from the hostile config ran");
    }

    #[test]
    fn output_is_redacted_and_failures_are_typed() {
        let err = Git::nowhere(me())
            .run_ok("ls-remote", ["ls-remote", "--", "http://user:s3cret@127.0.0.1:9/x.git"])
            .expect_err("port 9 refuses");
        assert_eq!(err.reason(), "GitCommandFailed");
        let text = err.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("git ls-remote failed"), "{text}");
    }

    #[test]
    fn stale_locks_go_and_fresh_ones_stay() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let refs = tmp.path().join("refs/hadron");
        std::fs::create_dir_all(&refs).expect("refs");
        let old = refs.join("pending.lock");
        std::fs::write(&old, "").expect("lock");
        std::fs::File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60)))
            .expect("age the lock");
        let fresh = tmp.path().join("HEAD.lock");
        std::fs::write(&fresh, "").expect("lock");
        assert_eq!(remove_stale_locks(tmp.path(), STALE_LOCK_AGE), 1);
        assert!(!old.exists() && fresh.exists());
    }
}
