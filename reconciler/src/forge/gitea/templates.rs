//! PR bodies: the templates shipped with Hadron, the views rendered into
//! them and the rendering of approval and target PRs.

use handlebars::Handlebars;
use serde::Serialize;

use super::GiteaClient;
use super::error::GiteaError;
use crate::gates::{approval_branch, approval_path};

/// The approval PR body template shipped with Hadron (`templates/approval-pr.md.hbs`).
pub const APPROVAL_PR_TEMPLATE: &str = include_str!("../../../../templates/approval-pr.md.hbs");
/// The target PR body template shipped with Hadron (`templates/target-pr.md.hbs`).
pub const TARGET_PR_TEMPLATE: &str = include_str!("../../../../templates/target-pr.md.hbs");

/// The PR body templates, compiled (no HTML escaping; a `cell` helper for table cells).
pub(super) fn compile() -> Result<Handlebars<'static>, GiteaError> {
    let mut templates = Handlebars::new();
    templates.register_escape_fn(handlebars::no_escape);
    handlebars::handlebars_helper!(cell: |s: str| s.replace('|', "\\|").replace(['\r', '\n'], " "));
    templates.register_helper("cell", Box::new(cell));
    for (name, text) in [("approval-pr", APPROVAL_PR_TEMPLATE), ("target-pr", TARGET_PR_TEMPLATE)] {
        templates.register_template_string(name, text).map_err(|e| GiteaError::Template { template: name, message: e.to_string() })?;
    }
    Ok(templates)
}

/// A stage line in a PR body.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageView {
    /// Stage name.
    pub name: String,
    /// Target repo (`owner/repo` or a path).
    pub repo: String,
    /// Phase, e.g. `Succeeded`.
    pub state: String,
    /// The agent's summary.
    pub summary: Option<String>,
    /// Cost, formatted (e.g. `$0.42`).
    pub cost: Option<String>,
    /// Web address of the stage's target PR, if any.
    pub pr_url: Option<String>,
}

/// A pushed commit in a PR body.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitView {
    /// Repo it was pushed to.
    pub repo: String,
    /// Full commit id.
    pub sha: String,
    /// The first 10 characters of `sha`.
    pub short: String,
    /// Link to the commit.
    pub url: String,
    /// First line of the message.
    pub subject: String,
}

impl CommitView {
    /// A commit line; `short` is derived from `sha`.
    pub fn new(repo: impl Into<String>, sha: impl Into<String>, url: impl Into<String>, subject: &str) -> Self {
        let sha = sha.into();
        let short = sha.chars().take(10).collect();
        let subject = subject.lines().next().unwrap_or("").to_owned();
        CommitView { repo: repo.into(), sha, short, url: url.into(), subject }
    }
}

/// What goes into an approval PR.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPrView {
    /// Request name.
    pub request: String,
    /// Gate name.
    pub gate: String,
    /// The request's title.
    pub request_title: String,
    /// Spec generation the approval is for.
    pub generation: String,
    /// Who asked for the change.
    pub requester: Option<String>,
    /// Stage results so far.
    pub stages: Vec<StageView>,
    /// Commits pushed so far.
    pub commits: Vec<CommitView>,
    /// Cost spent so far, formatted.
    pub cost: Option<String>,
    /// Budget, formatted.
    pub budget: Option<String>,
}

/// What goes into a PR in a target repo.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetPrView {
    /// Request name (the head branch is `hadron/<request>`).
    pub request: String,
    /// The request's title.
    pub request_title: String,
    /// The request's description.
    pub description: Option<String>,
    /// Stage results on this repo.
    pub stages: Vec<StageView>,
    /// Commits on the branch.
    pub commits: Vec<CommitView>,
    /// Cost, formatted.
    pub cost: Option<String>,
    /// Link to the request's status in the control repo.
    pub status_url: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalPrData<'a> {
    #[serde(flatten)]
    view: &'a ApprovalPrView,
    approval_path: String,
    branch: String,
    base: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TargetPrData<'a> {
    #[serde(flatten)]
    view: &'a TargetPrView,
    branch: String,
    base: &'a str,
}

impl GiteaClient {
    /// Title and body of an approval PR.
    pub fn render_approval_pr(&self, view: &ApprovalPrView) -> Result<(String, String), GiteaError> {
        let data = ApprovalPrData {
            view,
            approval_path: approval_path(&view.request, &view.gate),
            branch: approval_branch(&view.request, &view.gate),
            base: "main",
        };
        let body = self
            .templates
            .render("approval-pr", &data)
            .map_err(|e| GiteaError::Template { template: "approval-pr", message: e.to_string() })?;
        let title = format!("Approve {} of {}: {}", view.gate, view.request, view.request_title.trim());
        Ok((title, body))
    }

    /// Title and body of a target-repo PR.
    pub fn render_target_pr(&self, view: &TargetPrView, base: &str) -> Result<(String, String), GiteaError> {
        let data = TargetPrData { view, branch: format!("hadron/{}", view.request), base };
        let body = self
            .templates
            .render("target-pr", &data)
            .map_err(|e| GiteaError::Template { template: "target-pr", message: e.to_string() })?;
        let title = format!("{} (hadron/{})", view.request_title.trim(), view.request);
        Ok((title, body))
    }
}
