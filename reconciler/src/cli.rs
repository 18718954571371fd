//! Command implementations that the thin `main` dispatches to. Each returns
//! the process exit code so tests can call them directly.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::{Catalog, Diagnostic, Loaded, MAX_FILE_BYTES, load::classify};

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
            let _ = writeln!(err, "error[{}]: {e}", e.reason());
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
    match written {
        Ok(()) => code,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            // Drop what is still buffered: flushing it again would fail again.
            let _ = out.into_parts();
            code
        }
        Err(e) => {
            let _ = out.into_parts();
            let _ = writeln!(err, "error[WriteFailed]: cannot write the report: {e}");
            2
        }
    }
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
            let _ = writeln!(out, "stale: {} (run `hadron schema --out {}`)", path.display(), out_dir.display());
        } else {
            fs::write(&path, text).map_err(|source| CliError::Write { path: path.clone(), source })?;
            let _ = writeln!(out, "wrote {}", path.display());
        }
    }
    Ok(i32::from(stale > 0))
}
