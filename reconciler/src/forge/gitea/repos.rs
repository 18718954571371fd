//! Repository, user and commit endpoints: the token's user, a repository,
//! a branch tip and the Gitea user behind a commit's author.

use super::GiteaClient;
use super::config::RepoRef;
use super::error::GiteaError;
use super::wire::{Branch, Repository, SingleCommit, User};

impl GiteaClient {
    /// The token's user (`GET /user`): checks that the token works.
    pub async fn current_user(&self) -> Result<User, GiteaError> {
        self.get(&["user"], &[]).await
    }

    /// A repository (`GET /repos/{owner}/{repo}`).
    pub async fn repository(&self, repo: &RepoRef) -> Result<Repository, GiteaError> {
        self.get(&["repos", &repo.owner, &repo.repo], &[]).await
    }

    /// The tip of a branch (`GET /repos/{owner}/{repo}/branches/{branch}`),
    /// `None` when there is no such branch.
    pub async fn branch_head(&self, repo: &RepoRef, branch: &str) -> Result<Option<String>, GiteaError> {
        match self.get::<Branch>(&["repos", &repo.owner, &repo.repo, "branches", branch], &[]).await {
            Ok(b) => Ok(Some(b.commit.id)),
            Err(GiteaError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The login of the Gitea user Gitea matched to the author of commit
    /// `sha` (by email), or `None` when the author is no Gitea user.
    pub async fn commit_author_login(&self, repo: &RepoRef, sha: &str) -> Result<Option<String>, GiteaError> {
        let commit: SingleCommit = self.get(&["repos", &repo.owner, &repo.repo, "git", "commits", sha], &[]).await?;
        Ok(commit.author.map(|u| u.login).filter(|l| !l.trim().is_empty()))
    }
}
