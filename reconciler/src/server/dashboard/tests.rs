use std::sync::Arc;

use super::*;
use crate::model::{ChangeRequest, RequestStatus};

fn request(yaml: &str) -> Arc<ChangeRequest> {
    Arc::new(serde_saphyr::from_str(yaml).expect("a request"))
}

fn status(yaml: &str) -> Arc<RequestStatus> {
    Arc::new(serde_saphyr::from_str(yaml).expect("a status"))
}

const GATED: &str = r#"
apiVersion: hadron.dev/v1alpha1
kind: ChangeRequest
metadata: { name: add-healthz }
spec:
  title: "Add a <script>alert(1)</script> health check"
  repos: [{ url: "https://git.example.com/org/app.git" }, { url: "javascript:alert(1)" }]
  stages: [{ name: implement }, { name: polish }]
  gates: [{ name: review, type: approval, after: implement }]
  budget: { maxCostUSD: 2.5, maxWallTime: 15m }
"#;

const WAITING: &str = r#"
apiVersion: hadron.dev/v1alpha1
kind: RequestStatus
metadata: { name: add-healthz }
status:
  observedRevision: 0123456789abcdef
  observedGeneration: g1
  phase: WaitingForApproval
  stage: implement
  stages:
    - { name: implement, repo: "https://git.example.com/org/app.git", worker: w1, attempt: 2, state: Succeeded,
        startedAt: "2026-11-30T00:00:00Z", finishedAt: "2026-11-30T00:01:00Z", pushedCommit: 89abcdef0123456789abcdef0123456789abcdef,
        costUSD: 0.4, tokens: 100, tokensIn: 60, tokensOut: 40, summary: Added healthz.sh }
    - { name: implement, repo: "javascript:alert(1)", worker: w2, attempt: 1, state: Succeeded,
        startedAt: "2026-11-30T00:00:00Z", finishedAt: "2026-11-30T00:02:00Z", pushedCommit: 0000000000000000000000000000000000000001,
        costUSD: 0.1, tokens: 10, tokensIn: 5, tokensOut: 5, summary: "" }
  conditions:
    - { type: Ready, status: "False", reason: WaitingForApproval, message: "waiting for approval at gate review" }
  totalCostUSD: 0.5
  totalTokens: 110
  message: waiting for approval at gate review
"#;

fn record(name: &str, phase: &str, stage: Option<&str>, at: i64) -> RequestRecord {
    RequestRecord {
        name: name.to_owned(),
        generation: "g1".to_owned(),
        observed_revision: "0123456789abcdef".to_owned(),
        phase: phase.to_owned(),
        stage: stage.map(str::to_owned),
        message: format!("{name} is {phase}"),
        updated_at: at,
    }
}

fn board() -> Board {
    let mut board = Board::default();
    board.requests.insert("add-healthz".to_owned(), BoardRequest { request: Some(request(GATED)), status: status(WAITING) });
    board
}

#[test]
fn rows_are_newest_change_first_filtered_and_filled_in_from_the_board() {
    let records = [record("add-healthz", "WaitingForApproval", Some("implement"), 5_000), record("old", "Succeeded", None, 1_000)];
    let ages = BTreeMap::from([("add-healthz".to_owned(), 0), ("old".to_owned(), 0)]);
    let all = rows(&records, &ages, &board(), &Filter::default(), 65_000);
    assert_eq!(all.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["add-healthz", "old"]);
    let gated = &all[0];
    assert_eq!((gated.cost.as_str(), gated.attempts, gated.age.as_str()), ("$0.50 of $2.50", 3, "1 min"));
    assert_eq!(gated.changed, "1 min ago");
    assert_eq!(all[1].title, "", "a request the board does not hold (a follower) still has its row");
    let only = |phase: Option<&str>, q: Option<&str>| {
        let filter = Filter { phase: phase.map(str::to_owned), q: q.map(str::to_owned) };
        rows(&records, &ages, &board(), &filter, 65_000).into_iter().map(|r| r.name).collect::<Vec<_>>()
    };
    assert_eq!(only(Some("Succeeded"), None), ["old"]);
    assert_eq!(only(None, Some("HEALTH CHECK")), ["add-healthz"], "by title, any case");
    assert_eq!(only(Some("Running"), None), Vec::<String>::new());
}

#[test]
fn the_request_page_draws_stages_gates_workers_and_budget() {
    let board = board();
    let rec = record("add-healthz", "WaitingForApproval", Some("implement"), 5_000);
    let extras = PageExtras {
        logs: BTreeMap::from([("w1".to_owned(), "agent: wrote healthz.sh\n".to_owned())]),
        approval_prs: BTreeMap::from([("review".to_owned(), "https://git.example.com/org/control/pulls/7".to_owned())]),
        ..PageExtras::default()
    };
    let page = request_page(&rec, board.requests.get("add-healthz"), &board, &extras, crate::time::now());
    let steps: Vec<(&str, bool, &str)> = page.steps.iter().map(|s| (s.name.as_str(), s.gate, s.state.as_str())).collect();
    assert_eq!(steps, [("implement", false, "Succeeded"), ("review", true, "Waiting"), ("polish", false, "NotStarted")]);
    assert_eq!(page.steps[1].branch.as_deref(), Some("hadron/approve/add-healthz/review"));
    assert_eq!(page.steps[1].pull_request.as_deref(), Some("https://git.example.com/org/control/pulls/7"), "the approval PR is linked");
    assert!(page.steps[1].current && !page.steps[0].current, "the gate is where it waits");
    let workers = &page.steps[0].workers;
    assert_eq!(workers[0].commit_url.as_deref(), Some("https://git.example.com/org/app/commit/89abcdef0123456789abcdef0123456789abcdef"));
    assert_eq!(workers[1].commit_url, None, "only web addresses become links");
    assert_eq!((workers[0].took.as_str(), workers[0].log_tail.as_deref()), ("1 min", Some("agent: wrote healthz.sh\n")));
    let bars: Vec<(&str, &str, &str)> = page.bars.iter().map(|b| (b.label, b.used.as_str(), b.max.as_str())).collect();
    assert_eq!(bars, [("Cost", "$0.50", "$2.50"), ("Wall time", "3 min", "15 min")]);
}

#[test]
fn pages_render_escaped_and_carry_no_inline_script() {
    let board = board();
    let rec = record("add-healthz", "WaitingForApproval", Some("implement"), 5_000);
    let extras = PageExtras { logs: BTreeMap::from([("w1".to_owned(), "agent: <wrote> healthz.sh".to_owned())]), ..PageExtras::default() };
    let page = request_page(&rec, board.requests.get("add-healthz"), &board, &extras, 10_000);
    let html = render("request", &serde_json::json!({ "title": "add-healthz", "page": page, "missing": null })).expect("renders");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>alert"), "text is escaped");
    assert!(!html.contains("href=\"javascript:"), "no script URL becomes a link");
    assert!(html.contains("hadron/approve/add-healthz/review"));
    assert!(html.contains("agent: &lt;wrote&gt; healthz.sh"), "the log tail is shown, escaped");
    assert_eq!(html.matches("<script").count(), 1, "one script, from /assets (the CSP forbids inline ones)");
    let index = index_data(&[rec], &BTreeMap::new(), &board, &Filter::default(), false, 10_000);
    let html = render("index", &index).expect("renders");
    assert!(html.contains("<a href=\"/requests/add-healthz\">add-healthz</a>"), "{html}");
    let missing = render("request", &serde_json::json!({ "title": "Not found", "missing": "nope" })).expect("renders");
    assert!(missing.contains("No request named <code>nope</code>"));
}

#[test]
fn the_request_page_shows_the_changes_asked_escaped_with_the_approval_pr() {
    let asked = WAITING.replace(
        "  message: waiting for approval at gate review\n",
        "  revision: { gate: review, stage: implement, number: 1, max: 3, requestedBy: bob, feedback: \"Use <b>set -e</b> too\", state: Running }\n  message: stage implement starting revision 1 of 3\n",
    );
    let mut board = board();
    board.requests.insert("add-healthz".to_owned(), BoardRequest { request: Some(request(GATED)), status: status(&asked) });
    let rec = record("add-healthz", "Running", Some("implement"), 5_000);
    let extras = PageExtras {
        approval_prs: BTreeMap::from([("review".to_owned(), "https://git.example.com/org/control/pulls/7".to_owned())]),
        ..PageExtras::default()
    };
    let page = request_page(&rec, board.requests.get("add-healthz"), &board, &extras, 10_000);
    let html = render("request", &serde_json::json!({ "title": "add-healthz", "page": page, "missing": null })).expect("renders");
    assert!(html.contains("Revision 1 of 3 of stage implement (running): bob asked for changes at gate review"), "{html}");
    assert!(html.contains("Use &lt;b&gt;set -e&lt;/b&gt; too"), "the feedback is shown escaped");
    assert!(html.contains("href=\"https://git.example.com/org/control/pulls/7\">approval pull request"), "the PR is linked");
    let unasked = self::board();
    let plain = request_page(&rec, unasked.requests.get("add-healthz"), &unasked, &PageExtras::default(), 10_000);
    let html = render("request", &serde_json::json!({ "title": "add-healthz", "page": plain, "missing": null })).expect("renders");
    assert!(!html.contains("asked for changes"), "no changes, no section");
}

#[test]
fn the_table_shows_the_newest_rows_up_to_its_limit_and_says_so() {
    let records: Vec<RequestRecord> = (0..MAX_ROWS as i64 + 100).map(|i| record(&format!("r{i}"), "Running", None, i)).collect();
    let data = index_data(&records, &BTreeMap::new(), &Board::default(), &Filter::default(), false, 1_000_000);
    assert_eq!((data["count"].as_u64(), data["matched"].as_u64(), data["more"].as_bool()), (Some(500), Some(600), Some(true)));
    assert_eq!(data["rows"][0]["name"], "r599", "the most recently changed first");
    let html = render("index", &data).expect("renders");
    assert!(html.contains("Showing the 500 most recently changed of 600 matching requests"), "says there is more");
    let filtered =
        index_data(&records, &BTreeMap::new(), &Board::default(), &Filter { q: Some("r12".into()), phase: None }, false, 1_000_000);
    assert_eq!((filtered["count"].as_u64(), filtered["more"].as_bool()), (Some(11), Some(false)), "r12 and r120..r129");
}

#[test]
fn long_text_is_cut_on_a_character_boundary_with_an_ellipsis() {
    assert_eq!(shown("short", 10), "short");
    assert_eq!(shown("éééé", 4), "éééé");
    assert_eq!(shown("ééééé", 4), "éééé…");
    assert_eq!(shown("日本語のテキスト", 3), "日本語…");
}

#[test]
fn forty_requests_with_megabyte_titles_and_messages_make_a_small_index_and_request_page() {
    const MB: usize = 1024 * 1024;
    let mut board = Board::default();
    let mut records = Vec::new();
    for i in 0..40 {
        let name = format!("huge-{i}");
        let yaml = format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata: {{ name: {name} }}\nspec:\n  title: \"{}\"\n  description: \"{}\"\n  repos: [{{ url: \"https://git.example.com/{}.git\" }}]\n",
            "T".repeat(MB),
            "D".repeat(MB),
            "r".repeat(MB / 4)
        );
        board.requests.insert(name.clone(), BoardRequest { request: Some(request(&yaml)), status: status(WAITING) });
        records.push(RequestRecord { message: "M".repeat(MB), ..record(&name, "Running", Some("implement"), i) });
    }
    let data = index_data(&records, &BTreeMap::new(), &board, &Filter::default(), false, 1_000);
    let page = render("index", &data).expect("the index renders");
    // 40 MB of titles, 40 MB of messages, 10 MB of URLs: each row is a few KiB.
    assert!(page.len() < 40 * 4 * 1024, "the index page is {} bytes", page.len());
    assert!(page.contains(&format!("{}…", "T".repeat(display::TITLE))), "titles are cut with an ellipsis");
    // The filter still reads the whole text.
    let filter = Filter { phase: None, q: Some("m".repeat(1000)) };
    assert_eq!(rows(&records, &BTreeMap::new(), &board, &filter, 1_000).len(), 40);

    let entry = board.requests.get("huge-0");
    let page = request_page(&records[0], entry, &board, &PageExtras::default(), 1_000);
    let html = render("request", &serde_json::json!({ "title": "huge-0", "page": page, "missing": null })).expect("the page renders");
    // The description (64 KiB shown) dominates; everything else is cut.
    assert!(html.len() < 100 * 1024, "the request page is {} bytes", html.len());
}
