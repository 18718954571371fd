//! Rendering `status/<request>.yaml`: pure and deterministic. The same
//! request state always gives the same bytes, and a status whose content did
//! not change keeps its revision and timestamps, so no commit is made.

use std::collections::BTreeMap;

use crate::model::kinds::{API_VERSION, Condition, Metadata, Output, Phase, RequestStatus, RequestStatusBody, RevisionStatus, StageResult};
use crate::plan::RequestView;
use crate::time::{Millis, rfc3339};

/// Builds the status of one request. `prev` is the status file as last
/// written; `revision` the control-repo commit this pass read.
pub fn render(
    view: &RequestView,
    prev: Option<&RequestStatus>,
    revision: &str,
    now: Millis,
    pull_requests: &BTreeMap<String, String>,
) -> RequestStatus {
    render_with(view, prev, revision, now, pull_requests, None)
}

/// [`render`], with a forge error that stalls the request: `(reason,
/// message)` makes the `Stalled` condition true with that reason, whatever
/// the phase (the phase stays what the pipeline says).
pub fn render_with(
    view: &RequestView,
    prev: Option<&RequestStatus>,
    revision: &str,
    now: Millis,
    pull_requests: &BTreeMap<String, String>,
    stalled_by: Option<(&str, &str)>,
) -> RequestStatus {
    let stages: Vec<StageResult> = view
        .attempts
        .iter()
        .map(|a| StageResult {
            name: a.stage.clone(),
            repo: a.repo.clone(),
            worker: a.worker.clone(),
            attempt: a.attempt,
            state: a.state.as_str().to_owned(),
            started_at: a.started_at.map(rfc3339),
            finished_at: a.finished_at.map(rfc3339),
            pushed_commit: a.pushed_commit.clone(),
            cost_usd: round6(a.cost_usd),
            tokens: a.tokens(),
            tokens_in: a.tokens_in,
            tokens_out: a.tokens_out,
            // Cut by the worker already; again here for summaries recorded
            // before it was (a store from an older Hadron).
            summary: crate::workers::usage::cap_summary(&a.summary),
            unconfined: a.unconfined,
            session_id: a.session_id.clone(),
        })
        .collect();
    let mut outputs: BTreeMap<&str, Output> = BTreeMap::new();
    for a in &view.attempts {
        let out = outputs.entry(a.repo.as_str()).or_insert_with(|| Output {
            repo: a.repo.clone(),
            branch: view.work_branch.clone(),
            commit: None,
            pull_request: pull_requests.get(&a.repo).cloned(),
        });
        if a.pushed_commit.is_some() {
            out.commit = a.pushed_commit.clone();
        }
    }
    let outputs: Vec<Output> = outputs.into_values().filter(|o| o.commit.is_some()).collect();

    let (ready, reconciling, stalled) = match view.phase {
        Phase::Succeeded => ("True", "False", "False"),
        Phase::Pending | Phase::Running => ("False", "True", "False"),
        Phase::Failed | Phase::Invalid => ("False", "False", "True"),
        // Nothing happens until a person acts.
        Phase::WaitingForApproval if view.reason == "RevisionsExhausted" => ("False", "False", "True"),
        Phase::WaitingForApproval | Phase::WaitingForCI | Phase::Cancelled => ("False", "False", "False"),
    };
    let prev_conditions: &[Condition] = prev.map(|p| p.status.conditions.as_slice()).unwrap_or_default();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        let old = prev_conditions.iter().find(|c| c.condition_type == kind);
        let time = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Some(rfc3339(now)),
        };
        Condition {
            condition_type: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: time,
        }
    };
    let progressing = if reconciling == "True" { "Progressing" } else { view.reason.as_str() };
    let conditions = vec![
        condition("Ready", ready, &view.reason, &view.message),
        condition("Reconciling", reconciling, progressing, if reconciling == "True" { &view.message } else { "" }),
        match stalled_by {
            Some((reason, message)) => condition("Stalled", "True", reason, message),
            None => condition("Stalled", stalled, &view.reason, if stalled == "True" { &view.message } else { "" }),
        },
    ];

    let mut status = RequestStatus {
        api_version: API_VERSION.to_owned(),
        kind: "RequestStatus".to_owned(),
        metadata: Metadata { name: view.name.clone(), labels: Default::default(), annotations: Default::default() },
        status: RequestStatusBody {
            observed_revision: revision.to_owned(),
            observed_generation: view.generation.clone(),
            phase: view.phase,
            stage: view.stage.clone(),
            total_cost_usd: round6(crate::plan::total_cost(&view.attempts)),
            total_tokens: crate::plan::total_tokens(&view.attempts),
            total_tokens_in: view.attempts.iter().fold(0, |sum, a| sum.saturating_add(a.tokens_in)),
            total_tokens_out: view.attempts.iter().fold(0, |sum, a| sum.saturating_add(a.tokens_out)),
            stages,
            conditions,
            outputs,
            revision: view.revision.as_ref().map(|r| RevisionStatus {
                gate: r.gate.clone(),
                stage: r.stage.clone(),
                number: r.number,
                max: r.max,
                requested_by: r.by.clone(),
                feedback: excerpt(&r.feedback, FEEDBACK_EXCERPT_CHARS),
                state: if r.running {
                    "Running"
                } else if view.reason == "RevisionsExhausted" {
                    "Exhausted"
                } else {
                    "Ready"
                }
                .to_owned(),
            }),
            message: view.message.clone(),
        },
    };
    // Nothing but the revision changed: keep the old one, so the file (and git) stay as they are.
    if let Some(prev) = prev {
        let mut same = status.clone();
        same.status.observed_revision = prev.status.observed_revision.clone();
        if &same == prev {
            status = same;
        }
    }
    status
}

/// The digest Hadron keeps of a status file it published: SHA-256 of the
/// file's text. A status file read back from git is Hadron's own when the
/// digest of its re-rendered text ([`to_yaml`]) is the one kept.
pub fn digest(text: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text))
}

/// Rounds to a millionth of a dollar; `-0.0` (the sum of nothing) becomes `0.0`.
fn round6(v: f64) -> f64 {
    let r = (v * 1e6).round() / 1e6;
    if r == 0.0 { 0.0 } else { r }
}

/// The YAML text of a status file: stable key order, a header comment.
pub fn to_yaml(status: &RequestStatus) -> String {
    let body = serde_saphyr::to_string(status).expect("because a status of plain strings and numbers always serialises");
    format!("# Written by Hadron; edits are overwritten. History: git log -p -- status/{}.yaml\n{body}", status.metadata.name)
}

/// Path of a request's status file.
pub fn path_of(request: &str) -> String {
    format!("status/{request}.yaml")
}

/// How much of an approver's feedback the status file shows.
const FEEDBACK_EXCERPT_CHARS: usize = 200;

/// The first `max` characters of `text` on one line, with `…` when cut.
fn excerpt(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::model::file::Object;
    use crate::model::parse::{own_status, parse_file};
    use crate::plan::{Attempt, AttemptState};

    /// A view of one request with one finished attempt, `text` in every free-text field.
    fn view_with(name: &str, text: &str, cost: f64, phase: Phase) -> RequestView {
        let generation = "0123456789abcdef".repeat(4);
        let (stage, repo) = ("implement", "https://git.example/org/app.git");
        let attempt = Attempt {
            worker: crate::ids::worker_name(&crate::ids::Installation::default(), name, &generation, stage, repo, 2),
            request: name.to_owned(),
            generation: generation.clone(),
            stage: stage.to_owned(),
            repo: repo.to_owned(),
            attempt: 2,
            state: AttemptState::Succeeded,
            started_at: Some(1_700_000_000_000),
            finished_at: Some(1_700_000_123_456),
            cost_usd: cost,
            tokens_in: 12_345,
            tokens_out: 678,
            pushed_commit: Some("a".repeat(40)),
            reason: text.to_owned(),
            summary: text.to_owned(),
            ..Attempt::default()
        };
        RequestView {
            name: name.to_owned(),
            generation,
            phase,
            stage: Some(stage.to_owned()),
            reason: "Completed".to_owned(),
            message: text.to_owned(),
            attempts: vec![attempt],
            work_branch: format!("hadron/{name}"),
            revision: Some(crate::plan::Revision {
                gate: "review".to_owned(),
                stage: stage.to_owned(),
                number: 1,
                max: 3,
                by: text.to_owned(),
                feedback: text.to_owned(),
                running: false,
            }),
        }
    }

    /// What Hadron publishes reads back as exactly what it rendered, so the
    /// catalog may record its own files as rendered instead of parsing them.
    fn reads_back_as_rendered(view: &RequestView, stalled: Option<(&str, &str)>) -> Result<(), TestCaseError> {
        let prs: BTreeMap<String, String> = [(view.attempts[0].repo.clone(), "https://git.example/org/app/pulls/7".to_owned())].into();
        let status = render_with(view, None, &"b".repeat(40), 1_700_000_200_000, &prs, stalled);
        let path = path_of(&view.name);
        let text = to_yaml(&status);
        let parsed = parse_file(&path, text.as_bytes()).expect("because a status path is a file Hadron reads");
        prop_assert!(parsed.diagnostics.is_empty(), "{:?}\n{text}", parsed.diagnostics);
        match parsed.object {
            Some(Object::Status(back)) => prop_assert_eq!(&*back, &status, "{}", text),
            other => prop_assert!(false, "no status read back: {other:?}"),
        }
        prop_assert!(own_status(&path, Arc::new(status)).is_some(), "taken as rendered");
        Ok(())
    }

    #[test]
    fn a_rendered_status_reads_back_as_itself() {
        let tricky = [
            "",
            "plain",
            "yes",
            "no",
            "null",
            "~",
            "0.5",
            "1e3",
            "0x1f",
            "a: b",
            "# no comment",
            "multi\nline\n",
            "two\n\nblank lines",
            " leading space",
            "trailing space ",
            "quote ' and \"",
            "ünïcødé ✓ 🚀",
            "tab\there",
            "- dash",
            "{brace}",
            "[bracket]",
            "&anchor",
            "*alias",
            "!tag",
            "%directive",
            "@at",
            "`tick`",
            "line\r\nwindows",
            "\u{7f}delete",
            "bell\u{7}",
            "nul\u{0}byte",
            "---",
            "...",
            "key:\n  nested: value",
        ];
        for (i, text) in tricky.iter().enumerate() {
            for (cost, phase) in
                [(0.0, Phase::Succeeded), (0.1234567, Phase::Running), (1e-7, Phase::Failed), (99999.5, Phase::WaitingForCI)]
            {
                let view = view_with(&format!("req-{i}"), text, cost, phase);
                if let Err(e) =
                    reads_back_as_rendered(&view, None).and_then(|()| reads_back_as_rendered(&view, Some(("ForgeRefused", text))))
                {
                    panic!("{text:?} at cost {cost}: {e}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn any_text_and_cost_read_back_as_rendered(text in any::<String>(), cost in 0.0f64..1e6) {
            reads_back_as_rendered(&view_with("req-x", &text, cost, Phase::Failed), Some(("Stalled", &text)))?;
        }
    }

    #[test]
    fn the_cost_of_no_work_is_zero_not_minus_zero() {
        // The float sum of nothing is -0.0, which YAML would show as `-0.0`.
        let nothing: f64 = std::iter::empty::<f64>().sum();
        assert!(nothing.is_sign_negative(), "the premise: an empty f64 sum is -0.0");
        let rounded = round6(nothing);
        assert!(rounded == 0.0 && rounded.is_sign_positive());
        assert_eq!(round6(0.123_456_789), 0.123_457);
    }

    #[test]
    fn a_huge_summary_is_cut_in_the_status() {
        let view = view_with("req-x", &"s".repeat(3 << 20), 0.5, Phase::Succeeded);
        let status = render(&view, None, &"b".repeat(40), 1_700_000_200_000, &BTreeMap::new());
        let summary = &status.status.stages[0].summary;
        assert!(summary.len() <= crate::workers::usage::SUMMARY_MAX_BYTES && summary.ends_with("kept]"), "{} bytes", summary.len());
    }

    #[test]
    fn the_session_id_is_in_the_stage_entry_and_absent_without_one() {
        let mut view = view_with("req-s", "done", 0.5, Phase::Succeeded);
        let plain = to_yaml(&render(&view, None, &"b".repeat(40), 1_700_000_200_000, &BTreeMap::new()));
        assert!(!plain.contains("sessionId"), "omitted when absent:\n{plain}");
        view.attempts[0].session_id = Some("495cc7e5-d22e-4192-92ba-4ce2d14827a6".to_owned());
        let status = render(&view, None, &"b".repeat(40), 1_700_000_200_000, &BTreeMap::new());
        assert_eq!(status.status.stages[0].session_id.as_deref(), Some("495cc7e5-d22e-4192-92ba-4ce2d14827a6"));
        let text = to_yaml(&status);
        assert!(text.contains("    sessionId: 495cc7e5-d22e-4192-92ba-4ce2d14827a6\n"), "{text}");
        assert_eq!(text, to_yaml(&render(&view, None, &"b".repeat(40), 1_700_000_200_000, &BTreeMap::new())), "deterministic");
        reads_back_as_rendered(&view, None).expect("a status with a session id reads back as rendered");
    }
}
