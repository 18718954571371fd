//! What an agent says it used: tokens, cost and a summary, read from the
//! `report.json` it may write (`HADRON_REPORT_FILE`) or, failing that, from
//! the last JSON object on its standard output (Claude Code's
//! `--output-format json` shape).

use serde_json::Value;

use crate::model::kinds::Pricing;

pub use crate::attempt::{MAX_COST_USD_PER_ATTEMPT, MAX_TOKENS_PER_ATTEMPT, MAX_TOTAL_TOKENS_PER_ATTEMPT, cost_is_sane};

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
}

impl UsageError {
    /// Stable CamelCase reason: the attempt fails with it.
    pub fn reason(&self) -> &'static str {
        match self {
            UsageError::TooManyTokens { .. } | UsageError::BadCost(_) => "InvalidUsageReport",
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
    /// What the agent said it did.
    pub summary: String,
}

impl Usage {
    /// Reads Hadron's own report format: `tokensIn`, `tokensOut`, `costUSD`, `summary`.
    pub fn from_report(text: &str) -> Option<Usage> {
        let v: Value = serde_json::from_str(text).ok()?;
        let obj = v.as_object()?;
        Some(Usage {
            tokens_in: obj.get("tokensIn").and_then(as_u64).unwrap_or(0),
            tokens_out: obj.get("tokensOut").and_then(as_u64).unwrap_or(0),
            cost_usd: obj.get("costUSD").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0),
            summary: obj.get("summary").and_then(Value::as_str).unwrap_or_default().to_owned(),
        })
    }

    /// Reads the last JSON object on an agent's standard output, in Claude
    /// Code's shape: `total_cost_usd`, `usage.input_tokens`,
    /// `usage.output_tokens`, `result`.
    pub fn from_stdout(stdout: &str) -> Option<Usage> {
        let object = last_json_object(stdout)?;
        let usage = object.get("usage");
        let tokens = |field: &str| usage.and_then(|u| u.get(field)).and_then(as_u64);
        let recognised = object.get("total_cost_usd").is_some() || usage.is_some() || object.get("result").is_some();
        if !recognised {
            return None;
        }
        Some(Usage {
            tokens_in: tokens("input_tokens").unwrap_or(0),
            tokens_out: tokens("output_tokens").unwrap_or(0),
            cost_usd: object.get("total_cost_usd").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0),
            summary: object.get("result").and_then(Value::as_str).unwrap_or_default().to_owned(),
        })
    }

    /// The cost: the agent's own figure, else tokens × prices (per million).
    pub fn cost(&self, pricing: Option<&Pricing>) -> f64 {
        match (self.cost_usd, pricing) {
            (Some(cost), _) => cost,
            (None, Some(p)) => (self.tokens_in as f64 * p.input_per_million + self.tokens_out as f64 * p.output_per_million) / 1_000_000.0,
            (None, None) => 0.0,
        }
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

/// The last line of `text` that is a JSON object, or the whole text when it
/// is one (pretty-printed output).
fn last_json_object(text: &str) -> Option<serde_json::Map<String, Value>> {
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
        let pricing = Pricing { input_per_million: 1.0e6, output_per_million: 0.0 };
        let u = Usage { tokens_in: 10_000_000, ..Usage::default() };
        assert!(check(u.tokens_in, u.tokens_out, u.cost(Some(&pricing))).is_err());
    }

    #[test]
    fn claude_code_stdout_and_pricing() {
        let out = "progress…\n{\"type\":\"system\"}\n{\"type\":\"result\",\"result\":\"Added greeting\",\"usage\":{\"input_tokens\":1000000,\"output_tokens\":500000}}\n";
        let u = Usage::from_stdout(out).expect("parses the last object");
        assert_eq!((u.tokens_in, u.tokens_out, u.summary.as_str()), (1_000_000, 500_000, "Added greeting"));
        assert_eq!(u.cost_usd, None);
        let pricing = Pricing { input_per_million: 3.0, output_per_million: 15.0 };
        assert!((u.cost(Some(&pricing)) - 10.5).abs() < 1e-9);
        let with_cost = Usage::from_stdout("{\n  \"total_cost_usd\": 0.25,\n  \"result\": \"ok\"\n}\n").expect("pretty-printed");
        assert!((with_cost.cost(Some(&pricing)) - 0.25).abs() < 1e-9, "the agent's own figure wins");
        assert!(Usage::from_stdout("{\"unrelated\": 1}").is_none());
        assert!(Usage::from_stdout("plain text").is_none());
    }
}
