//! End to end: `hadron up example-repo --exit-when-idle` as a subprocess,
//! then a person with the `git` CLI: clone the control repo, push a new
//! request, approve a gated request with `git merge` and push, edit an
//! approved request, and read every phase change in `git log -p -- status/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hadron_tests::{Live, git_as, hadron_bin, workspace_root};

struct Up {
    cwd: PathBuf,
}

impl Up {
    fn data(&self) -> PathBuf {
        self.cwd.join(".hadron")
    }

    fn control(&self) -> PathBuf {
        self.data().join("repos/control.git")
    }

    fn run(&self, dir: &Path) -> Output {
        let out = Command::new(hadron_bin!())
            .args([
                "up",
                dir.to_str().expect("utf-8"),
                "--exit-when-idle",
                "--poll-seconds",
                "1",
                "--backoff-ms",
                "200",
                "--listen",
                "127.0.0.1:0",
            ])
            .current_dir(&self.cwd)
            .env_remove("DATABASE_URL")
            .env_remove("HADRON_DATA_DIR")
            .output()
            .expect("hadron up runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "hadron up failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn status(&self, clone: &Path, request: &str) -> String {
        git_as(clone, "carol", &["pull", "-q", "--ff-only"]);
        std::fs::read_to_string(clone.join(format!("status/{request}.yaml"))).unwrap_or_default()
    }
}

fn phase(status: &str) -> &str {
    status.lines().find_map(|l| l.trim().strip_prefix("phase: ")).unwrap_or("")
}

#[test]
fn example_repo_end_to_end_as_a_person_would() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let up = Up { cwd: tmp.path().to_owned() };
    let example = workspace_root().join("example-repo");

    // First run: seeds, runs the two ungated requests, stops at the gate.
    let out = up.run(&example);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("seeded control repo"), "{text}");
    assert!(text.contains("git clone"), "{text}");
    assert!(text.contains("log -p -- status/"), "{text}");

    let clone = tmp.path().join("mine");
    git_as(tmp.path(), "carol", &["clone", "-q", up.control().to_str().expect("utf-8"), "mine"]);
    assert_eq!(phase(&up.status(&clone, "add-greeting")), "Succeeded", "{text}");
    assert_eq!(phase(&up.status(&clone, "document-usage")), "Succeeded", "{text}");
    assert_eq!(phase(&up.status(&clone, "add-healthz")), "WaitingForApproval", "{text}");

    // The agent's commits are on hadron/<request> in both target repos.
    let app = up.data().join("repos/demo-app.git");
    let docs = up.data().join("repos/demo-docs.git");
    let notes = git_as(&app, "carol", &["show", "hadron/add-greeting:hadron-notes/add-greeting.md"]);
    assert!(notes.contains("## implement") && notes.contains("## review"), "{notes}");
    assert!(notes.contains("Add a greeting to the demo app"), "{notes}");
    git_as(&docs, "carol", &["show", "hadron/document-usage:CHANGES.md"]);

    // A person asks for new work: commit and push a request.
    std::fs::write(
        clone.join("requests/add-license.yaml"),
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: add-license\nspec:\n  title: Add a LICENSE file\n  repos:\n    - url: ../demo-app.git\n  stages:\n    - name: implement\n",
    )
    .expect("write request");
    git_as(&clone, "carol", &["add", "requests/add-license.yaml"]);
    git_as(&clone, "carol", &["commit", "-q", "-m", "Ask for a license"]);
    git_as(&clone, "carol", &["push", "-q", "origin", "main"]);

    // Approve the gate as bob (an approver in hadron.yaml), with git merge and push.
    git_as(&clone, "bob", &["fetch", "-q", "origin"]);
    let branch_file = git_as(&clone, "bob", &["show", "origin/hadron/approve/add-healthz/review:approvals/add-healthz/review.yaml"]);
    assert!(branch_file.contains("kind: Approval") && branch_file.contains("gate: review"), "{branch_file}");
    git_as(&clone, "bob", &["merge", "-q", "--no-ff", "-m", "Approve add-healthz", "origin/hadron/approve/add-healthz/review"]);
    git_as(&clone, "bob", &["push", "-q", "origin", "main"]);

    // Second run in the same directory reuses .hadron and finishes both.
    let out = up.run(&example);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("reusing control repo"), "{text}");
    assert_eq!(phase(&up.status(&clone, "add-license")), "Succeeded", "{text}");
    assert_eq!(phase(&up.status(&clone, "add-healthz")), "Succeeded", "{text}");
    git_as(&app, "carol", &["show", "hadron/add-license:CHANGES.md"]);

    // Edit the approved request: the approval goes stale and it waits again.
    let path = clone.join("requests/add-healthz.yaml");
    let edited = std::fs::read_to_string(&path).expect("read").replace("Add a health check", "Add a better health check");
    std::fs::write(&path, edited).expect("write");
    git_as(&clone, "alice", &["commit", "-q", "-am", "Reword add-healthz"]);
    git_as(&clone, "alice", &["push", "-q", "origin", "main"]);
    let out = up.run(&example);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = up.status(&clone, "add-healthz");
    assert_eq!(phase(&status), "WaitingForApproval", "{text}\n{status}");
    assert!(status.contains("request changed"), "the stale approval is named in the status:\n{status}");

    // Every phase transition is in the status history.
    let history = git_as(&clone, "carol", &["log", "-p", "--", "status/"]);
    for needle in ["+  phase: Running", "+  phase: WaitingForApproval", "+  phase: Succeeded", "Hadron-Revision: "] {
        assert!(history.contains(needle), "`{needle}` missing from git log -p -- status/");
    }
    // Hadron never wrote outside status/ on main (approval branches are separate).
    let touched = git_as(&clone, "carol", &["log", "--first-parent", "--author=<hadron@localhost>", "--name-only", "--format=", "main"]);
    assert!(touched.lines().filter(|l| !l.is_empty()).all(|l| l.starts_with("status/")), "{touched}");
}

/// `hadron up` runs with at most two glibc heap arenas and a fixed mmap
/// threshold (it replaces itself once with `MALLOC_ARENA_MAX=2` and
/// `MALLOC_MMAP_THRESHOLD_=131072`, same pid), and an operator's own values win.
#[test]
fn up_bounds_its_heap_arenas_and_keeps_an_operators_value() {
    let example = workspace_root().join("example-repo");
    // (the environment given, the variables the running process has)
    type Case<'a> = (&'a [(&'a str, &'a str)], [&'a str; 2]);
    let cases: [Case<'_>; 3] = [
        (&[], ["MALLOC_ARENA_MAX=2", "MALLOC_MMAP_THRESHOLD_=131072"]),
        (&[("MALLOC_ARENA_MAX", "4")], ["MALLOC_ARENA_MAX=4", "MALLOC_MMAP_THRESHOLD_=131072"]),
        (&[("MALLOC_ARENA_MAX", "4"), ("MALLOC_MMAP_THRESHOLD_", "65536")], ["MALLOC_ARENA_MAX=4", "MALLOC_MMAP_THRESHOLD_=65536"]),
    ];
    for (given, want) in cases {
        let tmp = tempfile::tempdir().expect("temp dir");
        let args = ["up", example.to_str().expect("utf-8"), "--listen", "127.0.0.1:0", "--poll-seconds", "3600"];
        let live = Live::start_with_env(hadron_bin!(), tmp.path(), &args, given);
        // Serving: the process that answers is the one started, under the same pid.
        live.address();
        let environ = std::fs::read(format!("/proc/{}/environ", live.pid())).expect("its environment is readable");
        let mut vars: Vec<&[u8]> = environ.split(|b| *b == 0).filter(|kv| kv.starts_with(b"MALLOC_")).collect();
        vars.sort();
        let want: Vec<&[u8]> = want.iter().map(|w| w.as_bytes()).collect();
        assert_eq!(vars, want, "given {given:?}\n{}", live.logs());
    }
}
