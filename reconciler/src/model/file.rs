//! What a control-repo file is and what is wrong with it, as every later
//! step sees it: where it sits ([`FileRole`]), the object it holds
//! ([`Object`]), a problem located by field path ([`Finding`]), and the
//! "did you mean" of help texts.

use std::sync::Arc;

use super::diag::{Code, Severity};
use super::kinds::{Agent, Approval, ChangeRequest, RequestStatus, Settings};
use super::spans::FieldPath;

/// Where a file sits in the control repo, and so what kind it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRole {
    /// `hadron.yaml`.
    Settings,
    /// `agents/<name>.yaml`.
    Agent,
    /// `requests/<name>.yaml`.
    Request,
    /// `approvals/<request>/<gate>.yaml`.
    Approval {
        /// Request folder.
        request: String,
    },
    /// `status/<name>.yaml`.
    Status,
}

impl FileRole {
    /// The `kind` a file in this place must have.
    pub fn kind(&self) -> &'static str {
        match self {
            FileRole::Settings => "Settings",
            FileRole::Agent => "Agent",
            FileRole::Request => "ChangeRequest",
            FileRole::Approval { .. } => "Approval",
            FileRole::Status => "RequestStatus",
        }
    }
}

/// One parsed object.
#[derive(Debug, Clone)]
pub enum Object {
    /// From `hadron.yaml`.
    Settings(Arc<Settings>),
    /// From `agents/`.
    Agent(Arc<Agent>),
    /// From `requests/`.
    Request(Arc<ChangeRequest>),
    /// From `approvals/`.
    Approval(Arc<Approval>),
    /// From `status/`.
    Status(Arc<RequestStatus>),
}

/// A problem found in a parsed object, located by field path; the loader
/// turns it into a [`Diagnostic`] with line and column.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Offending field.
    pub field: FieldPath,
    /// Stable code.
    pub code: Code,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl Finding {
    /// An error at `field` (dotted path).
    pub fn error(field: &str, code: Code, message: impl Into<String>, help: impl Into<String>) -> Self {
        Finding { field: FieldPath::parse(field), code, severity: Severity::Error, message: message.into(), help: help.into() }
    }

    /// A warning at `field` (dotted path).
    pub fn warning(field: &str, code: Code, message: impl Into<String>, help: impl Into<String>) -> Self {
        Finding { severity: Severity::Warning, ..Finding::error(field, code, message, help) }
    }
}

/// The closest allowed name, when one is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(given: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (strsim::jaro_winkler(&given.to_ascii_lowercase(), &a.to_ascii_lowercase()), *a))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a)
}
