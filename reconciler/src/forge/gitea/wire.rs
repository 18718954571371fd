//! The wire types: Gitea's JSON answers, decoded with only the fields Hadron reads.

use serde::Deserialize;

/// A Gitea user (only the login is used).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// User id.
    #[serde(default)]
    pub id: i64,
    /// Login name.
    pub login: String,
}

/// One side (head or base) of a PR.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrBranch {
    /// Branch name.
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// Commit id at the branch tip.
    #[serde(default)]
    pub sha: String,
}

/// A pull request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    /// The PR number (`index` in paths).
    pub number: u64,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Body (Markdown); Gitea may send `null`.
    #[serde(default)]
    pub body: Option<String>,
    /// `open` or `closed`.
    pub state: String,
    /// Web address of the PR.
    pub html_url: String,
    /// Whether it was merged.
    #[serde(default)]
    pub merged: bool,
    /// Who merged it.
    #[serde(default)]
    pub merged_by: Option<User>,
    /// The merge commit.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    /// Source branch.
    pub head: PrBranch,
    /// Target branch.
    pub base: PrBranch,
}

/// One commit status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommitStatus {
    /// Status id (later statuses have larger ids).
    #[serde(default)]
    pub id: i64,
    /// `pending`, `success`, `error`, `failure` (Gitea calls the field `status`).
    #[serde(default)]
    pub status: Option<String>,
    /// Context, e.g. `hadron/<request>`.
    #[serde(default)]
    pub context: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Link.
    #[serde(default)]
    pub target_url: Option<String>,
}

/// The combined status of a ref (the latest status of each context).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CombinedStatus {
    /// Combined state (worst of the statuses); empty with no statuses.
    #[serde(default)]
    pub state: Option<String>,
    /// The commit.
    #[serde(default)]
    pub sha: String,
    /// Number of statuses (contexts) in all pages.
    #[serde(default)]
    pub total_count: u64,
    /// This page of statuses.
    #[serde(default)]
    pub statuses: Option<Vec<CommitStatus>>,
}

/// A team of an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Team {
    /// Team id (used in `/teams/{id}/...`).
    pub id: u64,
    /// Team name.
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct TeamSearchResults {
    #[serde(default)]
    pub(super) data: Vec<Team>,
}

/// A repository.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Repository {
    /// `owner/repo`.
    pub full_name: String,
    /// The default branch (base of target PRs when none is given).
    #[serde(default)]
    pub default_branch: String,
    /// Web address.
    #[serde(default)]
    pub html_url: String,
}

/// `GET /repos/{owner}/{repo}/git/commits/{sha}`: only the matched author.
#[derive(Debug, Deserialize)]
pub(super) struct SingleCommit {
    #[serde(default)]
    pub(super) author: Option<User>,
}

#[derive(Debug, Deserialize)]
pub(super) struct GiteaMessage {
    #[serde(default)]
    pub(super) message: Option<String>,
}

/// A comment on an issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Comment {
    /// Comment id (`id` in `issues/comments/{id}`).
    pub id: u64,
    /// Its Markdown text.
    #[serde(default)]
    pub body: String,
    /// Who wrote it.
    #[serde(default)]
    pub user: Option<User>,
}

/// A review of a PR (`PullReview` in Gitea's swagger).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullReview {
    /// Review id (`id` in `pulls/{index}/reviews/{id}`).
    pub id: u64,
    /// Who reviewed (absent for a team review).
    #[serde(default)]
    pub user: Option<User>,
    /// `APPROVED`, `PENDING`, `COMMENT`, `REQUEST_CHANGES`, `REQUEST_REVIEW`.
    #[serde(default)]
    pub state: String,
    /// The review's own text (Markdown).
    #[serde(default)]
    pub body: String,
    /// The PR head the review was given on.
    #[serde(default)]
    pub commit_id: String,
    /// Gitea's word that the PR moved on since.
    #[serde(default)]
    pub stale: bool,
    /// Dismissed by someone with write access.
    #[serde(default)]
    pub dismissed: bool,
}

/// A comment of a review on one line of a file (`PullReviewComment`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullReviewComment {
    /// Comment id.
    pub id: u64,
    /// The file it is about.
    #[serde(default)]
    pub path: String,
    /// The line in the new file (0 when on a removed line).
    #[serde(default)]
    pub position: u64,
    /// The line in the old file.
    #[serde(default)]
    pub original_position: u64,
    /// Its text (Markdown).
    #[serde(default)]
    pub body: String,
}
