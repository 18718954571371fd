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

/// Most bytes of one agent summary shown in a PR body, marker included.
pub const AGENT_BLOCK_MAX_BYTES: usize = crate::workers::usage::SUMMARY_MAX_BYTES;
/// Most bytes of one commit line (an agent's summary line) shown in a PR body.
pub const AGENT_SPAN_MAX_BYTES: usize = 200;

/// The PR body templates, compiled: Markdown, with agent text fenced.
///
/// Trust: the templates are Hadron's own (`templates/*-pr.md.hbs`); the
/// values are Markdown that Gitea renders, so nothing is HTML-escaped (Gitea
/// sanitises the HTML it renders). Text an agent reported is untrusted and
/// must go through `agentBlock` (a fenced code block) or `agentSpan` (a code
/// span), which nothing in it can end; `cell` keeps a table cell one cell.
pub(super) fn markdown_templates_fencing_agent_text() -> Result<Handlebars<'static>, GiteaError> {
    let mut templates = Handlebars::new();
    templates.register_escape_fn(handlebars::no_escape);
    handlebars::handlebars_helper!(cell: |s: str| s.replace('|', "\\|").replace(['\r', '\n'], " "));
    handlebars::handlebars_helper!(agent_block_helper: |s: str| agent_block(s));
    handlebars::handlebars_helper!(agent_span_helper: |s: str| agent_span(s));
    templates.register_helper("cell", Box::new(cell));
    templates.register_helper("agentBlock", Box::new(agent_block_helper));
    templates.register_helper("agentSpan", Box::new(agent_span_helper));
    for (name, text) in [("approval-pr", APPROVAL_PR_TEMPLATE), ("target-pr", TARGET_PR_TEMPLATE)] {
        templates.register_template_string(name, text).map_err(|e| GiteaError::Template { template: name, message: e.to_string() })?;
    }
    Ok(templates)
}

/// `text` cut to at most `max` bytes on a character boundary, with a marker
/// saying how much there was; unchanged when it fits.
fn capped(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let marker = format!("… [cut: {} bytes in all]", text.len());
    let kept = text.floor_char_boundary(max.saturating_sub(marker.len()));
    format!("{}{marker}", &text[..kept])
}

/// The longest run of backticks in `text`.
fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// Agent text as a Markdown fenced code block that nothing in it can end or
/// escape: capped to [`AGENT_BLOCK_MAX_BYTES`], line ends made `\n`, other
/// control characters shown as `\u{…}`, and a fence of backticks longer than
/// any run of backticks in the text (at least 3). Inside, `<!--`, HTML,
/// links, images and `@mentions` are shown as they are, never rendered.
pub fn agent_block(text: &str) -> String {
    let shown = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .split('\n')
        // Tabs are kept: they are text in a code block.
        .map(|line| line.split('\t').map(crate::redact::inert_for_terminal).collect::<Vec<_>>().join("\t"))
        .collect::<Vec<_>>()
        .join("\n");
    // Capped once escaped, so escapes cannot make it grow past the cap.
    let text = capped(&shown, AGENT_BLOCK_MAX_BYTES);
    let fence = "`".repeat((longest_backtick_run(&text) + 1).max(3));
    format!("{fence}text\n{}\n{fence}", text.trim_end_matches('\n'))
}

/// One line of agent text as a Markdown code span: the first line only,
/// capped to [`AGENT_SPAN_MAX_BYTES`], control characters shown as
/// `\u{…}`, delimited by more backticks than any run in it and padded with a
/// space on each side (which Markdown strips), so a backtick at either end
/// cannot close it early.
pub fn agent_span(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    let line = capped(&crate::redact::inert_for_terminal(line), AGENT_SPAN_MAX_BYTES);
    let ticks = "`".repeat(longest_backtick_run(&line) + 1);
    format!("{ticks} {line} {ticks}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_fence_is_longer_than_any_backtick_run_in_the_text() {
        assert_eq!(agent_block("plain"), "```text\nplain\n```");
        let hostile = "ok\n`````\n<!-- hide -->\n````";
        let block = agent_block(hostile);
        assert!(block.starts_with("``````text\n") && block.ends_with("\n``````"), "{block}");
        assert_eq!(block.matches("``````").count(), 2, "only the fences are six backticks: {block}");
        assert!(agent_block("a\r\nb\rc\u{1b}[2J\td").contains("a\nb\nc\\u{1b}[2J\td"), "{}", agent_block("a\r\nb\rc\u{1b}[2J\td"));
    }

    #[test]
    fn a_block_is_capped_with_a_marker() {
        let long = "é".repeat(AGENT_BLOCK_MAX_BYTES);
        let block = agent_block(&long);
        let inner = block.trim_start_matches("```text\n").trim_end_matches("\n```");
        assert!(inner.len() <= AGENT_BLOCK_MAX_BYTES, "{} bytes", inner.len());
        assert!(inner.ends_with(&format!("[cut: {} bytes in all]", long.len())), "{}", &inner[inner.len() - 60..]);
        // Escapes count: 4,096 ESC characters shown as `\u{1b}` stay within the cap.
        let escapes = agent_block(&"\u{1b}".repeat(AGENT_BLOCK_MAX_BYTES));
        let inner = escapes.trim_start_matches("```text\n").trim_end_matches("\n```");
        assert!(inner.len() <= AGENT_BLOCK_MAX_BYTES && inner.contains("[cut: "), "{} bytes", inner.len());
        assert!(!escapes.chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn a_span_takes_one_capped_line_and_cannot_be_closed_early() {
        assert_eq!(agent_span("implement: added /login\nsecond line"), "` implement: added /login `");
        assert_eq!(agent_span("use `x` and ``y``"), "``` use `x` and ``y`` ```");
        assert_eq!(agent_span("`edge`"), "`` `edge` ``");
        let span = agent_span(&"x".repeat(1000));
        assert!(span.len() <= AGENT_SPAN_MAX_BYTES + 4 && span.contains("[cut: 1000 bytes in all]"), "{span}");
        assert!(!agent_span("a\u{9b}b\rc").chars().any(char::is_control));
        assert!(agent_span(&"\u{7}".repeat(100)).len() <= AGENT_SPAN_MAX_BYTES + 4, "escapes count toward the cap");
    }
}
