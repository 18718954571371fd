//! Hadron's git runs the same whatever the machine's git configuration and
//! Hadron's environment say: every caller of the git CLI (seeding, the status
//! writer, workers, approval branches, `hadron approve`, `hadron ci-status`)
//! goes through one runner that isolates git from both.
//!
//! The whole local flow runs here with a hostile `~/.gitconfig` (hooks that
//! leave a mark, a URL rewrite that sends every absolute path to
//! `/nonexistent`, forced GPG signing, another identity) and the same again
//! in `GIT_CONFIG_PARAMETERS` / `GIT_CONFIG_COUNT`; it must end exactly as it
//! does on a clean machine.

use std::path::{Path, PathBuf};
use std::process::Output;

use hadron_tests::{copy_tree, git_as, hadron_bin, hadron_command, workspace_root};

struct Hostile {
    home: PathBuf,
    marker: PathBuf,
}

impl Hostile {
    fn new(root: &Path) -> Hostile {
        let home = root.join("home");
        let hooks = home.join("hooks");
        std::fs::create_dir_all(&hooks).expect("hooks dir");
        let marker = root.join("hook-ran");
        for hook in ["pre-commit", "commit-msg", "post-commit", "pre-push", "reference-transaction", "post-checkout", "post-merge"] {
            let path = hooks.join(hook);
            std::fs::write(&path, format!("#!/bin/sh\necho {hook} >> {}\n", marker.display())).expect("write hook");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod hook");
        }
        std::fs::write(
            home.join(".gitconfig"),
            format!(
                "[core]\n\thooksPath = {}\n[user]\n\tname = mallory\n\temail = mallory@evil.example\n\
                 [commit]\n\tgpgSign = true\n[url \"/nonexistent/\"]\n\tinsteadOf = /\n[init]\n\tdefaultBranch = trunk\n",
                hooks.display()
            ),
        )
        .expect("write gitconfig");
        Hostile { home, marker }
    }

    /// `hadron <args>` in `cwd` with the hostile environment.
    fn hadron(&self, cwd: &Path, args: &[&str]) -> Output {
        hadron_command(hadron_bin!(), cwd)
            .args(args)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("GIT_CONFIG_PARAMETERS", format!("'core.hookspath'='{}'", self.home.join("hooks").display()))
            .env("GIT_CONFIG_COUNT", "2")
            .env("GIT_CONFIG_KEY_0", "url./nonexistent/.insteadOf")
            .env("GIT_CONFIG_VALUE_0", "/")
            .env("GIT_CONFIG_KEY_1", "commit.gpgSign")
            .env("GIT_CONFIG_VALUE_1", "true")
            .env("GIT_AUTHOR_NAME", "mallory")
            .env("GIT_COMMITTER_NAME", "mallory")
            .env("GIT_EXEC_PATH", "/nonexistent")
            .env("GIT_TEMPLATE_DIR", self.home.join("hooks"))
            .output()
            .expect("hadron runs")
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_hostile_git_config_and_environment_change_nothing_for_any_caller() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    copy_tree(&workspace_root().join("example-repo"), &root.join("example-repo")).expect("copy the example");
    let hostile = Hostile::new(root);

    // Seeding, status writer, workers and the approval branch.
    let up = hostile.hadron(root, &["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0"]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    let said = text(&up);
    assert!(said.contains("add-greeting") && said.contains("-> Succeeded"), "{said}");
    assert!(said.contains("WaitingForApproval"), "{said}");

    // `hadron approve`, then the gated request finishes.
    let approve = hostile.hadron(root, &["approve", "add-healthz", "review", "--as", "bob"]);
    assert_eq!(approve.status.code(), Some(0), "{}", text(&approve));
    let again = hostile.hadron(root, &["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    // `hadron ci-status` reads the worker's branch with ls-remote.
    let ci = hostile.hadron(root, &["ci-status", "add-greeting", "../demo-app.git", "success"]);
    assert_eq!(ci.status.code(), Some(0), "{}", text(&ci));

    let repos = root.join(".hadron/repos");
    let control = repos.join("control.git");
    let healthz = git_as(&control, "tester", &["show", "main:status/add-healthz.yaml"]);
    assert!(healthz.contains("phase: Succeeded"), "{healthz}");
    for name in ["add-greeting", "document-usage"] {
        let status = git_as(&control, "tester", &["show", &format!("main:status/{name}.yaml")]);
        assert!(status.contains("phase: Succeeded"), "{name}: {status}");
    }
    // Every commit on every repo was made by Hadron's own identities.
    for repo in ["control.git", "demo-app.git", "demo-docs.git"] {
        let authors = git_as(&repos.join(repo), "tester", &["log", "--all", "--format=%an <%ae> / %cn <%ce>"]);
        assert!(!authors.is_empty(), "{repo} has commits");
        assert!(!authors.contains("mallory"), "{repo}: {authors}");
        let heads = git_as(&repos.join(repo), "tester", &["for-each-ref", "--format=%(refname)", "refs/heads/"]);
        assert!(heads.lines().any(|r| r == "refs/heads/main") && !heads.contains("trunk"), "{repo}: {heads}");
    }
    let approval = git_as(&control, "tester", &["log", "--merges", "--format=%an / %cn %s", "main"]);
    assert!(approval.lines().any(|l| l == "bob / bob Approve add-healthz/review"), "{approval}");
    let ran: String = std::fs::read_to_string(&hostile.marker).unwrap_or_default();
    assert!(ran.is_empty(), "hooks from the hostile config ran: {ran}");
}
