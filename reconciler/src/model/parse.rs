//! Parsing one file: where it sits decides what it must hold; the YAML is
//! read under a budget, typed, and checked on its own. Pure: the same path
//! and bytes always give the same [`ParsedFile`].

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_saphyr::{Error as YamlError, Options, Spanned};

use super::diag::{Code, Diagnostic, Severity};
use super::file::{FileRole, Finding, Object, did_you_mean};
use super::kinds::{Agent, Approval, ChangeRequest, RequestStatus, Settings};
use super::spans::Node;
use super::validate::{check_object, header_findings, sanitize_status};

/// Files larger than this are refused without being parsed.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// What one file gave.
#[derive(Debug, Clone)]
pub struct ParsedFile {
    /// Role by path; `None` when the path itself is wrong.
    pub role: Option<FileRole>,
    /// The file name without `.yaml` (the name the object must have).
    pub stem: String,
    /// The object, when the file parsed and passed its own checks.
    pub object: Option<Object>,
    /// Problems found in this file alone.
    pub diagnostics: Vec<Diagnostic>,
    /// What locates its cross-file problems later.
    source: Source,
}

/// What a parsed file keeps to locate its cross-file problems (an agent
/// deleted since, a gate's `after` that names no stage).
#[derive(Debug, Clone, Default)]
enum Source {
    /// Nothing: the file did not parse, or has no cross-file problems (a
    /// status file, one Hadron recorded as it wrote it).
    #[default]
    Nothing,
    /// The fields such problems point at, found by a scan of a request's
    /// text instead of keeping it.
    Positions(super::positions::Positions),
    /// The text itself (when a scan was not sure of the layout, and for
    /// every other kind of file).
    Text(Arc<str>),
}

/// Decides what a path is. `Ok(None)` means Hadron ignores the file
/// (a README, a target-repo seed, CI config …).
pub fn classify(path: &str) -> Result<Option<(FileRole, String)>, Diagnostic> {
    let segs: Vec<&str> = path.split('/').collect();
    let unclean = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.contains('\0')
        || segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..");
    if unclean {
        return Err(Diagnostic::file_error(
            path,
            Code::InvalidPath,
            format!("`{path}` is not a clean relative path"),
            "paths in a control repo are relative, `/`-separated, with no empty, `.` or `..` parts; move the file",
        ));
    }
    let yaml_stem = |file: &str| -> Result<Option<String>, Diagnostic> {
        if let Some(stem) = file.strip_suffix(".yaml") {
            Ok(Some(stem.to_owned()))
        } else if let Some(stem) = file.strip_suffix(".yml") {
            Err(Diagnostic::file_error(
                path,
                Code::WrongExtension,
                format!("`{path}` ends in `.yml`, so Hadron would not read it"),
                format!("rename it to `{stem}.yaml`"),
            ))
        } else {
            Ok(None)
        }
    };
    let folder_depth = |role: FileRole, depth: usize, hint: &str| -> Result<Option<(FileRole, String)>, Diagnostic> {
        if segs.len() != depth {
            if yaml_stem(segs[segs.len() - 1]).ok().flatten().is_none() {
                return Ok(None);
            }
            return Err(Diagnostic::file_error(
                path,
                Code::InvalidPath,
                format!("`{path}` is not where a {} lives", role.kind()),
                format!("{} files live at `{hint}`; move the file there", role.kind()),
            ));
        }
        Ok(yaml_stem(segs[depth - 1])?.map(|stem| (role, stem)))
    };
    match segs[0] {
        "hadron.yaml" if segs.len() == 1 => Ok(Some((FileRole::Settings, "hadron".to_owned()))),
        "hadron.yml" if segs.len() == 1 => Err(Diagnostic::file_error(
            path,
            Code::WrongExtension,
            "`hadron.yml` ends in `.yml`, so Hadron would not read it",
            "rename it to `hadron.yaml`",
        )),
        "agents" => folder_depth(FileRole::Agent, 2, "agents/<name>.yaml"),
        "requests" => folder_depth(FileRole::Request, 2, "requests/<name>.yaml"),
        "status" => folder_depth(FileRole::Status, 2, "status/<name>.yaml"),
        "approvals" => folder_depth(
            FileRole::Approval { request: segs.get(1).map(|s| (*s).to_owned()).unwrap_or_default() },
            3,
            "approvals/<request>/<gate>.yaml",
        ),
        _ => Ok(None),
    }
}

/// The parser options: bounded in every dimension so hostile YAML (alias
/// bombs, deep nesting, huge documents) is refused quickly.
pub(crate) fn yaml_options() -> Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 32;
    budget.max_nodes = 50_000;
    budget.max_events = 200_000;
    budget.max_aliases = 200;
    budget.max_anchors = 200;
    budget.max_documents = 2;
    budget.max_total_scalar_bytes = 2 * MAX_FILE_BYTES;
    budget.max_merge_keys = 100;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 20_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options.with_snippet = false;
    options
}

/// Parses one file. Pure: the same input always gives the same result.
pub fn parse_file(path: &str, bytes: &[u8]) -> Option<ParsedFile> {
    let (role, stem) = match classify(path) {
        Ok(Some(found)) => found,
        Ok(None) => return None,
        Err(diag) => {
            return Some(ParsedFile { role: None, stem: String::new(), object: None, diagnostics: vec![diag], source: Source::Nothing });
        }
    };
    let mut file =
        ParsedFile { role: Some(role.clone()), stem: stem.clone(), object: None, diagnostics: Vec::new(), source: Source::Nothing };
    if bytes.len() > MAX_FILE_BYTES {
        file.diagnostics.push(too_large(path, bytes.len() as u64));
        return Some(file);
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let (line, column) = line_col(bytes, e.valid_up_to());
            let mut d = Diagnostic::file_error(
                path,
                Code::NotUtf8,
                format!("the file is not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
                "save the file as UTF-8",
            );
            d.line = line;
            d.column = column;
            file.diagnostics.push(d);
            return Some(file);
        }
    };
    let mut sanitized = Vec::new();
    let parsed = match &role {
        FileRole::Settings => parse_kind::<Settings>(path, text, &role).map(|s| Object::Settings(Arc::new(s))),
        FileRole::Agent => parse_kind::<Agent>(path, text, &role).map(|s| Object::Agent(Arc::new(s))),
        FileRole::Request => parse_kind::<ChangeRequest>(path, text, &role).map(|s| Object::Request(Arc::new(s))),
        FileRole::Approval { .. } => parse_kind::<Approval>(path, text, &role).map(|s| Object::Approval(Arc::new(s))),
        FileRole::Status => parse_kind::<RequestStatus>(path, text, &role).map(|mut s| {
            sanitized = sanitize_status(&mut s);
            Object::Status(Arc::new(s))
        }),
    };
    let object = match parsed {
        Ok(object) => object,
        Err(diag) => {
            file.diagnostics.push(diag);
            return Some(file);
        }
    };
    let mut findings = check_object(&object, &role, &stem);
    findings.extend(sanitized);
    let text: Arc<str> = Arc::from(text);
    file.diagnostics = resolve(path, &text, findings);
    // Settings with errors still give their defaults (clamped where a value
    // is out of range), so one bad field does not invalidate every request.
    // A status file whose only errors are entries Hadron cannot have written
    // keeps its other entries: those entries are removed already.
    let only_bad_entries =
        role == FileRole::Status && file.diagnostics.iter().filter(|d| d.is_error()).all(|d| d.code == Code::InvalidStatusEntry);
    if !file.diagnostics.iter().any(Diagnostic::is_error) || role == FileRole::Settings || only_bad_entries {
        file.object = Some(object);
    }
    // Status files have no cross-file problems to locate later: 10,000 of
    // them need not keep their text; nor do requests whose fields could be
    // found by a scan of theirs.
    file.source = match &file.object {
        _ if role == FileRole::Status => Source::Nothing,
        Some(Object::Request(request)) => {
            match super::positions::request_fields(&text, request.spec.agent.is_some(), request.spec.gates.len()) {
                Some(positions) => Source::Positions(positions),
                None => Source::Text(text),
            }
        }
        _ => Source::Text(text),
    };
    Some(file)
}

/// A status file Hadron itself rendered and published, recorded without
/// reading back the text it was written from. `None` when the file would not
/// be recorded exactly as is (a path that is not a status file's, a name
/// that is not the path's, or anything [`parse_file`]'s checks would
/// report): parse its text then.
pub fn own_status(path: &str, status: Arc<RequestStatus>) -> Option<ParsedFile> {
    let Ok(Some((role @ FileRole::Status, stem))) = classify(path) else { return None };
    let object = Object::Status(status.clone());
    let mut sanitized = (*status).clone();
    if !check_object(&object, &role, &stem).is_empty() || !sanitize_status(&mut sanitized).is_empty() || sanitized != *status {
        return None;
    }
    Some(ParsedFile { role: Some(role), stem, object: Some(object), diagnostics: Vec::new(), source: Source::Nothing })
}

/// What a file known to be over [`MAX_FILE_BYTES`] gives, without reading
/// it; `None` when Hadron ignores the path.
pub(crate) fn refuse_too_large(path: &str, size: u64) -> Option<ParsedFile> {
    match classify(path) {
        Ok(Some((role, stem))) => {
            Some(ParsedFile { role: Some(role), stem, object: None, diagnostics: vec![too_large(path, size)], source: Source::Nothing })
        }
        Ok(None) => None,
        Err(diag) => Some(ParsedFile { role: None, stem: String::new(), object: None, diagnostics: vec![diag], source: Source::Nothing }),
    }
}

fn too_large(path: &str, size: u64) -> Diagnostic {
    Diagnostic::file_error(
        path,
        Code::FileTooLarge,
        format!("the file is {size} bytes; the limit is {MAX_FILE_BYTES} (1 MiB)"),
        "control-repo files describe work, they do not carry it: move large text into the target repo and refer to it",
    )
}

/// Turns findings (field paths) into diagnostics (lines and columns),
/// parsing the span tree only when there is something to locate.
pub(crate) fn resolve(path: &str, text: &str, findings: Vec<Finding>) -> Vec<Diagnostic> {
    if findings.is_empty() {
        return Vec::new();
    }
    let tree: Option<Spanned<Node>> = serde_saphyr::from_str_with_options(text, yaml_options()).ok();
    findings
        .into_iter()
        .map(|f| {
            let at = tree.as_ref().map_or((1, 1), |t| Node::locate(t, &f.field));
            diagnostic_at(path, f, at)
        })
        .collect()
}

/// A finding as a diagnostic at `(line, column)` of `path`.
fn diagnostic_at(path: &str, f: Finding, (line, column): (u64, u64)) -> Diagnostic {
    Diagnostic {
        path: path.to_owned(),
        line,
        column,
        severity: f.severity,
        code: f.code,
        field: Some(f.field.to_string()).filter(|s| !s.is_empty()),
        message: f.message,
        help: f.help,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(bytes: &[u8], offset: usize) -> (u64, u64) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() as u64 + 1;
    (line, column)
}

/// Just enough of any file to tell a misplaced kind from a broken file.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

fn parse_kind<T: DeserializeOwned>(path: &str, text: &str, role: &FileRole) -> Result<T, Diagnostic> {
    match serde_saphyr::from_str_with_options::<T>(text, yaml_options()) {
        Ok(value) => Ok(value),
        Err(err) => {
            // The typed parse stops at the first mismatch, which can hide an
            // alias bomb or deep nesting further down: walk the whole
            // document under the same budget to name the real problem.
            if let Err(walk) = serde_saphyr::from_str_with_options::<serde::de::IgnoredAny>(text, yaml_options()) {
                let diag = yaml_error(path, &walk);
                if diag.code == Code::YamlTooComplex {
                    return Err(diag);
                }
            }
            // A wrong kind or apiVersion explains a cascade of unknown fields
            // better than the first of them does.
            if let Ok(header) = serde_saphyr::from_str_with_options::<Header>(text, yaml_options()) {
                let findings = header_findings(header.api_version.as_deref(), header.kind.as_deref(), role);
                if let Some(first) = resolve(path, text, findings).into_iter().next() {
                    return Err(first);
                }
            }
            Err(yaml_error(path, &err))
        }
    }
}

/// Maps a YAML or serde error to one diagnostic with a fix hint.
fn yaml_error(path: &str, err: &YamlError) -> Diagnostic {
    let outer = err.without_snippet();
    let (line, column) = outer.location().filter(|l| l.line() > 0).map_or((1, 1), |l| (l.line(), l.column().max(1)));
    // An error met while replaying an alias wraps the real one.
    let mut err = outer;
    while let YamlError::AliasError { error, .. } = err {
        err = error.without_snippet();
    }
    let (code, message, help) = match err {
        YamlError::SerdeUnknownField { field, expected, .. } => {
            let help = match did_you_mean(field, expected) {
                Some(best) => format!("did you mean `{best}`? (fields here: {})", list(expected)),
                None => format!("remove it; fields here: {}", list(expected)),
            };
            (Code::UnknownField, format!("unknown field `{field}`"), help)
        }
        YamlError::SerdeMissingField { field, .. } => {
            (Code::MissingField, format!("missing field `{field}`"), format!("add `{field}:` here (see schemas/ for what it holds)"))
        }
        YamlError::SerdeUnknownVariant { variant, expected, .. } => {
            let help = match did_you_mean(variant, expected) {
                Some(best) => format!("did you mean `{best}`? (allowed: {})", list(expected)),
                None => format!("use one of: {}", list(expected)),
            };
            (Code::WrongType, format!("`{variant}` is not an allowed value"), help)
        }
        YamlError::SerdeInvalidType { unexpected, expected, .. } | YamlError::SerdeInvalidValue { unexpected, expected, .. } => {
            (Code::WrongType, format!("expected {expected}, found {unexpected}"), format!("write {expected} here"))
        }
        YamlError::DuplicateMappingKey { key, .. } => {
            let key = key.clone().unwrap_or_default();
            (Code::DuplicateName, format!("key `{key}` appears twice in one mapping"), "keep one of them".to_owned())
        }
        YamlError::MultipleDocuments { .. } => (
            Code::MultipleDocuments,
            "the file holds more than one YAML document".to_owned(),
            "put one object per file: split at the `---` line".to_owned(),
        ),
        YamlError::Eof { .. } => {
            return Diagnostic::file_error(
                path,
                Code::EmptyFile,
                "the file holds no YAML document",
                "write the object (see example-repo/) or delete the file",
            );
        }
        YamlError::Budget { breach, .. } => (
            Code::YamlTooComplex,
            format!("the YAML is too complex to accept ({breach:?})"),
            "write the object plainly: no deep nesting, no alias chains".to_owned(),
        ),
        YamlError::AliasReplayLimitExceeded { .. }
        | YamlError::AliasExpansionLimitExceeded { .. }
        | YamlError::AliasReplayStackDepthExceeded { .. }
        | YamlError::AliasReplayCounterOverflow { .. } => (
            Code::YamlTooComplex,
            "YAML aliases expand too far (an alias bomb?)".to_owned(),
            "write values out instead of chaining anchors and aliases".to_owned(),
        ),
        YamlError::InvalidScalar { ty, .. } => {
            let want = scalar_name(ty);
            (Code::WrongType, format!("this value is not {want}"), format!("write {want} here"))
        }
        YamlError::Message { msg, .. } if msg.contains("untagged enum AgentNetwork") => (
            Code::WrongType,
            "`network` is not `none`, `host` or an allow list".to_owned(),
            "write `network: none` (the default), `network: host`, or `network: {allow: [\"api.anthropic.com:443\"]}`".to_owned(),
        ),
        YamlError::Message { msg, .. } => (Code::WrongType, msg.clone(), "correct the value as the message says".to_owned()),
        YamlError::SerdeInvalidLength { len, expected, .. } => {
            (Code::WrongType, format!("{len} elements where {expected} was expected"), format!("write {expected} here"))
        }
        other => (
            Code::YamlSyntax,
            format!("not valid YAML: {other}"),
            "fix the YAML syntax at this position (check indentation, quotes and colons)".to_owned(),
        ),
    };
    Diagnostic { path: path.to_owned(), line, column, severity: Severity::Error, code, field: None, message, help }
}

/// A person's name for a Rust scalar type in an error.
fn scalar_name(ty: &str) -> &'static str {
    match ty {
        "bool" => "`true` or `false`",
        "f32" | "f64" => "a number",
        t if t.starts_with('u') => "a whole number, zero or more",
        t if t.starts_with('i') => "a whole number",
        _ => "a value of the right type",
    }
}

fn list(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// Locates a field in a file for cross-file diagnostics: by the positions
/// found when it was parsed, else in its text.
pub(crate) fn locate_in(path: &str, file: &ParsedFile, findings: Vec<Finding>) -> Vec<Diagnostic> {
    let positions = match &file.source {
        Source::Positions(positions) => positions,
        Source::Text(text) => return resolve(path, text, findings),
        Source::Nothing => return resolve(path, "", findings),
    };
    findings
        .into_iter()
        .map(|f| {
            let at = super::positions::lookup(positions, &f.field.to_string()).unwrap_or((1, 1));
            diagnostic_at(path, f, at)
        })
        .collect()
}
