//! Two installations, one runs folder: two `hadron up` with two control
//! repos share `--runs-dir` and run at once. Both repos ask for the same
//! request (same spec, so the same generation), and the first one has a
//! request the second does not know. Neither adopts, cancels or waits for
//! the other's workers: each runs every stage of its own requests once.
//!
//! Real processes, the real git CLI, the local driver and real workers.

use std::path::Path;
use std::time::Duration;

use hadron_tests::{Live, git_stdout, hadron_bin, witness_dir};

/// A control-repo folder whose agent logs `<who> <request> <stage>` to the
/// shared witness log and takes a moment, so the other installation's
/// passes run while its workers live.
fn control_repo(dir: &Path, who: &str, requests: &[&str], log: &Path) {
    for d in ["agents", "requests", "targets/app"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    std::fs::write(dir.join("targets/app/README.md"), "# app\n").expect("write");
    std::fs::write(
        dir.join("hadron.yaml"),
        "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: logger\n    stages:\n      - name: implement\n      - name: review\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("agents/logger.yaml"),
        format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: logger\nspec:\n  command:\n    - sh\n    - -c\n    - |\n      printf '%s %s %s\\n' \"$WHO\" \"$1\" \"$2\" >> \"$AGENT_LOG\"\n      sleep 2\n      printf '%s\\n' \"$2\" >> \"notes-$1.md\"\n    - logger\n    - \"{{{{request}}}}\"\n    - \"{{{{stage}}}}\"\n  env:\n    - name: AGENT_LOG\n      value: {}\n    - name: WHO\n      value: {who}\n",
            log.display()
        ),
    )
    .expect("write");
    for name in requests {
        std::fs::write(
            dir.join(format!("requests/{name}.yaml")),
            format!(
                "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: Change {name}\n  repos:\n    - url: ../app.git\n"
            ),
        )
        .expect("write");
    }
}

#[test]
fn two_installations_sharing_a_runs_folder_run_their_own_workers_only() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let witness = witness_dir(root);
    std::fs::create_dir_all(&witness).expect("witness dir");
    let log = witness.join("agent.log");
    let runs = root.join("runs");
    let repos = [("one", &["shared", "only-one"][..]), ("two", &["shared"][..])];
    let mut lives = Vec::new();
    for (who, requests) in repos {
        let cwd = root.join(who);
        control_repo(&cwd.join("ctl"), who, requests, &log);
        let runs = runs.display().to_string();
        let args = ["up", "ctl", "--exit-when-idle", "--poll-seconds", "1", "--runs-dir", &runs, "--listen", "127.0.0.1:0"];
        lives.push(Live::start_with_env(
            hadron_bin!(),
            &cwd,
            &args,
            &[(hadron::workers::sandbox::SHARED_ENV, &witness.display().to_string())],
        ));
    }
    for live in &mut lives {
        assert_eq!(live.wait_exit(Duration::from_secs(180)).map(|s| s.code()), Some(Some(0)), "up did not finish idle:\n{}", live.logs());
    }
    let installations: Vec<String> = lives
        .iter()
        .map(|l| l.wait_for_line(&["installation: "], "up names its installation").split_whitespace().nth(1).expect("an id").to_owned())
        .collect();
    assert_ne!(installations[0], installations[1], "two control repos are two installations");

    // Every stage of every request ran once, in its own installation.
    let mut ran: Vec<String> = std::fs::read_to_string(&log).expect("the agents' log").lines().map(str::to_owned).collect();
    ran.sort();
    assert_eq!(
        ran,
        [
            "one only-one implement",
            "one only-one review",
            "one shared implement",
            "one shared review",
            "two shared implement",
            "two shared review"
        ],
        "{}\n{}",
        lives[0].logs(),
        lives[1].logs()
    );
    for ((who, requests), live) in repos.iter().zip(&lives) {
        let control = root.join(who).join(".hadron/repos/control.git");
        for request in *requests {
            let status = git_stdout(&control, "x", &["show", &format!("main:status/{request}.yaml")]);
            assert!(status.lines().any(|l| l == "  phase: Succeeded"), "{who}/{request}:\n{status}\n{}", live.logs());
            assert!(!status.contains("attempt: 2"), "{who}/{request} ran once per stage:\n{status}");
        }
        assert!(!live.out().contains("WorkerLost") && !live.out().contains("-> deleted"), "{who} lost nothing:\n{}", live.logs());
    }
    // Both installations' run folders are in the one runs folder.
    let folders = std::fs::read_dir(&runs).expect("runs").count();
    assert_eq!(folders, 6, "a run folder per worker of each installation");
}
