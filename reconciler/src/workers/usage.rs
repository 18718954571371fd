//! What an agent says it used: tokens, cost and a summary, read from the
//! `report.json` it may write (`HADRON_REPORT_FILE`) or, failing that, from
//! the last JSON object on its standard output (Claude Code's
//! `--output-format json` shape).
//!
//! Bounded: the report file is read up to [`REPORT_MAX_BYTES`] (a bigger one
//! is refused), the summary is cut to [`SUMMARY_MAX_BYTES`] with a marker
//! ([`cap_summary`]), and a figure that is not a number of at least 0 is
//! refused: the attempt fails with `InvalidUsageReport`, once (the planner
//! does not retry it).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;

use crate::model::kinds::Pricing;

pub use crate::attempt::{
    INVALID_USAGE_REPORT, MAX_COST_USD_PER_ATTEMPT, MAX_TOKENS_PER_ATTEMPT, MAX_TOTAL_TOKENS_PER_ATTEMPT, SUMMARY_MAX_BYTES, cap_summary,
    cost_is_sane,
};
/// Most bytes of `report.json` read: as much as the worker keeps of the
/// agent's standard output to find a report there. A bigger report is
/// refused (its figures cannot be read, and ignoring it would let an agent
/// hide what it spent behind a long summary).
pub const REPORT_MAX_BYTES: u64 = 8 << 20;

/// A usage report outside sane bounds: refused, never summed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UsageError {
    /// More tokens than [`MAX_TOKENS_PER_ATTEMPT`] in one direction.
    #[error("the agent reported {value} {what} tokens, more than the {MAX_TOKENS_PER_ATTEMPT} one attempt may use")]
    TooManyTokens {
        /// `input` or `output`.
        what: &'static str,
        /// The reported figure.
        value: u64,
    },
    /// A cost that is not a number, negative, or above [`MAX_COST_USD_PER_ATTEMPT`].
    #[error("the agent reported a cost of {0} USD, outside 0 ..= {MAX_COST_USD_PER_ATTEMPT}")]
    BadCost(f64),
    /// A figure (tokens or cost) that is not a number of at least 0.
    #[error("the agent reported `{field}` as {value}, which is not a number of at least 0")]
    NotAFigure {
        /// The report's field name.
        field: &'static str,
        /// What it held: the number, or only the kind of value.
        value: String,
    },
    /// `report.json` is bigger than [`REPORT_MAX_BYTES`].
    #[error("the agent's report file holds more than {REPORT_MAX_BYTES} bytes ({bytes}); Hadron does not read its figures")]
    ReportTooLarge {
        /// The file's size.
        bytes: u64,
    },
}

impl UsageError {
    /// Stable CamelCase reason: the attempt fails with it, and is not retried.
    pub fn reason(&self) -> &'static str {
        match self {
            UsageError::TooManyTokens { .. }
            | UsageError::BadCost(_)
            | UsageError::NotAFigure { .. }
            | UsageError::ReportTooLarge { .. } => INVALID_USAGE_REPORT,
        }
    }
}

/// Checks one attempt's reported usage against the bounds above.
pub fn check(tokens_in: u64, tokens_out: u64, cost_usd: f64) -> Result<(), UsageError> {
    if tokens_in > MAX_TOKENS_PER_ATTEMPT {
        return Err(UsageError::TooManyTokens { what: "input", value: tokens_in });
    }
    if tokens_out > MAX_TOKENS_PER_ATTEMPT {
        return Err(UsageError::TooManyTokens { what: "output", value: tokens_out });
    }
    if !cost_is_sane(cost_usd) {
        return Err(UsageError::BadCost(cost_usd));
    }
    Ok(())
}

/// Usage reported by an agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Input tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// Cost in USD as the agent reported it, if it did.
    pub cost_usd: Option<f64>,
    /// What the agent said it did (as reported: the result cuts it with
    /// [`cap_summary`] once secrets are redacted).
    pub summary: String,
    /// Why the report cannot be taken, if it cannot: the attempt fails with
    /// it (`InvalidUsageReport`) and none of its figures count.
    pub invalid: Option<UsageError>,
    /// Of `tokens_in`, how many were read from the vendor's prompt cache:
    /// priced at `pricing.cachedInputPerMillion` when the agent file gives
    /// it, else as input.
    pub tokens_cached: u64,
    /// The CLI's session (thread) id, when it printed one.
    pub session_id: Option<String>,
    /// The CLI's own failure signal, when it gave one (see
    /// [`adapters`](super::adapters)): the attempt fails with it although
    /// the CLI may have exited 0.
    pub failure: Option<CliFailure>,
}

/// A failure the agent's CLI reported in its own output or exit code.
#[derive(Debug, Clone, PartialEq)]
pub struct CliFailure {
    /// The CLI (`claude`, `codex`, …).
    pub cli: &'static str,
    /// The CLI's own reason, e.g. `error_max_turns`, `turn.failed`, `exit 53 (turn limit)`.
    pub reason: String,
    /// What the CLI said about it (redacted and cut before it is written).
    pub message: String,
    /// Whether another attempt may help (a rate limit, an overloaded or
    /// failing API), as opposed to a final failure (authentication, bad
    /// input, a turn or budget limit of the CLI's own).
    pub retryable: bool,
}

impl Usage {
    /// Reads `report.json` at `path`, at most [`REPORT_MAX_BYTES`] of it:
    /// `None` when there is no readable regular file there (a symlink or a
    /// FIFO is no report), a refused [`Usage`] when it is bigger.
    pub fn read_report_file(path: &Path) -> Option<Usage> {
        let file = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let mut bytes = Vec::new();
        file.take(REPORT_MAX_BYTES + 1).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 > REPORT_MAX_BYTES {
            let refused = UsageError::ReportTooLarge { bytes: meta.len().max(bytes.len() as u64) };
            return Some(Usage { invalid: Some(refused), ..Usage::default() });
        }
        Usage::from_report(std::str::from_utf8(&bytes).ok()?)
    }

    /// Reads Hadron's own report format: `tokensIn`, `tokensOut`, `costUSD`, `summary`.
    pub fn from_report(text: &str) -> Option<Usage> {
        let v: Value = serde_json::from_str(text).ok()?;
        let obj = v.as_object()?;
        let summary = obj.get("summary").and_then(Value::as_str).unwrap_or_default().to_owned();
        Some(Usage::from_figures(
            (obj.get("tokensIn"), "tokensIn"),
            (obj.get("tokensOut"), "tokensOut"),
            (obj.get("costUSD"), "costUSD"),
            summary,
        ))
    }

    /// Reads the last JSON object on an agent's standard output, in Claude
    /// Code's shape: `total_cost_usd`, `usage.input_tokens`,
    /// `usage.output_tokens`, `result`.
    pub fn from_stdout(stdout: &str) -> Option<Usage> {
        let object = last_json_object(stdout)?;
        let usage = object.get("usage");
        let recognised = object.get("total_cost_usd").is_some() || usage.is_some() || object.get("result").is_some();
        if !recognised {
            return None;
        }
        let summary = object.get("result").and_then(Value::as_str).unwrap_or_default().to_owned();
        Some(Usage::from_figures(
            (usage.and_then(|u| u.get("input_tokens")), "usage.input_tokens"),
            (usage.and_then(|u| u.get("output_tokens")), "usage.output_tokens"),
            (object.get("total_cost_usd"), "total_cost_usd"),
            summary,
        ))
    }

    /// The figures, or the first one that is not a number of at least 0 as
    /// the reason the report is refused.
    fn from_figures(
        tokens_in: (Option<&Value>, &'static str),
        tokens_out: (Option<&Value>, &'static str),
        cost: (Option<&Value>, &'static str),
        summary: String,
    ) -> Usage {
        let figures = tokens(tokens_in).and_then(|i| Ok((i, tokens(tokens_out)?, figure(cost)?)));
        match figures {
            Ok((tokens_in, tokens_out, cost_usd)) => Usage { tokens_in, tokens_out, cost_usd, summary, ..Usage::default() },
            Err(e) => Usage { summary, invalid: Some(e), ..Usage::default() },
        }
    }

    /// The cost: the agent's own figure, else tokens × prices (per million),
    /// cached input tokens at the cached price when there is one.
    pub fn cost(&self, pricing: Option<&Pricing>) -> f64 {
        match (self.cost_usd, pricing) {
            (Some(cost), _) => cost,
            (None, Some(p)) => {
                let cached = self.tokens_cached.min(self.tokens_in);
                let cached_price = p.cached_input_per_million.unwrap_or(p.input_per_million);
                ((self.tokens_in - cached) as f64 * p.input_per_million
                    + cached as f64 * cached_price
                    + self.tokens_out as f64 * p.output_per_million)
                    / 1_000_000.0
            }
            (None, None) => 0.0,
        }
    }
}

/// A number of at least 0 (absent or `null`: none).
pub(super) fn figure((value, field): (Option<&Value>, &'static str)) -> Result<Option<f64>, UsageError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(Some).ok_or_else(|| not_a_figure(field, v)),
    }
}

/// A token count: a whole number as is, a fraction rounded down, a figure
/// too big for `u64` saturated (and then refused by [`check`]).
pub(super) fn tokens((value, field): (Option<&Value>, &'static str)) -> Result<u64, UsageError> {
    if let Some(n) = value.and_then(Value::as_u64) {
        return Ok(n);
    }
    Ok(figure((value, field))?.map_or(0, |f| f as u64))
}

fn not_a_figure(field: &'static str, value: &Value) -> UsageError {
    // The agent's text is not echoed: it would reach the status file
    // unredacted (a secret cut short escapes the redaction).
    let shown = match value {
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    };
    UsageError::NotAFigure { field, value: shown }
}

/// The last line of `text` that is a JSON object, or the whole text when it
/// is one (pretty-printed output).
pub(super) fn last_json_object(text: &str) -> Option<serde_json::Map<String, Value>> {
    let whole = serde_json::from_str::<Value>(text.trim()).ok().and_then(|v| v.as_object().cloned());
    if whole.is_some() {
        return whole;
    }
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v.as_object().cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_file_fields() {
        let u = Usage::from_report(r#"{"tokensIn": 12, "tokensOut": 20, "costUSD": 0.5, "summary": "did it"}"#).expect("parses");
        assert_eq!((u.tokens_in, u.tokens_out, u.cost_usd, u.summary.as_str()), (12, 20, Some(0.5), "did it"));
        assert!(Usage::from_report("not json").is_none());
    }

    #[test]
    fn reports_outside_sane_bounds_are_refused() {
        let u = Usage::from_report(r#"{"tokensIn": 18446744073709551615, "tokensOut": 1}"#).expect("parses");
        assert_eq!(u.tokens_in, u64::MAX);
        let err = check(u.tokens_in, u.tokens_out, u.cost(None)).expect_err("u64::MAX tokens are refused");
        assert_eq!(err.reason(), "InvalidUsageReport");
        assert!(check(1, MAX_TOKENS_PER_ATTEMPT + 1, 0.0).is_err());
        assert!(check(MAX_TOKENS_PER_ATTEMPT, MAX_TOKENS_PER_ATTEMPT, MAX_COST_USD_PER_ATTEMPT).is_ok());
        for cost in [f64::NAN, f64::INFINITY, -0.01, MAX_COST_USD_PER_ATTEMPT * 2.0] {
            assert!(matches!(check(0, 0, cost), Err(UsageError::BadCost(_))), "{cost}");
        }
        // Priced tokens can exceed the cost bound although the tokens are sane.
        let pricing = Pricing { input_per_million: 1.0e6, output_per_million: 0.0, cached_input_per_million: None };
        let u = Usage { tokens_in: 10_000_000, ..Usage::default() };
        assert!(check(u.tokens_in, u.tokens_out, u.cost(Some(&pricing))).is_err());
    }

    #[test]
    fn claude_code_stdout_and_pricing() {
        let out = "progress…\n{\"type\":\"system\"}\n{\"type\":\"result\",\"result\":\"Added greeting\",\"usage\":{\"input_tokens\":1000000,\"output_tokens\":500000}}\n";
        let u = Usage::from_stdout(out).expect("parses the last object");
        assert_eq!((u.tokens_in, u.tokens_out, u.summary.as_str()), (1_000_000, 500_000, "Added greeting"));
        assert_eq!(u.cost_usd, None);
        let pricing = Pricing { input_per_million: 3.0, output_per_million: 15.0, cached_input_per_million: None };
        assert!((u.cost(Some(&pricing)) - 10.5).abs() < 1e-9);
        let with_cost = Usage::from_stdout("{\n  \"total_cost_usd\": 0.25,\n  \"result\": \"ok\"\n}\n").expect("pretty-printed");
        assert!((with_cost.cost(Some(&pricing)) - 0.25).abs() < 1e-9, "the agent's own figure wins");
        assert!(Usage::from_stdout("{\"unrelated\": 1}").is_none());
        assert!(Usage::from_stdout("plain text").is_none());
    }

    #[test]
    fn figures_that_are_not_numbers_of_at_least_0_refuse_the_report() {
        for (report, field) in [
            (r#"{"tokensIn": -5, "summary": "x"}"#, "tokensIn"),
            (r#"{"tokensOut": "12"}"#, "tokensOut"),
            (r#"{"costUSD": -0.01}"#, "costUSD"),
            (r#"{"costUSD": true}"#, "costUSD"),
        ] {
            let u = Usage::from_report(report).expect("parses");
            match &u.invalid {
                Some(UsageError::NotAFigure { field: f, .. }) => assert_eq!(*f, field, "{report}"),
                other => panic!("{report}: {other:?}"),
            }
            assert_eq!(u.invalid.as_ref().map(UsageError::reason), Some("InvalidUsageReport"));
            assert_eq!((u.tokens_in, u.tokens_out, u.cost_usd), (0, 0, None), "no figure of a refused report counts");
        }
        let text = Usage::from_report(r#"{"tokensIn": "sk-secret-value"}"#).expect("parses");
        let message = text.invalid.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("`tokensIn` as a string") && !message.contains("sk-"), "the agent's text is not echoed: {message}");
        let stdout = Usage::from_stdout(r#"{"result": "ok", "total_cost_usd": -3}"#).expect("recognised");
        assert!(matches!(stdout.invalid, Some(UsageError::NotAFigure { field: "total_cost_usd", .. })), "{stdout:?}");
        let huge = Usage::from_report(r#"{"tokensIn": 1e300, "costUSD": 1e300}"#).expect("parses");
        assert_eq!((huge.tokens_in, huge.invalid.clone()), (u64::MAX, None), "a huge figure is a figure, refused by `check`");
        assert!(check(huge.tokens_in, 0, 0.0).is_err() && check(0, 0, huge.cost(None)).is_err());
        let fine = Usage::from_report(r#"{"tokensIn": 7.9, "tokensOut": null, "costUSD": 0}"#).expect("parses");
        assert_eq!((fine.tokens_in, fine.tokens_out, fine.cost_usd, fine.invalid), (7, 0, Some(0.0), None));
    }

    #[test]
    fn summaries_are_cut_on_a_character_boundary_with_a_marker() {
        assert_eq!(cap_summary("short"), "short");
        let exact = "a".repeat(SUMMARY_MAX_BYTES);
        assert_eq!(cap_summary(&exact), exact, "a summary that fits is kept whole");
        let long = "é".repeat(3 << 19); // 3 MiB
        let cut = cap_summary(&long);
        assert!(cut.len() <= SUMMARY_MAX_BYTES, "{}", cut.len());
        assert!(cut.starts_with("éé") && cut.ends_with("… [cut: 3.0 MiB reported, 3.9 KiB kept]"), "{}", &cut[cut.len() - 60..]);
    }

    #[test]
    fn the_report_file_is_read_with_a_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.json");
        assert_eq!(Usage::read_report_file(&path), None, "no file, no report");
        std::fs::write(&path, r#"{"tokensIn": 3, "summary": "did it"}"#).expect("write");
        let u = Usage::read_report_file(&path).expect("a report");
        assert_eq!((u.tokens_in, u.summary.as_str()), (3, "did it"));
        let big = format!(r#"{{"tokensIn": 3, "summary": "{}"}}"#, "x".repeat(REPORT_MAX_BYTES as usize));
        std::fs::write(&path, &big).expect("write");
        let refused = Usage::read_report_file(&path).expect("a refused report");
        assert_eq!(refused.invalid, Some(UsageError::ReportTooLarge { bytes: big.len() as u64 }));
        assert_eq!(refused.tokens_in, 0);
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        assert_eq!(Usage::read_report_file(&link), None, "a symlink is no report");
        assert_eq!(Usage::read_report_file(dir.path()), None, "a folder is no report");
    }
}
