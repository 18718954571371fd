//! Opening approval branches: `hadron/approve/<request>/<gate>` holding
//! `approvals/<request>/<gate>.yaml`, pushed to the control repo without ever
//! forcing.
//!
//! The work happens in a private bare mirror under the work directory (one per
//! remote URL). The `git` CLI fetches and pushes; gix reads and writes every
//! object. The branch's tree is always the base branch's tree plus the one
//! approval file, so merging it changes nothing outside `approvals/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use gix::ObjectId;
use sha2::{Digest, Sha256};

use super::git_ops::{args, check_url, git_ok, push};
use super::history::entry_at;
use super::{GateError, Person, approval_branch, approval_path, check_names, render_approval};
use crate::ids::is_branch_name;
use crate::model::Approval;

/// How many times a rejected push is retried after a fresh fetch.
const PUSH_ATTEMPTS: u32 = 3;

/// What [`ApprovalBranches::open`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// The branch did not exist; it was created with this commit.
    Created {
        /// The new branch head.
        commit: String,
    },
    /// The branch existed for another generation (or another summary); this
    /// commit, a descendant of the old head, was pushed on top of it.
    Updated {
        /// The new branch head.
        commit: String,
        /// The head it replaced (an ancestor of `commit`).
        previous: String,
    },
    /// The branch already holds exactly this approval file; nothing was pushed.
    AlreadyOpen {
        /// The branch head.
        commit: String,
    },
    /// The base branch already holds an approval for this generation.
    AlreadyApproved {
        /// The base branch head.
        commit: String,
    },
}

/// Opens approval branches in control repos, as one identity (Hadron's).
///
/// Calls block (git processes and object-store I/O): from async code, run
/// them on a blocking thread. Calls on one instance (and its clones) are
/// What an approval branch proposes: the approval file Hadron writes for
/// `revision` of the work of `request`'s `generation`, at `gate`.
#[derive(Debug, Clone, Copy)]
pub struct Proposal<'a> {
    /// The request.
    pub request: &'a str,
    /// The gate.
    pub gate: &'a str,
    /// The generation being approved.
    pub generation: &'a str,
    /// The revision of the work (0: the stage's first result).
    pub revision: u32,
    /// The results so far, for the approver.
    pub summary: &'a str,
}

/// serialised, so they never fetch into the same mirror at once.
#[derive(Debug, Clone)]
pub struct ApprovalBranches {
    work_dir: PathBuf,
    identity: Person,
    serial: Arc<Mutex<()>>,
}

impl ApprovalBranches {
    /// Approval branches kept in mirrors under `work_dir`, committed as `identity`
    /// (author and committer).
    pub fn new(work_dir: impl Into<PathBuf>, identity: Person) -> Result<Self, GateError> {
        identity.check_writable()?;
        Ok(ApprovalBranches { work_dir: work_dir.into(), identity, serial: Arc::new(Mutex::new(())) })
    }

    /// The private bare mirror used for `remote_url`.
    pub fn mirror_dir(&self, remote_url: &str) -> PathBuf {
        let digest = Sha256::digest(remote_url.as_bytes());
        self.work_dir.join("approval-mirrors").join(format!("{}.git", hex::encode(&digest[..8])))
    }

    /// Makes sure `hadron/approve/<request>/<gate>` on `remote_url` proposes
    /// the approval of `generation`, with `summary`, on top of `base_branch`.
    ///
    /// * the base branch already holds an approval for `generation` → [`OpenOutcome::AlreadyApproved`];
    /// * the branch already holds exactly this file → [`OpenOutcome::AlreadyOpen`] (nothing pushed);
    /// * no branch → a commit on the base branch head adding the file → [`OpenOutcome::Created`];
    /// * a branch for another generation → a commit whose tree is the base
    ///   branch's tree plus the new file, pushed as a fast-forward of the
    ///   branch: on the base head when the old branch is already in it, on the
    ///   old branch head when the base has not moved, and otherwise with two
    ///   parents (base head first, then the old branch head) → [`OpenOutcome::Updated`].
    ///
    /// Never force-pushes. A push rejected because the remote moved meanwhile
    /// is retried after a fresh fetch.
    pub fn open(&self, remote_url: &str, base_branch: &str, proposal: &Proposal) -> Result<OpenOutcome, GateError> {
        self.open_with(remote_url, base_branch, proposal, false)
    }

    /// [`ApprovalBranches::open`], also when the base branch already holds
    /// an approval for this generation: that approval did not count (it was
    /// merged by someone not allowed), so the branch is opened once more with
    /// this `summary` (which must differ from the merged one) for an allowed
    /// approver to merge.
    pub fn reopen(&self, remote_url: &str, base_branch: &str, proposal: &Proposal) -> Result<OpenOutcome, GateError> {
        self.open_with(remote_url, base_branch, proposal, true)
    }

    fn open_with(&self, remote_url: &str, base_branch: &str, proposal: &Proposal, reopen: bool) -> Result<OpenOutcome, GateError> {
        let Proposal { request, gate, generation, revision, summary } = *proposal;
        check_names(request, gate)?;
        check_url(remote_url)?;
        if !is_branch_name(base_branch) {
            return Err(GateError::InvalidBranch(base_branch.to_owned()));
        }
        if generation.trim().is_empty() || generation.chars().any(char::is_control) {
            return Err(GateError::InvalidName { what: "generation", value: generation.to_owned() });
        }
        let content = render_approval(request, gate, generation, revision, summary)?;
        // A poisoned lock only means another call panicked; the mirror is
        // re-fetched below either way.
        let _serial = self.serial.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mirror = self.mirror_dir(remote_url);
        ensure_mirror(&mirror)?;
        let branch = approval_branch(request, gate);
        let mut last_rejection = String::new();
        for _ in 0..PUSH_ATTEMPTS {
            self.fetch(&mirror, remote_url)?;
            let repo = crate::git::open(&mirror).map_err(|e| GateError::object("open mirror", e))?;
            let plan = plan(&repo, &self.identity, base_branch, proposal, &content, reopen)?;
            let (commit, previous) = match plan {
                Plan::Done(outcome) => return Ok(outcome),
                Plan::Push { commit, previous } => (commit, previous),
            };
            let dst = format!("refs/heads/{branch}");
            match push(&mirror, &self.identity, remote_url, &commit.to_string(), &dst)? {
                None => {
                    return Ok(match previous {
                        None => OpenOutcome::Created { commit: commit.to_string() },
                        Some(p) => OpenOutcome::Updated { commit: commit.to_string(), previous: p.to_string() },
                    });
                }
                Some(rejection) => last_rejection = rejection,
            }
        }
        Err(GateError::PushRejected { refname: format!("refs/heads/{branch}"), attempts: PUSH_ATTEMPTS, detail: last_rejection })
    }

    /// Mirrors every branch of the remote as `refs/remotes/origin/*`, pruning
    /// branches deleted there.
    fn fetch(&self, mirror: &Path, remote_url: &str) -> Result<(), GateError> {
        git_ok(
            "fetch",
            mirror,
            &self.identity,
            &args(["fetch", "--quiet", "--prune", "--no-tags", "--", remote_url, "+refs/heads/*:refs/remotes/origin/*"]),
        )?;
        Ok(())
    }
}

/// Creates the bare mirror if it is not there yet.
/// Locks a killed git left in it are removed once stale: the mirror is Hadron's alone.
fn ensure_mirror(mirror: &Path) -> Result<(), GateError> {
    if mirror.join("HEAD").is_file() {
        crate::git::remove_stale_locks(mirror, crate::git::STALE_LOCK_AGE);
        return Ok(());
    }
    std::fs::create_dir_all(mirror).map_err(|source| GateError::Io {
        op: "create mirror folder",
        path: mirror.display().to_string(),
        source,
    })?;
    gix::init_bare(mirror).map_err(|e| GateError::object("init mirror", e))?;
    Ok(())
}

enum Plan {
    Done(OpenOutcome),
    Push { commit: ObjectId, previous: Option<ObjectId> },
}

fn resolve(repo: &gix::Repository, name: &str) -> Result<Option<ObjectId>, GateError> {
    let found = repo.try_find_reference(name).map_err(|e| GateError::object("find reference", e))?;
    match found {
        None => Ok(None),
        Some(mut r) => {
            let id = r.peel_to_id().map_err(|e| GateError::object("peel reference", e))?;
            Ok(Some(id.detach()))
        }
    }
}

fn tree_of(repo: &gix::Repository, commit: ObjectId) -> Result<ObjectId, GateError> {
    let c = repo.find_commit(commit).map_err(|e| GateError::object("read commit", e))?;
    Ok(c.tree_id().map_err(|e| GateError::object("read commit tree", e))?.detach())
}

fn blob_bytes(repo: &gix::Repository, id: ObjectId) -> Result<Vec<u8>, GateError> {
    Ok(repo.find_blob(id).map_err(|e| GateError::object("read blob", e))?.data.clone())
}

/// Whether `ancestor` is `descendant` or in its history.
fn is_ancestor(repo: &gix::Repository, ancestor: ObjectId, descendant: ObjectId) -> Result<bool, GateError> {
    if ancestor == descendant {
        return Ok(true);
    }
    let walk = repo.rev_walk([descendant]).all().map_err(|e| GateError::object("walk history", e))?;
    for info in walk {
        let info = info.map_err(|e| GateError::object("walk history", e))?;
        if info.id == ancestor {
            return Ok(true);
        }
    }
    Ok(false)
}

fn signature(who: &Person) -> gix::actor::Signature {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    gix::actor::Signature { name: who.name.as_str().into(), email: who.email.as_str().into(), time: gix::date::Time { seconds, offset: 0 } }
}

/// Decides what to push (or that nothing needs pushing) from the mirror's view of the remote.
// Each argument is a distinct input of the decision; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn plan(
    repo: &gix::Repository,
    who: &Person,
    base_branch: &str,
    proposal: &Proposal,
    content: &str,
    reopen: bool,
) -> Result<Plan, GateError> {
    let Proposal { request, gate, generation, .. } = *proposal;
    let base = resolve(repo, &format!("refs/remotes/origin/{base_branch}"))?
        .ok_or_else(|| GateError::BaseBranchMissing(base_branch.to_owned()))?;
    let base_tree = tree_of(repo, base)?;
    let file_name = format!("{gate}.yaml");
    let path = ["approvals", request, file_name.as_str()];

    for folder in [&path[..1], &path[..2]] {
        if entry_at(repo, base_tree, folder, false)?.is_some() {
            return Err(GateError::PathConflict(folder.join("/")));
        }
    }
    if let Some(blob) = entry_at(repo, base_tree, &path, false)? {
        let bytes = blob_bytes(repo, blob)?;
        let approved = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| serde_saphyr::from_str::<Approval>(text).ok())
            // An approval of this generation and revision; changes asked of
            // it are not an approval, the branch is opened to be merged.
            .is_some_and(|a| {
                a.spec.generation == generation
                    && a.spec.revision == proposal.revision
                    && a.spec.decision == crate::model::kinds::ApprovalDecision::Approve
            });
        if approved && (!reopen || bytes == content.as_bytes()) {
            return Ok(Plan::Done(OpenOutcome::AlreadyApproved { commit: base.to_string() }));
        }
    }

    let head = resolve(repo, &format!("refs/remotes/origin/{}", approval_branch(request, gate)))?;
    if let Some(head) = head
        && let Some(blob) = entry_at(repo, tree_of(repo, head)?, &path, false)?
        && blob_bytes(repo, blob)? == content.as_bytes()
    {
        return Ok(Plan::Done(OpenOutcome::AlreadyOpen { commit: head.to_string() }));
    }

    let blob = repo.write_blob(content.as_bytes()).map_err(|e| GateError::object("write blob", e))?.detach();
    let mut editor = repo.edit_tree(base_tree).map_err(|e| GateError::object("edit tree", e))?;
    editor
        .upsert(approval_path(request, gate).as_str(), gix::object::tree::EntryKind::Blob, blob)
        .map_err(|e| GateError::object("edit tree", e))?;
    let tree = editor.write().map_err(|e| GateError::object("write tree", e))?.detach();

    let parents = match head {
        None => vec![base],
        Some(old) if is_ancestor(repo, old, base)? => vec![base],
        Some(old) if is_ancestor(repo, base, old)? => vec![old],
        Some(old) => vec![base, old],
    };
    let message = format!(
        "Open approval for {request}/{gate}\n\n\
         Hadron asks for approval of generation {generation} of request {request}\n\
         at gate {gate}. Merge this branch into {base_branch} to approve.\n\n\
         Hadron-Request: {request}\nHadron-Gate: {gate}\nHadron-Generation: {generation}\n"
    );
    let sig = signature(who);
    let mut time = gix::date::parse::TimeBuf::default();
    let mut time2 = gix::date::parse::TimeBuf::default();
    let commit = repo
        .new_commit_as(sig.to_ref(&mut time), sig.to_ref(&mut time2), message, tree, parents)
        .map_err(|e| GateError::object("write commit", e))?;
    Ok(Plan::Push { commit: commit.id, previous: head })
}
