//! The local commands a person types next to `hadron up`, with the defaults
//! (relative `.hadron` data dir, default listen address): `hadron approve`,
//! `hadron ci-status` acting at once on a live `up`, and `up` finding a free
//! port when 127.0.0.1:8080 is taken.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use hadron_tests::{Live, copy_tree, git_as, git_stdout, git_try, hadron_bin, hadron_command, http_get, workspace_root};

fn hadron(cwd: &Path, args: &[&str]) -> Output {
    hadron_command(hadron_bin!(), cwd).args(args).output().expect("hadron runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn example_in(root: &Path) {
    copy_tree(&workspace_root().join("example-repo"), &root.join("example-repo")).expect("copy the example");
}

/// The example's settings, agents and targets, without its three requests.
fn example_without_requests(root: &Path) {
    example_in(root);
    for f in ["add-greeting", "add-healthz", "document-usage"] {
        std::fs::remove_file(root.join(format!("example-repo/requests/{f}.yaml"))).expect("remove");
    }
}

/// Seeds `.hadron/repos/` from `root/example-repo` (an `up` that has nothing to run).
fn seed_only(root: &Path) {
    let seeded = hadron(root, &["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0"]);
    assert_eq!(seeded.status.code(), Some(0), "{}", text(&seeded));
}

#[test]
fn approve_works_from_the_folder_of_up_with_the_default_data_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_in(root);
    let up = hadron(root, &["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0"]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    assert!(text(&up).contains("add-healthz") && text(&up).contains("WaitingForApproval"), "{}", text(&up));

    let first = hadron(root, &["approve", "add-healthz", "review", "--as", "bob"]);
    assert_eq!(first.status.code(), Some(0), "approve with the defaults: {}", text(&first));
    assert!(text(&first).contains("approved add-healthz/review as bob"), "{}", text(&first));
    assert!(!root.join(".hadron/approve/.hadron").exists(), "the work folder is not doubled");

    // The approval is on main of the seeded control repo.
    let control = root.join(".hadron/repos/control.git");
    git_as(&control, "x", &["show", "main:approvals/add-healthz/review.yaml"]);

    // A second approval says it is already merged, not that a folder exists.
    let second = hadron(root, &["approve", "add-healthz", "review", "--as", "bob"]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(!text(&second).contains("already exists"), "{}", text(&second));
    assert!(text(&second).contains("AlreadyMerged") || text(&second).to_lowercase().contains("already merged"), "{}", text(&second));
}

#[test]
fn asking_for_changes_re_runs_the_stage_with_the_feedback_until_the_gates_revisions_run_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_in(root);
    let request = root.join("example-repo/requests/add-healthz.yaml");
    let yaml = std::fs::read_to_string(&request)
        .expect("read")
        .replace("      after: implement\n", "      after: implement\n      maxRevisions: 1\n");
    std::fs::write(&request, yaml).expect("write");
    let up = || {
        let out = hadron(root, &["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        text(&out)
    };
    let control = root.join(".hadron/repos/control.git");
    let status = || git_stdout(&control, "x", &["show", "main:status/add-healthz.yaml"]);
    let notes = || git_stdout(&root.join(".hadron/repos/demo-app.git"), "x", &["show", "hadron/add-healthz:hadron-notes/add-healthz.md"]);
    up();
    assert!(status().contains("phase: WaitingForApproval"), "{}", status());

    // Bob asks for changes: implement runs again with his feedback.
    let asked = hadron(root, &["approve", "add-healthz", "review", "--as", "bob", "--changes", "Also say what healthz.sh checks."]);
    assert_eq!(asked.status.code(), Some(0), "{}", text(&asked));
    assert!(text(&asked).contains("asked for changes to add-healthz/review as bob"), "{}", text(&asked));
    let said = up();
    assert!(said.contains("revision 1 of 1"), "terminal 1 names the revision:\n{said}");
    let after = status();
    assert!(after.contains("phase: WaitingForApproval") && after.contains("revision 1 of 1 is ready"), "{after}");
    assert!(
        after.contains("requestedBy: bob") && after.contains("Also say what healthz.sh checks.") && after.contains("state: Ready"),
        "{after}"
    );
    assert!(after.contains("attempt: 2"), "the revision is attempt 2 of implement: {after}");
    // The agent (the example's script appends its prompt to a note) saw the feedback, on the same branch.
    let note = notes();
    assert_eq!(note.matches("## implement").count(), 2, "{note}");
    assert!(note.contains("Also say what healthz.sh checks.") && note.contains("asked by bob at gate review"), "{note}");

    // Asking again, past maxRevisions, stalls the request and says how to go on.
    let again = hadron(root, &["approve", "add-healthz", "review", "--as", "bob", "--changes", "And once more."]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    up();
    let stalled = status();
    assert!(stalled.contains("reason: RevisionsExhausted") && stalled.contains("edit requests/add-healthz.yaml"), "{stalled}");
    assert!(stalled.contains("type: Stalled\n    status: \"True\""), "the Stalled condition is true: {stalled}");
    assert_eq!(notes().matches("## implement").count(), 2, "no third run of implement");

    // Approving the latest revision lets it go on to polish.
    let approved = hadron(root, &["approve", "add-healthz", "review", "--as", "bob"]);
    assert_eq!(approved.status.code(), Some(0), "{}", text(&approved));
    up();
    assert!(status().contains("phase: Succeeded"), "{}", status());
}

#[test]
fn ci_status_acts_at_once_on_a_live_up_and_refuses_unknown_repos() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_in(root);
    // Only the CI-gated request: the example's others are not needed here.
    for f in ["add-greeting", "add-healthz", "document-usage"] {
        std::fs::remove_file(root.join(format!("example-repo/requests/{f}.yaml"))).expect("remove");
    }
    std::fs::write(
        root.join("example-repo/requests/ci-check.yaml"),
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: ci-check\nspec:\n  title: Wait for CI\n  repos:\n    - url: ../demo-app.git\n  stages:\n    - name: implement\n    - name: finish\n  gates:\n    - name: tests\n      type: ci\n      after: implement\n",
    )
    .expect("write request");
    // A one-hour poll: only the nudge of ci-status can explain a quick reaction.
    let live = Live::start(hadron_bin!(), root, &["up", "example-repo", "--poll-seconds", "3600", "--listen", "127.0.0.1:0"]);
    live.wait_for_line(&["ci-check", "-> WaitingForCI"], "the request waits for CI");
    live.wait_for_line(&["hadron ci-status ci-check"], "the up terminal names the command to report CI");

    let unknown = hadron(root, &["ci-status", "ci-check", "../no-such-repo.git", "success"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(text(&unknown).contains("does not exist"), "{}", text(&unknown));

    let started = Instant::now();
    let ok = hadron(root, &["ci-status", "ci-check", "../demo-app.git", "success"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    live.wait_for_line(&["ci-check", "-> Succeeded"], "a CI success lets the request finish without waiting for the poll");
    eprintln!("ci-status → Succeeded shown: {:?} (poll interval 3600 s)", started.elapsed());
}

#[test]
fn up_takes_a_free_port_when_8080_is_taken_unless_one_was_asked_for() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_in(root);
    // Hold 8080 (if something else holds it, it is just as taken).
    let _held = std::net::TcpListener::bind("127.0.0.1:8080");
    let up = hadron(root, &["up", "example-repo", "--exit-when-idle"]);
    let said = text(&up);
    assert_eq!(up.status.code(), Some(0), "{said}");
    assert!(said.contains("127.0.0.1:8080 is taken"), "{said}");
    let serving = said.lines().find(|l| l.starts_with("serving http://")).expect("the address is printed");
    assert!(!serving.contains("127.0.0.1:8080 "), "{serving}");

    // Asked for explicitly: a clear error naming the fix.
    let data = root.join("other-data");
    for (args, env) in [
        (vec!["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:8080", "--data-dir", data.to_str().expect("utf-8")], None),
        (vec!["up", "example-repo", "--exit-when-idle", "--data-dir", data.to_str().expect("utf-8")], Some("127.0.0.1:8080")),
    ] {
        let mut cmd = Command::new(hadron_bin!());
        cmd.args(&args).current_dir(root).env_remove("DATABASE_URL").env_remove("HADRON_LISTEN");
        if let Some(v) = env {
            cmd.env("HADRON_LISTEN", v);
        }
        let out = cmd.output().expect("hadron runs");
        let err = text(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--listen 127.0.0.1:0") && err.contains("HADRON_LISTEN"), "{err}");
    }
}

/// Pushes `edit` of the status file as mallory, retrying when Hadron pushed in between.
fn push_forged_status(clone: &Path, request: &str, edit: impl Fn(&str) -> String) {
    for _ in 0..10 {
        git_as(clone, "mallory", &["pull", "-q", "--rebase"]);
        let path = clone.join(format!("status/{request}.yaml"));
        let text = std::fs::read_to_string(&path).expect("status file");
        std::fs::write(&path, edit(&text)).expect("write");
        git_as(clone, "mallory", &["commit", "-q", "-am", &format!("Mark {request} done")]);
        if git_try(clone, "mallory", &["push", "-q", "origin", "main"]) {
            return;
        }
        git_as(clone, "mallory", &["reset", "-q", "--hard", "origin/main"]);
    }
    panic!("the forged status could not be pushed");
}

#[test]
fn a_hand_edited_status_file_is_overwritten_and_never_obeyed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_in(root);
    let live = Live::start(hadron_bin!(), root, &["up", "example-repo", "--listen", "127.0.0.1:0"]);
    live.wait_for_line(&["add-healthz", "-> WaitingForApproval"], "the gated request waits");
    live.wait_for_line(&["add-greeting", "-> Succeeded"], "the plain request finishes");
    let control = root.join(".hadron/repos/control.git");
    let clone = root.join("mallory");
    git_as(root, "mallory", &["clone", "-q", control.to_str().expect("utf-8"), "mallory"]);

    // Mallory marks the waiting request Succeeded by hand.
    push_forged_status(&clone, "add-healthz", |t| t.replace("phase: WaitingForApproval", "phase: Succeeded"));
    let started = std::time::Instant::now();
    let status = loop {
        git_as(&clone, "mallory", &["fetch", "-q", "origin"]);
        let text = git_as(&clone, "mallory", &["show", "origin/main:status/add-healthz.yaml"]);
        let author = git_as(&clone, "mallory", &["log", "-1", "--format=%an", "origin/main", "--", "status/add-healthz.yaml"]);
        if author.trim() == "hadron" {
            break text;
        }
        assert!(started.elapsed() < hadron_tests::WAIT, "Hadron did not rewrite the forged status\n{}", live.logs());
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.contains("phase: WaitingForApproval"), "the gate still waits:\n{status}");
    assert!(!live.out().contains("add-healthz              WaitingForApproval -> Succeeded"), "{}", live.out());
    // polish never ran: its notes are not on the agent's branch.
    let notes = git_as(&root.join(".hadron/repos/demo-app.git"), "x", &["show", "hadron/add-healthz:hadron-notes/add-healthz.md"]);
    assert!(!notes.contains("## polish"), "{notes}");

    // A finished request marked Failed by hand is written back as Succeeded.
    push_forged_status(&clone, "add-greeting", |t| t.replace("phase: Succeeded", "phase: Failed"));
    let started = std::time::Instant::now();
    loop {
        git_as(&clone, "mallory", &["fetch", "-q", "origin"]);
        let author = git_as(&clone, "mallory", &["log", "-1", "--format=%an", "origin/main", "--", "status/add-greeting.yaml"]);
        if author.trim() == "hadron" {
            let text = git_as(&clone, "mallory", &["show", "origin/main:status/add-greeting.yaml"]);
            assert!(text.contains("phase: Succeeded"), "{text}");
            break;
        }
        assert!(started.elapsed() < hadron_tests::WAIT, "Hadron did not rewrite the second forged status\n{}", live.logs());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Each edit is an event in the store.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let events = rt.block_on(async {
        let store = hadron::store::Store::open_data_dir(&root.join(".hadron")).await.expect("store");
        let mut all = Vec::new();
        for name in ["add-healthz", "add-greeting"] {
            all.extend(store.events_for_request(name, 1000).await.expect("events"));
        }
        all
    });
    let untrusted: Vec<_> = events.iter().filter(|e| e.action == "status.untrusted").collect();
    assert_eq!(untrusted.len(), 2, "one event per edit: {untrusted:#?}");
    assert!(untrusted.iter().all(|e| e.detail.contains("differs from what Hadron last wrote")), "{untrusted:#?}");
}

#[test]
fn bad_file_names_and_an_unpublishable_outbox_entry_stop_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_in(root);
    // Two request files whose names cannot be status files, and a status
    // file an older Hadron wrote for one of them.
    let request = |name: &str| {
        format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: t\n  repos:\n    - url: ../demo-app.git\n"
        )
    };
    std::fs::write(root.join("example-repo/requests/has space.yaml"), request("has-space")).expect("write");
    std::fs::write(root.join("example-repo/requests/nl\nx.yaml"), request("nl-x")).expect("write");
    // An outbox entry no writer can ever publish (left by an older Hadron).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let data = root.join(".hadron");
    rt.block_on(async {
        let store = hadron::store::Store::open_data_dir(&data).await.expect("store");
        let files: hadron::store::OutboxFiles = [("status/nl\nx.yaml".to_owned(), Some("x".to_owned()))].into_iter().collect();
        store.put_outbox("status: old entry", &files, 1).await.expect("outbox");
    });
    let first = hadron(root, &["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0"]);
    let said = text(&first);
    assert_eq!(first.status.code(), Some(0), "{said}");
    assert!(!said.contains("pass failed"), "no pass fails: {said}");
    assert!(said.contains("add-greeting") && said.contains("-> Succeeded"), "the others carry on: {said}");

    // A person adds a badly named status file; the next run removes it.
    let control = root.join(".hadron/repos/control.git");
    let clone = root.join("person");
    git_as(root, "carol", &["clone", "-q", control.to_str().expect("utf-8"), "person"]);
    std::fs::write(clone.join("status/has space.yaml"), "phase: Succeeded\n").expect("write");
    git_as(&clone, "carol", &["add", "status"]);
    git_as(&clone, "carol", &["commit", "-q", "-m", "old status"]);
    git_as(&clone, "carol", &["push", "-q", "origin", "main"]);
    let second = hadron(root, &["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(!text(&second).contains("pass failed"), "{}", text(&second));
    let listed = git_as(&control, "x", &["ls-tree", "-r", "--name-only", "main", "status/"]);
    assert!(!listed.contains("has space") && !listed.contains("nl"), "no status file for bad names: {listed}");
    assert!(listed.contains("status/add-greeting.yaml"), "{listed}");

    let events = rt.block_on(async {
        let store = hadron::store::Store::open_data_dir(&data).await.expect("store");
        store.events_after(0, 10_000).await.expect("events")
    });
    let dead: Vec<_> = events.iter().filter(|e| e.action == "outbox.dead_letter").collect();
    assert_eq!(dead.len(), 1, "the unpublishable entry is set aside once: {dead:#?}");
}

#[test]
fn agents_see_only_the_secrets_the_operator_allowed_and_never_hadrons_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_without_requests(root);
    // An agent that writes everything it and its parent (the worker) can see into the target repo.
    let agent = |name: &str, secret: &str| {
        format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: {name}\nspec:\n  command:\n    - sh\n    - -c\n    - |\n      env > agent-env.txt\n      tr '\\000' '\\n' < /proc/$PPID/environ > worker-env.txt\n  env:\n    - name: THE_SECRET\n      secretRef:\n        name: {secret}\n"
        )
    };
    std::fs::write(root.join("example-repo/agents/snoop.yaml"), agent("snoop", "DEMO_KEY")).expect("write");
    std::fs::write(root.join("example-repo/agents/greedy.yaml"), agent("greedy", "GITEA_TOKEN")).expect("write");
    let request = |name: &str, agent: &str| {
        format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: t\n  agent: {agent}\n  repos:\n    - url: ../demo-app.git\n  stages:\n    - name: implement\n"
        )
    };
    std::fs::write(root.join("example-repo/requests/snoop.yaml"), request("snoop", "snoop")).expect("write");
    std::fs::write(root.join("example-repo/requests/greedy.yaml"), request("greedy", "greedy")).expect("write");

    let run = |extra: &[&str]| {
        Command::new(hadron_bin!())
            .args(["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0", "--backoff-ms", "50"])
            .args(extra)
            .current_dir(root)
            .env_remove("DATABASE_URL")
            .env_remove("HADRON_DATA_DIR")
            .env_remove("HADRON_AGENT_SECRETS")
            .env("GITEA_TOKEN", "tok-hadrons-own-0001")
            .env("HADRON_WEBHOOK_SECRET", "whs-hadrons-own-0002")
            .env("DEMO_KEY", "demo-allowed-0003")
            .env("UNRELATED_SECRET", "other-0004")
            .output()
            .expect("hadron runs")
    };
    // Hadron's own credentials cannot be allowed.
    let refused = run(&["--agent-secret", "GITEA_TOKEN"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--agent-secret GITEA_TOKEN names one of Hadron's own"), "{}", text(&refused));

    let out = run(&["--agent-secret", "DEMO_KEY"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("snoop") && said.contains("-> Succeeded"), "{said}");
    let greedy = said.lines().rfind(|l| l.contains("greedy")).unwrap_or_default().to_owned();
    assert!(greedy.contains("Failed") && greedy.contains("--agent-secret GITEA_TOKEN"), "the refusal names the fix: {said}");

    let app = root.join(".hadron/repos/demo-app.git");
    let seen = format!(
        "{}\n{}",
        git_as(&app, "x", &["show", "hadron/snoop:agent-env.txt"]),
        git_as(&app, "x", &["show", "hadron/snoop:worker-env.txt"])
    );
    assert!(seen.contains("THE_SECRET=demo-allowed-0003"), "the allowed secret reaches the agent:\n{seen}");
    for leaked in ["tok-hadrons-own-0001", "whs-hadrons-own-0002", "other-0004"] {
        assert!(!seen.contains(leaked), "`{leaked}` reached the agent or its worker:\n{seen}");
    }
}

#[test]
fn gitea_down_stalls_nothing_but_the_forge_and_shutdown_stays_quick() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_without_requests(root);
    // Seed the control and target repos (nothing to run yet).
    seed_only(root);
    let control = root.join(".hadron/repos/control.git");
    // A Gitea that is down: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let gitea = format!("http://127.0.0.1:{port}");
    let mut live = Live::start_with_env(
        hadron_bin!(),
        root,
        &[
            "serve",
            "--repo",
            control.to_str().expect("utf-8"),
            "--data-dir",
            "serve-data",
            "--listen",
            "127.0.0.1:0",
            "--poll-seconds",
            "3600",
            "--forge",
            "gitea",
            "--gitea-url",
            &gitea,
            "--gitea-repo",
            "acme/control",
        ],
        &[("GITEA_TOKEN", "t0ken"), ("HADRON_WEBHOOK_SECRET", "s3cret")],
    );
    live.wait_for_line(&["watching"], "serve starts");
    let clone = root.join("person");
    git_as(root, "carol", &["clone", "-q", control.to_str().expect("utf-8"), "person"]);
    std::fs::create_dir_all(clone.join("requests")).expect("mkdir");
    std::fs::write(
        clone.join("requests/plain.yaml"),
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: plain\nspec:\n  title: t\n  repos:\n    - url: ../demo-app.git\n  stages:\n    - name: implement\n    - name: review\n",
    )
    .expect("write");
    git_as(&clone, "carol", &["add", "requests"]);
    git_as(&clone, "carol", &["commit", "-q", "-m", "ask"]);
    let pushed = Instant::now();
    git_as(&clone, "carol", &["push", "-q", "origin", "main"]);
    live.wait_for_line(&["plain", "-> Succeeded"], "the workers and status go on while Gitea is down");
    let took = pushed.elapsed();
    // The outage is visible: Stalled with a Gitea reason, in the status file.
    let started = Instant::now();
    loop {
        let status = git_as(&control, "x", &["show", "main:status/plain.yaml"]);
        if status.contains("reason: GiteaUnreachable") {
            break;
        }
        assert!(started.elapsed() < hadron_tests::WAIT, "no Stalled condition with GiteaUnreachable:\n{status}\n{}", live.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stopped = live.terminate(std::time::Duration::from_secs(30));
    println!("Gitea down: push -> Succeeded {took:?}; SIGTERM -> exit {stopped:?}");
    assert!(stopped.is_some(), "serve did not stop within 30 s of SIGTERM while Gitea was down\n{}", live.logs());
}

/// `GET path` on `addr`: (status code, body).
#[test]
fn readyz_says_not_ready_with_the_reason_while_passes_keep_failing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_without_requests(root);
    seed_only(root);
    let control = root.join(".hadron/repos/control.git");
    let live = Live::start(
        hadron_bin!(),
        root,
        &["serve", "--repo", control.to_str().expect("utf-8"), "--data-dir", "serve-data", "--listen", "127.0.0.1:0"],
    );
    let addr = live.address();
    let wait_for = |want: u16, needle: &str| {
        let started = Instant::now();
        loop {
            let (code, body) = http_get(&addr, "/readyz");
            if code == want && body.contains(needle) {
                return body;
            }
            assert!(started.elapsed() < hadron_tests::WAIT, "/readyz never answered {want} with {needle}: {code} {body}\n{}", live.logs());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for(200, "ready");
    // The branch disappears: every pass fails.
    let head = git_as(&control, "x", &["rev-parse", "main"]);
    git_as(&control, "x", &["update-ref", "-d", "refs/heads/main"]);
    let body = wait_for(503, "PassesFailing");
    assert!(body.contains("BranchNotFound"), "the reason is in the body: {body}");
    // It comes back: ready again without a restart.
    git_as(&control, "x", &["update-ref", "refs/heads/main", head.trim()]);
    wait_for(200, "ready");
}

/// Alice clones the control repo and pushes, in one commit, the agent
/// `agent_yaml` (named like the second request), the request `quick` (the
/// default agent) and the request `other` run by that agent, with `spec_extra`
/// (indented spec lines) added to it.
fn alice_pushes_quick_and(root: &Path, control: &Path, agent_yaml: &str, other: &str, spec_extra: &str) {
    let clone = root.join("alice");
    git_as(root, "alice", &["clone", "-q", control.to_str().expect("utf-8"), "alice"]);
    std::fs::create_dir_all(clone.join("requests")).expect("requests folder");
    let agent = agent_yaml.lines().find_map(|l| l.trim().strip_prefix("name: ")).expect("the agent has a name");
    std::fs::write(clone.join(format!("agents/{agent}.yaml")), agent_yaml).expect("agent");
    let request = |name: &str, title: &str, extra: String| {
        let text = format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: {title}\n{extra}  repos:\n    - url: ../demo-app.git\n"
        );
        std::fs::write(clone.join(format!("requests/{name}.yaml")), text).expect("request");
    };
    request("quick", "Quick", String::new());
    request(other, other, format!("  agent: {agent}\n{spec_extra}"));
    git_as(&clone, "alice", &["add", "-A"]);
    git_as(&clone, "alice", &["commit", "-q", "-m", &format!("Add quick and {other}")]);
    git_as(&clone, "alice", &["push", "-q", "origin", "main"]);
}

/// Outbox entries waiting in the store of `root/.hadron`.
fn pending_outbox(root: &Path) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let store = hadron::store::Store::open_data_dir(&root.join(".hadron")).await.expect("store");
        store.pending_outbox().await.expect("outbox").len()
    })
}

/// A pre-receive hook on the control repo that declines Hadron's commits
/// (as branch protection would) while `decline` exists; people's pushes pass.
fn decline_hadron_pushes(control: &Path, decline: &Path) {
    let hook = control.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nwhile read old new ref; do\n  if [ -e '{}' ] && [ \"$(git log -1 --format=%an \"$new\")\" = hadron ]; then\n    echo \"protected branch: Hadron may not push now\" >&2\n    exit 1\n  fi\ndone\nexit 0\n",
            decline.display()
        ),
    )
    .expect("write hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod hook");
}

#[test]
fn a_declined_status_push_stops_only_publishing_and_catches_up_without_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_without_requests(root);
    seed_only(root);
    let control = root.join(".hadron/repos/control.git");
    let decline = root.join("decline");
    std::fs::write(&decline, "").expect("decline marker");
    decline_hadron_pushes(&control, &decline);

    let live = Live::start(hadron_bin!(), root, &["up", "example-repo", "--listen", "127.0.0.1:0", "--poll-seconds", "3600"]);
    let addr = live.address();
    // A person pushes two requests: one quick, one whose agent outlives its wall-time budget.
    alice_pushes_quick_and(
        root,
        &control,
        "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: sleepy\nspec:\n  command: [sh, -c, 'sleep 60']\n",
        "slow",
        "  budget:\n    maxWallTime: 3s\n",
    );

    // Publishing fails, and says so once; workers, plans and limits go on.
    live.wait_for_line(&["publish step failing [StatusPublishFailed]", "protected branch"], "the declined push is shown with git's words");
    live.wait_for_line(&["quick", "-> Succeeded"], "the quick request finishes while publishing fails");
    live.wait_for_line(&["slow", "-> Failed", "maxWallTime"], "the wall-time budget is enforced while publishing fails");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(metrics.contains("hadron_status_publish_failing 1"), "{metrics}");
    assert!(metrics.contains("hadron_status_publish_failures_total{reason=\"PushFailed\"}"), "{metrics}");
    let started = Instant::now();
    loop {
        let (code, body) = http_get(&addr, "/readyz");
        if code == 503 && body.contains("StatusPublishFailed") {
            break;
        }
        assert!(started.elapsed() < hadron_tests::WAIT, "/readyz never said StatusPublishFailed: {code} {body}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let in_git = git_as(&control, "x", &["ls-tree", "--name-only", "main", "status/"]);
    assert!(!in_git.contains("status/quick.yaml"), "nothing was pushed while declined: {in_git}");
    let outbox_rows = || pending_outbox(root);
    assert!(outbox_rows() <= 1, "one entry waits, not one per pass");

    // The protection is lifted: the statuses catch up without a restart or a push.
    std::fs::remove_file(&decline).expect("lift");
    let started = Instant::now();
    loop {
        let quick = git_stdout(&control, "x", &["show", "main:status/quick.yaml"]);
        let slow = git_stdout(&control, "x", &["show", "main:status/slow.yaml"]);
        if quick.contains("phase: Succeeded") && slow.contains("phase: Failed") {
            break;
        }
        assert!(started.elapsed() < hadron_tests::WAIT, "statuses did not catch up:\n{quick}\n{slow}\n{}", live.logs());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("statuses caught up {:?} after the protection was lifted", started.elapsed());
    live.wait_for_line(&["publish step recovered [StatusPublishFailed]"], "the recovery is shown");
    // Log lines name their pass (number, triggers, revision) and their action (request, stage, worker).
    let log = std::fs::read_to_string(root.join("up.err")).expect("log");
    assert!(
        log.lines().any(|l| l.contains("pass{n=") && l.contains("revision=") && l.contains("could not be pushed")),
        "{}",
        hadron_tests::tail(&log, 20)
    );
    assert!(log.lines().any(|l| l.contains("action{request=slow stage=implement worker=hadron-slow-")), "{}", hadron_tests::tail(&log, 20));
    // The entry that waited is pushed; a pass after it may still be
    // publishing what it decided since (a newer commit), so wait for that.
    // Judged on the read that ended the wait: a later pass may queue and
    // push a newer entry at any moment, which is not an entry left waiting
    // (seen in CI: 0, then 1 on a second read).
    let started = Instant::now();
    let mut left = outbox_rows();
    while left != 0 && started.elapsed() < hadron_tests::WAIT {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = outbox_rows();
    }
    assert_eq!(left, 0, "nothing is left waiting");
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 200, "{body}");
}

/// The request's status file on the control repo's main, and the commit that last changed it.
fn status_on_main(control: &Path, request: &str) -> (String, String) {
    let path = format!("status/{request}.yaml");
    let text = git_stdout(control, "x", &["show", &format!("main:{path}")]);
    let commit = git_stdout(control, "x", &["log", "-1", "--format=%H", "main", "--", &path]);
    (text, commit.trim().to_owned())
}

#[test]
fn while_workers_run_status_commits_wait_for_the_interval_and_not_once_none_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    example_without_requests(root);
    seed_only(root);
    let control = root.join(".hadron/repos/control.git");
    // The word to go is given in the one folder of the test shared with the agents' sandboxes.
    std::fs::create_dir_all(hadron_tests::witness_dir(root)).expect("witness dir");
    let go = hadron_tests::witness_dir(root).join("go");
    // Ten minutes: nothing but the end of the last worker publishes the
    // second change within this test.
    let live = Live::start(
        hadron_bin!(),
        root,
        &["up", "example-repo", "--listen", "127.0.0.1:0", "--poll-seconds", "3600", "--status-interval-ms", "600000"],
    );
    let agent = format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: held\nspec:\n  command: [sh, -c, 'while [ ! -e \"$GO\" ]; do sleep 0.05; done; date +%s%N >> done.txt']\n  env:\n    - name: GO\n      value: {}\n",
        go.display()
    );
    alice_pushes_quick_and(root, &control, &agent, "held", "");

    // The first status commit is made at once: none was made in the interval.
    let started = Instant::now();
    while git_stdout(&control, "x", &["ls-tree", "--name-only", "main", "status/"]).lines().count() < 2 {
        assert!(started.elapsed() < hadron_tests::WAIT, "no first status commit:\n{}", live.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The quick request finishes while the other's worker runs: people see
    // it at once, and its file waits for the interval.
    live.wait_for_line(&["quick", "-> Succeeded"], "the quick request finishes");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (quick, _) = status_on_main(&control, "quick");
    assert!(!quick.contains("phase: Succeeded"), "published within the interval while a worker runs:\n{quick}");
    // The first commit was pushed in the background (a worker ran): it is
    // recorded as published while the worker still runs, not left queued.
    let started = Instant::now();
    while pending_outbox(root) != 0 {
        assert!(started.elapsed() < hadron_tests::WAIT, "the background status commit stayed queued:\n{}", live.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The last worker ends: everything held goes out at once, in one commit.
    std::fs::write(&go, "").expect("release the agent");
    let started = Instant::now();
    loop {
        let ((quick, quick_commit), (held, held_commit)) = (status_on_main(&control, "quick"), status_on_main(&control, "held"));
        if quick.contains("phase: Succeeded") && held.contains("phase: Succeeded") {
            assert_eq!(quick_commit, held_commit, "the held file went out with the last change");
            break;
        }
        assert!(started.elapsed() < hadron_tests::WAIT, "held statuses were not published:\n{quick}\n{held}\n{}", live.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
