//! Loading a control repo from `(path, bytes)` pairs.
//!
//! The [`Catalog`] keeps every parsed file by path, so that the git source
//! can feed it only the blobs a commit changed (`upsert` / `remove`) and get
//! the whole desired state back from [`Catalog::snapshot`]. Parsing a file
//! is pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::desired;
pub use super::desired::{DesiredState, Loaded};
pub use super::file::{FileRole, Object};
use super::kinds::RequestStatus;
use super::parse::refuse_too_large;
pub use super::parse::{MAX_FILE_BYTES, ParsedFile, classify, own_status, parse_file};

/// A file Hadron wrote: its path, its text and, for a status file, the
/// status it was rendered from.
#[derive(Debug, Clone)]
pub struct OwnFile<'a> {
    /// Path in the control repo.
    pub path: &'a str,
    /// The text written.
    pub text: &'a [u8],
    /// The status rendered into `text`, when it is a status file Hadron rendered.
    pub status: Option<Arc<RequestStatus>>,
}

/// Every parsed file of a control repo, updated file by file. The desired
/// state is kept too and patched per changed file, so a commit that changes
/// one request costs one parse and one request's checks, whatever the size
/// of the repo; a change of `hadron.yaml` or an agent re-checks everything.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    files: BTreeMap<String, ParsedFile>,
    cache: Loaded,
    bad_agents: BTreeSet<String>,
    dirty_all: bool,
    dirty: BTreeSet<String>,
    fresh: bool,
    /// Status files added, changed or removed since the last
    /// [`Catalog::take_status_touches`].
    status_touched: BTreeSet<String>,
}

impl Catalog {
    /// The paths of every file held under `prefix` (e.g. `status/`), parsed or not.
    pub fn paths_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.files.range(prefix.to_owned()..).map(|(p, _)| p.as_str()).take_while(move |p| p.starts_with(prefix))
    }

    /// An empty catalog.
    pub fn new() -> Self {
        Catalog { dirty_all: true, ..Self::default() }
    }

    fn touch(&mut self, path: &str) {
        if path.starts_with("status/") {
            self.status_touched.insert(path.to_owned());
        }
        let incremental = path.starts_with("requests/") || path.starts_with("approvals/") || path.starts_with("status/");
        if incremental && self.files.get(path).is_none_or(|f| f.role.is_some()) {
            self.dirty.insert(path.to_owned());
        } else if classify(path).map_or(true, |c| c.is_some()) {
            self.dirty_all = true;
        }
    }

    /// Parses and records one file (added or modified).
    pub fn upsert(&mut self, path: &str, bytes: &[u8]) {
        match parse_file(path, bytes) {
            Some(parsed) => {
                let unclean = parsed.role.is_none();
                self.files.insert(path.to_owned(), parsed);
                if unclean {
                    self.dirty_all = true;
                }
            }
            None => {
                if self.files.remove(path).is_none() {
                    return;
                }
            }
        }
        self.touch(path);
    }

    /// Parses many files at once, spread over the machine's cores (a cold
    /// load of a large repo), then records them as [`Catalog::upsert`] does.
    pub fn upsert_all(&mut self, items: &[(&str, &[u8])]) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let chunk = items.len().div_ceil(threads).max(64);
        let parsed: Vec<Option<ParsedFile>> = std::thread::scope(|scope| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().map(|(p, b)| parse_file(p, b)).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        });
        for ((path, _), parsed) in items.iter().zip(parsed) {
            match parsed {
                Some(parsed) => {
                    if parsed.role.is_none() {
                        self.dirty_all = true;
                    }
                    self.files.insert((*path).to_owned(), parsed);
                }
                None => {
                    if self.files.remove(*path).is_none() {
                        continue;
                    }
                }
            }
            self.touch(path);
        }
    }

    /// Records status files Hadron rendered and has just published: each
    /// as rendered (no YAML read back) when [`own_status`] takes it, the
    /// others parsed from their text as [`Catalog::upsert_all`] does.
    /// Returns, item by item, whether it was taken as rendered.
    pub fn upsert_own_statuses(&mut self, items: &[OwnFile<'_>]) -> Vec<bool> {
        let mut to_parse: Vec<(&str, &[u8])> = Vec::new();
        let mut taken = Vec::with_capacity(items.len());
        for item in items {
            match item.status.clone().and_then(|status| own_status(item.path, status)) {
                Some(parsed) => {
                    self.files.insert(item.path.to_owned(), parsed);
                    self.touch(item.path);
                    taken.push(true);
                }
                None => {
                    to_parse.push((item.path, item.text));
                    taken.push(false);
                }
            }
        }
        self.upsert_all(&to_parse);
        taken
    }

    /// Records a file known to be over [`MAX_FILE_BYTES`] without reading it.
    pub fn upsert_too_large(&mut self, path: &str, size: u64) {
        match refuse_too_large(path, size) {
            Some(parsed) => {
                if parsed.role.is_none() {
                    self.dirty_all = true;
                }
                self.files.insert(path.to_owned(), parsed);
                self.touch(path);
            }
            None => {
                if self.files.remove(path).is_some() {
                    self.touch(path);
                }
            }
        }
    }

    /// Forgets a deleted file.
    pub fn remove(&mut self, path: &str) {
        if let Some(old) = self.files.remove(path) {
            if old.role.is_none() {
                self.dirty_all = true;
            }
            self.touch(path);
        }
    }

    /// The names (file stems) of the status files added, changed or removed
    /// since the last call, so a reader that keeps what it derived from
    /// them looks again at those alone.
    pub fn take_status_touches(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.status_touched)
            .into_iter()
            .filter_map(|path| path.strip_prefix("status/").and_then(|f| f.strip_suffix(".yaml")).map(str::to_owned))
            .collect()
    }

    /// Number of files Hadron reads (ignored files are not counted).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no Hadron file is known.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Brings the desired state up to date with the files and returns it.
    pub fn refresh(&mut self) -> &Loaded {
        if self.dirty_all || !self.fresh {
            let (loaded, bad_agents) = desired::assemble(&self.files);
            self.cache = loaded;
            self.bad_agents = bad_agents;
            self.dirty_all = false;
            self.dirty.clear();
            self.fresh = true;
            return &self.cache;
        }
        if self.dirty.is_empty() {
            return &self.cache;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        // Approvals depend on their request: re-check those of changed requests.
        let changed_requests: Vec<String> =
            dirty.iter().filter_map(|p| p.strip_prefix("requests/").and_then(|f| f.strip_suffix(".yaml")).map(str::to_owned)).collect();
        for name in &changed_requests {
            let prefix = format!("approvals/{name}/");
            dirty.extend(self.files.range(prefix.clone()..).take_while(|(p, _)| p.starts_with(&prefix)).map(|(p, _)| p.clone()));
        }
        let cache = &mut self.cache;
        cache.diagnostics.retain(|d| !dirty.contains(&d.path));
        for path in &dirty {
            let segs: Vec<&str> = path.split('/').collect();
            let stem = segs.last().and_then(|f| f.strip_suffix(".yaml")).unwrap_or("");
            match segs[0] {
                "requests" => {
                    cache.desired.requests.remove(stem);
                    cache.desired.invalid_requests.remove(stem);
                }
                "approvals" if segs.len() == 3 => {
                    cache.desired.approvals.retain(|(r, g), _| !(r == segs[1] && g == stem));
                }
                "status" => {
                    cache.desired.statuses.remove(stem);
                }
                _ => {}
            }
        }
        for path in dirty.iter().filter(|p| p.starts_with("requests/")) {
            if let Some(file) = self.files.get(path) {
                desired::eval_request(path, file, cache, &self.bad_agents);
            }
        }
        for path in dirty.iter().filter(|p| !p.starts_with("requests/")) {
            if let Some(file) = self.files.get(path) {
                match file.role {
                    Some(FileRole::Approval { .. }) => desired::eval_approval(path, file, cache),
                    Some(FileRole::Status) => desired::eval_status(file, cache),
                    _ => {}
                }
            }
        }
        desired::sort_diagnostics(&mut cache.diagnostics);
        &self.cache
    }

    /// The desired state as of the last [`Catalog::refresh`].
    pub fn loaded(&self) -> &Loaded {
        &self.cache
    }

    /// Refreshes and returns a copy of the desired state.
    pub fn snapshot(&mut self) -> Loaded {
        self.refresh().clone()
    }

    /// Loads a whole set of files at once.
    pub fn load<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Loaded {
        let mut catalog = Catalog::new();
        let items: Vec<(&str, &[u8])> = files.into_iter().collect();
        catalog.upsert_all(&items);
        catalog.snapshot()
    }
}
