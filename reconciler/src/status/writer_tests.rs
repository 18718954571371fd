//! Tests of the status writer.
use super::*;

#[test]
fn status_paths_are_validated() {
    for good in ["status/a.yaml", "status/sub/b.yaml", "status/.keep"] {
        assert!(validate_status_path(good).is_ok(), "{good}");
    }
    for bad in [
        "requests/x.yaml",
        "status/../hadron.yaml",
        "/etc/x",
        "/status/a.yaml",
        "status",
        "status/",
        "status//a",
        "status/./a",
        "status/.git/config",
        "status/a\\b",
        "statusx/a",
        "",
    ] {
        let err = validate_status_path(bad).expect_err(bad);
        assert_eq!(err.reason(), "PathOutsideStatus");
    }
}

#[test]
fn a_half_made_private_clone_is_made_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("writer");
    std::fs::create_dir_all(dir.join("objects")).expect("mkdir");
    std::fs::write(dir.join("config"), "[core]\n").expect("write");
    let writer = StatusWriter::new(WriterConfig::new("/nonexistent/control.git", "main", &dir));
    assert!(writer.is_ok(), "{writer:?}");
    assert!(open_repo(&dir).is_ok(), "the clone was made again");
}

#[test]
fn url_credentials_are_redacted() {
    assert_eq!(crate::redact::url_credentials("https://user:secret@git.example/org/repo.git"), "https://***@git.example/org/repo.git");
    assert_eq!(crate::redact::url_credentials("/srv/git/control.git"), "/srv/git/control.git");
    assert_eq!(crate::redact::url_credentials("https://git.example/a@b"), "https://git.example/a@b");
    let config = WriterConfig::new("https://u:tok3n@git.example/c.git", "main", "/tmp/w");
    assert!(!format!("{config:?}").contains("tok3n"));
}

#[test]
fn commit_message_carries_the_trailer() {
    assert_eq!(commit_message("status: 2 requests\n", "abc123", None), "status: 2 requests\n\nHadron-Revision: abc123\n");
    assert_eq!(commit_message("  ", "abcd", None), "Update status\n\nHadron-Revision: abcd\n");
    assert_eq!(commit_message("status: r1 Running", "abcd", Some(7)), "status: r1 Running\n\nHadron-Revision: abcd\nHadron-Epoch: 7\n");
}

#[test]
fn a_writer_whose_leader_was_frozen_past_its_renew_deadline_pushes_nothing() {
    use std::process::Command;
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = tmp.path().join("control.git");
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=p", "-c", "user.email=p@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    std::fs::create_dir_all(&bare).expect("mkdir");
    git(&bare, &["init", "-q", "--bare"]);
    let seed = tmp.path().join("seed");
    git(tmp.path(), &["clone", "-q", bare.to_str().expect("utf-8"), "seed"]);
    std::fs::write(seed.join("hadron.yaml"), "kind: Settings\n").expect("write");
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "seed"]);
    git(&seed, &["push", "-q", "origin", "HEAD:main"]);
    let head = git(&bare, &["rev-parse", "main"]);

    let config = WriterConfig::new(bare.to_str().expect("utf-8"), "main", tmp.path().join("work")).with_epoch(Some(7));
    let mut writer = StatusWriter::new(config).expect("writer");
    let deadline = Duration::from_secs(10);
    writer.set_lease(crate::leader::LeaseGuard::renewed_ago(7, Duration::from_secs(12), deadline));
    let files: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::from([("status/a.yaml".to_owned(), Some(b"phase: Running\n".to_vec()))]);
    let refused =
        writer.publish(&files, "late", "0123456789abcdef0123456789abcdef01234567").expect_err("the lease is not held for certain");
    assert_eq!(refused.reason(), "LeaseLost", "{refused}");
    assert_eq!(git(&bare, &["rev-parse", "main"]), head, "nothing was pushed");
    assert!(
        Command::new("git").args(["rev-parse", "--verify", "-q", LEADER_REF]).current_dir(&bare).status().is_ok_and(|s| !s.success()),
        "not even the claim"
    );

    // Renewed in time, the same writer claims and pushes.
    writer.set_lease(crate::leader::LeaseGuard::renewed_ago(7, Duration::from_secs(1), deadline));
    writer.publish(&files, "in time", "0123456789abcdef0123456789abcdef01234567").expect("published");
    assert_ne!(git(&bare, &["rev-parse", "main"]), head);
}
