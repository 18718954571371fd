//! Plan preview (`hadron plan`): what Hadron would do if a change to the
//! control repo were merged, from the tree before, the tree after and what
//! Hadron observed (its status files). Pure, like the planner whose
//! decisions it foretells: a new spec is a new generation (its running
//! workers are cancelled, approvals for the old one go stale), a deleted or
//! suspended request has its workers cancelled, `priority` and `suspend`
//! alone change no generation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use crate::model::kinds::ApprovalDecision;
use crate::model::{Budget, ChangeRequest, DesiredState, Diagnostic, GateType, Phase, RequestStatus, Severity};

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// New: its first stage starts.
    Created,
    /// Its spec changed: a new generation starts from the first stage.
    Restarted,
    /// Deleted or suspended: its workers stop.
    Cancelled,
    /// No longer suspended: it goes on.
    Resumed,
    /// The file does not parse or validate: its workers stop.
    Invalid,
    /// Nothing changes.
    Unchanged,
}

impl Change {
    /// The word used in text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Restarted => "restarted",
            Change::Cancelled => "cancelled",
            Change::Resumed => "resumed",
            Change::Invalid => "invalid",
            Change::Unchanged => "unchanged",
        }
    }
}

/// The preview of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPreview {
    /// Request name.
    pub name: String,
    /// What happens to it.
    pub change: Change,
    /// Why, as the planner says it: `New`, `SpecChanged`, `Deleted`,
    /// `Suspended`, `Resumed`, the first validation code, or `Unchanged`.
    pub reason: String,
    /// Generation Hadron last worked on, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_generation: Option<String>,
    /// Generation after the change (none when deleted or invalid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// Top-level spec fields that differ from the tree before.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_fields: Vec<String>,
    /// Gates whose approval (given for the previous generation) no longer counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stale_approvals: Vec<String>,
    /// Running workers that would be cancelled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cancelled_workers: Vec<String>,
    /// The reason they are cancelled with (`SpecChanged` wins over `Suspended`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// For a request that (re)starts: its stages in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    /// Its gates, e.g. `review (approval after implement)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<String>,
    /// Its target repos.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repos: Vec<String>,
    /// What it may spend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Approval gates where this change asks for changes (`decision:
    /// changes`): what happens, one sentence each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<String>,
}

/// The preview of a whole change.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// Every request, by name.
    pub requests: Vec<RequestPreview>,
    /// Agents added, changed or removed (they apply to workers started from then on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents_changed: Vec<String>,
    /// Whether `hadron.yaml` changed.
    pub settings_changed: bool,
}

impl Preview {
    /// How many requests `change` happens to.
    pub fn count(&self, change: Change) -> usize {
        self.requests.iter().filter(|r| r.change == change).count()
    }
}

/// Workers of `status` still running for the generation it describes.
fn live_workers(status: &RequestStatus) -> Vec<String> {
    status
        .status
        .stages
        .iter()
        .filter(|x| matches!(x.state.as_str(), "Running" | "Pending"))
        .map(|x| x.worker.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn changed_fields(before: &ChangeRequest, after: &ChangeRequest) -> Vec<String> {
    let (a, b) = (serde_json::to_value(&before.spec), serde_json::to_value(&after.spec));
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (a, b) else { return Vec::new() };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

fn outline(preview: &mut RequestPreview, request: &ChangeRequest, desired: &DesiredState) {
    preview.stages = request.effective_stages(&desired.settings).iter().map(|s| s.name.clone()).collect();
    preview.gates = request
        .spec
        .gates
        .iter()
        .map(|g| {
            let kind = match g.gate_type {
                GateType::Approval => "approval",
                GateType::Ci => "ci",
            };
            format!("{} ({kind} after {})", g.name, g.after)
        })
        .collect();
    preview.repos = request.spec.repos.iter().map(|r| r.url.clone()).collect();
    preview.budget = request.spec.budget.clone();
}

/// What merging `after` over `before` would do, given the status files
/// Hadron wrote (`observed`).
pub fn preview(before: &DesiredState, after: &DesiredState, observed: &BTreeMap<String, Arc<RequestStatus>>) -> Preview {
    let names: BTreeSet<&String> =
        before.requests.keys().chain(after.requests.keys()).chain(after.invalid_requests.keys()).chain(observed.keys()).collect();
    let mut requests = Vec::new();
    for name in names {
        let old = before.requests.get(name);
        let new = after.requests.get(name);
        let status = observed.get(name);
        let live = status.map(|s| live_workers(s)).unwrap_or_default();
        let previous_generation =
            status.map(|s| s.status.observed_generation.clone()).filter(|g| !g.is_empty()).or_else(|| old.map(|o| o.generation()));
        let mut p = RequestPreview {
            name: name.clone(),
            change: Change::Unchanged,
            reason: "Unchanged".to_owned(),
            previous_generation: previous_generation.clone(),
            generation: new.map(|n| n.generation()),
            changed_fields: match (old, new) {
                (Some(o), Some(n)) => changed_fields(o, n),
                _ => Vec::new(),
            },
            stale_approvals: Vec::new(),
            cancelled_workers: Vec::new(),
            cancel_reason: None,
            stages: Vec::new(),
            gates: Vec::new(),
            repos: Vec::new(),
            budget: None,
            revisions: Vec::new(),
        };
        if let Some(diagnostics) = after.invalid_requests.get(name) {
            p.change = Change::Invalid;
            p.reason = diagnostics.first().map_or("Invalid".to_owned(), |d| d.code.as_str().to_owned());
            p.cancel_reason = (!live.is_empty()).then(|| "Invalid".to_owned());
            p.cancelled_workers = live;
            requests.push(p);
            continue;
        }
        let Some(new) = new else {
            if old.is_some() || status.is_some() {
                p.change = Change::Cancelled;
                p.reason = "Deleted".to_owned();
                p.cancel_reason = (!live.is_empty()).then(|| "Deleted".to_owned());
                p.cancelled_workers = live;
                requests.push(p);
            }
            continue;
        };
        let generation = new.generation();
        let was_suspended = old.is_some_and(|o| o.spec.suspend) || status.is_some_and(|s| s.status.phase == Phase::Cancelled);
        let respecified = previous_generation.as_ref().is_some_and(|g| *g != generation);
        if previous_generation.is_none() {
            p.change = Change::Created;
            p.reason = if new.spec.suspend { "Suspended" } else { "New" }.to_owned();
            outline(&mut p, new, after);
        } else if new.spec.suspend {
            p.reason = "Suspended".to_owned();
            if !was_suspended || !live.is_empty() {
                p.change = Change::Cancelled;
                // A new spec stops the old generation's workers whatever else.
                p.cancel_reason = (!live.is_empty()).then(|| if respecified { "SpecChanged" } else { "Suspended" }.to_owned());
                p.cancelled_workers = live;
            }
        } else if previous_generation.as_deref() != Some(generation.as_str()) {
            p.change = Change::Restarted;
            p.reason = "SpecChanged".to_owned();
            p.cancel_reason = (!live.is_empty()).then(|| "SpecChanged".to_owned());
            p.cancelled_workers = live;
            let old_generation = previous_generation.clone().unwrap_or_default();
            p.stale_approvals = after
                .approvals
                .iter()
                .filter(|((request, _), a)| request == name && a.spec.generation == old_generation)
                .map(|((_, gate), _)| gate.clone())
                .collect();
            outline(&mut p, new, after);
        } else if was_suspended {
            p.change = Change::Resumed;
            p.reason = "Resumed".to_owned();
            outline(&mut p, new, after);
        }
        if p.change != Change::Restarted {
            p.revisions = revisions(before, after, new, &generation);
        }
        requests.push(p);
    }
    let agents: BTreeSet<&String> = before.agents.keys().chain(after.agents.keys()).collect();
    let agents_changed = agents
        .into_iter()
        .filter(|name| match (before.agents.get(*name), after.agents.get(*name)) {
            (Some(a), Some(b)) => a.spec != b.spec,
            _ => true,
        })
        .cloned()
        .collect();
    Preview { requests, agents_changed, settings_changed: before.settings.spec != after.settings.spec }
}

/// What the approvals of `request` that this change brings, asking for
/// changes of its current `generation`, will do (if merged by an allowed
/// approver; the preview cannot know who merges).
fn revisions(before: &DesiredState, after: &DesiredState, request: &ChangeRequest, generation: &str) -> Vec<String> {
    let name = &request.metadata.name;
    let mut out = Vec::new();
    for gate in request.spec.gates.iter().filter(|g| g.gate_type == GateType::Approval) {
        let key = (name.clone(), gate.name.clone());
        let Some(approval) = after.approvals.get(&key) else { continue };
        let spec = &approval.spec;
        if spec.decision != ApprovalDecision::Changes || spec.generation != generation || before.approvals.get(&key) == Some(approval) {
            continue;
        }
        let max = gate.max_revisions();
        out.push(if spec.revision < max {
            format!(
                "{}: changes asked of revision {}: stage {} runs again with the feedback (revision {} of {max}), then the gate asks again",
                gate.name,
                spec.revision,
                gate.after,
                spec.revision + 1
            )
        } else {
            format!(
                "{}: changes asked, but all {max} revision(s) of the gate (maxRevisions) are used: the request stalls until an approval or an edit",
                gate.name
            )
        });
    }
    out
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") }
}

/// The preview as people read it (`hadron plan`, the pull-request
/// comment): the diagnostics as `validate` prints them, one block per
/// request that changes, the unchanged ones on a line, and a summary that
/// ends with `(against)`. Every name and value is shown inert
/// ([`inert_for_terminal`](crate::redact::inert_for_terminal)): the text
/// goes to a terminal and into a PR comment.
pub fn render_text(preview: &Preview, diagnostics: &[Diagnostic], against: &str) -> String {
    use std::fmt::Write as _;

    use crate::redact::inert_for_terminal as t;
    let mut out = String::new();
    for d in diagnostics {
        let _ = writeln!(out, "{d}");
    }
    if !diagnostics.is_empty() {
        out.push('\n');
    }
    let short = |g: &Option<String>| g.as_deref().map(|g| g[..g.len().min(8)].to_owned()).unwrap_or_default();
    let mut unchanged = Vec::new();
    for r in &preview.requests {
        let _ = match r.change {
            Change::Unchanged if r.revisions.is_empty() => {
                unchanged.push(r.name.as_str());
                continue;
            }
            Change::Unchanged => writeln!(out, "~ {}: an approver asks for changes", t(&r.name)),
            Change::Created => writeln!(
                out,
                "+ {}: created{}",
                t(&r.name),
                if r.reason == "Suspended" { ", suspended (nothing runs until `suspend` is false)" } else { "" }
            ),
            Change::Restarted => writeln!(
                out,
                "~ {}: restarted, a new generation ({} -> {}): {} changed",
                t(&r.name),
                t(&short(&r.previous_generation)),
                t(&short(&r.generation)),
                if r.changed_fields.is_empty() { "the spec".to_owned() } else { t(&r.changed_fields.join(", ")).into_owned() }
            ),
            Change::Resumed => writeln!(out, "> {}: resumed (no longer suspended)", t(&r.name)),
            Change::Cancelled => writeln!(out, "- {}: cancelled ({})", t(&r.name), t(&r.reason.to_lowercase())),
            Change::Invalid => writeln!(out, "! {}: invalid ({}): see the errors above", t(&r.name), t(&r.reason)),
        };
        for revision in &r.revisions {
            let _ = writeln!(out, "    revision at gate {}", t(revision));
        }
        if !r.stale_approvals.is_empty() {
            let _ = writeln!(
                out,
                "    approvals that no longer count: {} (given for the previous generation)",
                t(&r.stale_approvals.join(", "))
            );
        }
        if !r.cancelled_workers.is_empty() {
            let _ = writeln!(
                out,
                "    workers cancelled ({}): {}",
                t(r.cancel_reason.as_deref().unwrap_or("")),
                t(&r.cancelled_workers.join(", "))
            );
        }
        if !r.stages.is_empty() {
            let _ = writeln!(out, "    stages: {}", t(&r.stages.join(" -> ")));
        }
        if !r.gates.is_empty() {
            let _ = writeln!(out, "    gates: {}", t(&r.gates.join(", ")));
        }
        if !r.repos.is_empty() {
            let _ = writeln!(out, "    repos: {}", t(&r.repos.join(", ")));
        }
        if let Some(b) = &r.budget {
            let mut parts = Vec::new();
            if let Some(c) = b.max_cost_usd {
                parts.push(format!("at most ${c:.2}"));
            }
            if let Some(t) = b.max_tokens {
                parts.push(format!("{t} tokens"));
            }
            if let Some(w) = &b.max_wall_time {
                parts.push(format!("{} of worker time", t(w.as_str())));
            }
            let _ = writeln!(out, "    budget: {}", parts.join(", "));
        } else if matches!(r.change, Change::Created | Change::Restarted | Change::Resumed) {
            let _ = writeln!(out, "    budget: none set (hadron.yaml limits apply)");
        }
    }
    if !unchanged.is_empty() {
        let _ = writeln!(out, "= unchanged: {}", t(&unchanged.join(", ")));
    }
    if !preview.agents_changed.is_empty() {
        let _ = writeln!(
            out,
            "agents changed: {} (workers started from now on use them; running ones keep theirs)",
            t(&preview.agents_changed.join(", "))
        );
    }
    if preview.settings_changed {
        let _ = writeln!(out, "hadron.yaml changed (limits, defaults and approvers apply from the next pass)");
    }
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    let _ = writeln!(
        out,
        "\nPlan: {} to create, {} to restart, {} to cancel, {} to resume, {} unchanged, {} invalid; {}, {} ({})",
        preview.count(Change::Created),
        preview.count(Change::Restarted),
        preview.count(Change::Cancelled),
        preview.count(Change::Resumed),
        preview.count(Change::Unchanged),
        preview.count(Change::Invalid),
        plural(errors, "error"),
        plural(diagnostics.len() - errors, "warning"),
        t(against),
    );
    out
}
