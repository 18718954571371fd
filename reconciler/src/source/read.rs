//! Reading the mirror: [`Source::load`] lists the tree of a revision in
//! full, or diffs it against the last loaded tree and reads only the blobs
//! that changed.

use gix::ObjectId;
use gix::objs::tree::EntryKind;

use super::{Blob, ChangeSet, FileMap, PathFilter, Revision, Source, SourceError};

impl Source {
    /// The tree of the commit `rev`, which must be in the mirror.
    fn tree_of(&mut self, rev: Revision) -> Result<ObjectId, SourceError> {
        let repo = self.mirror()?;
        let commit = repo.find_commit(rev.0).map_err(|e| {
            if e.is_not_found() { SourceError::UnknownRevision { revision: rev.to_string() } } else { SourceError::from_local(&e) }
        })?;
        commit.tree_id().map(|id| id.detach()).map_err(|e| SourceError::from_local(&e))
    }

    /// Load revision `rev`: a full listing the first time (or if the mirror no longer holds
    /// the last loaded tree), otherwise the changes since the last load.
    pub fn load(&mut self, rev: Revision) -> Result<ChangeSet, SourceError> {
        self.load_except(rev, &std::collections::BTreeMap::new())
    }

    /// [`Source::load`], except that a changed file whose path and blob id
    /// are in `known` is neither read nor listed: the caller holds that
    /// content already (Hadron's own status files, back from a fetch, are
    /// 10,000 blobs not worth reading at 10,000 requests). A full listing
    /// lists every file.
    pub fn load_except(&mut self, rev: Revision, known: &std::collections::BTreeMap<String, ObjectId>) -> Result<ChangeSet, SourceError> {
        let new_tree = self.tree_of(rev)?;
        // If the mirror lost the previously loaded tree (data dir wiped), fall back to a
        // full listing: the caller replaces its map and nothing is missed.
        let base = match self.loaded {
            Some((_, old_tree)) if self.mirror()?.has_object(old_tree) => Some(old_tree),
            _ => None,
        };
        let changes = match base {
            None => {
                let files = self.read_tree(new_tree)?;
                ChangeSet { revision: rev, full: true, upserts: files.into_iter().collect(), deletes: Vec::new() }
            }
            Some(old_tree) => self.diff(rev, old_tree, new_tree, known)?,
        };
        self.loaded = Some((rev, new_tree));
        Ok(changes)
    }

    fn read_tree(&mut self, root: ObjectId) -> Result<FileMap, SourceError> {
        let repo = self.mirror()?;
        tree_files(&repo, root, &self.opts.filter, self.opts.max_blob_size, &mut self.blobs_read)
    }

    pub(super) fn diff(
        &mut self,
        rev: Revision,
        old_tree: ObjectId,
        new_tree: ObjectId,
        known: &std::collections::BTreeMap<String, ObjectId>,
    ) -> Result<ChangeSet, SourceError> {
        use gix::object::tree::diff::Change;
        let mut upserts: Vec<(String, ObjectId)> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        let repo = self.mirror()?;
        if old_tree != new_tree {
            let old = repo.find_tree(old_tree).map_err(|e| SourceError::from_local(&e))?;
            let new = repo.find_tree(new_tree).map_err(|e| SourceError::from_local(&e))?;
            let filter = &self.opts.filter;
            let is_file = |kind: EntryKind| matches!(kind, EntryKind::Blob | EntryKind::BlobExecutable);
            // A file the caller holds at this very blob is skipped as the
            // walk meets it, before its path is copied (after Hadron's first
            // status commit at 10,000 requests, 10,000 of them). Skipping it
            // never hides a deletion: with rewrites off, a file at one path
            // on both sides is one modification, never a deletion and an
            // addition (those come only with a folder on one side).
            let known_as =
                |location: &gix::bstr::BStr, id: ObjectId| std::str::from_utf8(location).is_ok_and(|path| known.get(path) == Some(&id));
            let mut platform = old.changes().map_err(|e| SourceError::from_local(&e))?;
            platform.options(|o| {
                o.track_path().track_rewrites(None);
            });
            platform
                .for_each_to_obtain_tree(&new, |change| {
                    match change {
                        Change::Addition { location, id, .. } | Change::Modification { location, id, .. }
                            if known_as(location, id.detach()) => {}
                        Change::Addition { location, entry_mode, id, .. } => {
                            let path = location.to_string();
                            if is_file(entry_mode.kind()) && filter.matches_file(&path) {
                                upserts.push((path, id.detach()));
                            }
                        }
                        Change::Deletion { location, entry_mode, .. } => {
                            let path = location.to_string();
                            if is_file(entry_mode.kind()) && filter.matches_file(&path) {
                                deletes.push(path);
                            }
                        }
                        Change::Modification { location, previous_entry_mode, entry_mode, id, .. } => {
                            let path = location.to_string();
                            if filter.matches_file(&path) {
                                if is_file(entry_mode.kind()) {
                                    upserts.push((path, id.detach()));
                                } else if is_file(previous_entry_mode.kind()) {
                                    deletes.push(path);
                                }
                            }
                        }
                        Change::Rewrite { source_location, source_entry_mode, location, entry_mode, id, copy, .. } => {
                            let old_path = source_location.to_string();
                            if !copy && is_file(source_entry_mode.kind()) && filter.matches_file(&old_path) {
                                deletes.push(old_path);
                            }
                            let path = location.to_string();
                            if is_file(entry_mode.kind()) && filter.matches_file(&path) {
                                upserts.push((path, id.detach()));
                            }
                        }
                    }
                    Ok(std::ops::ControlFlow::Continue(()))
                })
                .map_err(|e| SourceError::from_local(&e))?;
        }
        // Only a tree with two entries of one name (which `git fsck`
        // refuses) lists a path as both deleted and added: the upsert wins.
        upserts.sort();
        upserts.dedup_by(|a, b| a.0 == b.0);
        deletes.sort();
        deletes.dedup();
        deletes.retain(|d| upserts.binary_search_by(|(p, _)| p.as_str().cmp(d.as_str())).is_err());
        let mut read = Vec::with_capacity(upserts.len());
        for (path, id) in upserts {
            read.push((path, read_blob(&repo, id, self.opts.max_blob_size, &mut self.blobs_read)?));
        }
        Ok(ChangeSet { revision: rev, full: false, upserts: read, deletes })
    }
}

/// Read blob `id` unless it is larger than `cap`; counts reads in `counter`.
/// Every file below the tree `root` of `repo` that `filter` keeps, read
/// (a blob over `cap` bytes is [`Blob::TooLarge`], unread); `counter`
/// counts the blobs read.
pub fn tree_files(
    repo: &gix::Repository,
    root: ObjectId,
    filter: &PathFilter,
    cap: u64,
    counter: &mut u64,
) -> Result<FileMap, SourceError> {
    let mut blobs: Vec<(String, ObjectId)> = Vec::new();
    let mut stack: Vec<(String, ObjectId)> = vec![(String::new(), root)];
    while let Some((dir, tree_id)) = stack.pop() {
        let tree = repo.find_tree(tree_id).map_err(|e| SourceError::from_local(&e))?;
        for entry in tree.iter() {
            let entry = entry.map_err(|e| SourceError::Corrupt { message: format!("tree {tree_id}: {e}") })?;
            let name = entry.filename().to_string();
            let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
            match entry.mode().kind() {
                EntryKind::Tree => {
                    if filter.may_contain(&path) {
                        stack.push((path, entry.object_id()));
                    }
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    if filter.matches_file(&path) {
                        blobs.push((path, entry.object_id()));
                    }
                }
                EntryKind::Link | EntryKind::Commit => {}
            }
        }
    }
    let mut files = FileMap::new();
    for (path, id) in blobs {
        files.insert(path, read_blob(repo, id, cap, counter)?);
    }
    Ok(files)
}

fn read_blob(repo: &gix::Repository, id: ObjectId, cap: u64, counter: &mut u64) -> Result<Blob, SourceError> {
    let size = repo.find_header(id).map_err(|e| SourceError::from_local(&e))?.size();
    if size > cap {
        return Ok(Blob::TooLarge { size });
    }
    let mut data = repo.find_blob(id).map_err(|e| SourceError::from_local(&e))?.take_data();
    // The buffer comes from the repository's free list, often far larger
    // than the blob: 10,000 of them held at once would be ~3× the data.
    data.shrink_to_fit();
    *counter += 1;
    Ok(Blob::Data(data))
}
