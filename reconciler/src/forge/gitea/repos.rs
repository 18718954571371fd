//! Repository, user and commit endpoints: the token's user, a repository,
//! a branch tip and the Gitea user behind a commit's author.

use super::GiteaClient;
use super::config::RepoRef;
use super::error::GiteaError;
use super::wire::{Repository, SingleCommit, User};

impl GiteaClient {
    /// The token's user (`GET /user`): checks that the token works.
    pub async fn current_user(&self) -> Result<User, GiteaError> {
        self.get(&["user"], &[]).await
    }

    /// A repository (`GET /repos/{owner}/{repo}`).
    pub async fn repository(&self, repo: &RepoRef) -> Result<Repository, GiteaError> {
        self.get(&["repos", &repo.owner, &repo.repo], &[]).await
    }

    /// The login of the Gitea user Gitea matched to the author of commit
    /// `sha` (by email), or `None` when the author is no Gitea user.
    pub async fn commit_author_login(&self, repo: &RepoRef, sha: &str) -> Result<Option<String>, GiteaError> {
        let commit: SingleCommit = self.get(&["repos", &repo.owner, &repo.repo, "git", "commits", sha], &[]).await?;
        Ok(commit.author.map(|u| u.login).filter(|l| !l.trim().is_empty()))
    }
}
