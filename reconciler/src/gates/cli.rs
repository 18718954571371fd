//! Running the `git` CLI with arguments Hadron builds itself.
//!
//! Every command gets an explicit identity, `GIT_TERMINAL_PROMPT=0`, and
//! `protocol.ext.allow=never`; untrusted text only ever follows a `--` or is
//! validated first by the callers. Standard error is redacted of URL
//! credentials before it enters an error.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use super::{GateError, Person};
use crate::model::validate::repo_url_problem;

/// What a finished `git` command said.
pub(crate) struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `git -C <dir> <args>` with `who` as author and committer.
pub(crate) fn git(dir: &Path, who: &Person, args: &[OsString]) -> Result<Ran, GateError> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "protocol.ext.allow=never", "-c", "core.askPass=", "-c", "credential.interactive=never"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_MERGE_AUTOEDIT", "no")
        .env("GIT_AUTHOR_NAME", &who.name)
        .env("GIT_AUTHOR_EMAIL", &who.email)
        .env("GIT_COMMITTER_NAME", &who.name)
        .env("GIT_COMMITTER_EMAIL", &who.email)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    let out = cmd.output().map_err(|source| GateError::Io { op: "run git in", path: dir.display().to_string(), source })?;
    Ok(Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: redact(&String::from_utf8_lossy(&out.stderr)),
    })
}

/// Runs a git command and fails with [`GateError::GitCommand`] unless it succeeds.
pub(crate) fn git_ok(op: &'static str, dir: &Path, who: &Person, args: &[OsString]) -> Result<String, GateError> {
    let ran = git(dir, who, args)?;
    if ran.success {
        Ok(ran.stdout)
    } else {
        Err(GateError::GitCommand { op, detail: ran.stderr.trim().to_owned() })
    }
}

/// Builds an argument list from strings and paths.
pub(crate) fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    items.into_iter().map(Into::into).collect()
}

/// Refuses URLs git could read as an option or that would run a remote helper.
pub(crate) fn check_url(url: &str) -> Result<(), GateError> {
    match repo_url_problem(url) {
        Some(why) => Err(GateError::InvalidRemoteUrl(why)),
        None => Ok(()),
    }
}

/// Pushes `src` to `dst` on `url` without force. `Ok(None)` when pushed,
/// `Ok(Some(detail))` when the remote rejected it (not a fast-forward, the ref
/// moved), `Err` for any other failure.
pub(crate) fn push(dir: &Path, who: &Person, url: &str, src: &str, dst: &str) -> Result<Option<String>, GateError> {
    let spec = format!("{src}:{dst}");
    let ran = git(dir, who, &args(["push", "--porcelain", "--no-verify", "--", url, spec.as_str()]))?;
    if ran.success {
        return Ok(None);
    }
    let rejected: Vec<&str> = ran.stdout.lines().filter(|l| l.starts_with('!')).collect();
    if rejected.is_empty() {
        Err(GateError::GitCommand { op: "push", detail: ran.stderr.trim().to_owned() })
    } else {
        Ok(Some(redact(&rejected.join("; "))))
    }
}

/// Replaces the user-info part of every `scheme://user:pass@host` in `text` with `***`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c == '/' || c.is_whitespace()).unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("fatal: unable to access 'https://bob:s3cret@git.example.com/acme/ctl.git/': 403"),
            "fatal: unable to access 'https://***@git.example.com/acme/ctl.git/': 403"
        );
        assert_eq!(redact("file:///srv/x.git and ssh://git@h/x"), "file:///srv/x.git and ssh://***@h/x");
        assert!(!redact("https://tok@h/x https://u:p@h2/y").contains("tok"));
    }

    #[test]
    fn urls_checked() {
        assert!(check_url("--upload-pack=evil").is_err());
        assert!(check_url("ext::sh -c x").is_err());
        assert!(check_url("/srv/git/ctl.git").is_ok());
    }
}
