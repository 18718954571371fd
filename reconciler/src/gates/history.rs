//! Who approved and who asked, read from git history with gix (no I/O beyond
//! the local object store).
//!
//! Both lookups walk the first-parent history from a head and, for each
//! commit, compare the id of the entry at one path with the id in its first
//! parent. Only the trees along that path are read (and the top-level folder's
//! id is memoised), never whole-tree diffs, so a lookup costs one commit and
//! one root tree per commit walked.

use std::collections::HashMap;

use gix::ObjectId;
use gix::bstr::ByteSlice;

use super::{Approver, GateError, Person, check_names};
use crate::ids::is_dns_label;

/// How deep [`requester_of`] follows merged side branches to find the
/// commit that really added a request.
const MAX_SIDE_BRANCH_DEPTH: usize = 32;

/// One commit's tree and parents.
struct Step {
    id: ObjectId,
    tree: ObjectId,
    parents: Vec<ObjectId>,
}

/// Reads a commit; `None` when the object is not in the store (a shallow history).
fn step(repo: &gix::Repository, id: ObjectId) -> Result<Option<Step>, GateError> {
    let Some(object) = repo.try_find_object(id).map_err(|e| GateError::object("read commit", e))? else {
        return Ok(None);
    };
    let commit = object.try_into_commit().map_err(|e| GateError::object("read commit", e))?;
    let decoded = commit.decode().map_err(|e| GateError::object("decode commit", e))?;
    Ok(Some(Step { id, tree: decoded.tree(), parents: decoded.parents().collect() }))
}

/// The id of the entry at `path` below `tree`, if there is one. `want_tree`
/// says whether the last component must be a folder (or a file).
pub(crate) fn entry_at(repo: &gix::Repository, tree: ObjectId, path: &[&str], want_tree: bool) -> Result<Option<ObjectId>, GateError> {
    let mut current = tree;
    for (i, name) in path.iter().enumerate() {
        let t = repo.find_tree(current).map_err(|e| GateError::object("read tree", e))?;
        let Some(entry) = t.find_entry(*name) else {
            return Ok(None);
        };
        let is_tree = entry.mode().is_tree();
        let id = entry.object_id();
        if i + 1 == path.len() {
            return Ok((is_tree == want_tree).then_some(id));
        }
        if !is_tree {
            return Ok(None);
        }
        current = id;
    }
    Ok(Some(current))
}

/// Looks up the blob at one path in many root trees, memoising on the id of
/// the path's top-level folder (which rarely changes between commits).
struct Probe<'p> {
    top: &'p str,
    rest: Vec<&'p str>,
    memo: HashMap<ObjectId, Option<ObjectId>>,
}

impl<'p> Probe<'p> {
    fn new(top: &'p str, rest: Vec<&'p str>) -> Self {
        Probe { top, rest, memo: HashMap::new() }
    }

    fn blob(&mut self, repo: &gix::Repository, root: ObjectId) -> Result<Option<ObjectId>, GateError> {
        let Some(top) = entry_at(repo, root, &[self.top], true)? else {
            return Ok(None);
        };
        if let Some(hit) = self.memo.get(&top) {
            return Ok(*hit);
        }
        let found = entry_at(repo, top, &self.rest, false)?;
        self.memo.insert(top, found);
        Ok(found)
    }
}

fn person(sig: gix::actor::SignatureRef<'_>) -> Person {
    let sig = sig.trim();
    Person::new(sig.name.to_str_lossy().into_owned(), sig.email.to_str_lossy().into_owned())
}

/// The commit on the first-parent history of `head` that brought the present
/// content of the probed file; `None` when the file is not at `head` or the
/// history is cut short.
fn introducer(repo: &gix::Repository, head: ObjectId, probe: &mut Probe<'_>) -> Result<Option<ObjectId>, GateError> {
    let Some(mut current) = step(repo, head)? else {
        return Ok(None);
    };
    let Some(content) = probe.blob(repo, current.tree)? else {
        return Ok(None);
    };
    loop {
        let Some(&parent_id) = current.parents.first() else {
            return Ok(Some(current.id));
        };
        let Some(parent) = step(repo, parent_id)? else {
            return Ok(None);
        };
        if probe.blob(repo, parent.tree)? != Some(content) {
            return Ok(Some(current.id));
        }
        current = parent;
    }
}

/// The commit on the first-parent history of `head` that brought the present
/// content of `requests/<request>.yaml` (the merge commit when it arrived by a
/// merged pull request): the commit Hadron sets the request's commit status on.
pub fn request_commit_of(repo: &gix::Repository, head: ObjectId, request: &str) -> Result<Option<ObjectId>, GateError> {
    if !is_dns_label(request) {
        return Ok(None);
    }
    let file = format!("{request}.yaml");
    let mut probe = Probe::new("requests", vec![file.as_str()]);
    introducer(repo, head, &mut probe)
}

/// The committer of the commit on the first-parent history of `head` that
/// brought the present content of `approvals/<request>/<gate>.yaml`: the merge
/// commit when the approval branch was merged, or the commit itself when the
/// file arrived by a fast-forward or a direct commit.
///
/// `Ok(None)` when the file is not there at `head`, when a name is not a
/// DNS-1123 label, or when the history is cut short (shallow) before the
/// introducing commit could be identified.
pub fn approver_of(repo: &gix::Repository, head: ObjectId, request: &str, gate: &str) -> Result<Option<Approver>, GateError> {
    if check_names(request, gate).is_err() {
        return Ok(None);
    }
    let file = format!("{gate}.yaml");
    let mut probe = Probe::new("approvals", vec![request, file.as_str()]);
    let Some(introducer) = introducer(repo, head, &mut probe)? else {
        return Ok(None);
    };
    let commit = repo.find_commit(introducer).map_err(|e| GateError::object("read commit", e))?;
    let committer = person(commit.committer().map_err(|e| GateError::object("decode committer", e))?);
    Ok(Some(Approver { name: committer.name, email: committer.email, commit: introducer.to_string() }))
}

/// The oldest commit on the first-parent history from `start` whose first
/// parent lacks the file and which has it.
fn oldest_addition(repo: &gix::Repository, start: ObjectId, probe: &mut Probe<'_>) -> Result<Option<Step>, GateError> {
    let Some(mut current) = step(repo, start)? else {
        return Ok(None);
    };
    let mut current_has = probe.blob(repo, current.tree)?.is_some();
    let mut oldest = None;
    loop {
        let parent = match current.parents.first() {
            Some(&p) => step(repo, p)?,
            None => None,
        };
        let Some(parent) = parent else {
            if current_has {
                oldest = Some(current);
            }
            return Ok(oldest);
        };
        let parent_has = probe.blob(repo, parent.tree)?.is_some();
        if current_has && !parent_has {
            oldest = Some(current);
        }
        current = parent;
        current_has = parent_has;
    }
}

/// The author of the oldest commit in the history of `head` that added
/// `requests/<request>.yaml` (the first time it appeared).
///
/// The first-parent history is walked to its root. When the commit found
/// there is a merge (the request arrived through a merged pull request), the
/// merged side is followed the same way, so the requester is the author of
/// the commit that really added the file, not the person who merged it.
pub fn requester_of(repo: &gix::Repository, head: ObjectId, request: &str) -> Result<Option<Person>, GateError> {
    Ok(requester_commit_of(repo, head, request)?.map(|(person, _)| person))
}

/// [`requester_of`] with the id of the commit whose author is the requester
/// (a forge maps that commit's author to a user login).
pub fn requester_commit_of(repo: &gix::Repository, head: ObjectId, request: &str) -> Result<Option<(Person, ObjectId)>, GateError> {
    if !is_dns_label(request) {
        return Ok(None);
    }
    let file = format!("{request}.yaml");
    let mut probe = Probe::new("requests", vec![file.as_str()]);
    let Some(mut found) = oldest_addition(repo, head, &mut probe)? else {
        return Ok(None);
    };
    for _ in 0..MAX_SIDE_BRANCH_DEPTH {
        let mut deeper = None;
        for &side in found.parents.iter().skip(1) {
            if let Some(s) = step(repo, side)?
                && probe.blob(repo, s.tree)?.is_some()
            {
                deeper = oldest_addition(repo, side, &mut probe)?;
                if deeper.is_some() {
                    break;
                }
            }
        }
        match deeper {
            Some(d) => found = d,
            None => break,
        }
    }
    let commit = repo.find_commit(found.id).map_err(|e| GateError::object("read commit", e))?;
    Ok(Some((person(commit.author().map_err(|e| GateError::object("decode author", e))?), found.id)))
}
