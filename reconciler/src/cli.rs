//! Command implementations that the thin `main` dispatches to. Each returns
//! the process exit code so tests can call them directly.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::{Catalog, Diagnostic, Loaded, MAX_FILE_BYTES, load::classify};
use crate::redact::inert_for_terminal;
use crate::source::{Blob, PathFilter};

/// Errors of the CLI commands themselves (not of the files they check).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file or folder could not be read.
    #[error("cannot read `{path}`: {source}; check that it exists and is readable")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A git revision could not be read.
    #[error("cannot read revision `{rev}` of {dir}: {message}; pass --against with a commit, branch or tag of that repository")]
    Git {
        /// The folder whose repository was read.
        dir: PathBuf,
        /// The revision asked for.
        rev: String,
        /// What went wrong.
        message: String,
    },
    /// A file could not be written.
    #[error("cannot write `{path}`: {source}; check the folder exists and is writable")]
    Write {
        /// What could not be written.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl CliError {
    /// Stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            CliError::Read { .. } => "ReadFailed",
            CliError::Git { .. } => "GitFailed",
            CliError::Write { .. } => "WriteFailed",
        }
    }
}

/// Reads every file of a control-repo folder that Hadron would read, as
/// `(relative path, bytes)`, into a catalog. Hidden folders (`.git`, `.hadron`)
/// and symbolic links are skipped; files over the size limit are recorded
/// without being read in full.
pub fn catalog_from_dir(root: &Path) -> Result<(Catalog, usize), CliError> {
    let mut catalog = Catalog::new();
    let mut stack = vec![PathBuf::new()];
    let mut count = 0;
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = fs::read_dir(&dir).map_err(|source| CliError::Read { path: dir.clone(), source })?;
        let mut entries: Vec<_> = entries.collect::<Result<_, _>>().map_err(|source| CliError::Read { path: dir.clone(), source })?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || name == "target" {
                continue;
            }
            let file_type = entry.file_type().map_err(|source| CliError::Read { path: entry.path(), source })?;
            let rel_path = rel.join(name);
            let key = rel_path.to_string_lossy().replace('\\', "/");
            if file_type.is_dir() {
                stack.push(rel_path);
            } else if file_type.is_file() && !matches!(classify(&key), Ok(None)) {
                count += 1;
                let path = entry.path();
                let file = fs::File::open(&path).map_err(|source| CliError::Read { path: path.clone(), source })?;
                let size = file.metadata().map_err(|source| CliError::Read { path: path.clone(), source })?.len();
                if size > MAX_FILE_BYTES as u64 {
                    catalog.upsert_too_large(&key, size);
                    continue;
                }
                let mut bytes = Vec::with_capacity(size as usize);
                file.take(MAX_FILE_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|source| CliError::Read { path: path.clone(), source })?;
                catalog.upsert(&key, &bytes);
            }
        }
    }
    Ok((catalog, count))
}

/// The control repo's files as committed at `rev` in the git repository
/// holding `dir` (`dir` may be a folder inside its work tree), and the
/// commit's id.
pub fn catalog_at_rev(dir: &Path, rev: &str) -> Result<(Catalog, String), CliError> {
    let fail = |message: String| CliError::Git { dir: dir.to_owned(), rev: rev.to_owned(), message };
    let repo = gix::discover(dir).map_err(|e| fail(format!("not in a git repository ({e})")))?;
    let dir_abs = std::path::absolute(dir).map_err(|source| CliError::Read { path: dir.to_owned(), source })?;
    let top = repo.workdir().and_then(|w| std::path::absolute(w).ok()).unwrap_or_else(|| dir_abs.clone());
    let prefix: Vec<String> =
        dir_abs.strip_prefix(&top).map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect()).unwrap_or_default();
    let id = repo.rev_parse_single(rev).map_err(|e| fail(e.to_string()))?;
    let commit = id.object().map_err(|e| fail(e.to_string()))?.peel_to_commit().map_err(|e| fail(e.to_string()))?;
    let commit_id = commit.id.to_string();
    let mut root = commit.tree_id().map_err(|e| fail(e.to_string()))?.detach();
    // DIR inside the work tree: its folder at REV, named as from DIR.
    if !prefix.is_empty() {
        let parts: Vec<&str> = prefix.iter().map(String::as_str).collect();
        root = match crate::gates::history::entry_at(&repo, root, &parts, true).map_err(|e| fail(e.to_string()))? {
            Some(tree) => tree,
            None => return Ok((Catalog::new(), commit_id)),
        };
    }
    let files =
        crate::source::tree_files(&repo, root, &PathFilter::hadron(), MAX_FILE_BYTES as u64, &mut 0).map_err(|e| fail(e.to_string()))?;
    let mut catalog = Catalog::new();
    for (path, blob) in &files {
        match blob {
            Blob::Data(bytes) => catalog.upsert(path, bytes),
            Blob::TooLarge { size } => catalog.upsert_too_large(path, *size),
        }
    }
    Ok((catalog, commit_id))
}

/// Output format of `hadron validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `path:line:col: error[Code]: message` lines for people.
    Text,
    /// One JSON document for machines.
    Json,
}

#[derive(Serialize)]
struct Report<'a> {
    files: usize,
    errors: usize,
    warnings: usize,
    diagnostics: &'a [Diagnostic],
}

/// `n word` with the word in the plural unless `n` is 1: `1 error`, `0 errors`.
pub fn count(n: usize, word: &str) -> String {
    if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") }
}

/// `hadron validate DIR`: exit 0 when clean, 1 on any error, 2 when the
/// folder cannot be read or the report cannot be written. A reader that goes
/// away early (`hadron validate | head`) is not an error: the exit code is
/// the validation's and nothing more is printed.
pub fn validate(dir: &Path, format: Format, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let (mut catalog, files) = match catalog_from_dir(dir) {
        Ok(found) => found,
        Err(e) => {
            let _ = writeln!(err, "error[{}]: {}", e.reason(), inert_for_terminal(&e.to_string()));
            return 2;
        }
    };
    let loaded: Loaded = catalog.snapshot();
    let errors = loaded.error_count();
    let warnings = loaded.diagnostics.len() - errors;
    let code = i32::from(errors > 0);
    let mut out = io::BufWriter::new(out);
    let written = match format {
        Format::Json => {
            let report = Report { files, errors, warnings, diagnostics: &loaded.diagnostics };
            // `io::Error::from` keeps the kind of a write error (a broken pipe).
            serde_json::to_writer_pretty(&mut out, &report).map_err(io::Error::from).and_then(|()| writeln!(out))
        }
        Format::Text => (|| {
            for d in &loaded.diagnostics {
                writeln!(out, "{d}")?;
            }
            let requests = loaded.desired.requests.len();
            let agents = loaded.desired.agents.len();
            if errors == 0 {
                writeln!(
                    out,
                    "ok: {}, {}, {}, {}",
                    count(files, "file"),
                    count(requests, "request"),
                    count(agents, "agent"),
                    count(warnings, "warning")
                )
            } else {
                writeln!(
                    out,
                    "{}, {} in {} ({}, {})",
                    count(errors, "error"),
                    count(warnings, "warning"),
                    count(files, "file"),
                    count(requests, "valid request"),
                    count(agents, "valid agent")
                )
            }
        })(),
    }
    .and_then(|()| out.flush());
    finish(written, out, err, code, "the report")
}

/// The exit code of a command that wrote `what` through `out`: `code`,
/// also when the reader went away (a broken pipe is not an error), else 2
/// with the write error on `err`.
fn finish(written: io::Result<()>, out: io::BufWriter<&mut dyn Write>, err: &mut dyn Write, code: i32, what: &str) -> i32 {
    // Drop what is still buffered: flushing it again would fail again.
    let _ = out.into_parts();
    match written {
        Ok(()) => code,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => code,
        Err(e) => {
            let _ = writeln!(err, "error[WriteFailed]: cannot write {what}: {}", inert_for_terminal(&e.to_string()));
            2
        }
    }
}

/// `hadron plan DIR [--against REV]`: what Hadron would do if the control
/// repo at DIR (its working tree, uncommitted files included) were merged
/// over REV (default `HEAD` when DIR is in a git repository; otherwise
/// every request counts as new unless its status file says otherwise).
/// What Hadron observed comes from the `status/` files. Exit codes as
/// `validate`: 0, 1 when any error, 2 when something cannot be read.
pub fn plan(dir: &Path, against: Option<&str>, format: Format, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    use crate::plan::preview;
    let (mut catalog, files) = match catalog_from_dir(dir) {
        Ok(found) => found,
        Err(e) => {
            let _ = writeln!(err, "error[{}]: {}", e.reason(), inert_for_terminal(&e.to_string()));
            return 2;
        }
    };
    let after: Loaded = catalog.snapshot();
    let in_git = gix::discover(dir).is_ok();
    let base = match (against, in_git) {
        (Some(rev), _) => Some(rev),
        (None, true) => Some("HEAD"),
        (None, false) => None,
    };
    let (before, base_id) = match base {
        Some(rev) => match catalog_at_rev(dir, rev) {
            Ok((mut c, id)) => (c.snapshot(), Some((rev.to_owned(), id))),
            // A repository with no commit yet: nothing was there before.
            Err(e) if against.is_none() => {
                tracing::debug!(error = %e, "no HEAD to compare with");
                (Loaded::default(), None)
            }
            Err(e) => {
                let _ = writeln!(err, "error[{}]: {}", e.reason(), inert_for_terminal(&e.to_string()));
                return 2;
            }
        },
        None => (Loaded::default(), None),
    };
    let observed = if after.desired.statuses.is_empty() { &before.desired.statuses } else { &after.desired.statuses };
    let foretold = preview::preview(&before.desired, &after.desired, observed);
    let errors = after.error_count();
    let warnings = after.diagnostics.len() - errors;
    let code = i32::from(errors > 0);
    let mut out = io::BufWriter::new(out);
    let against_text = base_id.as_ref().map(|(rev, id)| format!("{rev} ({})", &id[..id.len().min(12)]));
    let written = match format {
        Format::Json => {
            let report = serde_json::json!({
                "against": base_id.as_ref().map(|(rev, id)| serde_json::json!({ "rev": rev, "commit": id })),
                "files": files,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": &after.diagnostics,
                "plan": &foretold,
            });
            serde_json::to_writer_pretty(&mut out, &report).map_err(io::Error::from).and_then(|()| writeln!(out))
        }
        Format::Text => {
            let against = against_text.map(|a| format!("against {a}")).unwrap_or_else(|| "no git history: against nothing".to_owned());
            out.write_all(preview::render_text(&foretold, &after.diagnostics, &against).as_bytes())
        }
    }
    .and_then(|()| out.flush());
    finish(written, out, err, code, "the plan")
}

/// `hadron schema --out DIR`: writes one JSON Schema per kind. With
/// `check`, writes nothing and fails (exit 1) when a file differs.
pub fn schema(out_dir: &Path, check: bool, out: &mut dyn Write) -> Result<i32, CliError> {
    let mut stale = 0;
    if !check {
        fs::create_dir_all(out_dir).map_err(|source| CliError::Write { path: out_dir.to_owned(), source })?;
    }
    for (name, text) in crate::schema::all() {
        let path = out_dir.join(name);
        let current = fs::read_to_string(&path).unwrap_or_default();
        if current == text {
            continue;
        }
        if check {
            stale += 1;
            let _ = writeln!(
                out,
                "stale: {} (run `hadron schema --out {}`)",
                inert_for_terminal(&path.display().to_string()),
                inert_for_terminal(&out_dir.display().to_string())
            );
        } else {
            fs::write(&path, text).map_err(|source| CliError::Write { path: path.clone(), source })?;
            let _ = writeln!(out, "wrote {}", inert_for_terminal(&path.display().to_string()));
        }
    }
    Ok(i32::from(stale > 0))
}
