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
//!
//! # Files
//!
//! This file holds the configuration, the types and [`Source`] itself; fetching into the
//! mirror is in `mirror.rs`, loads (full listing, tree diff, blob reads) in `read.rs`,
//! errors in `error.rs`.

mod error;
mod mirror;
mod pull;
mod read;
pub mod trigger;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gix::ObjectId;

pub use error::SourceError;
pub use read::tree_files;
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
        mirror::open_mirror(&self.mirror_path())
    }
}
