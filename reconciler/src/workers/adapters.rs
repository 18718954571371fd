//! Output adapters: what a known coding-agent CLI printed, read as a
//! [`Usage`] (tokens in and out, the cached part of the input, cost, the
//! final text as the summary, the session id) and the CLI's own failure
//! signal, chosen by the agent file's `spec.output`.
//!
//! No I/O: each adapter reads the (tail of the) standard output the worker
//! kept and the exit code. The shapes, with the recorded output they are
//! tested against, are in `tests/fixtures/agents/` (its README names each
//! file's origin) and docs/agent-clis.md.

use serde_json::Value;

use super::usage::{CliFailure, Usage, UsageError, figure, last_json_object, tokens};
use crate::model::kinds::OutputFormat;

/// Reads the output of the CLI `format` names; `None` when it printed
/// nothing this adapter recognises and gave no failure signal (then the
/// attempt counts no usage, as with a `report` agent that reported none).
/// `report` is read by the worker from `$HADRON_REPORT_FILE` and stdout,
/// not here: `None`.
pub fn read(format: OutputFormat, stdout: &str, exit_code: Option<i32>) -> Option<Usage> {
    match format {
        OutputFormat::Report => None,
        OutputFormat::Claude => claude(stdout),
        OutputFormat::Codex => codex(stdout),
        OutputFormat::Opencode => opencode(stdout),
        OutputFormat::Gemini => gemini(stdout, exit_code),
        OutputFormat::Aider => aider(stdout),
    }
}

/// The JSON objects on the lines of `text`, in order; a pretty-printed
/// single object (no object on any one line) is read whole.
fn json_lines(text: &str) -> Vec<serde_json::Map<String, Value>> {
    let lines: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .collect();
    if lines.is_empty() { last_json_object(text).into_iter().collect() } else { lines }
}

fn str_of(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

/// Sums token figures, refusing the first that is not a number of at least 0.
#[derive(Default)]
struct Sums {
    tokens_in: u64,
    tokens_out: u64,
    tokens_cached: u64,
    cost: Option<f64>,
    invalid: Option<UsageError>,
}

impl Sums {
    fn count(&mut self, value: Option<&Value>, field: &'static str) -> u64 {
        match tokens((value, field)) {
            Ok(n) => n,
            Err(e) => {
                self.invalid.get_or_insert(e);
                0
            }
        }
    }

    fn add_in(&mut self, value: Option<&Value>, field: &'static str) {
        let n = self.count(value, field);
        self.tokens_in = self.tokens_in.saturating_add(n);
    }

    fn add_cached(&mut self, value: Option<&Value>, field: &'static str) {
        let n = self.count(value, field);
        self.tokens_in = self.tokens_in.saturating_add(n);
        self.tokens_cached = self.tokens_cached.saturating_add(n);
    }

    fn add_out(&mut self, value: Option<&Value>, field: &'static str) {
        let n = self.count(value, field);
        self.tokens_out = self.tokens_out.saturating_add(n);
    }

    fn add_cost(&mut self, value: Option<&Value>, field: &'static str) {
        match figure((value, field)) {
            Ok(Some(c)) => self.cost = Some(self.cost.unwrap_or(0.0) + c),
            Ok(None) => {}
            Err(e) => {
                self.invalid.get_or_insert(e);
            }
        }
    }

    fn into_usage(self, summary: String, session_id: Option<String>, failure: Option<CliFailure>) -> Usage {
        match self.invalid {
            // A refused report counts none of its figures; the CLI's failure still stands.
            Some(e) => Usage { summary, invalid: Some(e), session_id, failure, ..Usage::default() },
            None => Usage {
                tokens_in: self.tokens_in,
                tokens_out: self.tokens_out,
                tokens_cached: self.tokens_cached,
                cost_usd: self.cost,
                summary,
                invalid: None,
                session_id,
                failure,
            },
        }
    }
}

/// Whether a CLI's error text names a failure another attempt may get past
/// (a rate or usage limit, an overloaded or failing API, a timeout), as
/// opposed to one it will meet again (authentication, a bad request or
/// model). Unknown text counts as retryable, as an agent's non-zero exit does.
fn retryable_text(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    const FINAL: &[&str] = &[
        "invalid api key",
        "invalid x-api-key",
        "authentication",
        "unauthorized",
        "permission denied",
        "/login",
        "invalid_request_error",
        "not supported",
        "\"status\":400",
        "\"status\":401",
        "\"status\":403",
        "\"status\":404",
    ];
    !FINAL.iter().any(|f| m.contains(f))
}

/// Claude Code `--output-format json` (one `result` object) or `stream-json
/// --verbose` (NDJSON ending in the same object, `message.usage` on each
/// assistant message). Input counts fresh, cache-write and cache-read
/// tokens; the cache reads are the cached part. A run stopped before its
/// `result` (killed, crashed) is counted from its assistant messages, each
/// message once.
fn claude(stdout: &str) -> Option<Usage> {
    let objects = json_lines(stdout);
    let session_id = objects.iter().rev().find_map(|o| str_of(o.get("session_id"))).map(str::to_owned);
    let mut sums = Sums::default();
    let add_usage = |sums: &mut Sums, usage: Option<&Value>| {
        let get = |k: &str| usage.and_then(|u| u.get(k));
        sums.add_in(get("input_tokens"), "usage.input_tokens");
        sums.add_in(get("cache_creation_input_tokens"), "usage.cache_creation_input_tokens");
        sums.add_cached(get("cache_read_input_tokens"), "usage.cache_read_input_tokens");
        sums.add_out(get("output_tokens"), "usage.output_tokens");
    };
    let Some(result) = objects.iter().rev().find(|o| str_of(o.get("type")) == Some("result")) else {
        let mut seen = std::collections::BTreeSet::new();
        let mut summary = String::new();
        for message in objects.iter().filter(|o| str_of(o.get("type")) == Some("assistant")).filter_map(|o| o.get("message")) {
            if let Some(text) = message
                .get("content")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().rev().find(|b| str_of(b.get("type")) == Some("text")).and_then(|b| str_of(b.get("text"))))
            {
                summary = text.to_owned();
            }
            if str_of(message.get("id")).is_none_or(|id| seen.insert(id.to_owned())) {
                add_usage(&mut sums, message.get("usage"));
            }
        }
        if objects.is_empty() {
            return None;
        }
        return Some(sums.into_usage(summary, session_id, None));
    };
    add_usage(&mut sums, result.get("usage"));
    sums.add_cost(result.get("total_cost_usd"), "total_cost_usd");
    let summary = str_of(result.get("result")).unwrap_or_default().to_owned();
    let subtype = str_of(result.get("subtype")).unwrap_or("");
    let is_error = result.get("is_error").and_then(Value::as_bool).unwrap_or(false);
    let failure = (is_error || !matches!(subtype, "success" | "")).then(|| {
        let errors: Vec<&str> = result.get("errors").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let message = if errors.is_empty() { summary.clone() } else { errors.join("; ") };
        let reason = if subtype.is_empty() || subtype == "success" { "is_error".to_owned() } else { subtype.to_owned() };
        let retryable = match subtype {
            // The CLI's own limits: another attempt meets them again.
            "error_max_turns" | "error_max_budget_usd" | "error_max_structured_output_retries" => false,
            _ => retryable_text(&message),
        };
        CliFailure { cli: "claude", reason, message, retryable }
    });
    Some(sums.into_usage(summary, session_id, failure))
}

/// Codex `codex exec --json`: `thread.started{thread_id}`, `turn.completed
/// {usage}` per turn (summed; `cached_input_tokens` is part of
/// `input_tokens`), the last `agent_message` as the summary, and
/// `turn.failed{error}` (or a stream `error`) as the failure. Codex prints
/// no cost: the agent's `pricing` prices it.
fn codex(stdout: &str) -> Option<Usage> {
    let objects = json_lines(stdout);
    if objects.is_empty() {
        return None;
    }
    let mut sums = Sums::default();
    let mut session_id = None;
    let mut summary = String::new();
    let mut failed: Option<String> = None;
    let mut stream_error: Option<String> = None;
    for o in &objects {
        match str_of(o.get("type")) {
            Some("thread.started") => session_id = str_of(o.get("thread_id")).map(str::to_owned),
            Some("turn.completed") => {
                let usage = o.get("usage");
                let get = |k: &str| usage.and_then(|u| u.get(k));
                sums.add_in(get("input_tokens"), "usage.input_tokens");
                let cached = sums.count(get("cached_input_tokens"), "usage.cached_input_tokens");
                sums.tokens_cached = sums.tokens_cached.saturating_add(cached);
                sums.add_out(get("output_tokens"), "usage.output_tokens");
            }
            Some("item.completed") => {
                let item = o.get("item");
                if str_of(item.and_then(|i| i.get("type"))) == Some("agent_message")
                    && let Some(text) = str_of(item.and_then(|i| i.get("text")))
                {
                    summary = text.to_owned();
                }
            }
            Some("turn.failed") => {
                failed = Some(str_of(o.get("error").and_then(|e| e.get("message"))).unwrap_or("turn failed").to_owned());
            }
            Some("error") => stream_error = str_of(o.get("message")).map(str::to_owned),
            _ => {}
        }
    }
    let failure = match (failed, stream_error) {
        (Some(message), _) => Some(("turn.failed", message)),
        (None, Some(message)) => Some(("error", message)),
        (None, None) => None,
    }
    .map(|(reason, message)| CliFailure { cli: "codex", reason: reason.to_owned(), retryable: retryable_text(&message), message });
    Some(sums.into_usage(summary, session_id, failure))
}

/// OpenCode `opencode run --format json`: one `step_finish` per step with
/// `part.cost` and `part.tokens{input, output, reasoning, cache{read,
/// write}}` (summed: input is fresh input, cache reads and writes are
/// counted as input, reasoning as output), `sessionID` on every event, the
/// last `text` part as the summary, `error{name, data{message,
/// isRetryable}}` as the failure.
fn opencode(stdout: &str) -> Option<Usage> {
    let objects = json_lines(stdout);
    if objects.is_empty() {
        return None;
    }
    let mut sums = Sums::default();
    let mut summary = String::new();
    let mut failure = None;
    let session_id = objects.iter().find_map(|o| str_of(o.get("sessionID"))).map(str::to_owned);
    for o in &objects {
        let part = o.get("part");
        match str_of(o.get("type")) {
            Some("step_finish") => {
                let tokens = part.and_then(|p| p.get("tokens"));
                let get = |k: &str| tokens.and_then(|t| t.get(k));
                let cache = |k: &str| tokens.and_then(|t| t.get("cache")).and_then(|c| c.get(k));
                sums.add_in(get("input"), "part.tokens.input");
                sums.add_in(cache("write"), "part.tokens.cache.write");
                sums.add_cached(cache("read"), "part.tokens.cache.read");
                sums.add_out(get("output"), "part.tokens.output");
                sums.add_out(get("reasoning"), "part.tokens.reasoning");
                sums.add_cost(part.and_then(|p| p.get("cost")), "part.cost");
            }
            Some("text") => {
                if let Some(text) = str_of(part.and_then(|p| p.get("text"))) {
                    summary = text.to_owned();
                }
            }
            Some("error") => {
                let error = o.get("error");
                let name = str_of(error.and_then(|e| e.get("name"))).unwrap_or("error").to_owned();
                let data = error.and_then(|e| e.get("data"));
                let message = str_of(data.and_then(|d| d.get("message"))).unwrap_or(&name).to_owned();
                let retryable = match (data.and_then(|d| d.get("isRetryable")).and_then(Value::as_bool), name.as_str()) {
                    (Some(said), _) => said,
                    (None, "ProviderAuthError") => false,
                    (None, _) => retryable_text(&message),
                };
                failure = Some(CliFailure { cli: "opencode", reason: name, message, retryable });
            }
            _ => {}
        }
    }
    Some(sums.into_usage(summary, session_id, failure))
}

/// Gemini CLI's exit codes in headless mode (docs/cli/headless.md): all
/// final, another attempt meets them again.
const GEMINI_EXITS: &[(i32, &str)] =
    &[(41, "authentication error"), (42, "input error"), (52, "configuration error"), (53, "turn limit"), (54, "tool error")];

/// Gemini CLI `--output-format json`: `{session_id, response, stats{models
/// {<model>{tokens{prompt, candidates, cached, thoughts}}}}, error?}`.
/// Tokens are summed over the models (`prompt` includes `cached`;
/// `thoughts` count as output); Gemini prints no cost. Its errors go to
/// standard error, so the exit code (41, 42, 52, 53, 54) names the failure
/// when the `error` object is not on standard output.
fn gemini(stdout: &str, exit_code: Option<i32>) -> Option<Usage> {
    let object = last_json_object(stdout);
    let exit = exit_code.and_then(|c| GEMINI_EXITS.iter().find(|(code, _)| *code == c));
    if object.is_none() && exit.is_none() {
        return None;
    }
    let object = object.unwrap_or_default();
    let mut sums = Sums::default();
    if let Some(models) = object.get("stats").and_then(|s| s.get("models")).and_then(Value::as_object) {
        for model in models.values() {
            let tokens = model.get("tokens");
            let get = |k: &str| tokens.and_then(|t| t.get(k));
            sums.add_in(get("prompt"), "stats.models.tokens.prompt");
            let cached = sums.count(get("cached"), "stats.models.tokens.cached");
            sums.tokens_cached = sums.tokens_cached.saturating_add(cached);
            sums.add_out(get("candidates"), "stats.models.tokens.candidates");
            sums.add_out(get("thoughts"), "stats.models.tokens.thoughts");
        }
    }
    let summary = str_of(object.get("response")).unwrap_or_default().to_owned();
    let session_id = str_of(object.get("session_id")).map(str::to_owned);
    let error = object.get("error").filter(|e| e.is_object());
    let said = error.and_then(|e| str_of(e.get("message"))).unwrap_or_default().to_owned();
    let failure = match (exit, error) {
        (Some((code, what)), _) => Some(CliFailure {
            cli: "gemini",
            reason: format!("exit {code} ({what})"),
            message: if said.is_empty() { (*what).to_owned() } else { said },
            retryable: false,
        }),
        (None, Some(e)) => {
            let kind = str_of(e.get("type")).unwrap_or("error").to_owned();
            let code = e.get("code").and_then(Value::as_u64);
            let retryable = match code {
                Some(429) | Some(500..=599) => true,
                Some(400..=499) => false,
                _ => retryable_text(&said),
            };
            Some(CliFailure { cli: "gemini", reason: kind, message: said, retryable })
        }
        (None, None) => None,
    };
    Some(sums.into_usage(summary, session_id, failure))
}

/// A token count as aider prints it: `523`, `4.2k`, `12k`, `1.5M`.
fn aider_count(word: &str) -> Option<u64> {
    let word = word.replace(',', "");
    let (digits, scale) = match word.strip_suffix(['k', 'K']) {
        Some(d) => (d.to_owned(), 1e3),
        None => match word.strip_suffix('M') {
            Some(d) => (d.to_owned(), 1e6),
            None => (word.clone(), 1.0),
        },
    };
    let n: f64 = digits.parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| (n * scale).round() as u64)
}

/// aider (`--message-file … --yes-always`) prints no JSON, but after each
/// reply a line `Tokens: N sent, N cache write, N cache hit, N received.`
/// and, when it knows the model's price, `Cost: $X message, $Y session.`
/// (on the same line, or the next when both cache figures are there).
/// The `Tokens:` lines are summed (`sent` is the input, `cache hit` the
/// cached part of it); the cost is the last `session` figure. aider gives
/// no final text, no session id and no failure signal but its exit code.
fn aider(stdout: &str) -> Option<Usage> {
    let mut sums = Sums::default();
    let mut seen = false;
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Tokens: ") {
            seen = true;
            let figures = rest.split(". Cost:").next().unwrap_or(rest).trim_end_matches('.');
            for item in figures.split(", ") {
                let mut words = item.splitn(2, ' ');
                let (Some(n), Some(what)) = (words.next().and_then(aider_count), words.next()) else { continue };
                match what {
                    "sent" => sums.tokens_in = sums.tokens_in.saturating_add(n),
                    "cache hit" => sums.tokens_cached = sums.tokens_cached.saturating_add(n),
                    "received" => sums.tokens_out = sums.tokens_out.saturating_add(n),
                    _ => {}
                }
            }
        }
        if let Some(at) = line.find("Cost: $") {
            let session = line[at..].split(", $").nth(1).and_then(|s| s.strip_suffix(" session.")).and_then(|s| s.parse::<f64>().ok());
            if let Some(cost) = session.filter(|c| c.is_finite() && *c >= 0.0) {
                sums.cost = Some(cost);
            }
        }
    }
    if !seen {
        return None;
    }
    sums.tokens_cached = sums.tokens_cached.min(sums.tokens_in);
    Some(sums.into_usage(String::new(), None, None))
}

/// Most bytes of one line the [`Meter`] reads; a longer line is skipped
/// (no CLI's usage event is that long).
const METER_LINE_BYTES: usize = 1 << 20;
/// Most assistant message ids the [`Meter`] remembers; past it, messages
/// are counted again (over-counting only stops an agent sooner).
const METER_IDS: usize = 100_000;

/// What a streaming CLI has spent so far, read line by line from its
/// standard output as it runs: Claude Code `stream-json` (each assistant
/// message's `usage`, once per message id, then the final `result`),
/// Codex (each `turn.completed`), OpenCode (each `step_finish`). Other
/// formats report only at the end: [`Meter::streams`] is false for them.
#[derive(Debug)]
pub struct Meter {
    format: OutputFormat,
    partial: Vec<u8>,
    skipping: bool,
    ids: std::collections::HashSet<String>,
    usage: Usage,
}

impl Meter {
    /// Whether `format` reports its usage while it runs.
    pub fn streams(format: OutputFormat) -> bool {
        matches!(format, OutputFormat::Claude | OutputFormat::Codex | OutputFormat::Opencode)
    }

    /// A meter for a CLI of `format`.
    pub fn new(format: OutputFormat) -> Meter {
        Meter { format, partial: Vec::new(), skipping: false, ids: Default::default(), usage: Usage::default() }
    }

    /// Reads the next bytes of standard output.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            if !self.skipping && self.partial.len() + end <= METER_LINE_BYTES {
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                self.line(&String::from_utf8_lossy(&line));
            }
            self.partial.clear();
            self.skipping = false;
            rest = &rest[end + 1..];
        }
        if self.partial.len() + rest.len() > METER_LINE_BYTES {
            self.partial.clear();
            self.skipping = true;
        } else if !self.skipping {
            self.partial.extend_from_slice(rest);
        }
    }

    /// Tokens (in and out) and cost so far, the cost priced with `pricing`
    /// where the CLI prints none.
    pub fn spent(&self, pricing: Option<&crate::model::kinds::Pricing>) -> (u64, f64) {
        (self.usage.tokens_in.saturating_add(self.usage.tokens_out), self.usage.cost(pricing))
    }

    fn line(&mut self, line: &str) {
        let line = line.trim();
        if !line.starts_with('{') {
            return;
        }
        let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) else { return };
        let one = match (self.format, str_of(o.get("type"))) {
            (OutputFormat::Claude, Some("assistant")) => {
                let message = o.get("message");
                let id = str_of(message.and_then(|m| m.get("id")));
                let new = match id {
                    Some(id) if self.ids.len() < METER_IDS => self.ids.insert(id.to_owned()),
                    _ => true,
                };
                if !new {
                    return;
                }
                let usage = serde_json::json!({"type": "assistant", "message": {"usage": message.and_then(|m| m.get("usage"))}});
                claude(&usage.to_string())
            }
            (OutputFormat::Claude, Some("result")) => {
                // The final figures replace the sum of the messages.
                self.usage = claude(line).unwrap_or_default();
                return;
            }
            (OutputFormat::Codex, Some("turn.completed")) => codex(line),
            (OutputFormat::Opencode, Some("step_finish")) => opencode(line),
            _ => None,
        };
        if let Some(u) = one.filter(|u| u.invalid.is_none()) {
            self.usage.tokens_in = self.usage.tokens_in.saturating_add(u.tokens_in);
            self.usage.tokens_out = self.usage.tokens_out.saturating_add(u.tokens_out);
            self.usage.tokens_cached = self.usage.tokens_cached.saturating_add(u.tokens_cached);
            if let Some(c) = u.cost_usd {
                self.usage.cost_usd = Some(self.usage.cost_usd.unwrap_or(0.0) + c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kinds::Pricing;

    fn fixture(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/agents").join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display()))
    }

    fn failure(u: &Usage) -> (&str, &str, bool) {
        let f = u.failure.as_ref().expect("a failure");
        (f.reason.as_str(), f.message.as_str(), f.retryable)
    }

    #[test]
    fn claude_json_success() {
        let u = read(OutputFormat::Claude, &fixture("claude/success.json"), Some(0)).expect("read");
        assert_eq!((u.cost_usd, u.summary.as_str(), u.session_id.as_deref()), (Some(0.003), "The response text here...", Some("abc123")));
        assert_eq!((u.tokens_in, u.tokens_out, u.failure.clone()), (0, 0, None));
    }

    #[test]
    fn claude_error_max_turns_is_a_final_failure_with_its_figures() {
        let u = read(OutputFormat::Claude, &fixture("claude/error-max-turns.json"), Some(0)).expect("read");
        assert_eq!(u.tokens_in, 2409 + 29104 + 1617801);
        assert_eq!((u.tokens_cached, u.tokens_out), (1617801, 15946));
        assert_eq!(u.cost_usd, Some(1.4020935000000005));
        assert_eq!(u.session_id.as_deref(), Some("495cc7e5-d22e-4192-92ba-4ce2d14827a6"));
        assert_eq!(failure(&u), ("error_max_turns", "Reached maximum number of turns (40)", false));
    }

    #[test]
    fn claude_is_error_fails_even_with_subtype_success() {
        let u = read(OutputFormat::Claude, &fixture("claude/is-error-success.json"), Some(0)).expect("read");
        assert_eq!(failure(&u), ("is_error", "", true));
        let limit = read(OutputFormat::Claude, &fixture("claude/usage-limit.json"), Some(1)).expect("read");
        assert_eq!(failure(&limit), ("error", "Claude AI usage limit reached|1755806400", true), "a usage limit passes: retried");
        let auth = r#"{"type":"result","subtype":"success","is_error":true,"result":"Invalid API key · Please run /login"}"#;
        let auth = read(OutputFormat::Claude, auth, Some(1)).expect("read");
        assert!(!failure(&auth).2, "a bad key is final");
    }

    #[test]
    fn claude_stream_json_reads_the_final_result_and_without_it_the_messages() {
        let stream = fixture("claude/stream-tool-use.jsonl");
        let u = read(OutputFormat::Claude, &stream, Some(0)).expect("read");
        assert_eq!((u.tokens_in, u.tokens_cached, u.tokens_out), (8 + 4280 + 26620, 26620, 120));
        assert_eq!((u.cost_usd, u.summary.as_str(), u.failure.clone()), (Some(0.0271), "Added a greeting to README.md.", None));
        assert_eq!(u.session_id.as_deref(), Some("8f5c0b8e-2f2a-4a3e-9d59-6c1c4a1d2e7b"));
        // Killed before its result: the assistant messages, each once.
        let cut: String = stream.lines().take(4).map(|l| format!("{l}\n")).collect();
        let mut doubled = cut.clone();
        doubled.push_str(stream.lines().nth(3).expect("line 4"));
        let u = read(OutputFormat::Claude, &doubled, None).expect("read");
        assert_eq!((u.tokens_in, u.tokens_out, u.cost_usd), (3 + 4120 + 11250 + 5 + 160 + 15370, 78 + 42, None));
        assert_eq!(u.summary, "Added a greeting to README.md.");
    }

    #[test]
    fn codex_sums_turns_and_prices_cached_input() {
        let u = read(OutputFormat::Codex, &fixture("codex/tool-use.jsonl"), Some(0)).expect("read");
        assert_eq!((u.tokens_in, u.tokens_cached, u.tokens_out, u.cost_usd), (37067, 26880, 850, None));
        assert_eq!(
            (u.summary.as_str(), u.session_id.as_deref()),
            ("Added a greeting to README.md.", Some("0199a213-81c0-7800-8aa1-bbab2a035a53"))
        );
        assert!(u.failure.is_none());
        let priced = Pricing { input_per_million: 1.25, output_per_million: 10.0, cached_input_per_million: Some(0.125) };
        let want = ((37067 - 26880) as f64 * 1.25 + 26880.0 * 0.125 + 850.0 * 10.0) / 1e6;
        assert!((u.cost(Some(&priced)) - want).abs() < 1e-12, "{}", u.cost(Some(&priced)));
        let unpriced_cache = Pricing { cached_input_per_million: None, ..priced };
        assert!((u.cost(Some(&unpriced_cache)) - (37067.0 * 1.25 + 8500.0) / 1e6).abs() < 1e-12, "cached counted as input");
    }

    #[test]
    fn codex_turn_failed_names_the_message_and_whether_it_passes() {
        let u = read(OutputFormat::Codex, &fixture("codex/capacity.jsonl"), Some(1)).expect("read");
        assert_eq!(failure(&u), ("turn.failed", "Selected model is at capacity. Please try a different model.", true));
        let u = read(OutputFormat::Codex, &fixture("codex/bad-model.jsonl"), Some(1)).expect("read");
        let (reason, message, retryable) = failure(&u);
        assert_eq!((reason, retryable), ("turn.failed", false));
        assert!(message.contains("invalid_model_name"), "{message}");
    }

    #[test]
    fn opencode_sums_steps_with_their_cost() {
        let u = read(OutputFormat::Opencode, &fixture("opencode/tool-use.jsonl"), Some(0)).expect("read");
        assert_eq!((u.tokens_in, u.tokens_cached, u.tokens_out), (3 + 8076 + 1662 + 5380, 5380, 7 + 8 + 15));
        assert!((u.cost_usd.expect("cost") - (0.030399 + 0.00258306)).abs() < 1e-12);
        assert_eq!((u.summary.as_str(), u.session_id.as_deref()), ("k8s-opencode-ok", Some("ses_494719016ffe85dkDMj0FPRbHK")));
        let limit = read(OutputFormat::Opencode, &fixture("opencode/rate-limit.jsonl"), Some(1)).expect("read");
        assert_eq!(failure(&limit), ("APIError", "Rate limit exceeded", true));
        let auth = read(OutputFormat::Opencode, &fixture("opencode/auth.jsonl"), Some(1)).expect("read");
        assert_eq!(failure(&auth), ("ProviderAuthError", "invalid x-api-key", false));
    }

    #[test]
    fn gemini_sums_models_and_reads_exit_codes() {
        let u = read(OutputFormat::Gemini, &fixture("gemini/success.json"), Some(0)).expect("read");
        assert_eq!((u.tokens_in, u.tokens_cached, u.tokens_out), (24939 + 8965, 21263, 20 + 154 + 10 + 30));
        assert_eq!((u.cost_usd, u.summary.as_str(), u.failure.clone()), (None, "The capital of France is Paris.", None));
        let api = read(OutputFormat::Gemini, &fixture("gemini/api-error.json"), Some(1)).expect("read");
        assert_eq!(failure(&api), ("ApiError", "Error description", true));
        let auth = read(OutputFormat::Gemini, &fixture("gemini/auth-error.json"), Some(41)).expect("read");
        assert_eq!(
            failure(&auth),
            ("exit 41 (authentication error)", "Please set an Auth method in your settings.json or specify GEMINI_API_KEY", false)
        );
        // The error object went to standard error: the exit code alone names it.
        let turns = read(OutputFormat::Gemini, "", Some(53)).expect("read");
        assert_eq!(failure(&turns), ("exit 53 (turn limit)", "turn limit", false));
        assert!(read(OutputFormat::Gemini, "", Some(1)).is_none(), "an unknown exit is the worker's AgentExitNonZero");
    }

    #[test]
    fn aider_sums_its_token_lines_and_takes_the_session_cost() {
        let u = read(OutputFormat::Aider, &fixture("aider/tool-use.txt"), Some(0)).expect("read");
        assert_eq!((u.tokens_in, u.tokens_cached, u.tokens_out), (4200 + 6100, 3900, 1100 + 210));
        assert_eq!(u.cost_usd, Some(0.04));
        let u = read(OutputFormat::Aider, &fixture("aider/no-pricing.txt"), Some(0)).expect("read");
        assert_eq!((u.tokens_in, u.tokens_out, u.cost_usd), (12000, 523, None));
        let priced = Pricing { input_per_million: 1.0, output_per_million: 2.0, cached_input_per_million: None };
        assert!((u.cost(Some(&priced)) - (12000.0 + 1046.0) / 1e6).abs() < 1e-12);
        assert!(read(OutputFormat::Aider, "no usage here\n", Some(0)).is_none());
        assert_eq!((aider_count("1,234"), aider_count("1.5M"), aider_count("-3")), (Some(1234), Some(1_500_000), None));
    }

    #[test]
    fn figures_that_are_not_numbers_refuse_the_usage_but_keep_the_failure() {
        let out = r#"{"type":"turn.completed","usage":{"input_tokens":-5,"output_tokens":1}}
{"type":"turn.failed","error":{"message":"boom"}}"#;
        let u = read(OutputFormat::Codex, out, Some(1)).expect("read");
        assert!(matches!(u.invalid, Some(UsageError::NotAFigure { field: "usage.input_tokens", .. })), "{u:?}");
        assert_eq!((u.tokens_in, u.tokens_out), (0, 0));
        assert_eq!(failure(&u).0, "turn.failed");
        assert!(read(OutputFormat::Report, out, Some(0)).is_none(), "report is read by the worker");
    }

    #[test]
    fn the_meter_reads_streaming_usage_as_it_comes_whatever_the_chunks() {
        let pricing = Pricing { input_per_million: 1.25, output_per_million: 10.0, cached_input_per_million: Some(0.125) };
        let stream = fixture("codex/tool-use.jsonl");
        let mut meter = Meter::new(OutputFormat::Codex);
        for chunk in stream.as_bytes().chunks(7) {
            meter.feed(chunk);
        }
        let whole = read(OutputFormat::Codex, &stream, Some(0)).expect("read");
        assert_eq!(meter.spent(Some(&pricing)), (37067 + 850, whole.cost(Some(&pricing))));

        let mut claude = Meter::new(OutputFormat::Claude);
        let text = fixture("claude/stream-tool-use.jsonl");
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[..2] {
            claude.feed(format!("{line}\n").as_bytes());
            claude.feed(format!("{line}\n").as_bytes()); // the same message twice counts once
        }
        assert_eq!(claude.spent(None).0, 3 + 4120 + 11250 + 78);
        claude.feed(format!("{}\n", lines[4]).as_bytes());
        assert_eq!(claude.spent(None), (8 + 4280 + 26620 + 120, 0.0271), "the result's figures replace the sum");

        let mut opencode = Meter::new(OutputFormat::Opencode);
        opencode.feed(fixture("opencode/tool-use.jsonl").as_bytes());
        assert!((opencode.spent(None).1 - (0.030399 + 0.00258306)).abs() < 1e-12);
        assert!(Meter::streams(OutputFormat::Codex) && !Meter::streams(OutputFormat::Gemini) && !Meter::streams(OutputFormat::Report));

        // A line longer than the bound is skipped, and the next one read.
        let mut bounded = Meter::new(OutputFormat::Codex);
        bounded.feed(&vec![b'x'; METER_LINE_BYTES + 10]);
        bounded.feed(b"still the long line\n");
        bounded.feed(br#"{"type":"turn.completed","usage":{"input_tokens":5,"output_tokens":1}}"#);
        bounded.feed(b"\n");
        assert_eq!(bounded.spent(None).0, 6);
    }
}
