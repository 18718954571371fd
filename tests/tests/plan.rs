//! `hadron plan`: a person edits a checkout of the control repo and asks
//! what merging it would do, before pushing. Real git, the real binary.

use std::path::Path;
use std::process::{Command, Output};

use hadron_tests::{copy_tree, git_as, hadron_bin, workspace_root};

fn plan(dir: &Path, args: &[&str]) -> Output {
    Command::new(hadron_bin!()).arg("plan").args(args).current_dir(dir).output().expect("hadron runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The example's control files in a fresh git repository, committed once,
/// with a status file for `add-healthz` waiting at its gate (as Hadron
/// would have written it) and an approval given for that generation.
fn example_files(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for part in ["hadron.yaml", "agents", "requests"] {
        let from = workspace_root().join("example-repo").join(part);
        if from.is_dir() {
            copy_tree(&from, &dir.join(part)).expect("copy");
        } else {
            std::fs::copy(&from, dir.join(part)).expect("copy");
        }
    }
}

/// The worker Hadron runs for the first attempt of add-healthz's first stage.
fn running_worker(generation: &str) -> String {
    hadron::ids::worker_name(&hadron::ids::Installation::default(), "add-healthz", generation, "implement", "../demo-app.git", 1)
}

fn checkout(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("control");
    example_files(&dir);
    let json = plan(&dir, &["--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let generation = report["plan"]["requests"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == "add-healthz"))
        .and_then(|r| r["generation"].as_str())
        .expect("a generation for add-healthz")
        .to_owned();
    std::fs::create_dir_all(dir.join("status")).expect("mkdir");
    std::fs::write(
        dir.join("status/add-healthz.yaml"),
        format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: RequestStatus\nmetadata:\n  name: add-healthz\nstatus:\n  observedRevision: abc\n  observedGeneration: {generation}\n  phase: Running\n  stage: implement\n  stages:\n    - name: implement\n      repo: ../demo-app.git\n      worker: {worker}\n      attempt: 1\n      state: Running\n      costUSD: 0.0\n      tokens: 0\n      tokensIn: 0\n      tokensOut: 0\n      summary: ''\n  totalCostUSD: 0.0\n  totalTokens: 0\n  message: stage implement running\n",
            worker = running_worker(&generation)
        ),
    )
    .expect("write the status");
    std::fs::create_dir_all(dir.join("approvals/add-healthz")).expect("mkdir");
    std::fs::write(
        dir.join("approvals/add-healthz/review.yaml"),
        format!("apiVersion: hadron.dev/v1alpha1\nkind: Approval\nmetadata:\n  name: add-healthz-review\nspec:\n  request: add-healthz\n  gate: review\n  generation: {generation}\n"),
    )
    .expect("write the approval");
    git_as(&dir, "carol", &["init", "-q", "-b", "main"]);
    git_as(&dir, "carol", &["add", "-A"]);
    git_as(&dir, "carol", &["commit", "-q", "-m", "The control repo as merged"]);
    dir
}

#[test]
fn plan_previews_created_restarted_cancelled_and_unchanged_requests() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = checkout(tmp.path());
    let status = std::fs::read_to_string(dir.join("status/add-healthz.yaml")).expect("read");
    let worker = status.lines().find_map(|l| l.trim().strip_prefix("worker: ")).expect("a worker").to_owned();
    let clean = plan(&dir, &[]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(text(&clean).contains("= unchanged: add-greeting, add-healthz, document-usage"), "{}", text(&clean));

    // Uncommitted edits, as a person has them before pushing.
    let healthz = dir.join("requests/add-healthz.yaml");
    let reworded = std::fs::read_to_string(&healthz).expect("read").replace("Add a health check", "Add a better health check");
    std::fs::write(&healthz, reworded).expect("write");
    let greeting = std::fs::read_to_string(dir.join("requests/add-greeting.yaml")).expect("read");
    std::fs::write(dir.join("requests/add-license.yaml"), greeting.replace("add-greeting", "add-license")).expect("write");
    std::fs::remove_file(dir.join("requests/document-usage.yaml")).expect("rm");

    let out = plan(&dir, &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for line in [
        "~ add-healthz: restarted, a new generation",
        "title changed",
        "approvals that no longer count: review (given for the previous generation)",
        &format!("workers cancelled (SpecChanged): {worker}"),
        "gates: review (approval after implement)",
        "budget: at most $2.50, 15m of worker time",
        "+ add-license: created",
        "- document-usage: cancelled (deleted)",
        "= unchanged: add-greeting",
        "Plan: 1 to create, 1 to restart, 1 to cancel, 0 to resume, 1 unchanged, 0 invalid; 0 errors, 0 warnings (against HEAD (",
    ] {
        assert!(said.contains(line), "the plan says {line:?}:\n{said}");
    }

    let json = plan(&dir, &["--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let changes: Vec<(String, String)> = report["plan"]["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| (r["name"].as_str().unwrap_or_default().to_owned(), r["change"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let expected =
        [("add-greeting", "unchanged"), ("add-healthz", "restarted"), ("add-license", "created"), ("document-usage", "cancelled")];
    assert_eq!(changes, expected.map(|(a, b)| (a.to_owned(), b.to_owned())));
    assert_eq!(report["against"]["rev"], "HEAD");
}

#[test]
fn plan_says_when_an_approval_asks_for_changes_and_when_no_revision_is_left() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = checkout(tmp.path());
    let approval = dir.join("approvals/add-healthz/review.yaml");
    let given = std::fs::read_to_string(&approval).expect("read");
    std::fs::write(&approval, format!("{given}  decision: changes\n  feedback: Also say what healthz.sh checks.\n")).expect("write");
    let said = text(&plan(&dir, &[]));
    for line in [
        "~ add-healthz: an approver asks for changes",
        "revision at gate review: changes asked of revision 0: stage implement runs again with the feedback (revision 1 of 3), then the gate asks again",
        "= unchanged: add-greeting, document-usage",
    ] {
        assert!(said.contains(line), "the plan says {line:?}:\n{said}");
    }
    // Asked of the third revision, with three allowed: the request stalls.
    std::fs::write(&approval, format!("{given}  revision: 3\n  decision: changes\n  feedback: Once more.\n")).expect("write");
    let said = text(&plan(&dir, &[]));
    assert!(said.contains("all 3 revision(s) of the gate (maxRevisions) are used: the request stalls"), "{said}");
    // Changes without feedback are an error that names the field and the fix.
    std::fs::write(&approval, format!("{given}  decision: changes\n")).expect("write");
    let out = plan(&dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("approvals/add-healthz/review.yaml:")
            && text(&out).contains("decision: changes` needs `feedback`")
            && text(&out).contains("add `feedback:` under spec"),
        "{}",
        text(&out)
    );
}

#[test]
fn plan_reports_errors_like_validate_and_exits_1_or_2() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = checkout(tmp.path());
    std::fs::write(
        dir.join("requests/broken.yaml"),
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: broken\nspec:\n  titel: typo\n",
    )
    .expect("write");
    let out = plan(&dir, &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("requests/broken.yaml:6:3: error["), "path:line:col as validate prints it: {said}");
    assert!(said.contains("! broken: invalid"), "{said}");

    let out = plan(&dir, &["--against", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("error[GitFailed]") && text(&out).contains("no-such-branch"), "{}", text(&out));

    // Not a git repository: every request is new (no status says otherwise).
    let bare = tmp.path().join("plain");
    example_files(&bare);
    let out = plan(&bare, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("Plan: 3 to create") && text(&out).contains("(no git history: against nothing)"), "{}", text(&out));
}
