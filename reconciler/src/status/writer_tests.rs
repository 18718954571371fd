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
