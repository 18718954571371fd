//! `--help` on every command says what it does; misconfiguration of the
//! server and the forge stops `serve` with an error that says the fix.

use std::process::Command;

use hadron_tests::{hadron_bin, run};

#[test]
fn serve_help_documents_the_forge_and_secret_sources() {
    let text = String::from_utf8_lossy(&run(hadron_bin!(), &["serve", "--help"]).stdout).into_owned();
    for flag in ["--listen", "--forge", "--gitea-url", "--gitea-repo", "--gitea-token-env", "--gitea-token-file", "--webhook-secret-env", "--webhook-secret-file", "HADRON_LISTEN", "127.0.0.1:8080"] {
        assert!(text.contains(flag), "serve --help does not mention {flag}:\n{text}");
    }
}

#[test]
fn serve_refuses_an_incomplete_forge_configuration_with_the_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let base = ["serve", "--repo", "/nonexistent/control.git", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().expect("utf-8")];
    let cases: [(&[&str], &[(&str, &str)], &str); 3] = [
        (&["--forge", "gitea"], &[], "--gitea-url"),
        (&["--forge", "gitea", "--gitea-url", "http://127.0.0.1:9"], &[], "HADRON_WEBHOOK_SECRET"),
        (
            &["--forge", "gitea", "--gitea-url", "http://127.0.0.1:9", "--gitea-token-env", "HADRON_TEST_NO_SUCH_TOKEN"],
            &[("HADRON_WEBHOOK_SECRET", "s")],
            "HADRON_TEST_NO_SUCH_TOKEN",
        ),
    ];
    for (args, env, needle) in cases {
        let out = Command::new(hadron_bin!())
            .args(base)
            .args(args)
            .env_remove("HADRON_WEBHOOK_SECRET")
            .env_remove("GITEA_TOKEN")
            .envs(env.iter().copied())
            .output()
            .expect("hadron runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: the error should name {needle}: {err}");
    }
}

#[test]
fn a_busy_listen_address_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let out = Command::new(hadron_bin!())
        .args(["serve", "--repo", "/nonexistent/control.git", "--listen", &addr, "--data-dir", data.to_str().expect("utf-8")])
        .output()
        .expect("hadron runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&addr), "the error names the address: {err}");
}

#[test]
fn help_lists_commands_and_explains_them() {
    let out = run(hadron_bin!(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["up", "serve", "worker", "approve", "ci-status", "validate", "schema"] {
        assert!(text.contains(cmd), "--help does not list `{cmd}`:\n{text}");
        let sub = run(hadron_bin!(), &[cmd, "--help"]);
        assert_eq!(sub.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&sub.stdout).lines().count() > 5, "`{cmd} --help` says too little");
    }
    let validate = String::from_utf8_lossy(&run(hadron_bin!(), &["validate", "--help"]).stdout).into_owned();
    let flat = validate.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("Exit status: 0 when clean"), "{validate}");
}
