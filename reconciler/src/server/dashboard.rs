//! The dashboard: server-rendered HTML (handlebars templates from
//! `templates/dashboard/`) and a small script that follows the event stream
//! and swaps the page's `<main>` in place. Read-only: nothing on it changes
//! anything (changes go through git). No build step, no CDN.
//!
//! The rows come from the store (every replica has it) and are filled in
//! from the loop's board (title, repos, stages, cost) where this replica
//! runs the loop.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use handlebars::Handlebars;
use serde::{Deserialize, Serialize};

use super::{ServerError, ServerState, shown};
use crate::model::kinds::{GateType, Phase};
use crate::reconcile::dashboard_model::{Board, BoardRequest};
use crate::store::{Event, RequestRecord};
use crate::time::{Millis, parse_rfc3339};

const LAYOUT: &str = include_str!("../../../templates/dashboard/layout.html.hbs");
const INDEX: &str = include_str!("../../../templates/dashboard/index.html.hbs");
const REQUEST: &str = include_str!("../../../templates/dashboard/request.html.hbs");
const CSS: &str = include_str!("../../../templates/dashboard/dashboard.css");
const JS: &str = include_str!("../../../templates/dashboard/dashboard.js");

/// Scripts and styles from this server only; no inline script.
const CSP: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// Most rows the table shows: the most recently changed that match the
/// filter (a page of 10,000 rows, redrawn on every change, helps nobody).
pub const MAX_ROWS: usize = 500;

/// How much of a worker's log the request page shows.
const LOG_TAIL_BYTES: usize = 4096;

/// Longest text of each kind the pages show, in characters; the rest is cut
/// with `…`. `validate` bounds what people write (a title at 200 characters,
/// a description at 64 KiB) and the worker bounds what agents report, but a
/// page must stay small whatever got through: 40 requests with 1 MB titles
/// made the index 80 MB.
pub mod display {
    /// A request's title.
    pub const TITLE: usize = 200;
    /// A request's description (its page only).
    pub const DESCRIPTION: usize = 64 * 1024;
    /// A message in a table row.
    pub const ROW_MESSAGE: usize = 300;
    /// A message, a condition or an event's detail on a request's page.
    pub const MESSAGE: usize = 2000;
    /// A worker's summary.
    pub const SUMMARY: usize = 4096;
    /// A repo URL.
    pub const URL: usize = 300;
}

/// The dashboard's templates, HTML-escaping every value they render.
///
/// Trust: the templates are Hadron's own (shipped in the binary); the values
/// are untrusted (request text, agents' summaries, messages, URLs), so every
/// `{{value}}` is HTML-escaped (Handlebars' default escape function, never
/// replaced) and no template uses the unescaped `{{{value}}}` form. Strict:
/// a name missing from the data is an error.
fn html_escaping_templates() -> &'static Handlebars<'static> {
    static TEMPLATES: OnceLock<Handlebars<'static>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_partial("layout", LAYOUT).expect("because the shipped layout template parses (a test renders it)");
        hb.register_template_string("index", INDEX).expect("because the shipped index template parses (a test renders it)");
        hb.register_template_string("request", REQUEST).expect("because the shipped request template parses (a test renders it)");
        hb
    })
}

/// The filter of the requests table (`?phase=Running&q=greeting`).
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// Only this phase.
    #[serde(default)]
    pub phase: Option<String>,
    /// Only rows whose name, title or message contains this (any case).
    #[serde(default)]
    pub q: Option<String>,
}

/// One row of the requests table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    name: String,
    title: String,
    phase: String,
    phase_class: String,
    stage: String,
    repos: Vec<String>,
    attempts: u32,
    cost: String,
    tokens: String,
    age: String,
    changed: String,
    changed_at: String,
    message: String,
    search: String,
}

/// A phase choice of the filter.
#[derive(Debug, Clone, Serialize)]
struct PhaseOption {
    name: &'static str,
    selected: bool,
}

const PHASES: [Phase; 8] = [
    Phase::Pending,
    Phase::Running,
    Phase::WaitingForApproval,
    Phase::WaitingForCI,
    Phase::Succeeded,
    Phase::Failed,
    Phase::Cancelled,
    Phase::Invalid,
];

/// "42 s", "3 min", "2 h", "5 d".
fn span(ms: Millis) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn money(v: f64) -> String {
    format!("${v:.2}")
}

fn phase_class(phase: &str) -> String {
    format!("phase-{}", phase.to_ascii_lowercase())
}

/// Only web addresses become links (a URL in a request file could be
/// anything), and only of a length a link has.
fn web(url: &str) -> Option<String> {
    (url.len() <= display::URL && (url.starts_with("https://") || url.starts_with("http://"))).then(|| url.to_owned())
}

/// The table's rows, most recently changed first, filtered.
pub fn rows(records: &[RequestRecord], ages: &BTreeMap<String, i64>, board: &Board, filter: &Filter, now: Millis) -> Vec<Row> {
    let q = filter.q.as_deref().map(str::to_lowercase).filter(|q| !q.is_empty());
    let phase = filter.phase.as_deref().filter(|p| !p.is_empty());
    let mut rows: Vec<(i64, Row)> = records
        .iter()
        .map(|r| {
            let entry = board.requests.get(&r.name);
            let spec = entry.and_then(|e| e.request.as_ref()).map(|c| &c.spec);
            let status = entry.map(|e| &e.status.status);
            let budget = spec.and_then(|s| s.budget.as_ref());
            let cost = status.map_or(0.0, |s| s.total_cost_usd);
            let tokens = status.map_or(0, |s| s.total_tokens);
            let full_title = spec.map(|s| s.title.as_str()).unwrap_or_default();
            let title = shown(full_title, display::TITLE);
            let message = shown(&r.message, display::ROW_MESSAGE);
            // The filter reads everything; the page carries the cut text.
            let matches = q.as_ref().is_none_or(|q| {
                r.name.to_lowercase().contains(q.as_str())
                    || full_title.to_lowercase().contains(q.as_str())
                    || r.message.to_lowercase().contains(q.as_str())
            });
            let row = Row {
                name: r.name.clone(),
                search: format!("{} {} {}", r.name, title, message).to_lowercase(),
                title,
                phase: r.phase.clone(),
                phase_class: phase_class(&r.phase),
                stage: r.stage.clone().unwrap_or_default(),
                repos: spec.map(|s| s.repos.iter().map(|repo| shown(&repo.url, display::URL)).collect()).unwrap_or_default(),
                attempts: status.map_or(0, |s| s.stages.iter().map(|x| x.attempt).sum()),
                cost: match budget.and_then(|b| b.max_cost_usd) {
                    Some(max) => format!("{} of {}", money(cost), money(max)),
                    None => money(cost),
                },
                tokens: match budget.and_then(|b| b.max_tokens) {
                    Some(max) => format!("{tokens} of {max}"),
                    None => tokens.to_string(),
                },
                age: ages.get(&r.name).map(|at| span(now - at)).unwrap_or_default(),
                changed: format!("{} ago", span(now - r.updated_at)),
                changed_at: crate::time::rfc3339(r.updated_at),
                message,
            };
            (r.updated_at, matches, row)
        })
        .filter(|(_, matches, row)| *matches && phase.is_none_or(|p| row.phase == p))
        .map(|(at, _, row)| (at, row))
        .collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
    rows.into_iter().map(|(_, row)| row).collect()
}

/// One worker on the request page.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkerView {
    worker: String,
    repo: String,
    attempt: u32,
    state: String,
    state_class: String,
    started_at: String,
    finished_at: String,
    took: String,
    commit: String,
    commit_url: Option<String>,
    summary: String,
    cost: String,
    /// The agent ran without the sandbox.
    unconfined: bool,
    /// The tail of its log (not `log`: that is a handlebars helper).
    log_tail: Option<String>,
}

/// One step of the pipeline: a stage with its workers, or a gate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct StepView {
    name: String,
    gate: bool,
    kind: String,
    state: String,
    state_class: String,
    current: bool,
    workers: Vec<WorkerView>,
    branch: Option<String>,
    pull_request: Option<String>,
    message: String,
}

/// A budget bar.
#[derive(Debug, Clone, Serialize)]
struct Bar {
    label: &'static str,
    used: String,
    max: String,
    value: f64,
    limit: f64,
    over: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConditionView {
    kind: String,
    status: String,
    reason: String,
    message: String,
    at: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputView {
    repo: String,
    branch: String,
    commit: String,
    pull_request: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryView {
    at: String,
    what: String,
    detail: String,
}

/// A round of changes asked at a gate, as the request page shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangesView {
    headline: String,
    feedback: String,
    pull_request: Option<String>,
}

/// The request page.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPage {
    name: String,
    title: String,
    description: String,
    phase: String,
    phase_class: String,
    stage: String,
    message: String,
    revision: String,
    /// The latest round of changes asked at a gate, in one line, and its feedback.
    changes: Option<ChangesView>,
    known: bool,
    steps: Vec<StepView>,
    bars: Vec<Bar>,
    conditions: Vec<ConditionView>,
    outputs: Vec<OutputView>,
    history: Vec<HistoryView>,
}

fn state_class(state: &str) -> String {
    format!("state-{}", state.to_ascii_lowercase())
}

/// What the request page shows besides the record and the board: the
/// event history, the workers' log tails, the approval PRs by gate.
#[derive(Debug, Default)]
pub struct PageExtras {
    /// Events of the request, oldest first.
    pub events: Vec<Event>,
    /// Worker → the tail of its log.
    pub logs: BTreeMap<String, String>,
    /// Gate → the web address of its approval PR (with Gitea).
    pub approval_prs: BTreeMap<String, String>,
}

/// The request page of `name`: its record, its board entry (when this
/// replica runs the loop) and the extras.
pub fn request_page(record: &RequestRecord, entry: Option<&BoardRequest>, board: &Board, extras: &PageExtras, now: Millis) -> RequestPage {
    let PageExtras { events, logs, approval_prs } = extras;
    let request = entry.and_then(|e| e.request.as_ref());
    let status = entry.map(|e| &e.status.status);
    let results = status.map(|s| s.stages.as_slice()).unwrap_or_default();
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut steps = Vec::new();
    let mut wall_ms: Millis = 0;
    let worker_view = |x: &crate::model::StageResult| {
        let started = x.started_at.as_deref().and_then(parse_rfc3339);
        let finished = x.finished_at.as_deref().and_then(parse_rfc3339);
        let took = started.map(|s| finished.unwrap_or(now) - s);
        let commit = x.pushed_commit.clone().unwrap_or_default();
        WorkerView {
            worker: x.worker.clone(),
            repo: shown(&x.repo, display::URL),
            attempt: x.attempt,
            state: x.state.clone(),
            state_class: state_class(&x.state),
            started_at: x.started_at.clone().unwrap_or_default(),
            finished_at: x.finished_at.clone().unwrap_or_default(),
            took: took.map(span).unwrap_or_default(),
            commit_url: (!commit.is_empty())
                .then(|| web(&x.repo))
                .flatten()
                .map(|u| format!("{}/commit/{commit}", u.trim_end_matches(".git"))),
            commit: commit.chars().take(12).collect(),
            summary: shown(&x.summary, display::SUMMARY),
            cost: money(x.cost_usd),
            unconfined: x.unconfined,
            log_tail: logs.get(&x.worker).cloned(),
        }
    };
    for x in results {
        if let (Some(s), f) = (x.started_at.as_deref().and_then(parse_rfc3339), x.finished_at.as_deref().and_then(parse_rfc3339)) {
            wall_ms += f.unwrap_or(now) - s;
        }
    }
    if let Some(request) = request {
        let stages = request.effective_stages(&board.settings);
        for (i, stage) in stages.iter().enumerate() {
            let workers: Vec<WorkerView> = results.iter().filter(|x| x.name == stage.name).map(worker_view).collect();
            let state = if workers.is_empty() {
                "NotStarted"
            } else if workers.iter().all(|w| w.state == "Succeeded") {
                "Succeeded"
            } else if workers.iter().any(|w| w.state == "Failed") {
                "Failed"
            } else {
                "Running"
            };
            steps.push(StepView {
                name: stage.name.clone(),
                gate: false,
                kind: "stage".to_owned(),
                state: state.to_owned(),
                state_class: state_class(state),
                current: record.stage.as_deref() == Some(stage.name.as_str()) && !record.phase.starts_with("Waiting"),
                workers,
                branch: None,
                pull_request: None,
                message: String::new(),
            });
            // A gate after this stage passed once a later stage started (or all is done).
            let later_started = results.iter().any(|x| stages[i + 1..].iter().any(|s| s.name == x.name));
            for gate in request.spec.gates.iter().filter(|g| g.after == stage.name) {
                let waiting = record.phase.starts_with("Waiting") && record.stage.as_deref() == Some(stage.name.as_str());
                let state = if waiting {
                    "Waiting"
                } else if later_started || record.phase == "Succeeded" {
                    "Passed"
                } else {
                    "Pending"
                };
                let kind = match gate.gate_type {
                    GateType::Approval => "approval",
                    GateType::Ci => "ci",
                };
                let condition = conditions.iter().find(|c| c.message.contains(&gate.name) || c.condition_type.contains(&gate.name));
                steps.push(StepView {
                    name: gate.name.clone(),
                    gate: true,
                    kind: kind.to_owned(),
                    state: state.to_owned(),
                    state_class: state_class(state),
                    current: waiting,
                    workers: Vec::new(),
                    branch: (gate.gate_type == GateType::Approval).then(|| crate::gates::approval_branch(&record.name, &gate.name)),
                    pull_request: approval_prs.get(&gate.name).and_then(|u| web(u)),
                    message: condition.map(|c| shown(&c.message, display::MESSAGE)).unwrap_or_default(),
                });
            }
        }
    }
    let mut bars = Vec::new();
    if let (Some(budget), Some(status)) = (request.and_then(|r| r.spec.budget.as_ref()), status) {
        if let Some(max) = budget.max_cost_usd {
            bars.push(Bar {
                label: "Cost",
                used: money(status.total_cost_usd),
                max: money(max),
                value: status.total_cost_usd,
                limit: max,
                over: status.total_cost_usd > max,
            });
        }
        if let Some(max) = budget.max_tokens {
            let used = status.total_tokens as f64;
            bars.push(Bar {
                label: "Tokens",
                used: status.total_tokens.to_string(),
                max: max.to_string(),
                value: used,
                limit: max as f64,
                over: status.total_tokens > max,
            });
        }
        if let Some(max) = &budget.max_wall_time {
            let limit = max.as_duration().as_millis() as f64;
            bars.push(Bar {
                label: "Wall time",
                used: span(wall_ms),
                max: span(limit as Millis),
                value: wall_ms as f64,
                limit,
                over: wall_ms as f64 > limit,
            });
        }
    }
    RequestPage {
        name: record.name.clone(),
        title: request.map(|r| shown(&r.spec.title, display::TITLE)).unwrap_or_default(),
        description: request.map(|r| shown(&r.spec.description, display::DESCRIPTION)).unwrap_or_default(),
        phase: record.phase.clone(),
        phase_class: phase_class(&record.phase),
        stage: record.stage.clone().unwrap_or_default(),
        message: shown(&record.message, display::MESSAGE),
        revision: record.observed_revision.chars().take(12).collect(),
        changes: status.and_then(|s| s.revision.as_ref()).map(|r| ChangesView {
            headline: shown(
                &format!(
                    "Revision {} of {} of stage {} ({}): {} asked for changes at gate {}",
                    r.number,
                    r.max,
                    r.stage,
                    r.state.to_lowercase(),
                    r.requested_by,
                    r.gate
                ),
                display::MESSAGE,
            ),
            feedback: shown(&r.feedback, display::MESSAGE),
            pull_request: approval_prs.get(&r.gate).cloned(),
        }),
        known: entry.is_some(),
        steps,
        bars,
        conditions: conditions
            .iter()
            .map(|c| ConditionView {
                kind: c.condition_type.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: shown(&c.message, display::MESSAGE),
                at: c.last_transition_time.clone().unwrap_or_default(),
            })
            .collect(),
        outputs: status
            .map(|s| s.outputs.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|o| OutputView {
                repo: shown(&o.repo, display::URL),
                branch: o.branch.clone(),
                commit: o.commit.clone().unwrap_or_default().chars().take(12).collect(),
                pull_request: o.pull_request.as_deref().and_then(web),
            })
            .collect(),
        history: events
            .iter()
            .rev()
            .map(|e| HistoryView { at: crate::time::rfc3339(e.at), what: e.action.clone(), detail: shown(&e.detail, display::MESSAGE) })
            .collect(),
    }
}

fn html(body: String, status: StatusCode) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn render(template: &str, data: &serde_json::Value) -> Result<String, ServerError> {
    html_escaping_templates().render(template, data).map_err(|e| ServerError::Render(e.to_string()))
}

/// `GET /`: the requests table.
pub async fn index(State(state): State<ServerState>, Query(filter): Query<Filter>) -> Result<Response, ServerError> {
    let records = state.store().list_requests().await?;
    let ages = state.store().request_ages().await?;
    let board = state.board();
    let follower = state.relay_from().is_some() && board.requests.is_empty();
    let data = index_data(&records, &ages, &board, &filter, follower, crate::time::now());
    Ok(html(render("index", &data)?, StatusCode::OK))
}

/// What the requests table is rendered from: at most [`MAX_ROWS`] rows.
pub fn index_data(
    records: &[RequestRecord],
    ages: &BTreeMap<String, i64>,
    board: &Board,
    filter: &Filter,
    follower: bool,
    now: Millis,
) -> serde_json::Value {
    let mut rows = rows(records, ages, board, filter, now);
    let matched = rows.len();
    rows.truncate(MAX_ROWS);
    let phases: Vec<PhaseOption> =
        PHASES.iter().map(|p| PhaseOption { name: p.as_str(), selected: filter.phase.as_deref() == Some(p.as_str()) }).collect();
    serde_json::json!({
        "title": "Requests",
        "count": rows.len(),
        "matched": matched,
        "more": matched > rows.len(),
        "rows": rows,
        "total": records.len(),
        "phases": phases,
        "q": filter.q.clone().unwrap_or_default(),
        "revision": board.revision.chars().take(12).collect::<String>(),
        "follower": follower,
    })
}

/// `GET /requests/{name}`: one request.
pub async fn request(State(state): State<ServerState>, Path(name): Path<String>) -> Result<Response, ServerError> {
    let Some(record) = state.store().get_request(&name).await? else {
        let data = serde_json::json!({ "title": "Not found", "missing": name });
        return Ok(html(render("request", &data)?, StatusCode::NOT_FOUND));
    };
    let board = state.board();
    let entry = board.requests.get(&name);
    let mut extras = PageExtras { events: state.store().events_for_request(&name, 100).await?, ..PageExtras::default() };
    if let Some(request) = entry.and_then(|e| e.request.as_ref()) {
        for gate in request.spec.gates.iter().filter(|g| g.gate_type == GateType::Approval) {
            if let Some(pr) = state.store().approval_pr(&name, &gate.name).await? {
                extras.approval_prs.insert(gate.name.clone(), pr.url);
            }
        }
    }
    // Logs through the driver, off the async threads (a file or an API call).
    if let (Some(driver), Some(entry)) = (state.driver(), entry) {
        let workers: Vec<String> = entry.status.status.stages.iter().map(|x| x.worker.clone()).collect();
        extras.logs = tokio::task::spawn_blocking(move || {
            workers
                .into_iter()
                .filter_map(|w| match driver.log_tail(&w, LOG_TAIL_BYTES) {
                    Ok(Some(text)) => Some((w, text)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!(worker = %w, reason = e.reason(), error = %e, "no log for the dashboard");
                        None
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default();
    }
    let page = request_page(&record, entry, &board, &extras, crate::time::now());
    let data = serde_json::json!({ "title": record.name, "page": page, "missing": null });
    Ok(html(render("request", &data)?, StatusCode::OK))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /assets/dashboard.css`.
pub async fn stylesheet() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

/// `GET /assets/dashboard.js`.
pub async fn script() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

#[cfg(test)]
mod tests;
