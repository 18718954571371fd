//! [`WorkerError`]: why a worker run failed, with the stable reason that
//! becomes `RunResult::reason`.

use std::path::Path;

/// Reason of an attempt whose CLI reported a failure another attempt may get past.
pub const AGENT_FAILED: &str = "AgentFailed";

/// Why a worker run failed. [`WorkerError::reason`] becomes `RunResult::reason`.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// `run.json` is missing, unreadable or asks for something invalid.
    #[error("invalid run spec: {0}")]
    InvalidRunSpec(String),
    /// A secret the agent needs is not in the worker's environment.
    #[error(
        "secret `{secret}` for the agent's variable `{variable}` is not available to the worker: \
         the operator must allow it (`hadron up|serve --agent-secret {secret}` or HADRON_AGENT_SECRETS) and set it in Hadron's environment"
    )]
    SecretMissing {
        /// The agent's variable.
        variable: String,
        /// Where the value should have come from.
        secret: String,
    },
    /// The target repo could not be cloned or fetched.
    #[error("cannot clone or fetch the target repo: {0}")]
    CloneFailed(String),
    /// Neither the work branch nor the base branch exists on the remote.
    #[error("the base branch `{0}` does not exist on the remote")]
    BaseBranchMissing(String),
    /// The prompt or a command element does not render.
    #[error("template error: {0}")]
    TemplateFailed(String),
    /// The agent command could not be started.
    #[error("cannot start the agent `{program}`: {detail}")]
    AgentSpawnFailed {
        /// Program name.
        program: String,
        /// OS error.
        detail: String,
    },
    /// The agent exited with a non-zero status or was killed by a signal.
    #[error("the agent {status}; see {log}")]
    AgentExitNonZero {
        /// `exited with code N` or `was killed by signal N`.
        status: String,
        /// Log file.
        log: String,
    },
    /// The agent's CLI reported a failure of its own (Claude `is_error`,
    /// Codex `turn.failed`, an OpenCode `error`, a Gemini exit code),
    /// whatever its exit status.
    #[error("{cli} reported {reason}: {message}{}", if *retryable { "" } else { " (the CLI says this is final: not retried)" })]
    AgentReportedFailure {
        /// The CLI (`claude`, `codex`, …).
        cli: &'static str,
        /// The CLI's own reason (`error_max_turns`, `turn.failed`, `exit 53 (turn limit)`, …).
        reason: String,
        /// What the CLI said (redacted).
        message: String,
        /// Whether another attempt may help.
        retryable: bool,
    },
    /// A streaming CLI used more than the request's remaining budget and was stopped.
    #[error("the agent {0}; it was stopped")]
    BudgetExceeded(String),
    /// The agent ran past its wall-time limit and was killed.
    #[error("the agent ran longer than its wall-time limit of {0} s and was killed")]
    WallTimeExceeded(u64),
    /// The settings require a sandbox and this machine cannot make one.
    #[error(
        "the agent was not run: hadron.yaml sets `spec.workers.sandbox: required` and {0}; fix the machine, or set `sandbox: preferred` to run agents unconfined"
    )]
    SandboxUnavailable(String),
    /// The agent wrote more into its workspace than its budget allows.
    #[error(
        "the agent wrote {written} into its workspace and /tmp, over its budget of {limit} (`budget.maxWorkspaceSize`); biggest files: {biggest}"
    )]
    WorkspaceTooLarge {
        /// What it wrote, e.g. `2.0 GiB`.
        written: String,
        /// The budget, e.g. `1.0 GiB`.
        limit: String,
        /// The biggest files with their sizes.
        biggest: String,
    },
    /// The agent changed nothing although the stage requires a change.
    #[error("the agent changed no file and the stage requires a change")]
    NoChange,
    /// A local git step (checkout, commit, rebase) failed.
    #[error("git failed: {0}")]
    GitFailed(String),
    /// The push was rejected and retrying did not help.
    #[error("push failed: {0}")]
    PushFailed(String),
    /// A file in the run dir could not be written or read.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The run was cancelled (written by a driver).
    #[error("cancelled")]
    Cancelled,
}

impl WorkerError {
    /// Stable CamelCase reason for status conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::InvalidRunSpec(_) => "InvalidRunSpec",
            WorkerError::SecretMissing { .. } => "SecretMissing",
            WorkerError::CloneFailed(_) => "CloneFailed",
            WorkerError::BaseBranchMissing(_) => "BaseBranchMissing",
            WorkerError::TemplateFailed(_) => "TemplateFailed",
            WorkerError::AgentSpawnFailed { .. } => "AgentSpawnFailed",
            WorkerError::AgentExitNonZero { .. } => "AgentExitNonZero",
            WorkerError::AgentReportedFailure { retryable: true, .. } => AGENT_FAILED,
            WorkerError::AgentReportedFailure { retryable: false, .. } => crate::attempt::AGENT_FAILED_FINAL,
            WorkerError::BudgetExceeded(_) => "BudgetExceeded",
            WorkerError::WallTimeExceeded(_) => "WallTimeExceeded",
            WorkerError::SandboxUnavailable(_) => "SandboxUnavailable",
            WorkerError::WorkspaceTooLarge { .. } => "WorkspaceTooLarge",
            WorkerError::NoChange => "NoChange",
            WorkerError::GitFailed(_) => "GitFailed",
            WorkerError::PushFailed(_) => "PushFailed",
            WorkerError::Io { .. } => "Io",
            WorkerError::Cancelled => "Cancelled",
        }
    }

    pub(super) fn io(path: &Path, source: std::io::Error) -> WorkerError {
        WorkerError::Io { path: path.display().to_string(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_stable() {
        assert_eq!(WorkerError::NoChange.reason(), "NoChange");
        assert_eq!(WorkerError::WallTimeExceeded(1).reason(), "WallTimeExceeded");
        assert_eq!(WorkerError::SecretMissing { variable: "A".into(), secret: "B".into() }.reason(), "SecretMissing");
        let failed = |retryable| WorkerError::AgentReportedFailure {
            cli: "gemini",
            reason: "exit 53 (turn limit)".into(),
            message: "turn limit".into(),
            retryable,
        };
        assert_eq!((failed(true).reason(), failed(false).reason()), ("AgentFailed", "AgentFailedFinal"));
        assert_eq!(failed(false).to_string(), "gemini reported exit 53 (turn limit): turn limit (the CLI says this is final: not retried)");
    }
}
