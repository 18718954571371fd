//! Plan previews on pull requests into the control branch (with Gitea).
//!
//! For every open PR whose head changes `requests/`, `agents/` or
//! `hadron.yaml`, Hadron fetches the head (`refs/pull/<n>/head`), applies
//! what it changes since its merge base over the control branch as last
//! loaded, previews the plan ([`crate::plan::preview`], the pure half) and writes it as one
//! comment on the PR, edited in place on every new push (never a second
//! one), plus a `hadron/plan` commit status on the head: `failure` when a
//! file the PR touches has an error. Asked for by `pull_request` webhooks
//! (opened, reopened, synchronized), a push to the control branch, and the
//! poll as a safety net; a PR whose head and base did not move since its
//! comment is skipped. The PR's files are only parsed, never run.

use std::collections::BTreeSet;

use crate::forge::gitea::PullRequest;
use crate::forge::{CommitState, GiteaClient, GiteaError, RepoRef};
use crate::model::{Catalog, Severity};
use crate::plan::preview::{self, Change};
use crate::source::{Blob, ChangeSet, Revision};
use crate::store::PlanComment;
use crate::time::Millis;

use super::{Context, ReconcileError};

/// First line of Hadron's plan comment (hidden when rendered): how it finds its own comment.
pub const PLAN_MARKER: &str = "<!-- hadron:plan -->";

/// Whether a changed path is one a plan depends on.
fn matters(path: &str) -> bool {
    path == "hadron.yaml" || path.starts_with("requests/") || path.starts_with("agents/")
}

/// A fence longer than any run of backticks in `text`, so the PR's text cannot end it.
fn fence(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

/// The comment's Markdown.
fn comment_body(plan_text: &str, head: &str, base_branch: &str, base: &str, failed: bool) -> String {
    let fence = fence(plan_text);
    let short = |s: &str| s.chars().take(12).collect::<String>();
    let verdict = if failed {
        "**The plan has errors**: fix them before merging (the `hadron/plan` status fails)."
    } else {
        "Merging this pull request would do the following."
    };
    format!(
        "{PLAN_MARKER}\n### Hadron plan\n\n{verdict}\n\n{fence}text\n{}\n{fence}\n\nPreviewed for head `{}` against `{base_branch}` at `{}`; this comment is updated on every push. \
         The same preview locally: `hadron plan --against origin/{base_branch}`.\n",
        plan_text.trim_end(),
        short(head),
        short(base)
    )
}

/// The summary line of a plan, for the commit status.
fn summary(p: &preview::Preview, errors: usize) -> String {
    let mut parts = Vec::new();
    for (change, word) in
        [(Change::Created, "create"), (Change::Restarted, "restart"), (Change::Cancelled, "cancel"), (Change::Resumed, "resume")]
    {
        let n = p.count(change);
        if n > 0 {
            parts.push(format!("{n} to {word}"));
        }
    }
    if parts.is_empty() {
        parts.push("no request changes".to_owned());
    }
    if errors > 0 {
        parts.push(format!("{errors} error{}", if errors == 1 { "" } else { "s" }));
    }
    parts.join(", ")
}

fn apply(catalog: &mut Catalog, changes: &ChangeSet) {
    for (path, blob) in &changes.upserts {
        match blob {
            Blob::Data(bytes) => catalog.upsert(path, bytes),
            Blob::TooLarge { size } => catalog.upsert_too_large(path, *size),
        }
    }
    for path in &changes.deletes {
        catalog.remove(path);
    }
}

impl Context {
    /// Asks for the previews to be written again on the next pass.
    pub(super) fn previews_due(&mut self) {
        self.previews_due = true;
    }

    /// Writes the plan preview of every open PR into the control branch
    /// that needs one. A failure is logged and retried on the next pass;
    /// it never fails the pass.
    pub(super) async fn step_previews(&mut self, t: Millis) {
        if self.forge.is_none() || !std::mem::take(&mut self.previews_due) {
            return;
        }
        if let Err(e) = self.previews(t).await {
            tracing::warn!(reason = e.reason(), error = %e, "plan previews failed; the next pass tries again");
            self.previews_due = true;
        }
    }

    async fn previews(&mut self, t: Millis) -> Result<(), ReconcileError> {
        let Some(link) = self.forge.as_ref() else { return Ok(()) };
        let (client, control) = (link.client().clone(), link.control().clone());
        let Some(base) = self.source.lock().map_err(|_| ReconcileError::Join("source lock poisoned".into()))?.last_loaded() else {
            return Ok(());
        };
        let prs: Vec<PullRequest> = client
            .open_pulls(&control)
            .await?
            .into_iter()
            // Hadron's own approval PRs change only approvals/.
            .filter(|p| p.base.ref_name == self.cfg.branch && crate::gates::parse_approval_branch(&p.head.ref_name).is_none())
            .collect();
        // The records of PRs closed or merged since are forgotten.
        self.store.forget_plan_comments(&prs.iter().map(|p| p.number).collect()).await?;
        let mut me: Option<String> = None;
        let mut failed = false;
        self.preview_errors.retain(|n, _| prs.iter().any(|p| p.number == *n));
        for pr in &prs {
            let Err(e) = self.preview_one(&client, &control, pr, base, &mut me, t).await else { continue };
            // One pull request that cannot be previewed holds up no other.
            tracing::warn!(pr = pr.number, reason = e.reason(), error = %e, "could not preview this pull request; the next pass tries again");
            failed = true;
            // Its author waits on the PR: say it there, once per head, when
            // its head cannot be read (Gitea's own errors are retried quietly).
            if matches!(e, ReconcileError::Source(_)) && self.preview_errors.get(&pr.number) != Some(&pr.head.sha) {
                let why = format!("Hadron could not read this pull request's head ({}); its log says why", e.reason());
                if client.set_status(&control, &pr.head.sha, "plan", CommitState::Error, &why, Some(&pr.html_url)).await.is_ok() {
                    self.preview_errors.insert(pr.number, pr.head.sha.clone());
                }
            }
        }
        self.previews_due |= failed;
        Ok(())
    }

    /// The preview of one pull request, written unless its head and base did not move.
    async fn preview_one(
        &mut self,
        client: &GiteaClient,
        control: &RepoRef,
        pr: &PullRequest,
        base: Revision,
        me: &mut Option<String>,
        t: Millis,
    ) -> Result<(), ReconcileError> {
        let known = self.store.plan_comment(pr.number).await?;
        let base_hex = base.id().to_string();
        if known.as_ref().is_some_and(|k| k.head == pr.head.sha && k.base == base_hex) {
            return Ok(());
        }
        let source = self.source.clone();
        let number = pr.number;
        let changes = tokio::task::spawn_blocking(move || {
            let mut source = source.lock().map_err(|_| ReconcileError::Join("source lock poisoned".into()))?;
            let head = source.fetch_pull(number)?;
            Ok::<_, ReconcileError>(source.pull_changes(base, head)?)
        })
        .await
        .map_err(|e| ReconcileError::Join(e.to_string()))??;
        let touched: BTreeSet<&str> = changes
            .upserts
            .iter()
            .map(|(p, _)| p.as_str())
            .chain(changes.deletes.iter().map(String::as_str))
            .filter(|p| matters(p))
            .collect();
        if touched.is_empty() && known.is_none() {
            return Ok(());
        }
        let mut after = self.catalog.clone();
        apply(&mut after, &changes);
        let after = after.snapshot();
        let before = self.catalog.loaded();
        let foretold = preview::preview(&before.desired, &after.desired, &before.desired.statuses);
        // Errors of the files this PR touches (others were there before it).
        let diagnostics: Vec<_> = after.diagnostics.iter().filter(|d| touched.contains(d.path.as_str())).cloned().collect();
        let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
        let against = format!("against {} at {}", self.cfg.branch, &base_hex[..12.min(base_hex.len())]);
        let text = preview::render_text(&foretold, &diagnostics, &against);
        let body = comment_body(&text, &pr.head.sha, &self.cfg.branch, &base_hex, errors > 0);

        // One comment per PR: the one recorded, else Hadron's own found
        // by its marker, else a new one.
        let mut comment = None;
        if let Some(k) = &known {
            match client.edit_comment(control, k.comment, &body).await {
                Ok(c) => comment = Some(c.id),
                Err(GiteaError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if comment.is_none() {
            if me.is_none() {
                *me = Some(client.current_user().await?.login);
            }
            let mine = client
                .comments(control, pr.number)
                .await?
                .into_iter()
                .find(|c| c.body.starts_with(PLAN_MARKER) && c.user.as_ref().map(|u| &u.login) == me.as_ref());
            comment = Some(match mine {
                Some(c) => client.edit_comment(control, c.id, &body).await?.id,
                None => client.create_comment(control, pr.number, &body).await?.id,
            });
        }
        let comment = comment.expect("because a comment was edited or created above");
        let state = if errors > 0 { CommitState::Failure } else { CommitState::Success };
        client.set_status(control, &pr.head.sha, "plan", state, &summary(&foretold, errors), Some(&pr.html_url)).await?;
        self.store.set_plan_comment(pr.number, &PlanComment { comment, head: pr.head.sha.clone(), base: base_hex }, t).await?;
        tracing::info!(pr = pr.number, head = %pr.head.sha, errors, "plan preview written on the pull request");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_outlasts_any_backticks_in_the_plan() {
        assert_eq!(fence("no ticks"), "```");
        assert_eq!(fence("a ```` b"), "`````");
        let body = comment_body("x ```` y", "0123456789abcdef", "main", "fedcba9876543210", true);
        assert!(body.starts_with(PLAN_MARKER) && body.contains("`````text\nx ```` y\n`````"), "{body}");
        assert!(body.contains("**The plan has errors**") && body.contains("`0123456789ab`"));
    }
}
