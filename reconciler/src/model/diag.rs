//! Diagnostics: one per problem, each with a file, line, column, a stable
//! code and a fix hint.

use std::fmt;

use serde::Serialize;

/// Stable diagnostic codes. The string form is used in `hadron validate`
/// output, in status conditions (`reason`), in metrics and in logs; never
/// rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Code {
    /// The file is not valid YAML.
    YamlSyntax,
    /// The file holds more than one YAML document.
    MultipleDocuments,
    /// The file is empty.
    EmptyFile,
    /// A field the kind does not have.
    UnknownField,
    /// A required field is missing.
    MissingField,
    /// A value of the wrong type or an invalid value for its field.
    WrongType,
    /// `apiVersion` is not `hadron.dev/v1alpha1`.
    WrongApiVersion,
    /// `kind` does not match the folder the file is in.
    KindMismatch,
    /// `metadata.name` (or another name) is not a DNS-1123 label.
    InvalidName,
    /// `metadata.name` differs from the file name.
    NameMismatch,
    /// Two objects of one kind share a name.
    DuplicateName,
    /// A request names an agent that has no file in `agents/`.
    UnknownAgent,
    /// An approval names a request that does not exist.
    UnknownRequest,
    /// An approval names a gate the request does not have.
    UnknownGate,
    /// A gate's `after` names no stage, or a stage/gate list is inconsistent.
    UnknownStage,
    /// Two stages (or two gates) of one request share a name.
    DuplicateStage,
    /// A request ends up with no stage at all.
    NoStages,
    /// A request lists no target repo.
    NoRepos,
    /// A budget limit is zero or negative.
    NonPositiveBudget,
    /// A number that must be positive is not (limits, concurrency, prices).
    NonPositiveValue,
    /// A target repo URL is not a URL git can clone.
    InvalidRepoUrl,
    /// A secret value is written inline where a reference is required.
    InlineSecret,
    /// An entry of an agent's `network.allow` is not a `host:port` pair.
    InvalidNetworkEntry,
    /// A handlebars template does not compile.
    InvalidTemplate,
    /// A handlebars template uses a variable (or helper) Hadron does not
    /// pass: it would fail to render.
    UnknownTemplateVariable,
    /// An agent command is empty.
    EmptyCommand,
    /// A field that only applies to another variant (e.g. `contexts` on an approval gate).
    FieldNotAllowed,
    /// The file is larger than 1 MiB.
    FileTooLarge,
    /// Too many aliases, nodes or nesting levels: the YAML is refused to protect the loop.
    YamlTooComplex,
    /// The file is not UTF-8.
    NotUtf8,
    /// The path is not a clean relative path, or not where the kind lives.
    InvalidPath,
    /// A YAML file in a Hadron folder with the wrong extension (`.yml`).
    WrongExtension,
    /// `hadron.yaml` is missing.
    MissingSettings,
    /// A request has no agent and `hadron.yaml` names no default agent.
    NoAgent,
    /// An entry of a status file that Hadron cannot have written (a commit
    /// that is not 40 hex digits, a worker name that does not match the
    /// entry, usage outside sane bounds): ignored, never trusted.
    InvalidStatusEntry,
    /// Text people write (a title, a description, a label or annotation) is
    /// longer than its limit.
    TooLong,
    /// An agent's `output` names a CLI its command does not run.
    OutputMismatch,
    /// An agent's command runs a CLI without the flags that keep it from
    /// waiting for a person (a permission or approval mode).
    MayWaitForPerson,
    /// An agent's `resume.command` does not name the session it continues
    /// (`{{sessionId}}`).
    ResumeWithoutSession,
}

impl Code {
    /// The stable string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "YamlSyntax",
            Code::MultipleDocuments => "MultipleDocuments",
            Code::EmptyFile => "EmptyFile",
            Code::UnknownField => "UnknownField",
            Code::MissingField => "MissingField",
            Code::WrongType => "WrongType",
            Code::WrongApiVersion => "WrongApiVersion",
            Code::KindMismatch => "KindMismatch",
            Code::InvalidName => "InvalidName",
            Code::NameMismatch => "NameMismatch",
            Code::DuplicateName => "DuplicateName",
            Code::UnknownAgent => "UnknownAgent",
            Code::UnknownRequest => "UnknownRequest",
            Code::UnknownGate => "UnknownGate",
            Code::UnknownStage => "UnknownStage",
            Code::DuplicateStage => "DuplicateStage",
            Code::NoStages => "NoStages",
            Code::NoRepos => "NoRepos",
            Code::NonPositiveBudget => "NonPositiveBudget",
            Code::NonPositiveValue => "NonPositiveValue",
            Code::InvalidRepoUrl => "InvalidRepoUrl",
            Code::InlineSecret => "InlineSecret",
            Code::InvalidNetworkEntry => "InvalidNetworkEntry",
            Code::InvalidTemplate => "InvalidTemplate",
            Code::UnknownTemplateVariable => "UnknownTemplateVariable",
            Code::EmptyCommand => "EmptyCommand",
            Code::FieldNotAllowed => "FieldNotAllowed",
            Code::FileTooLarge => "FileTooLarge",
            Code::YamlTooComplex => "YamlTooComplex",
            Code::NotUtf8 => "NotUtf8",
            Code::InvalidPath => "InvalidPath",
            Code::WrongExtension => "WrongExtension",
            Code::MissingSettings => "MissingSettings",
            Code::NoAgent => "NoAgent",
            Code::InvalidStatusEntry => "InvalidStatusEntry",
            Code::TooLong => "TooLong",
            Code::OutputMismatch => "OutputMismatch",
            Code::MayWaitForPerson => "MayWaitForPerson",
            Code::ResumeWithoutSession => "ResumeWithoutSession",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is not used; a request becomes `Invalid`.
    Error,
    /// Worth fixing; nothing is refused.
    Warning,
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Path of the file in the control repo, `/`-separated.
    pub path: String,
    /// 1-based line (1 when the problem is the whole file).
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// Error or warning.
    pub severity: Severity,
    /// Stable code.
    pub code: Code,
    /// Dotted path of the offending field, e.g. `spec.repos[1].url`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl Diagnostic {
    /// An error at the start of a file (for whole-file problems).
    pub fn file_error(path: &str, code: Code, message: impl Into<String>, help: impl Into<String>) -> Self {
        Diagnostic {
            path: path.to_owned(),
            line: 1,
            column: 1,
            severity: Severity::Error,
            code,
            field: None,
            message: message.into(),
            help: help.into(),
        }
    }

    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `path:line:col: error[Code]: message` then `  help: …`, like compilers print.
    /// Path, message and help are shown inert
    /// ([`inert_for_terminal`](crate::redact::inert_for_terminal)): a file
    /// name or a quoted value holding an ESC or a line break cannot forge a
    /// line (`ok: …`) of its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::redact::inert_for_terminal as inert;
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {sev}[{}]: {}", inert(&self.path), self.line, self.column, self.code, inert(&self.message))?;
        if !self.help.is_empty() {
            write!(f, "\n  help: {}", inert(&self.help))?;
        }
        Ok(())
    }
}
