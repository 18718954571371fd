//! Pull-request endpoints: reading a PR and who merged it, and opening or
//! updating approval and target PRs without duplicates.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::config::RepoRef;
use super::error::GiteaError;
use super::templates::{ApprovalPrView, TargetPrView};
use super::wire::PullRequest;
use super::{GiteaClient, shorten};
use crate::gates::approval_branch;

/// Longest PR title Hadron sends.
const MAX_TITLE: usize = 255;

/// Who merged a PR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeInfo {
    /// Whether it is merged.
    pub merged: bool,
    /// Login of who merged it.
    pub merged_by: Option<String>,
    /// The merge commit.
    pub merge_commit_sha: Option<String>,
}

/// What [`GiteaClient::ensure_pr`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrAction {
    /// No open PR had that head: one was opened.
    Opened,
    /// An open PR had that head: its title or body was changed.
    Updated,
    /// An open PR had that head with the same title and body.
    Unchanged,
}

/// An open PR after [`GiteaClient::ensure_pr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsuredPr {
    /// PR number.
    pub number: u64,
    /// Web address.
    pub html_url: String,
    /// Tip of its head branch as Gitea saw it.
    pub head_sha: String,
    /// What was done.
    pub action: PrAction,
}

impl GiteaClient {
    /// A PR (`GET /repos/{owner}/{repo}/pulls/{index}`).
    pub async fn pull_request(&self, repo: &RepoRef, index: u64) -> Result<PullRequest, GiteaError> {
        let index = index.to_string();
        self.get(&["repos", &repo.owner, &repo.repo, "pulls", &index], &[]).await
    }

    /// Whether a PR is merged and by whom (`merged`, `merged_by.login`).
    pub async fn merge_info(&self, repo: &RepoRef, index: u64) -> Result<MergeInfo, GiteaError> {
        let pr = self.pull_request(repo, index).await?;
        Ok(MergeInfo { merged: pr.merged, merged_by: pr.merged_by.map(|u| u.login), merge_commit_sha: pr.merge_commit_sha })
    }

    /// The open PR whose head branch is `head`, if any
    /// (`GET /repos/{owner}/{repo}/pulls?state=open`, all pages).
    pub async fn find_open_pr(&self, repo: &RepoRef, head: &str) -> Result<Option<PullRequest>, GiteaError> {
        Ok(self.open_pulls(repo).await?.into_iter().find(|p| p.head.ref_name == head))
    }

    /// Opens a PR from `head` to `base`, or updates the title and body of
    /// the open PR that already has that head (never a duplicate).
    pub async fn ensure_pr(&self, repo: &RepoRef, head: &str, base: &str, title: &str, body: &str) -> Result<EnsuredPr, GiteaError> {
        let title = shorten(title, MAX_TITLE);
        if let Some(pr) = self.find_open_pr(repo, head).await? {
            return self.update_pr(repo, pr, &title, body).await;
        }
        let create = json!({ "title": title, "head": head, "base": base, "body": body });
        let answer = self.send(Method::POST, &["repos", &repo.owner, &repo.repo, "pulls"], &[], Some(&create)).await?;
        if answer.status == StatusCode::CONFLICT {
            // Opened by someone else (or by an earlier attempt whose answer
            // was lost) since the lookup: update that one.
            if let Some(pr) = self.find_open_pr(repo, head).await? {
                return self.update_pr(repo, pr, &title, body).await;
            }
        }
        let pr: PullRequest = answer.ok()?.json()?;
        tracing::info!(repo = %repo, number = pr.number, head, "opened pull request");
        Ok(EnsuredPr { number: pr.number, html_url: pr.html_url, head_sha: pr.head.sha, action: PrAction::Opened })
    }

    async fn update_pr(&self, repo: &RepoRef, pr: PullRequest, title: &str, body: &str) -> Result<EnsuredPr, GiteaError> {
        if pr.title == title && pr.body.as_deref().unwrap_or("") == body {
            return Ok(EnsuredPr { number: pr.number, html_url: pr.html_url, head_sha: pr.head.sha, action: PrAction::Unchanged });
        }
        let index = pr.number.to_string();
        let edit = json!({ "title": title, "body": body });
        let updated: PullRequest =
            self.send(Method::PATCH, &["repos", &repo.owner, &repo.repo, "pulls", &index], &[], Some(&edit)).await?.ok()?.json()?;
        tracing::info!(repo = %repo, number = updated.number, "updated pull request");
        Ok(EnsuredPr { number: updated.number, html_url: updated.html_url, head_sha: updated.head.sha, action: PrAction::Updated })
    }

    /// Opens or updates the approval PR of a gate in the control repo, from
    /// `hadron/approve/<request>/<gate>` to `main`.
    pub async fn ensure_approval_pr(&self, view: &ApprovalPrView) -> Result<EnsuredPr, GiteaError> {
        let (title, body) = self.render_approval_pr(view)?;
        let head = approval_branch(&view.request, &view.gate);
        self.ensure_pr(&self.control, &head, "main", &title, &body).await
    }

    /// Opens or updates the PR from `hadron/<request>` to `base` in a target
    /// repo (to its default branch when `base` is `None`).
    pub async fn ensure_target_pr(&self, repo: &RepoRef, base: Option<&str>, view: &TargetPrView) -> Result<EnsuredPr, GiteaError> {
        let base = match base {
            Some(b) => b.to_owned(),
            None => self.repository(repo).await?.default_branch,
        };
        let (title, body) = self.render_target_pr(view, &base)?;
        let head = format!("hadron/{}", view.request);
        self.ensure_pr(repo, &head, &base, &title, &body).await
    }
}
