//! Attempts (one worker run each): their life cycle and the bounds of what
//! one attempt may report. Shared by `plan`, `store`, `workers` and `model`.

use serde::{Deserialize, Serialize};

/// State of one attempt (one worker run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AttemptState {
    /// Intent recorded; the worker may not have started yet.
    Pending,
    /// The worker is running.
    Running,
    /// It finished and pushed.
    Succeeded,
    /// It finished without success, or was lost.
    Failed,
    /// It was cancelled by Hadron.
    Cancelled,
}

impl AttemptState {
    /// Pending or Running.
    pub fn is_live(self) -> bool {
        matches!(self, AttemptState::Pending | AttemptState::Running)
    }

    /// The stable string.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Pending => "Pending",
            AttemptState::Running => "Running",
            AttemptState::Succeeded => "Succeeded",
            AttemptState::Failed => "Failed",
            AttemptState::Cancelled => "Cancelled",
        }
    }

    /// Parses [`AttemptState::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "Pending" => AttemptState::Pending,
            "Running" => AttemptState::Running,
            "Succeeded" => AttemptState::Succeeded,
            "Failed" => AttemptState::Failed,
            "Cancelled" => AttemptState::Cancelled,
            _ => return None,
        })
    }

    /// Every state, in life-cycle order.
    pub const ALL: [AttemptState; 5] = [Self::Pending, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled];

    /// Whether the attempt is over (no further transition is allowed).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The states an attempt may be in for an update to `self` to apply.
    ///
    /// `Pending` → `Pending`; `Pending | Running` → `Running`; and
    /// `Pending | Running` → any terminal state. A finished attempt is final.
    pub fn allowed_predecessors(self) -> &'static [AttemptState] {
        match self {
            Self::Pending => &[Self::Pending],
            Self::Running | Self::Succeeded | Self::Failed | Self::Cancelled => &[Self::Pending, Self::Running],
        }
    }
}

impl std::fmt::Display for AttemptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most input (or output) tokens one attempt may report. Far above what
/// any agent run uses; a larger figure is a broken or hostile report.
pub const MAX_TOKENS_PER_ATTEMPT: u64 = 1_000_000_000_000;

/// Most tokens, input plus output, one attempt may carry (a status file
/// records only the sum).
pub const MAX_TOTAL_TOKENS_PER_ATTEMPT: u64 = 2 * MAX_TOKENS_PER_ATTEMPT;

/// Most US dollars one attempt may report.
pub const MAX_COST_USD_PER_ATTEMPT: f64 = 1_000_000.0;

/// Whether a cost is one a single attempt may report.
pub fn cost_is_sane(cost: f64) -> bool {
    cost.is_finite() && (0.0..=MAX_COST_USD_PER_ATTEMPT).contains(&cost)
}
