//! Pull-request comments (Gitea keeps them as issue comments) and the list
//! of open pull requests: for the plan preview, one comment per PR, edited
//! in place on every new push.

use reqwest::Method;
use serde_json::json;

use super::config::RepoRef;
use super::error::GiteaError;
use super::wire::{Comment, PullRequest, PullReview, PullReviewComment};
use super::{GiteaClient, MAX_PAGES, PAGE_LIMIT};

impl GiteaClient {
    /// Every open PR of `repo` (`GET /repos/{owner}/{repo}/pulls?state=open`, all pages).
    pub async fn open_pulls(&self, repo: &RepoRef) -> Result<Vec<PullRequest>, GiteaError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let prs: Vec<PullRequest> = self
                .get(
                    &["repos", &repo.owner, &repo.repo, "pulls"],
                    &[("state", "open".to_owned()), ("page", page.to_string()), ("limit", PAGE_LIMIT.to_string())],
                )
                .await?;
            let n = prs.len();
            all.extend(prs.into_iter().filter(|p| p.state == "open"));
            if n < PAGE_LIMIT {
                break;
            }
        }
        Ok(all)
    }

    /// The comments of PR (issue) `index` (`GET /repos/{owner}/{repo}/issues/{index}/comments`).
    pub async fn comments(&self, repo: &RepoRef, index: u64) -> Result<Vec<Comment>, GiteaError> {
        let index = index.to_string();
        self.get(&["repos", &repo.owner, &repo.repo, "issues", &index, "comments"], &[]).await
    }

    /// Adds a comment to PR (issue) `index` (`POST …/issues/{index}/comments`).
    pub async fn create_comment(&self, repo: &RepoRef, index: u64, body: &str) -> Result<Comment, GiteaError> {
        let index = index.to_string();
        let payload = json!({ "body": body });
        self.send(Method::POST, &["repos", &repo.owner, &repo.repo, "issues", &index, "comments"], &[], Some(&payload)).await?.ok()?.json()
    }

    /// Replaces the text of comment `id` (`PATCH /repos/{owner}/{repo}/issues/comments/{id}`).
    pub async fn edit_comment(&self, repo: &RepoRef, id: u64, body: &str) -> Result<Comment, GiteaError> {
        let id = id.to_string();
        let payload = json!({ "body": body });
        self.send(Method::PATCH, &["repos", &repo.owner, &repo.repo, "issues", "comments", &id], &[], Some(&payload)).await?.ok()?.json()
    }
}

impl GiteaClient {
    /// The reviews of PR `index`, oldest first (`GET /repos/{owner}/{repo}/pulls/{index}/reviews`, all pages).
    pub async fn pull_reviews(&self, repo: &RepoRef, index: u64) -> Result<Vec<PullReview>, GiteaError> {
        let index = index.to_string();
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let reviews: Vec<PullReview> = self
                .get(
                    &["repos", &repo.owner, &repo.repo, "pulls", &index, "reviews"],
                    &[("page", page.to_string()), ("limit", PAGE_LIMIT.to_string())],
                )
                .await?;
            let n = reviews.len();
            all.extend(reviews);
            if n < PAGE_LIMIT {
                break;
            }
        }
        Ok(all)
    }

    /// The line comments of review `id` of PR `index` (`GET …/pulls/{index}/reviews/{id}/comments`).
    pub async fn review_comments(&self, repo: &RepoRef, index: u64, id: u64) -> Result<Vec<PullReviewComment>, GiteaError> {
        let (index, id) = (index.to_string(), id.to_string());
        self.get(&["repos", &repo.owner, &repo.repo, "pulls", &index, "reviews", &id, "comments"], &[]).await
    }
}
