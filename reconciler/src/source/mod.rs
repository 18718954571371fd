//! The git source: fetches the control repo into a private bare mirror and reads the
//! configured branch's commit, first in full and then incrementally by tree diff.
//!
//! # Layout and refs
//!
//! The mirror lives at `<data_dir>/mirror.git` (a bare repository created with
//! `gix::init_bare` on first use). Every [`Source::fetch`] connects to the configured URL
//! directly (the URL is not stored in the mirror's config, so changing it just works)
//! and fetches only the configured branch with the refspec
//! `+refs/heads/<branch>:refs/remotes/origin/<branch>` and no tags. Before receiving a
//! pack we check that the remote really advertises `refs/heads/<branch>`, so a deleted
//! branch is reported as [`SourceError::BranchNotFound`] instead of silently serving a
//! stale tracking ref. Working trees are never read: a local non-bare repository is
//! fetched from like any remote, so uncommitted files are invisible.
//!
//! # Loads
//!
//! [`Source::load`] returns a [`ChangeSet`]. The first load of a [`Source`] lists the whole
//! tree (`full: true`); every later load diffs the last loaded tree against the new one and
//! reads only the blobs that changed. Renames
//! come out as a delete of the old path plus an upsert of the new path (rename tracking
//! is off on purpose). Only regular files (mode 100644/100755) are reported; symlinks and
//! submodule entries are ignored, and a file that turns into a symlink is a delete.
//!
//! A [`PathFilter`] limits which paths are read at all; directories that cannot contain
//! a wanted path are not even listed on a full load. Blobs larger than the size cap are
//! not read: they come as [`Blob::TooLarge`] so the caller can turn them into a diagnostic.
//!
//! # Threads
//!
//! The API is synchronous and [`Source`] is `Send`: call it from tokio through
//! `spawn_blocking`. Triggers (file watch or poll) are in [`trigger`].

mod error;
pub mod trigger;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gix::ObjectId;
use gix::objs::tree::EntryKind;

pub use error::SourceError;
pub use trigger::{TriggerHandle, spawn_triggers};

/// Default branch read when none is configured.
pub const DEFAULT_BRANCH: &str = "main";
/// Default poll interval for remote sources (and the safety-net poll for local ones).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Default blob size cap: larger blobs are reported as [`Blob::TooLarge`].
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 1024 * 1024;

/// Where the control repo lives and how to follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// A local path (bare or non-bare repo), `file://`, `https://`, `ssh://` or scp-like
    /// `git@host:path` URL.
    pub url: String,
    /// The branch whose commit is read.
    pub branch: String,
    /// Hadron's data folder; the mirror lives in `<data_dir>/mirror.git`.
    pub data_dir: PathBuf,
    /// How often remote sources are polled (local ones are watched, and polled as a safety net).
    pub poll_interval: Duration,
    /// Whether a local repository's refs are watched (else it is only polled).
    pub watch: bool,
}

impl SourceConfig {
    /// A config for `url` with the default branch (`main`) and poll interval (60 s).
    pub fn new(url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        SourceConfig {
            url: url.into(),
            branch: DEFAULT_BRANCH.to_owned(),
            data_dir: data_dir.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            watch: true,
        }
    }

    /// Builder: do not watch a local repository's refs; poll only (webhooks
    /// then say when to look sooner).
    pub fn without_watch(mut self) -> Self {
        self.watch = false;
        self
    }

    /// Builder: use `branch` instead of `main`.
    pub fn with_branch(mut self, branch: impl Into<String>) -> Self {
        self.branch = branch.into();
        self
    }

    /// Builder: poll every `interval`.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The local repository path if the URL is a plain path or a `file://` URL.
    pub fn local_path(&self) -> Option<PathBuf> {
        let url = parse_url(&self.url).ok()?;
        (url.scheme == gix::url::Scheme::File).then(|| PathBuf::from(url.path.to_string()))
    }
}

/// Parse a source URL; a relative local path is made absolute against the current directory.
fn parse_url(raw: &str) -> Result<gix::Url, SourceError> {
    let mut url = gix::url::parse(gix::bstr::BStr::new(raw))
        .map_err(|e| SourceError::InvalidConfig { message: format!("cannot parse url {:?}: {e}", crate::redact::url_credentials(raw)) })?;
    if url.scheme == gix::url::Scheme::File {
        let path = PathBuf::from(url.path.to_string());
        if path.is_relative() {
            let abs = std::path::absolute(&path).map_err(|e| SourceError::io(format!("resolving path {}", path.display()), e))?;
            url.path = abs.to_string_lossy().into_owned().into();
        }
    }
    Ok(url)
}

/// A commit of the control repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(ObjectId);

impl Revision {
    /// The commit id.
    pub fn id(&self) -> ObjectId {
        self.0
    }

    /// Parse a full hex commit id (as written in a `Hadron-Revision:` trailer).
    pub fn from_hex(hex: &str) -> Result<Self, SourceError> {
        ObjectId::from_hex(hex.as_bytes())
            .map(Revision)
            .map_err(|e| SourceError::InvalidConfig { message: format!("not a commit id {hex:?}: {e}") })
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The content of one file, or the marker that it was too large to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blob {
    /// The file's bytes.
    Data(Vec<u8>),
    /// The blob exceeds the size cap; it was not read.
    TooLarge {
        /// Its size in bytes.
        size: u64,
    },
}

impl Blob {
    /// The bytes, if the blob was read.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Blob::Data(d) => Some(d),
            Blob::TooLarge { .. } => None,
        }
    }
}

/// The full set of (filtered) files at one revision: '/'-separated path → content.
pub type FileMap = BTreeMap<String, Blob>;

/// What changed between the last loaded revision and `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    /// The revision this change set brings the caller to.
    pub revision: Revision,
    /// `true` if this is a full listing: the caller must drop everything it had and
    /// take `upserts` as the complete file set (`deletes` is then empty).
    pub full: bool,
    /// Files added or changed (or all files if `full`), sorted by path.
    pub upserts: Vec<(String, Blob)>,
    /// Paths removed, sorted.
    pub deletes: Vec<String>,
}

impl ChangeSet {
    /// `true` if nothing changed (and this is not a full listing).
    pub fn is_empty(&self) -> bool {
        !self.full && self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// Which paths of the control repo are read.
///
/// `Prefixes` holds repo-relative paths without trailing slash; a file matches an entry
/// if it equals it or lies below it (`agents` matches `agents/a.yaml`, not `agentsx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathFilter {
    /// Every file.
    All,
    /// Only files equal to or below one of these paths.
    Prefixes(Vec<String>),
}

impl PathFilter {
    /// The paths Hadron cares about: `hadron.yaml`, `agents/`, `requests/`, `approvals/`, `status/`.
    pub fn hadron() -> Self {
        PathFilter::prefixes(["hadron.yaml", "agents", "requests", "approvals", "status"])
    }

    /// A prefix filter; leading and trailing slashes are ignored.
    pub fn prefixes<S: AsRef<str>>(paths: impl IntoIterator<Item = S>) -> Self {
        PathFilter::Prefixes(paths.into_iter().map(|p| p.as_ref().trim_matches('/').to_owned()).filter(|p| !p.is_empty()).collect())
    }

    /// Does the file at `path` pass the filter?
    pub fn matches_file(&self, path: &str) -> bool {
        match self {
            PathFilter::All => true,
            PathFilter::Prefixes(prefixes) => prefixes.iter().any(|p| is_at_or_below(path, p)),
        }
    }

    /// May the directory at `dir` contain a file that passes the filter?
    pub fn may_contain(&self, dir: &str) -> bool {
        match self {
            PathFilter::All => true,
            PathFilter::Prefixes(prefixes) => prefixes.iter().any(|p| is_at_or_below(dir, p) || is_at_or_below(p, dir)),
        }
    }
}

fn is_at_or_below(path: &str, prefix: &str) -> bool {
    path == prefix || (path.len() > prefix.len() && path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'/')
}

/// Options beyond [`SourceConfig`] for how files are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Which paths are read.
    pub filter: PathFilter,
    /// Blobs larger than this are reported as [`Blob::TooLarge`].
    pub max_blob_size: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { filter: PathFilter::All, max_blob_size: DEFAULT_MAX_BLOB_SIZE }
    }
}

/// The git source: a bare mirror of one branch of the control repo.
pub struct Source {
    cfg: SourceConfig,
    url: gix::Url,
    tracking_ref: String,
    opts: LoadOptions,
    last_good: Option<Revision>,
    loaded: Option<(Revision, ObjectId)>,
    blobs_read: u64,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("url", &crate::redact::url_credentials(&self.cfg.url))
            .field("branch", &self.cfg.branch)
            .field("mirror", &self.mirror_path())
            .field("last_good", &self.last_good)
            .field("loaded", &self.loaded.map(|(rev, _)| rev))
            .finish()
    }
}

impl Source {
    /// Create a source; validates the URL and branch and, if the mirror already exists
    /// (a restart), takes its tracking ref as the last good revision. No network access.
    pub fn new(cfg: SourceConfig, opts: LoadOptions) -> Result<Self, SourceError> {
        let url = parse_url(&cfg.url)?;
        let branch_ref = format!("refs/heads/{}", cfg.branch);
        gix::refs::FullName::try_from(branch_ref.as_str())
            .map_err(|e| SourceError::InvalidConfig { message: format!("invalid branch name {:?}: {e}", cfg.branch) })?;
        if cfg.branch.starts_with('-') || cfg.branch.contains(':') || cfg.branch.contains('*') {
            return Err(SourceError::InvalidConfig { message: format!("invalid branch name {:?}", cfg.branch) });
        }
        let tracking_ref = format!("refs/remotes/origin/{}", cfg.branch);
        let mut source = Source { cfg, url, tracking_ref, opts, last_good: None, loaded: None, blobs_read: 0 };
        if source.mirror_path().join("HEAD").is_file() {
            let repo = source.mirror()?;
            let found = repo.try_find_reference(source.tracking_ref.as_str()).map_err(|e| SourceError::from_local(&e))?;
            if let Some(reference) = found {
                let id = reference.into_fully_peeled_id().map_err(|e| SourceError::from_local(&e))?;
                source.last_good = Some(Revision(id.detach()));
            }
        }
        Ok(source)
    }

    /// The configuration this source follows.
    pub fn config(&self) -> &SourceConfig {
        &self.cfg
    }

    /// Where the bare mirror lives.
    pub fn mirror_path(&self) -> PathBuf {
        self.cfg.data_dir.join("mirror.git")
    }

    /// The revision of the last successful fetch. A failed fetch never clears it.
    pub fn last_good(&self) -> Option<Revision> {
        self.last_good
    }

    /// The revision of the last [`load`](Self::load), the base of the next diff.
    pub fn last_loaded(&self) -> Option<Revision> {
        self.loaded.map(|(rev, _)| rev)
    }

    /// How many blob contents this source has read so far (too-large blobs are not read
    /// and not counted). Lets tests and metrics check that loads are incremental.
    pub fn blobs_read(&self) -> u64 {
        self.blobs_read
    }

    /// Open the mirror, creating it on first use. The repository handle is opened per
    /// operation (cheap: config and refs only) so that `Source` stays `Send` with gix
    /// built without its `parallel` feature.
    fn mirror(&self) -> Result<gix::Repository, SourceError> {
        open_mirror(&self.mirror_path())
    }

    /// Fetch the branch from the remote into the mirror and return its commit.
    /// On failure the last good revision stays as it was.
    pub fn fetch(&mut self) -> Result<Revision, SourceError> {
        let rev = self.fetch_inner()?;
        self.last_good = Some(rev);
        Ok(rev)
    }

    fn fetch_inner(&mut self) -> Result<Revision, SourceError> {
        use gix::remote::Direction;
        let raw_url = self.cfg.url.clone();
        let branch = self.cfg.branch.clone();
        let tracking = self.tracking_ref.clone();
        let url = self.url.clone();
        // Nothing interrupts a fetch: a shutdown lets the running pass finish.
        let interrupt = AtomicBool::new(false);
        let local = url.scheme == gix::url::Scheme::File;
        let remote_err = |e: gix::Error| SourceError::from_remote(&e, &raw_url, local);

        if local {
            let path = PathBuf::from(url.path.to_string());
            if !path.exists() {
                return Err(SourceError::RepoNotFound {
                    url: crate::redact::url_credentials(&raw_url),
                    message: format!("{} does not exist", path.display()),
                });
            }
        }

        crate::git::remove_stale_locks(&self.mirror_path(), crate::git::STALE_LOCK_AGE);
        let repo = self.mirror()?;
        let branch_ref = format!("refs/heads/{branch}");
        let refspec = format!("+{branch_ref}:{tracking}");
        let remote = repo
            .remote_at(url)
            .map_err(remote_err)?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs([refspec.as_str()], Direction::Fetch)
            .map_err(|e| SourceError::InvalidConfig { message: format!("refspec {refspec:?}: {e}") })?;
        let connection = remote.connect(Direction::Fetch).map_err(remote_err)?;
        let prepare = connection.prepare_fetch(gix::progress::Discard, Default::default()).map_err(remote_err)?;
        let advertised = prepare.ref_map().remote_refs.iter().any(|r| r.unpack().0 == branch_ref.as_str());
        if !advertised {
            return Err(SourceError::BranchNotFound { url: crate::redact::url_credentials(&raw_url), branch });
        }
        prepare
            .with_reflog_message(gix::remote::fetch::RefLogMessage::Prefixed { action: "hadron fetch".into() })
            .receive(gix::progress::Discard, &interrupt)
            .map_err(remote_err)?;

        let id = repo
            .find_reference(tracking.as_str())
            .map_err(|e| SourceError::from_local(&e))?
            .into_fully_peeled_id()
            .map_err(|e| SourceError::from_local(&e))?
            .detach();
        repo.find_commit(id).map_err(|e| SourceError::Corrupt { message: format!("{branch_ref} does not point to a commit: {e}") })?;
        Ok(Revision(id))
    }

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
            Some(old_tree) => self.diff(rev, old_tree, new_tree)?,
        };
        self.loaded = Some((rev, new_tree));
        Ok(changes)
    }

    fn read_tree(&mut self, root: ObjectId) -> Result<FileMap, SourceError> {
        let mut blobs: Vec<(String, ObjectId)> = Vec::new();
        let repo = self.mirror()?;
        {
            let filter = &self.opts.filter;
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
        }
        let mut files = FileMap::new();
        for (path, id) in blobs {
            let blob = read_blob(&repo, id, self.opts.max_blob_size, &mut self.blobs_read)?;
            files.insert(path, blob);
        }
        Ok(files)
    }

    fn diff(&mut self, rev: Revision, old_tree: ObjectId, new_tree: ObjectId) -> Result<ChangeSet, SourceError> {
        use gix::object::tree::diff::ChangeDetached as Change;
        let mut upserts: Vec<(String, ObjectId)> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        let repo = self.mirror()?;
        if old_tree != new_tree {
            let old = repo.find_tree(old_tree).map_err(|e| SourceError::from_local(&e))?;
            let new = repo.find_tree(new_tree).map_err(|e| SourceError::from_local(&e))?;
            let mut options = gix::diff::Options::default().with_rewrites(None);
            options.track_path();
            let changes = repo.diff_tree_to_tree(&old, &new, options).map_err(|e| SourceError::from_local(&e))?;
            let filter = &self.opts.filter;
            let is_file = |kind: EntryKind| matches!(kind, EntryKind::Blob | EntryKind::BlobExecutable);
            for change in changes {
                match change {
                    Change::Addition { location, entry_mode, id, .. } => {
                        let path = location.to_string();
                        if is_file(entry_mode.kind()) && filter.matches_file(&path) {
                            upserts.push((path, id));
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
                        if !filter.matches_file(&path) {
                            continue;
                        }
                        if is_file(entry_mode.kind()) {
                            upserts.push((path, id));
                        } else if is_file(previous_entry_mode.kind()) {
                            deletes.push(path);
                        }
                    }
                    Change::Rewrite { source_location, source_entry_mode, location, entry_mode, id, copy, .. } => {
                        let old_path = source_location.to_string();
                        if !copy && is_file(source_entry_mode.kind()) && filter.matches_file(&old_path) {
                            deletes.push(old_path);
                        }
                        let path = location.to_string();
                        if is_file(entry_mode.kind()) && filter.matches_file(&path) {
                            upserts.push((path, id));
                        }
                    }
                }
            }
        }
        // A path can be deleted as a file and re-added (e.g. file → folder → file);
        // an upsert wins over a delete of the same path.
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
fn read_blob(repo: &gix::Repository, id: ObjectId, cap: u64, counter: &mut u64) -> Result<Blob, SourceError> {
    let size = repo.find_header(id).map_err(|e| SourceError::from_local(&e))?.size();
    if size > cap {
        return Ok(Blob::TooLarge { size });
    }
    let data = repo.find_blob(id).map_err(|e| SourceError::from_local(&e))?.take_data();
    *counter += 1;
    Ok(Blob::Data(data))
}

/// Open the mirror at `path`, creating it if needed.
///
/// The mirror is created in a sibling folder and renamed into place, so a
/// crash during creation leaves no half-made mirror; a folder without `HEAD`
/// (left by a crash of an older version) is removed, as the mirror is only
/// a cache of the control repo.
fn open_mirror(path: &Path) -> Result<gix::Repository, SourceError> {
    let mut repo = if path.join("HEAD").is_file() {
        crate::git::open(path).map_err(|e| SourceError::from_local(&e))?
    } else {
        let io = |what: &str, p: &Path, e| SourceError::io(format!("{what} {}", p.display()), e);
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| io("removing the half-made mirror", path, e))?;
        }
        let tmp = path.with_extension(format!("init-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io("removing", &tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io("creating", &tmp, e))?;
        drop(gix::init_bare(&tmp).map_err(|e| SourceError::from_local(&e))?);
        std::fs::rename(&tmp, path).map_err(|e| io("moving the new mirror to", path, e))?;
        crate::git::open(path).map_err(|e| SourceError::from_local(&e))?
    };
    configure_mirror(&mut repo)?;
    Ok(repo)
}

/// Make fetches non-interactive: never prompt on a terminal for credentials
/// (the equivalent of `GIT_TERMINAL_PROMPT=0`, set in memory only).
fn configure_mirror(repo: &mut gix::Repository) -> Result<(), SourceError> {
    let mut snapshot = repo.config_snapshot_mut();
    snapshot
        .append_config(["gitoxide.credentials.terminalPrompt=false"], gix::config::Source::Api)
        .map_err(|e| SourceError::from_local(&e))?;
    snapshot.commit().map_err(|e| SourceError::from_local(&e))?;
    Ok(())
}

/// Is `path` the git directory or work tree of a git repository we can watch?
/// Returns the folder holding `refs/` and `packed-refs`.
pub(crate) fn refs_dir_of(path: &Path) -> Option<PathBuf> {
    let repo = crate::git::open(path).ok()?;
    Some(repo.common_dir().to_path_buf())
}
