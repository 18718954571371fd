//! The README tour, line by line, against a live `hadron up example-repo`
//! (not `--exit-when-idle`): a person clones the control repo, asks for
//! work, asks for changes, approves with a merge, edits an approved request, merges as a
//! non-approver, deletes a request and reads `git log -p -- status/`, while
//! Hadron commits `status/` concurrently. Every reaction must show in the
//! `up` terminal and on `GET /api/v1/events`.
//!
//! The commands are read from README.md (between the `tour` markers), so
//! the README cannot drift from what works.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hadron_tests::{Live, WAIT, copy_tree, tail, workspace_root};

/// The tour's command lines, as the README shows them.
fn tour_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let start = readme.find("<!-- tour: every line below is run by tests/tests/tour.rs -->").expect("the README has the tour marker");
    let end = readme[start..].find("<!-- end of tour -->").expect("the README ends the tour") + start;
    readme[start..end].lines().skip(1).filter(|l| !l.starts_with("```") && !l.trim().is_empty()).map(str::to_owned).collect()
}

/// Collects the server-sent events of `GET /api/v1/events` in the background.
fn subscribe(addr: &str) -> Arc<Mutex<String>> {
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stream = TcpStream::connect(addr).expect("connect to the events stream");
    write!(stream, "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").expect("send the request");
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            sink.lock().expect("events lock").push_str(&line);
            line.clear();
        }
    });
    seen
}

/// Runs one line as a person's shell would, in `cwd`, as nobody in particular
/// (the clone's own `git config` names the person).
fn sh(cwd: &Path, home: &Path, line: &str) -> Output {
    Command::new("sh")
        .args(["-c", line])
        .current_dir(cwd)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_AUTHOR_NAME")
        .env_remove("GIT_AUTHOR_EMAIL")
        .env_remove("GIT_COMMITTER_NAME")
        .env_remove("GIT_COMMITTER_EMAIL")
        .stdin(Stdio::null())
        .output()
        .expect("sh runs")
}

fn rejected(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    // `[remote rejected] … cannot lock ref`: Hadron's push updated the ref at the same instant.
    err.contains("rejected]") || err.contains("fetch first") || err.contains("non-fast-forward") || err.contains("cannot lock ref")
}

#[test]
fn the_readme_tour_works_against_a_live_hadron_up() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    copy_tree(&workspace_root().join("example-repo"), &root.join("example-repo")).expect("copy the example");
    let home = root.join("home");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join(".gitconfig"), "[init]\n\tdefaultBranch = main\n[commit]\n\tgpgsign = false\n").expect("gitconfig");

    let live = Live::start(hadron_tests::hadron_bin!(), root, &["up", "example-repo"]);
    let events = subscribe(&live.address());
    live.wait_for_line(&["add-healthz", "-> WaitingForApproval"], "the gated request waits before the tour starts");

    let lines = tour_lines();
    assert!(lines.len() >= 10, "the tour has its lines: {lines:#?}");
    let mut cwd = root.to_owned();
    let mut log_text = String::new();
    for line in &lines {
        if let Some(dir) = line.strip_prefix("cd ") {
            cwd = cwd.join(dir.trim());
            continue;
        }
        let mut out = sh(&cwd, &home, line);
        // As the README says: a push rejected because Hadron committed in between is pulled and pushed again.
        let mut tries = 0;
        while !out.status.success() && rejected(&out) && tries < 5 {
            tries += 1;
            out = sh(&cwd, &home, "git pull -q && git push -q");
        }
        assert!(
            out.status.success(),
            "tour line failed: {line}\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            live.logs()
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // What the person waits to see in terminal 1 after each step.
        if line.contains("Ask for a license") {
            live.wait_for_line(&["add-license", "-> Succeeded"], "the new request runs");
        } else if line.contains("Ask for changes to add-healthz") {
            live.wait_for_line(&["add-healthz", "revision 1 of 3 is ready"], "the revision runs and the gate asks again");
        } else if line.contains("Approve add-healthz") {
            live.wait_for_line(&["add-healthz", "-> Succeeded"], "the approved request finishes");
        } else if line.contains("Reword add-healthz") {
            live.wait_for_line(&["add-healthz", "request changed"], "the edit makes the approval stale");
        } else if line.contains("Approve as carol") {
            let said = live.wait_for_line(&["add-healthz", "carol", "does not count"], "a merge by a non-approver is shown");
            assert!(said.contains("WaitingForApproval"), "{said}");
        } else if line.contains("Drop the license request") {
            live.wait_for_line(&["add-license", "deleted"], "a deleted request is shown");
        } else if line.contains("log -p -- status/") {
            log_text = stdout.clone();
        } else if line.contains("hadron/add-greeting") {
            assert!(stdout.lines().count() >= 2, "the agent's commits (one per stage): {stdout}");
        }
    }

    // The history of every reaction, in git.
    for needle in
        ["+  phase: Running", "+  phase: WaitingForApproval", "+  phase: Succeeded", "Hadron-Revision: ", "status: add-license deleted"]
    {
        assert!(log_text.contains(needle), "`{needle}` missing from git log -p -- status/:\n{}", tail(&log_text, 80));
    }
    // The stale and rejected approvals kept the request waiting.
    let status = std::fs::read_to_string(cwd.join("status/add-healthz.yaml")).unwrap_or_default();
    assert!(status.contains("phase: WaitingForApproval"), "{status}");
    // Hadron wrote nothing outside status/ on main.
    let touched = sh(&cwd, &home, "git log --first-parent --author='<hadron@localhost>' --name-only --format= main");
    let touched = String::from_utf8_lossy(&touched.stdout).into_owned();
    assert!(touched.lines().filter(|l| !l.is_empty()).all(|l| l.starts_with("status/")), "{touched}");

    // The same reactions reached the event stream.
    let started = Instant::now();
    loop {
        let text = events.lock().expect("events lock").clone();
        let has = |s: &str| text.contains(s);
        if has("\"reason\":\"Deleted\"") && has("does not count") && has("request changed") {
            break;
        }
        assert!(started.elapsed() < WAIT, "events missing from /api/v1/events:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What terminal 1 showed, for `--nocapture` readers.
    eprintln!("{}", live.out());
}
