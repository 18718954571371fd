//! `--help` on every command says what it does; misconfiguration of the
//! server and the forge stops `serve` with an error that says the fix.

use std::process::Command;

use hadron_tests::{copy_tree, hadron_bin, hadron_command, run, workspace_root};

#[test]
fn serve_help_documents_the_forge_and_secret_sources() {
    let text = String::from_utf8_lossy(&run(hadron_bin!(), &["serve", "--help"]).stdout).into_owned();
    for flag in [
        "--listen",
        "--forge",
        "--gitea-url",
        "--gitea-repo",
        "--gitea-token-env",
        "--gitea-token-file",
        "--webhook-secret-env",
        "--webhook-secret-file",
        "HADRON_LISTEN",
        "127.0.0.1:8080",
        "--driver",
        "HADRON_DRIVER",
        "--namespace",
        "--worker-image",
    ] {
        assert!(text.contains(flag), "serve --help does not mention {flag}:\n{text}");
    }
}

#[test]
fn serve_refuses_an_incomplete_forge_configuration_with_the_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let base = ["serve", "--repo", "/nonexistent/control.git", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().expect("utf-8")];
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
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

/// A control repo with `n` unparseable requests: a long report.
fn many_broken_requests(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("requests")).expect("mkdir requests");
    for i in 0..n {
        std::fs::write(dir.path().join(format!("requests/broken-{i}.yaml")), "kind: ChangeRequest\nspec: [unclosed\n")
            .expect("write request");
    }
    dir
}

#[test]
fn validate_stops_quietly_when_the_reader_goes_away() {
    use std::io::BufRead;
    // Thousands of diagnostics: far more than a pipe holds (64 KiB), so the
    // writes after the reader leaves really fail with EPIPE.
    let dir = many_broken_requests(3000);
    for format in ["json", "text"] {
        let mut child = Command::new(hadron_bin!())
            .args(["validate", "--format", format, dir.path().to_str().expect("utf-8 temp path")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("hadron runs");
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut first).expect("read a line");
        // The reader (and the pipe) is dropped here, like `| head -1`.
        assert!(!first.is_empty(), "{format}: validate printed nothing");
        let out = child.wait_with_output().expect("hadron exits");
        let err = String::from_utf8_lossy(&out.stderr);
        for bad in ["Broken pipe", "WriteFailed", "panicked"] {
            assert!(!err.contains(bad), "{format}: stderr mentions {bad}: {err}");
        }
        assert_eq!(out.status.code(), Some(1), "{format}: the exit code is the validation's (errors found): {err}");
    }
}

#[test]
fn validate_summary_counts_in_the_singular_and_the_plural() {
    let one = many_broken_requests(1);
    let out = run(hadron_bin!(), &["validate", one.path().to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    // One error in the request, and the warning that hadron.yaml is missing.
    assert_eq!(last, "1 error, 1 warning in 1 file (0 valid requests, 0 valid agents)", "{text}");
    let two = many_broken_requests(2);
    let out = run(hadron_bin!(), &["validate", two.path().to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().last().unwrap_or(""), "2 errors, 1 warning in 2 files (0 valid requests, 0 valid agents)", "{text}");
    let example = hadron_tests::workspace_root().join("example-repo");
    let out = run(hadron_bin!(), &["validate", example.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ok: ") && text.trim_end().ends_with(", 0 warnings"), "{text}");
    assert_eq!(hadron::cli::count(1, "error"), "1 error");
    assert_eq!(hadron::cli::count(0, "warning"), "0 warnings");
}

/// A writer whose reader has gone: every write fails with EPIPE.
struct ClosedPipe;

impl std::io::Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

#[test]
fn a_closed_pipe_is_not_reported_but_another_write_error_is() {
    let dir = many_broken_requests(1);
    for format in [hadron::cli::Format::Json, hadron::cli::Format::Text] {
        let mut err = Vec::new();
        let code = hadron::cli::validate(dir.path(), format, &mut ClosedPipe, &mut err);
        assert_eq!((code, String::from_utf8_lossy(&err).into_owned()), (1, String::new()), "{format:?}");
    }
    let mut full = [0u8; 16];
    let mut err = Vec::new();
    let code = hadron::cli::validate(dir.path(), hadron::cli::Format::Text, &mut &mut full[..], &mut err);
    assert_eq!(code, 2);
    assert!(String::from_utf8_lossy(&err).contains("error[WriteFailed]"), "{}", String::from_utf8_lossy(&err));
}

#[test]
fn help_documents_the_log_format_and_a_wrong_one_is_refused() {
    for args in [&["--help"][..], &["up", "--help"], &["serve", "--help"]] {
        let text = String::from_utf8_lossy(&run(hadron_bin!(), args).stdout).into_owned();
        for needle in ["--log-format", "HADRON_LOG_FORMAT", "json"] {
            assert!(text.contains(needle), "{args:?} does not mention {needle}:\n{text}");
        }
    }
    let out = run(hadron_bin!(), &["--log-format", "xml", "validate", "."]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("text") && err.contains("json"), "the error lists the formats: {err}");
}

/// Every line `up --log-format json` writes on stderr is a JSON object, and
/// a worker's start carries the fields of its `pass` and `action` spans.
#[test]
fn json_logs_are_one_object_per_line_with_their_spans() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let example = tmp.path().join("example-repo");
    copy_tree(&workspace_root().join("example-repo"), &example).expect("copy example-repo");
    let out = hadron_command(hadron_bin!(), tmp.path())
        .args(["up", "example-repo", "--exit-when-idle", "--poll-seconds", "1", "--backoff-ms", "200", "--listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "hadron=info")
        .env_remove("HADRON_LOG_FORMAT")
        .output()
        .expect("hadron up runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}\n{err}", String::from_utf8_lossy(&out.stdout));
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}\n{err}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["fields"].is_object()), "{err}");
    let started = lines.iter().find(|l| l["fields"]["message"] == "worker started").unwrap_or_else(|| panic!("no worker started:\n{err}"));
    // The current span, and every span it sits in, with their fields.
    assert_eq!(started["span"]["name"], "action", "{started}");
    assert!(["add-greeting", "add-healthz", "document-usage"].contains(&started["span"]["request"].as_str().unwrap_or("")), "{started}");
    assert!(started["span"]["stage"].is_string() && started["span"]["worker"].is_string(), "{started}");
    let spans = started["spans"].as_array().unwrap_or_else(|| panic!("no span list: {started}"));
    let pass = spans.iter().find(|s| s["name"] == "pass").unwrap_or_else(|| panic!("no pass span: {started}"));
    assert!(pass["n"].as_u64().is_some_and(|n| n >= 1), "{pass}");
    assert_eq!(pass["revision"].as_str().map(str::len), Some(40), "the pass names its revision: {pass}");
}

#[test]
fn the_kubernetes_driver_needs_an_image_and_says_how_to_reach_a_cluster() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let base = ["serve", "--repo", "/nonexistent/control.git", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().expect("utf-8")];
    let out =
        Command::new(hadron_bin!()).args(base).args(["--driver", "kubernetes"]).env_remove("HADRON_WORKER_IMAGE").output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--worker-image"), "names the missing flag: {err}");

    // Neither in a cluster nor with a kubeconfig: the error says so before any work.
    let example = tmp.path().join("example-repo");
    copy_tree(&workspace_root().join("example-repo"), &example).expect("copy example-repo");
    let out = hadron_command(hadron_bin!(), tmp.path())
        .args(["up", "example-repo", "--exit-when-idle", "--listen", "127.0.0.1:0", "--driver", "kubernetes"])
        .args(["--worker-image", "registry.example/hadron:1", "--namespace", "agents"])
        .env("KUBECONFIG", tmp.path().join("no-such-kubeconfig"))
        .env("HOME", tmp.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("error[KubernetesConfig]") && err.contains("KUBECONFIG"), "{err}");
    let outside = String::from_utf8_lossy(&out.stdout);
    assert!(!outside.contains("worker started"), "nothing ran: {outside}");
}

/// A character a terminal acts on (C0 but the line break, DEL, C1) in `bytes`, read as UTF-8.
fn raw_control(bytes: &[u8]) -> Option<char> {
    String::from_utf8_lossy(bytes).chars().find(|c| c.is_control() && *c != '\n')
}

#[test]
fn validate_and_plan_show_control_characters_in_names_and_status_as_text() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("control");
    let root = workspace_root();
    copy_tree(&root.join("example-repo/agents"), &dir.join("agents")).expect("copy agents");
    copy_tree(&root.join("example-repo/requests"), &dir.join("requests")).expect("copy requests");
    std::fs::copy(root.join("example-repo/hadron.yaml"), dir.join("hadron.yaml")).expect("copy hadron.yaml");
    // A request file whose name clears the line and starts a forged `ok:` line.
    let forged = "evil\u{1b}[2K\rok: 4 files, 3 requests, 2 agents, 0 warnings\u{9b}0m\u{7}";
    std::fs::write(
        dir.join("requests").join(format!("{forged}.yaml")),
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: evil\nspec:\n  title: \"t\\e]52;c;ZXZpbA==\\a\"\n  repos: [{url: ../demo-app.git}]\n",
    )
    .expect("write the request");
    // A hand-edited status whose worker carries the same.
    copy_tree(&root.join("tests/corpus/status-bad-worker"), &dir).expect("copy the status");
    let dir_arg = dir.to_str().expect("utf-8 temp path");
    for args in [&["validate", dir_arg][..], &["plan", dir_arg][..]] {
        let out = run(hadron_bin!(), args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert_eq!(raw_control(&out.stdout), None, "{args:?} stdout: {stdout:?}");
        assert_eq!(raw_control(&out.stderr), None, "{args:?} stderr: {stderr:?}");
        assert!(stdout.lines().chain(stderr.lines()).all(|l| !l.starts_with("ok:")), "{args:?}: a forged ok line: {stdout}");
        // The file name is shown, escaped.
        assert!(stdout.contains("evil\\u{1b}[2K\\rok: 4 files, 3 requests, 2 agents, 0 warnings\\u{9b}0m\\u{7}"), "{args:?}: {stdout}");
        // The status file's worker is an error naming the field.
        assert!(stdout.contains("status/add-greeting.yaml:15:"), "{args:?}: {stdout}");
        assert!(stdout.contains("error[InvalidStatusEntry]"), "{args:?}: {stdout}");
    }
}
