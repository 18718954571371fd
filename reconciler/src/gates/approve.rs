//! Approving locally, as a person would: merge the approval branch into the
//! base branch with `git merge --no-ff` and push. Only the `git` CLI is used,
//! exactly as a person at a terminal would, so what Hadron sees afterwards is
//! what it sees after any human merge.

use std::path::Path;

use super::git_ops::{args, check_url, git, git_ok, push};
use super::{GateError, Person, approval_branch, check_names};
use crate::ids::is_branch_name;

/// Clones `remote_url` into `work_dir/approve-<request>-<gate>` (replacing an
/// earlier clone of that name), merges `hadron/approve/<request>/<gate>` into
/// `base_branch` with `--no-ff` as `user_name <user_email>` (author and
/// committer), pushes `base_branch` without force, and returns the merge
/// commit's id. A push rejected because the branch moved meanwhile (a
/// running Hadron commits `status/` at any time) is retried on the new head,
/// up to [`PUSH_ATTEMPTS`] times.
///
/// With `changes`, the merge asks for changes instead of approving: the
/// approval file gets `decision: changes` and `changes` as its feedback in
/// the merge commit itself, as a person editing it before merging would.
#[allow(clippy::too_many_arguments)]
pub fn approve_as_person(
    remote_url: &str,
    base_branch: &str,
    request: &str,
    gate: &str,
    work_dir: &Path,
    user_name: &str,
    user_email: &str,
    changes: Option<&str>,
) -> Result<String, GateError> {
    check_names(request, gate)?;
    check_url(remote_url)?;
    if !is_branch_name(base_branch) {
        return Err(GateError::InvalidBranch(base_branch.to_owned()));
    }
    let who = Person::new(user_name, user_email);
    who.check_writable()?;

    // git runs in several folders: one absolute path for all of them.
    let work_dir = &std::path::absolute(work_dir).map_err(|source| GateError::Io {
        op: "resolve work folder",
        path: work_dir.display().to_string(),
        source,
    })?;
    let checkout = work_dir.join(format!("approve-{request}-{gate}"));
    if checkout.exists() {
        std::fs::remove_dir_all(&checkout).map_err(|source| GateError::Io {
            op: "remove old clone",
            path: checkout.display().to_string(),
            source,
        })?;
    }
    std::fs::create_dir_all(work_dir).map_err(|source| GateError::Io {
        op: "create work folder",
        path: work_dir.display().to_string(),
        source,
    })?;

    let branch = approval_branch(request, gate);
    let mut clone = args(["clone", "--quiet", "--no-tags", "--branch", base_branch, "--", remote_url]);
    clone.push(checkout.clone().into_os_string());
    git_ok("clone", work_dir, &who, &clone)?;

    let remote_ref = format!("refs/remotes/origin/{branch}");
    let verify = git(&checkout, &who, &args(["rev-parse", "--verify", "--quiet", &format!("{remote_ref}^{{commit}}")]))?;
    if !verify.success {
        return Err(GateError::ApprovalBranchMissing(branch));
    }
    let message = match changes {
        None => format!("Approve {request}/{gate}\n\nMerge {branch} into {base_branch}."),
        Some(_) => format!("Ask for changes to {request}/{gate}\n\nMerge {branch} into {base_branch}, with decision: changes."),
    };
    let dst = format!("refs/heads/{base_branch}");
    let upstream = format!("refs/remotes/origin/{base_branch}");
    let mut last = String::new();
    for attempt in 1..=PUSH_ATTEMPTS {
        if attempt > 1 {
            git_ok("fetch", &checkout, &who, &args(["fetch", "--quiet", "--no-tags", "origin"]))?;
            git_ok("reset", &checkout, &who, &args(["reset", "--quiet", "--hard", &upstream]))?;
        }
        let before = git_ok("rev-parse", &checkout, &who, &args(["rev-parse", "HEAD"]))?.trim().to_owned();
        match changes {
            None => {
                git_ok("merge", &checkout, &who, &args(["merge", "--no-ff", "--no-edit", "--no-verify", "-m", &message, &remote_ref]))?;
            }
            Some(feedback) => {
                git_ok("merge", &checkout, &who, &args(["merge", "--no-ff", "--no-commit", "--no-verify", &remote_ref]))?;
                let file = checkout.join(super::approval_path(request, gate));
                let shown = file.display().to_string();
                let io = |op: &'static str| {
                    let path = shown.clone();
                    move |source| GateError::Io { op, path, source }
                };
                let text = std::fs::read_to_string(&file).map_err(io("read the approval file"))?;
                std::fs::write(&file, super::ask_for_changes(&text, feedback)?).map_err(io("write the approval file"))?;
                git_ok("add", &checkout, &who, &args(["add", "--", &super::approval_path(request, gate)]))?;
                git_ok("commit", &checkout, &who, &args(["commit", "--quiet", "--no-verify", "-m", &message]))?;
            }
        }
        let after = git_ok("rev-parse", &checkout, &who, &args(["rev-parse", "HEAD"]))?.trim().to_owned();
        if after == before {
            return Err(GateError::AlreadyMerged(branch));
        }
        match push(&checkout, &who, "origin", &dst, &dst)? {
            None => return Ok(after),
            Some(detail) => last = detail,
        }
    }
    Err(GateError::PushRejected { refname: dst, attempts: PUSH_ATTEMPTS, detail: last })
}

/// How often `approve_as_person` tries to push before giving up.
pub const PUSH_ATTEMPTS: u32 = 5;
