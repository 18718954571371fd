//! Commit-status endpoints: setting Hadron's status on a commit and reading
//! the combined state of a ref as a CI gate sees it.

use reqwest::Method;
use serde_json::json;

use super::config::RepoRef;
use super::error::GiteaError;
use super::wire::{CombinedStatus, CommitStatus};
use super::{GiteaClient, MAX_PAGES, PAGE_LIMIT, shorten};
use crate::forge::{CombinedState, CommitState};

/// Gitea stores at most this many characters of a status description.
const MAX_DESCRIPTION: usize = 255;

impl GiteaClient {
    /// Sets the status `hadron/<request>` on a commit
    /// (`POST /repos/{owner}/{repo}/statuses/{sha}`).
    pub async fn set_status(
        &self,
        repo: &RepoRef,
        sha: &str,
        request: &str,
        state: CommitState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<CommitStatus, GiteaError> {
        let mut body = json!({
            "state": state.as_str(),
            "context": format!("hadron/{request}"),
            "description": shorten(description, MAX_DESCRIPTION),
        });
        if let Some(url) = target_url {
            body["target_url"] = json!(url);
        }
        self.send(Method::POST, &["repos", &repo.owner, &repo.repo, "statuses", sha], &[], Some(&body)).await?.ok()?.json()
    }

    /// The combined status of a ref
    /// (`GET /repos/{owner}/{repo}/commits/{ref}/status`).
    ///
    /// With `contexts` (non-empty), only those contexts count and each must
    /// have a status: a missing one is [`CombinedState::Pending`]. Without,
    /// Gitea's combined state counts, and no statuses at all is `Pending`.
    /// `failure`, `error` and any state Hadron does not know are `Failure`.
    pub async fn combined_status(&self, repo: &RepoRef, git_ref: &str, contexts: Option<&[String]>) -> Result<CombinedState, GiteaError> {
        let segs = ["repos", repo.owner.as_str(), repo.repo.as_str(), "commits", git_ref, "status"];
        let mut statuses = Vec::new();
        for page in 1..=MAX_PAGES {
            let combined: CombinedStatus = self.get(&segs, &[("page", page.to_string()), ("limit", PAGE_LIMIT.to_string())]).await?;
            let wanted = contexts.filter(|c| !c.is_empty());
            let Some(wanted) = wanted else {
                if combined.total_count == 0 {
                    return Ok(CombinedState::Pending);
                }
                return Ok(state_of(combined.state.as_deref().unwrap_or("")));
            };
            let got = combined.statuses.unwrap_or_default();
            let n = got.len();
            statuses.extend(got);
            if n == 0 || statuses.len() as u64 >= combined.total_count {
                return Ok(combine_contexts(&statuses, wanted));
            }
        }
        match contexts {
            Some(wanted) => Ok(combine_contexts(&statuses, wanted)),
            None => Ok(CombinedState::Pending),
        }
    }
}

fn state_of(s: &str) -> CombinedState {
    match s {
        "success" => CombinedState::Success,
        "pending" => CombinedState::Pending,
        _ => CombinedState::Failure,
    }
}

/// The state over `wanted` contexts: the latest status of each (largest id).
fn combine_contexts(statuses: &[CommitStatus], wanted: &[String]) -> CombinedState {
    let mut pending = false;
    for context in wanted {
        let latest = statuses.iter().filter(|s| &s.context == context).max_by_key(|s| s.id);
        match latest.map(|s| state_of(s.status.as_deref().unwrap_or(""))) {
            None | Some(CombinedState::Pending) => pending = true,
            Some(CombinedState::Failure) => return CombinedState::Failure,
            Some(CombinedState::Success) => {}
        }
    }
    if pending { CombinedState::Pending } else { CombinedState::Success }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: i64, context: &str, status: &str) -> CommitStatus {
        CommitStatus { id, status: Some(status.to_owned()), context: context.to_owned(), description: None, target_url: None }
    }

    #[test]
    fn contexts_use_latest_status_and_missing_is_pending() {
        let s = vec![st(1, "ci", "failure"), st(2, "ci", "success"), st(3, "lint", "pending")];
        assert_eq!(combine_contexts(&s, &["ci".to_owned()]), CombinedState::Success);
        assert_eq!(combine_contexts(&s, &["ci".to_owned(), "lint".to_owned()]), CombinedState::Pending);
        assert_eq!(combine_contexts(&s, &["ci".to_owned(), "other".to_owned()]), CombinedState::Pending);
        let s = vec![st(1, "ci", "success"), st(2, "lint", "error"), st(3, "x", "pending")];
        assert_eq!(combine_contexts(&s, &["x".to_owned(), "lint".to_owned()]), CombinedState::Failure);
        assert_eq!(state_of("warning"), CombinedState::Failure);
    }
}
