//! Each supported agent CLI's recorded output (`tests/fixtures/agents/`)
//! replayed by a small fake CLI (a shell script that changes a file, prints
//! the fixture and exits with the CLI's code) through the real local driver
//! and worker entrypoint: the attempt's tokens, cost, summary and failure
//! reason are what the CLI reported.

#[allow(dead_code)] // each test crate uses a part of the helpers
#[path = "support/git.rs"]
mod git;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git::{HUMAN, git};
use hadron::model::kinds::{OutputFormat, Pricing};
use hadron::workers::spec::{EnvSource, Installation, Outcome, RunResult, RunSpec, SandboxMode, WorkerNetwork, worker_name};
use hadron::workers::{Driver, LocalDriver, WorkerCommand, WorkerState, run_worker};

const PROMPT: &str = include_str!("../../templates/prompt.md.hbs");

fn fixture(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/agents").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display()))
}

/// A bare target repo with `main`, a folder for the fake CLIs and the runs.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        git(root, HUMAN, &["init", "-q", "--bare", "target.git"]).expect("git");
        git(root, HUMAN, &["clone", "-q", "target.git", "seed"]).expect("git");
        let seed = root.join("seed");
        std::fs::write(seed.join("README.md"), "# target\n").expect("write");
        git(&seed, HUMAN, &["add", "-A"]).expect("git");
        git(&seed, HUMAN, &["commit", "-q", "-m", "initial"]).expect("git");
        git(&seed, HUMAN, &["push", "-q", "origin", "HEAD:refs/heads/main"]).expect("git");
        std::fs::create_dir(root.join("bin")).expect("mkdir bin");
        Fixture { tmp }
    }

    /// A fake CLI named `name`: changes a file, prints `stdout` (and
    /// `stderr`) as the real CLI did, and exits with `code`.
    fn fake_cli(&self, name: &str, stdout: &str, stderr: &str, code: i32) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.tmp.path().join("bin").join(name);
        let script = format!(
            "#!/bin/sh\ncat > /dev/null\necho change >> change.txt\ncat <<'HADRON_FIXTURE_END'\n{stdout}\nHADRON_FIXTURE_END\ncat >&2 <<'HADRON_FIXTURE_END'\n{stderr}\nHADRON_FIXTURE_END\nexit {code}\n"
        );
        std::fs::write(&path, script).expect("write the fake CLI");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.display().to_string()
    }

    fn spec(&self, program: String, output: OutputFormat, pricing: Option<Pricing>) -> RunSpec {
        let url = self.tmp.path().join("target.git").display().to_string();
        let installation = Installation::default();
        RunSpec {
            worker: worker_name(&installation, "add-greeting", "0011223344556677", "implement", &url, 1),
            installation: installation.to_string(),
            request: "add-greeting".into(),
            generation: "0011223344556677".into(),
            stage: "implement".into(),
            attempt: 1,
            repo: "../target.git".into(),
            clone_url: url,
            base_branch: "main".into(),
            work_branch: "hadron/add-greeting".into(),
            title: "Add a greeting".into(),
            description: String::new(),
            prompt_template: PROMPT.into(),
            previous_stages: vec![],
            command: vec![program],
            model: None,
            env: vec![("LC_ALL".into(), EnvSource::Value("C".into()))],
            require_change: true,
            pricing,
            wall_time_secs: Some(120),
            git_author: ("Hadron".into(), "hadron@example.com".into()),
            image: None,
            resources: None,
            network: WorkerNetwork::None,
            sandbox: SandboxMode::Preferred,
            max_workspace_bytes: None,
            output,
            max_tokens: None,
            max_cost_usd: None,
            feedback: None,
            resume_command: None,
            resume_session: None,
            agent_home: None,
        }
    }

    /// Runs `spec` through the local driver (a child worker process) and
    /// returns its result.
    fn run(&self, spec: &RunSpec) -> RunResult {
        let driver = LocalDriver::new(self.tmp.path().join("runs"), child_command()).expect("driver");
        driver.start(spec).expect("start");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let state = driver.observe().expect("observe").into_iter().find(|o| o.worker == spec.worker).map(|o| o.state);
            match state {
                Some(WorkerState::Finished(result)) => {
                    // Where the sandbox is required (CI), the fake CLIs ran in it.
                    if std::env::var_os("HADRON_REQUIRE_SANDBOX").is_some() {
                        assert_eq!(result.unconfined, None, "the fake CLI ran outside the sandbox: {result:?}");
                    }
                    return result;
                }
                Some(WorkerState::Running) | None => {}
                Some(other) => panic!("unexpected {other:?}"),
            }
            assert!(Instant::now() < deadline, "timed out waiting for the worker");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `result.json` the worker wrote beside its log, as JSON.
fn written_result(result: &RunResult) -> serde_json::Value {
    let path = Path::new(&result.log_path).with_file_name("result.json");
    serde_json::from_slice(&std::fs::read(&path).expect("result.json")).expect("result.json is JSON")
}

fn log_of(result: &RunResult) -> String {
    std::fs::read_to_string(&result.log_path).unwrap_or_default()
}

/// Runs this test binary as a child whose only test is [`worker_child_entry`].
fn child_command() -> WorkerCommand {
    let exe: PathBuf = std::env::current_exe().expect("test binary path");
    WorkerCommand::new(exe, ["--ignored", "--exact", "worker_child_entry", "--nocapture", "--test-threads=1"])
}

/// The worker process the driver starts: `run_worker` on the `run.json`
/// named in its arguments, as `hadron worker --run` does.
#[test]
#[ignore = "entry point of child worker processes started by other tests"]
fn worker_child_entry() {
    let Some(run) = std::env::args().find(|a| a.ends_with("run.json")) else { return };
    let result = run_worker(Path::new(&run));
    assert!(!result.worker.is_empty(), "{result:?}");
}

#[test]
fn claude_error_max_turns_after_exit_0_is_a_final_failure_that_still_counts_its_spend() {
    let fx = Fixture::new();
    let cli = fx.fake_cli("claude", &fixture("claude/error-max-turns.json"), "", 0);
    let result = fx.run(&fx.spec(cli, OutputFormat::Claude, None));
    assert_eq!((result.outcome, result.reason.as_str()), (Outcome::Failed, "AgentFailedFinal"), "{result:?}\n{}", log_of(&result));
    assert!(result.message.starts_with("claude reported error_max_turns: Reached maximum number of turns (40)"), "{}", result.message);
    assert_eq!((result.tokens_in, result.tokens_out), (2409 + 29104 + 1617801, 15946));
    assert!((result.cost_usd - 1.4020935000000005).abs() < 1e-12, "{}", result.cost_usd);
    assert_eq!(result.pushed_commit, None, "a failed attempt pushes nothing");
    assert!(log_of(&result).contains("claude session 495cc7e5-d22e-4192-92ba-4ce2d14827a6"), "{}", log_of(&result));
    assert_eq!(result.session_id.as_deref(), Some("495cc7e5-d22e-4192-92ba-4ce2d14827a6"), "a failed attempt keeps its session");
    assert_eq!(written_result(&result)["sessionId"], "495cc7e5-d22e-4192-92ba-4ce2d14827a6", "and result.json has it");
}

#[test]
fn claude_stream_json_success_is_summed_and_pushed() {
    let fx = Fixture::new();
    let cli = fx.fake_cli("claude", &fixture("claude/stream-tool-use.jsonl"), "", 0);
    let result = fx.run(&fx.spec(cli, OutputFormat::Claude, None));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!((result.tokens_in, result.tokens_out, result.summary.as_str()), (8 + 4280 + 26620, 120, "Added a greeting to README.md."));
    assert!((result.cost_usd - 0.0271).abs() < 1e-12, "{}", result.cost_usd);
    assert!(result.pushed_commit.is_some());
    assert_eq!(written_result(&result)["sessionId"], "8f5c0b8e-2f2a-4a3e-9d59-6c1c4a1d2e7b");
}

#[test]
fn codex_is_priced_with_its_cached_input_and_a_failed_turn_is_retryable() {
    let fx = Fixture::new();
    let pricing = Pricing { input_per_million: 1.25, output_per_million: 10.0, cached_input_per_million: Some(0.125) };
    let cli = fx.fake_cli("codex", &fixture("codex/tool-use.jsonl"), "", 0);
    let result = fx.run(&fx.spec(cli, OutputFormat::Codex, Some(pricing.clone())));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!((result.tokens_in, result.tokens_out, result.summary.as_str()), (37067, 850, "Added a greeting to README.md."));
    let want = ((37067 - 26880) as f64 * 1.25 + 26880.0 * 0.125 + 850.0 * 10.0) / 1e6;
    assert!((result.cost_usd - want).abs() < 1e-12, "{} != {want}", result.cost_usd);
    assert_eq!(written_result(&result)["sessionId"], "0199a213-81c0-7800-8aa1-bbab2a035a53", "codex's thread id");

    let fx = Fixture::new();
    let cli = fx.fake_cli("codex", &fixture("codex/capacity.jsonl"), "", 1);
    let result = fx.run(&fx.spec(cli, OutputFormat::Codex, Some(pricing)));
    assert_eq!((result.outcome, result.reason.as_str()), (Outcome::Failed, "AgentFailed"), "{result:?}\n{}", log_of(&result));
    assert_eq!(result.message, "codex reported turn.failed: Selected model is at capacity. Please try a different model.");
}

#[test]
fn opencode_steps_are_summed_with_their_cost_and_an_auth_error_is_final() {
    let fx = Fixture::new();
    let cli = fx.fake_cli("opencode", &fixture("opencode/tool-use.jsonl"), "", 0);
    let result = fx.run(&fx.spec(cli, OutputFormat::Opencode, None));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!((result.tokens_in, result.tokens_out, result.summary.as_str()), (3 + 8076 + 1662 + 5380, 30, "k8s-opencode-ok"));
    assert!((result.cost_usd - (0.030399 + 0.00258306)).abs() < 1e-12, "{}", result.cost_usd);
    assert_eq!(written_result(&result)["sessionId"], "ses_494719016ffe85dkDMj0FPRbHK", "opencode's sessionID");

    let fx = Fixture::new();
    let cli = fx.fake_cli("opencode", &fixture("opencode/auth.jsonl"), "", 1);
    let result = fx.run(&fx.spec(cli, OutputFormat::Opencode, None));
    assert_eq!((result.outcome, result.reason.as_str()), (Outcome::Failed, "AgentFailedFinal"), "{result:?}\n{}", log_of(&result));
    assert!(result.message.starts_with("opencode reported ProviderAuthError: invalid x-api-key"), "{}", result.message);
}

#[test]
fn gemini_tokens_are_priced_and_its_exit_code_names_the_failure() {
    let fx = Fixture::new();
    let pricing = Pricing { input_per_million: 1.0, output_per_million: 10.0, cached_input_per_million: None };
    // The copied docs example has no `session_id`; the CLI's JSON output
    // begins with one (docs/cli/headless.md's schema), so it is put first.
    let output = fixture("gemini/success.json").replacen('{', "{\n  \"session_id\": \"2f0c6a43-gemini-1\",", 1);
    let cli = fx.fake_cli("gemini", &output, "", 0);
    let result = fx.run(&fx.spec(cli, OutputFormat::Gemini, Some(pricing)));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!(written_result(&result)["sessionId"], "2f0c6a43-gemini-1", "gemini's session_id");
    assert_eq!((result.tokens_in, result.tokens_out, result.summary.as_str()), (33904, 214, "The capital of France is Paris."));
    assert!((result.cost_usd - (33904.0 + 2140.0) / 1e6).abs() < 1e-12, "cached tokens priced as input: {}", result.cost_usd);

    // Gemini writes its error object to standard error: the exit code names it.
    let fx = Fixture::new();
    let cli = fx.fake_cli("gemini", "", &fixture("gemini/auth-error.json"), 41);
    let result = fx.run(&fx.spec(cli, OutputFormat::Gemini, None));
    assert_eq!((result.outcome, result.reason.as_str()), (Outcome::Failed, "AgentFailedFinal"), "{result:?}\n{}", log_of(&result));
    assert!(result.message.starts_with("gemini reported exit 41 (authentication error)"), "{}", result.message);
}

#[test]
fn aider_token_lines_and_session_cost_are_read() {
    let fx = Fixture::new();
    let cli = fx.fake_cli("aider", &fixture("aider/tool-use.txt"), "", 0);
    let result = fx.run(&fx.spec(cli, OutputFormat::Aider, None));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!((result.tokens_in, result.tokens_out), (4200 + 6100, 1100 + 210));
    assert!((result.cost_usd - 0.04).abs() < 1e-12, "{}", result.cost_usd);
    assert_eq!(result.session_id, None, "aider has no session id");
    assert!(written_result(&result).get("sessionId").is_none(), "and result.json names none");
}

#[test]
fn a_malformed_session_id_is_dropped_and_the_log_says_so() {
    let fx = Fixture::new();
    let events = fixture("codex/tool-use.jsonl").replace("0199a213-81c0-7800-8aa1-bbab2a035a53", "--dangerous");
    assert!(events.contains("\"thread_id\":\"--dangerous\""), "the fixture's thread id was replaced");
    let cli = fx.fake_cli("codex", &events, "", 0);
    let result = fx.run(&fx.spec(cli, OutputFormat::Codex, None));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!(result.session_id, None, "{result:?}");
    assert!(written_result(&result).get("sessionId").is_none());
    let log = log_of(&result);
    assert!(log.contains("codex printed a session id Hadron does not accept") && log.contains("dropped"), "{log}");
    assert!(!log.contains("codex session --dangerous"), "{log}");
}

#[test]
fn a_streaming_cli_that_spends_past_the_budget_is_stopped_within_a_second() {
    let fx = Fixture::new();
    // Codex's recorded `turn.completed`, once every 0.2 s for 60 s: 37,917
    // tokens a turn, so the third crosses a budget of 100,000.
    let turn = fixture("codex/tool-use.jsonl").lines().last().expect("the turn.completed line").to_owned();
    let script = format!(
        "#!/bin/sh\ncat > /dev/null\necho change >> change.txt\necho '{{\"type\":\"thread.started\",\"thread_id\":\"t-1\"}}'\ni=0\nwhile [ $i -lt 300 ]; do\n  echo '{turn}'\n  sleep 0.2\n  i=$((i+1))\ndone\n"
    );
    let path = fx.tmp.path().join("bin").join("codex");
    std::fs::write(&path, script).expect("write the fake CLI");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let spec = RunSpec { max_tokens: Some(100_000), ..fx.spec(path.display().to_string(), OutputFormat::Codex, None) };
    let started = Instant::now();
    let result = fx.run(&spec);
    let took = started.elapsed();
    assert_eq!((result.outcome, result.reason.as_str()), (Outcome::Failed, "BudgetExceeded"), "{result:?}\n{}", log_of(&result));
    assert!(result.message.contains("over the 100000 left of the request's maxTokens"), "{}", result.message);
    // Crossed at the third turn (0.4 s in); stopped within a second: at most
    // five turns more were printed.
    let turns = result.tokens_in / 37067;
    assert!((3..=8).contains(&turns), "{turns} turns counted: {result:?}");
    assert_eq!(result.tokens_out, turns * 850, "what it spent is counted");
    assert!(took < Duration::from_secs(30), "stopped long before its 60 s: {took:?}");
}

#[test]
fn a_streaming_cli_that_spends_past_the_cost_budget_is_stopped_and_the_figure_named() {
    let fx = Fixture::new();
    // OpenCode's recorded first `step_finish` ($0.030399), every 0.2 s for 60 s.
    let step = fixture("opencode/tool-use.jsonl").lines().nth(2).expect("the first step_finish").to_owned();
    let script = format!(
        "#!/bin/sh\ncat > /dev/null\necho change >> change.txt\ni=0\nwhile [ $i -lt 300 ]; do\n  echo '{step}'\n  sleep 0.2\n  i=$((i+1))\ndone\n"
    );
    let path = fx.tmp.path().join("bin").join("opencode");
    std::fs::write(&path, script).expect("write the fake CLI");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let spec = RunSpec { max_cost_usd: Some(0.05), ..fx.spec(path.display().to_string(), OutputFormat::Opencode, None) };
    let result = fx.run(&spec);
    assert_eq!((result.outcome, result.reason.as_str()), (Outcome::Failed, "BudgetExceeded"), "{result:?}\n{}", log_of(&result));
    assert!(result.message.contains("over the $0.0500 left of the request's maxCostUSD"), "{}", result.message);
    let steps = (result.cost_usd / 0.030399).round() as u64;
    assert!((2..=8).contains(&steps), "{steps} steps counted: {result:?}");
}

#[test]
fn a_retry_resumes_the_failed_attempt_s_session_in_the_home_it_left() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    // A fake Codex: the first run keeps state in its home, prints a thread
    // id and fails (model at capacity); a run that finds that state records
    // its arguments and succeeds.
    let script = format!(
        "#!/bin/sh\ncat > /dev/null\nif [ -f \"$HOME/state\" ]; then\n  echo \"saw $(cat \"$HOME/state\")\" > \"$HOME/second\"\n  printf '%s\\n' \"$@\" >> \"$HOME/second\"\n  pwd > \"$HOME/second-cwd\"\n  echo change >> change.txt\n  cat <<'HADRON_FIXTURE_END'\n{}\nHADRON_FIXTURE_END\n  exit 0\nfi\necho kept-by-attempt-1 > \"$HOME/state\"\npwd > \"$HOME/first-cwd\"\nprintf '%s\\n' \"$@\" > \"$HOME/first\"\ncat <<'HADRON_FIXTURE_END'\n{}\nHADRON_FIXTURE_END\nexit 1\n",
        fixture("codex/tool-use.jsonl"),
        fixture("codex/capacity.jsonl")
    );
    let path = fx.tmp.path().join("bin").join("codex");
    std::fs::write(&path, script).expect("write the fake CLI");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cli = path.display().to_string();
    let resume: Vec<String> = [cli.as_str(), "exec", "resume", "{{sessionId}}", "--json", "-"].map(str::to_owned).into();
    let first = RunSpec {
        command: [cli.as_str(), "exec", "--json", "-"].map(str::to_owned).into(),
        resume_command: Some(resume),
        ..fx.spec(cli.clone(), OutputFormat::Codex, None)
    };
    let failed = fx.run(&first);
    assert_eq!((failed.outcome, failed.reason.as_str()), (Outcome::Failed, "AgentFailed"), "{failed:?}\n{}", log_of(&failed));
    assert_eq!(failed.session_id.as_deref(), Some("0199a213-81c0-7800-8aa1-bbab2a035a53"), "{failed:?}");

    // The retry, as the planner starts it: attempt 2, continuing that session.
    let installation = Installation::default();
    let retry = RunSpec {
        worker: worker_name(&installation, &first.request, &first.generation, &first.stage, &first.clone_url, 2),
        attempt: 2,
        resume_session: failed.session_id.clone(),
        ..first.clone()
    };
    let resumed = fx.run(&retry);
    assert_eq!(resumed.outcome, Outcome::Succeeded, "{resumed:?}\n{}", log_of(&resumed));
    assert!(log_of(&resumed).contains("resuming codex session 0199a213-81c0-7800-8aa1-bbab2a035a53 (attempt 2)"), "{}", log_of(&resumed));

    let homes: Vec<PathBuf> = std::fs::read_dir(fx.tmp.path().join("runs/.agent-homes").join(installation.as_str()))
        .expect("the persistent homes")
        .map(|e| e.expect("an entry").path())
        .collect();
    assert_eq!(homes.len(), 1, "one home for the stage's attempts: {homes:?}");
    let read = |name: &str| std::fs::read_to_string(homes[0].join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(read("first"), "exec\n--json\n-\n", "the first attempt runs the command");
    assert_eq!(
        read("second"),
        "saw kept-by-attempt-1\nexec\nresume\n0199a213-81c0-7800-8aa1-bbab2a035a53\n--json\n-\n",
        "the retry runs the resume command with the session id, and sees the state the first attempt left"
    );
    if failed.unconfined.is_none() && resumed.unconfined.is_none() {
        // Confined, both attempts start in the same directory (Claude Code
        // files its sessions by it).
        assert_eq!((read("first-cwd"), read("second-cwd")), ("/workspace\n".to_owned(), "/workspace\n".to_owned()));
    }

    // A session id that is not one Hadron accepts never reaches the argv.
    let forged = RunSpec {
        worker: worker_name(&installation, &first.request, &first.generation, &first.stage, &first.clone_url, 3),
        attempt: 3,
        resume_session: Some("--dangerous".into()),
        ..first.clone()
    };
    std::fs::remove_file(homes[0].join("second")).expect("remove");
    let fresh = fx.run(&forged);
    assert!(log_of(&fresh).contains("not resuming: the session id to resume is not one Hadron accepts"), "{}", log_of(&fresh));
    assert_eq!(read("second"), "saw kept-by-attempt-1\nexec\n--json\n-\n", "the command, without the forged id");
}
