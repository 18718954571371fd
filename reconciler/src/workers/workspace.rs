//! The target repo checkout in the run dir: git in the workspace (clone,
//! fetch, refs), the commit message, and the push that rebases onto a moved
//! branch.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use super::error::WorkerError;
use super::result::Done;
use super::worker::Worker;

/// How many times a rejected push is retried after rebasing.
const PUSH_ATTEMPTS: u32 = 4;

/// What a git command printed.
pub(super) struct GitOut {
    pub(super) ok: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Worker<'_> {
    /// Runs git in the workspace (or the run dir before the clone).
    fn git_in<I, S>(&self, dir: &Path, args: I) -> Result<GitOut, WorkerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown: Vec<String> = args.iter().map(|a| crate::redact::url_credentials(&a.to_string_lossy())).collect();
        self.log.line(&format!("$ git {}", shown.join(" ")));
        let (name, email) = &self.spec.git_author;
        let out = crate::git::Git::in_dir(dir, crate::git::Identity::new(name.clone(), email.clone()))
            .run(&args)
            .map_err(|e| WorkerError::GitFailed(e.to_string()))?;
        let (stdout, stderr) = (out.stdout, out.stderr);
        if !stdout.is_empty() {
            self.log.write(&stdout);
        }
        if !stderr.is_empty() {
            self.log.write(&stderr);
        }
        Ok(GitOut { ok: out.success, stdout, stderr })
    }

    pub(super) fn git<I, S>(&self, args: I) -> Result<GitOut, WorkerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.git_in(&self.workspace, args)
    }

    /// Runs git and maps a non-zero exit to `error(stderr)`.
    pub(super) fn git_ok<I, S>(&self, args: I, error: fn(String) -> WorkerError) -> Result<String, WorkerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.git(args)?;
        if out.ok { Ok(out.stdout.trim().to_owned()) } else { Err(error(self.log.redact(out.stderr.trim()))) }
    }

    /// The commit a ref points at, if it exists.
    /// Read in process (a `git rev-parse` costs a process start, ~5 ms,
    /// and two of them stand between a worker's start and its agent's).
    pub(super) fn rev(&self, name: &str) -> Result<Option<String>, WorkerError> {
        Ok(commit_at(&self.open_workspace()?, name)?.map(|id| id.to_string()))
    }

    fn open_workspace(&self) -> Result<gix::Repository, WorkerError> {
        crate::git::open(&self.workspace).map_err(|e| WorkerError::GitFailed(format!("opening the workspace: {e}")))
    }

    /// Clones into `workspace` (through a temporary folder, so a crash never
    /// leaves a half clone), or fetches when an earlier attempt cloned.
    /// Returns whether the workspace was there before (and may hold files
    /// an earlier attempt left).
    pub(super) fn prepare_workspace(&self) -> Result<bool, WorkerError> {
        if self.workspace.join(".git").is_dir() {
            let fetched = self.git(["fetch", "-q", "--prune", "origin"])?;
            if fetched.ok {
                return Ok(true);
            }
            self.log.line("fetch into the existing workspace failed; cloning again");
            std::fs::remove_dir_all(&self.workspace).map_err(|e| WorkerError::io(&self.workspace, e))?;
        }
        let partial = self.run_dir.join("workspace.partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| WorkerError::io(&partial, e))?;
        }
        let args: Vec<OsString> = vec![
            "clone".into(),
            "-q".into(),
            "--no-checkout".into(),
            // No template: the sample hooks and the rest of git's template
            // (19 of a fresh repo's 29 files) are never used in a workspace
            // that lives for one run, and each file is an inode to allocate
            // and free again (with 4 workers at once, most of git's CPU time
            // went to ext4 inode allocation).
            "--template=".into(),
            // A local path is cloned through upload-pack, a consistent
            // snapshot: the default hardlink copy of the objects folder also
            // copies the temporary folder of a push landing at that moment
            // and fails ("hardlink different from source"), seen with four
            // workers pushing to one local repo while another cloned it.
            "--no-local".into(),
            "--".into(),
            self.spec.clone_url.clone().into(),
            partial.clone().into_os_string(),
        ];
        let out = self.git_in(&self.run_dir, args)?;
        if !out.ok {
            return Err(WorkerError::CloneFailed(self.log.redact(out.stderr.trim())));
        }
        std::fs::rename(&partial, &self.workspace).map_err(|e| WorkerError::io(&self.workspace, e))?;
        Ok(false)
    }

    /// The newest commit on `branch` whose message has a line
    /// `Hadron-Worker: <this worker>` (read in process, as `rev` is).
    pub(super) fn commit_of_this_worker(&self, branch: &str) -> Result<Option<String>, WorkerError> {
        let failed = |e: &dyn std::fmt::Display| WorkerError::GitFailed(format!("reading the history of {branch}: {e}"));
        let repo = self.open_workspace()?;
        let Some(tip) = commit_at(&repo, branch)? else { return Ok(None) };
        let trailer = format!("Hadron-Worker: {}", self.spec.worker);
        for info in repo.rev_walk([tip]).all().map_err(|e| failed(&e))? {
            let info = info.map_err(|e| failed(&e))?;
            let commit = info.object().map_err(|e| failed(&e))?;
            let message = commit.message_raw().map_err(|e| failed(&e))?;
            if message.split(|b| *b == b'\n').any(|line| line == trailer.as_bytes()) {
                return Ok(Some(info.id.to_string()));
            }
        }
        Ok(None)
    }

    pub(super) fn commit_message(&self) -> String {
        let s = self.spec;
        let title = s.title.split_whitespace().collect::<Vec<_>>().join(" ");
        let title = if title.is_empty() { format!("Hadron: {}", s.request) } else { title };
        format!("{title}\n\nStage: {}\nHadron-Request: {}\nHadron-Worker: {}\n", s.stage, s.request, s.worker)
    }

    /// Pushes HEAD to the work branch without force. A rejection because the
    /// branch moved is met by fetching, rebasing onto it and trying again.
    pub(super) fn push(&self) -> Result<Done, WorkerError> {
        let branch = &self.spec.work_branch;
        let refspec = format!("HEAD:refs/heads/{branch}");
        let remote = format!("refs/remotes/origin/{branch}");
        let mut last_error = String::new();
        for attempt in 1..=PUSH_ATTEMPTS {
            let out = self.git(["push", "-q", "origin", refspec.as_str()])?;
            if out.ok {
                let head = self.rev("HEAD")?.ok_or_else(|| WorkerError::GitFailed("no HEAD after commit".to_owned()))?;
                let message = if attempt == 1 { "pushed".to_owned() } else { format!("pushed after {} rebase(s)", attempt - 1) };
                return Ok(Done { commit: head, message });
            }
            last_error = self.log.redact(out.stderr.trim());
            if !self.git(["fetch", "-q", "--prune", "origin"])?.ok {
                break;
            }
            let Some(tip) = self.rev(&remote)? else { break };
            if self.git(["merge-base", "--is-ancestor", tip.as_str(), "HEAD"])?.ok {
                // The branch did not move under us: the rejection is something else.
                break;
            }
            self.log.line(&format!("the branch moved to {tip}; rebasing (attempt {attempt})"));
            if !self.git(["rebase", "-q", tip.as_str()])?.ok {
                let _ = self.git(["rebase", "--abort"]);
                return Err(WorkerError::PushFailed(format!("{branch} moved and the agent's change does not rebase cleanly onto {tip}")));
            }
        }
        Err(WorkerError::PushFailed(last_error))
    }
}

/// The commit `name` (`HEAD` or a full ref name) points at in `repo`, if any.
fn commit_at(repo: &gix::Repository, name: &str) -> Result<Option<gix::ObjectId>, WorkerError> {
    let id = if name == "HEAD" {
        repo.head_id().ok().map(gix::Id::detach)
    } else {
        repo.try_find_reference(name)
            .map_err(|e| WorkerError::GitFailed(format!("reading {name}: {e}")))?
            .and_then(|r| r.into_fully_peeled_id().ok())
            .map(gix::Id::detach)
    };
    let commit = id.and_then(|id| repo.find_object(id).ok()).and_then(|o| o.peel_to_kind(gix::object::Kind::Commit).ok());
    Ok(commit.map(|c| c.id))
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(crate::redact::url_credentials("https://bot:s3cret@gitea.example.com/a/b.git"), "https://***@gitea.example.com/a/b.git");
        assert_eq!(crate::redact::url_credentials("https://gitea.example.com/a@b.git"), "https://gitea.example.com/a@b.git");
        assert_eq!(crate::redact::url_credentials("/srv/git/app.git"), "/srv/git/app.git");
    }
}
