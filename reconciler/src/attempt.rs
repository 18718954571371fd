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

/// The reason an attempt fails with when its usage report is refused.
pub const INVALID_USAGE_REPORT: &str = "InvalidUsageReport";
/// Reason of an attempt whose agent CLI reported a failure it calls final
/// (authentication, bad input, its own turn or budget limit): not retried.
pub const AGENT_FAILED_FINAL: &str = "AgentFailedFinal";

/// Most bytes of a summary (or a result's message) kept, marker included:
/// what the status file, the approval branch and the dashboard carry.
pub const SUMMARY_MAX_BYTES: usize = 4 << 10;
/// Room [`cap_summary`] leaves for its marker.
const SUMMARY_MARKER_BYTES: usize = 64;

/// `text` if it fits [`SUMMARY_MAX_BYTES`]; else its start, cut on a
/// character boundary, and a marker saying how much there was:
/// `… [cut: 3.0 MiB reported, 4.0 KiB kept]`. The result never exceeds
/// [`SUMMARY_MAX_BYTES`].
pub fn cap_summary(text: &str) -> String {
    cap_text(text, SUMMARY_MAX_BYTES)
}

/// [`cap_summary`] for any bound of at least 128 bytes: `text` if it fits
/// `max` bytes, else its start and the marker, never more than `max` bytes.
pub fn cap_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let kept = text.floor_char_boundary(max.saturating_sub(SUMMARY_MARKER_BYTES));
    format!("{}… [cut: {} reported, {} kept]", &text[..kept], human_bytes(text.len() as u64), human_bytes(kept as u64))
}

/// A size for people: `1.5 GiB`, `300 MiB`, `12 KiB`, `7 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
