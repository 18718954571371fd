//! The gates' use of the `git` CLI, through Hadron's one runner
//! ([`crate::git`]): untrusted text only ever follows a `--` or is validated
//! first by the callers.

use std::ffi::OsString;
use std::path::Path;

use super::{GateError, Person};
use crate::git::{Git, GitError, Identity};
use crate::model::validate::repo_url_problem;

pub(crate) use crate::git::Ran;

impl From<&Person> for Identity {
    fn from(who: &Person) -> Identity {
        Identity::new(who.name.clone(), who.email.clone())
    }
}

impl From<GitError> for GateError {
    fn from(err: GitError) -> GateError {
        match err {
            GitError::Unavailable { source } => GateError::Io { op: "run", path: "git".to_owned(), source },
            GitError::Failed { op, detail } => GateError::GitCommand { op, detail },
        }
    }
}

/// Runs `git <args>` in `dir` with `who` as author and committer.
pub(crate) fn git(dir: &Path, who: &Person, args: &[OsString]) -> Result<Ran, GateError> {
    Ok(Git::in_dir(dir, who.into()).run(args)?)
}

/// Runs a git command and fails with [`GateError::GitCommand`] unless it succeeds.
pub(crate) fn git_ok(op: &'static str, dir: &Path, who: &Person, args: &[OsString]) -> Result<String, GateError> {
    Ok(Git::in_dir(dir, who.into()).run_ok(op, args)?)
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
        Ok(Some(rejected.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_checked() {
        assert!(check_url("--upload-pack=evil").is_err());
        assert!(check_url("ext::sh -c x").is_err());
        assert!(check_url("/srv/git/ctl.git").is_ok());
    }
}
