//! Pull requests into the control branch, for the plan preview: fetching a
//! PR's head as Gitea keeps it (`refs/pull/<n>/head`) into the mirror, and
//! what it changes since it left the control branch.

use gix::ObjectId;

use super::{ChangeSet, Revision, Source, SourceError};

impl Source {
    /// Fetches the head of pull request `number` into the mirror
    /// (`refs/hadron/pulls/<number>`) and returns its commit.
    pub fn fetch_pull(&mut self, number: u64) -> Result<ObjectId, SourceError> {
        let remote_ref = format!("refs/pull/{number}/head");
        self.fetch_ref(&remote_ref, &format!("refs/hadron/pulls/{number}"), "hadron fetch pull", || SourceError::BranchNotFound {
            url: crate::redact::url_credentials(&self.cfg.url),
            branch: remote_ref.clone(),
        })
    }

    /// What the commit `head` changes since its merge base with `base`:
    /// the control-repo files it adds or edits (read) and those it deletes.
    /// Applied over `base`'s files, they are the tree a merge would give
    /// (changes made on `base` meanwhile stay).
    pub fn pull_changes(&mut self, base: Revision, head: ObjectId) -> Result<ChangeSet, SourceError> {
        let (from, to) = {
            let repo = self.mirror()?;
            let merge_base = repo
                .merge_base(base.id(), head)
                .map_err(|e| SourceError::Corrupt { message: format!("no merge base of {} and {head}: {e}", base.id()) })?;
            let tree = |id: ObjectId| -> Result<ObjectId, SourceError> {
                let commit = repo.find_commit(id).map_err(|e| SourceError::from_local(&e))?;
                commit.tree_id().map(|t| t.detach()).map_err(|e| SourceError::from_local(&e))
            };
            let merge_base =
                merge_base.ok_or_else(|| SourceError::Corrupt { message: format!("{head} shares no history with {}", base.id()) })?;
            (tree(merge_base.detach())?, tree(head)?)
        };
        self.diff(Revision(head), from, to, &std::collections::BTreeMap::new())
    }
}
