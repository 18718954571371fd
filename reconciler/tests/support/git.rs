//! The `git` CLI as a person, for the integration tests and benches: one
//! command builder, isolated from the machine's git configuration, and the
//! few ways the tests run it. Included with
//! `#[path = "support/git.rs"] mod git;` (the Gitea double reads its repos
//! through `crate::git`).

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context as _, Result, ensure};

/// Who runs git: the name and email it records as author and committer.
pub type Who<'a> = (&'a str, &'a str);

/// The person of the tests that need no particular one.
pub const HUMAN: Who<'static> = ("human", "human@example.com");

/// `git args…` in `dir` as `who`: no system or global git config, no
/// prompts, `main` as the first branch, no signing. `env` is set last, so it
/// can override anything (a committer other than the author, say).
pub fn git_command(dir: &Path, who: Who, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", who.0)
        .env("GIT_AUTHOR_EMAIL", who.1)
        .env("GIT_COMMITTER_NAME", who.0)
        .env("GIT_COMMITTER_EMAIL", who.1)
        .envs(env.iter().copied());
    cmd
}

/// Runs [`git_command`] and hands back its output, whatever git's exit.
pub fn git_output(dir: &Path, who: Who, args: &[&str]) -> Result<Output> {
    git_command(dir, who, &[], args).output().context("running git")
}

/// Runs git in `dir` as `who`: its trimmed standard output, or an error
/// with git's words when it fails.
pub fn git(dir: &Path, who: Who, args: &[&str]) -> Result<String> {
    git_with(dir, who, &[], args)
}

/// [`git`] with the environment variables `env` on top.
pub fn git_with(dir: &Path, who: Who, env: &[(&str, &str)], args: &[&str]) -> Result<String> {
    let out = git_command(dir, who, env, args).output().context("running git")?;
    ensure!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
