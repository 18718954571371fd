//! The worker entrypoint and the local driver, against real git repositories
//! (bare repos seeded with the git CLI) and real processes.

#[allow(dead_code)] // each test crate uses a part of the helpers
#[path = "support/git.rs"]
mod git;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use git::{HUMAN, git};
use hadron::model::Catalog;
use hadron::model::kinds::Pricing;
use hadron::workers::proc::group_exists;
use hadron::workers::spec::{EnvSource, Installation, Outcome, PreviousStage, RunResult, RunSpec, worker_name};
use hadron::workers::{Driver, DriverError, LocalDriver, WorkerCommand, WorkerState, run_worker};

const PROMPT: &str = include_str!("../../templates/prompt.md.hbs");

/// A temp folder with `target.git` (bare, `main` with one commit) and a runs folder.
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
        Fixture { tmp }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn bare(&self) -> PathBuf {
        self.root().join("target.git")
    }

    fn remote(&self, args: &[&str]) -> String {
        git(&self.bare(), HUMAN, args).expect("git")
    }

    /// A run spec for `stage` of request `add-greeting` with `command`.
    fn spec(&self, stage: &str, command: Vec<String>) -> RunSpec {
        self.spec_of(&Installation::default(), stage, command)
    }

    /// The same, for a worker of `installation`.
    fn spec_of(&self, installation: &Installation, stage: &str, command: Vec<String>) -> RunSpec {
        let url = self.bare().display().to_string();
        RunSpec {
            worker: worker_name(installation, "add-greeting", "0011223344556677", stage, &url, 1),
            installation: installation.to_string(),
            request: "add-greeting".into(),
            generation: "0011223344556677".into(),
            stage: stage.into(),
            attempt: 1,
            repo: "../target.git".into(),
            clone_url: url,
            base_branch: "main".into(),
            work_branch: "hadron/add-greeting".into(),
            title: "Add a greeting".into(),
            description: "Print hello.".into(),
            prompt_template: PROMPT.into(),
            previous_stages: vec![],
            command,
            model: None,
            env: vec![("LC_ALL".into(), EnvSource::Value("C".into()))],
            require_change: true,
            pricing: Some(Pricing { input_per_million: 0.0, output_per_million: 0.0, cached_input_per_million: None }),
            wall_time_secs: Some(600),
            git_author: ("Hadron".into(), "hadron@example.com".into()),
            image: None,
            resources: None,
            network: hadron::workers::spec::WorkerNetwork::None,
            sandbox: hadron::workers::spec::SandboxMode::Preferred,
            max_workspace_bytes: None,
            output: hadron::model::kinds::OutputFormat::Report,
            max_tokens: None,
            max_cost_usd: None,
            feedback: None,
            resume_command: None,
            resume_session: None,
            agent_home: None,
        }
    }

    /// Writes `run.json` for `spec` into `runs/<worker>/` and returns its path.
    fn run_json(&self, spec: &RunSpec) -> PathBuf {
        let dir = self.root().join("runs").join(&spec.worker);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("run.json");
        std::fs::write(&path, serde_json::to_vec_pretty(spec).expect("json")).expect("write run.json");
        path
    }
}

/// The script agent's command, from the example control repo.
fn script_command() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../example-repo/agents/script.yaml");
    let text = std::fs::read(&path).expect("read script.yaml");
    let loaded = Catalog::load([("agents/script.yaml", text.as_slice())]);
    assert_eq!(loaded.error_count(), 0, "{:?}", loaded.diagnostics);
    loaded.desired.agents["script"].spec.command.clone()
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into(), "agent".into()]
}

fn log_of(result: &RunResult) -> String {
    std::fs::read_to_string(&result.log_path).unwrap_or_default()
}

/// Polls `f` until it gives a value, for up to two minutes.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fresh_repo_then_a_second_stage_on_the_same_branch() {
    let fx = Fixture::new();
    let spec = fx.spec("implement", script_command());
    let result = run_worker(&fx.run_json(&spec));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!(result.reason, "Completed");
    let first = result.pushed_commit.clone().expect("a pushed commit");
    assert_eq!(fx.remote(&["rev-parse", "refs/heads/hadron/add-greeting"]), first);
    let note = fx.remote(&["show", &format!("{first}:hadron-notes/add-greeting.md")]);
    assert!(note.contains("## implement") && note.contains("Task: Add a greeting"), "{note}");
    assert_eq!(fx.remote(&["show", &format!("{first}:CHANGES.md")]), "- add-greeting: implement done");
    let message = fx.remote(&["log", "-1", "--format=%B", &first]);
    assert!(message.starts_with("Add a greeting\n\nStage: implement\nHadron-Request: add-greeting\n"), "{message}");
    assert!(message.contains(&format!("Hadron-Worker: {}", spec.worker)), "{message}");
    assert_eq!(
        fx.remote(&["log", "-1", "--format=%an <%ae> / %cn <%ce>", &first]),
        "Hadron <hadron@example.com> / Hadron <hadron@example.com>"
    );
    assert_eq!(fx.remote(&["rev-parse", &format!("{first}^")]), fx.remote(&["rev-parse", "refs/heads/main"]), "branched from main");
    assert!(result.tokens_in > 10, "tokens from report.json: {result:?}");
    assert_eq!(result.tokens_out, 20);
    assert_eq!(result.summary, "implement: wrote hadron-notes/add-greeting.md");
    let on_disk = RunResult::read(&fx.root().join("runs").join(&spec.worker).join("result.json")).expect("result.json");
    assert_eq!(on_disk, result);

    let mut review = fx.spec("review", script_command());
    review.previous_stages =
        vec![PreviousStage { name: "implement".into(), repo: "../target.git".into(), summary: result.summary.clone() }];
    let second = run_worker(&fx.run_json(&review));
    assert_eq!(second.outcome, Outcome::Succeeded, "{second:?}\n{}", log_of(&second));
    let head = second.pushed_commit.clone().expect("pushed");
    assert_eq!(fx.remote(&["rev-parse", &format!("{head}^")]), first, "the second stage builds on the first");
    let note = fx.remote(&["show", &format!("{head}:hadron-notes/add-greeting.md")]);
    assert!(note.contains("## implement") && note.contains("## review"), "{note}");
    assert!(note.contains("- implement on ../target.git: implement: wrote hadron-notes/add-greeting.md"), "{note}");
    let prompt = std::fs::read_to_string(fx.root().join("runs").join(&review.worker).join("prompt.md")).expect("prompt.md");
    assert!(prompt.contains("on the branch hadron/add-greeting") && prompt.contains("stage \"review\""), "{prompt}");
}

#[test]
fn as_a_kubernetes_job_runs_it_the_result_is_its_termination_message() {
    let fx = Fixture::new();
    let spec = fx.spec("implement", script_command());
    // The run spec on a volume of its own (a read-only Secret in a Job), the work in an emptyDir.
    let secret = fx.root().join("secret-volume");
    std::fs::create_dir_all(&secret).expect("mkdir");
    let run_json = secret.join("run.json");
    std::fs::write(&run_json, serde_json::to_vec(&spec).expect("json")).expect("write");
    let work = fx.root().join("empty-dir");
    let termination = fx.root().join("termination-log");
    let result = hadron::workers::entry::run_worker_for_job(&run_json, Some(&work), Some(&termination));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    let message = std::fs::read_to_string(&termination).expect("a termination message");
    assert!(message.len() <= 4096);
    assert_eq!(serde_json::from_str::<RunResult>(&message).expect("a result"), result);
    assert!(work.join("result.json").is_file(), "the run's files go in the work dir");
    let beside: Vec<_> = std::fs::read_dir(&secret).expect("read").filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(beside, ["run.json"], "nothing is written beside the read-only run spec");
    assert_eq!(fx.remote(&["rev-parse", "refs/heads/hadron/add-greeting"]), result.pushed_commit.clone().expect("pushed"));
}

#[test]
fn hostile_title_is_data_not_code() {
    let fx = Fixture::new();
    let marker = fx.root().join("pwned");
    let marker2 = fx.root().join("pwned2");
    let title = format!("Fix \"it\"; $(touch {}) `touch {}` && echo '&lt;b&gt;' <b> | cat {{{{x}}}}", marker.display(), marker2.display());
    let mut spec = fx.spec("implement", script_command());
    spec.title = title.clone();
    spec.description = format!("$(touch {})\n-rf --upload-pack=touch", marker.display());
    let result = run_worker(&fx.run_json(&spec));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert!(!marker.exists() && !marker2.exists(), "a command in the title ran");
    let prompt = std::fs::read_to_string(fx.root().join("runs").join(&spec.worker).join("prompt.md")).expect("prompt");
    assert!(prompt.contains(&format!("Task: {title}\n")), "title verbatim, not escaped or rendered: {prompt}");
    let commit = result.pushed_commit.expect("pushed");
    assert_eq!(fx.remote(&["log", "-1", "--format=%s", &commit]), title, "commit subject is the title verbatim");
}

#[test]
fn failures_carry_the_right_reason() {
    let fx = Fixture::new();

    let nonzero = run_worker(&fx.run_json(&fx.spec("exit", sh("echo partial > f.txt; exit 3"))));
    assert_eq!((nonzero.outcome, nonzero.reason.as_str()), (Outcome::Failed, "AgentExitNonZero"), "{nonzero:?}");
    assert!(nonzero.message.contains("code 3") && nonzero.message.contains(&nonzero.log_path), "{}", nonzero.message);
    assert!(nonzero.pushed_commit.is_none());

    let mut slow = fx.spec("slow", sh("sleep 30"));
    slow.wall_time_secs = Some(1);
    let slow = run_worker(&fx.run_json(&slow));
    assert_eq!((slow.outcome, slow.reason.as_str()), (Outcome::Failed, "WallTimeExceeded"), "{slow:?}");

    let unchanged = run_worker(&fx.run_json(&fx.spec("idle", sh("true"))));
    assert_eq!((unchanged.outcome, unchanged.reason.as_str()), (Outcome::Failed, "NoChange"), "{unchanged:?}");

    let mut optional = fx.spec("optional", sh("true"));
    optional.require_change = false;
    let optional = run_worker(&fx.run_json(&optional));
    assert_eq!((optional.outcome, optional.reason.as_str()), (Outcome::Succeeded, "Completed"), "{optional:?}");
    assert_eq!(optional.pushed_commit.as_deref(), Some(fx.remote(&["rev-parse", "refs/heads/main"]).as_str()), "the current head");

    let mut secret = fx.spec("secret", sh("echo x > f.txt"));
    secret.env.push(("API_KEY".into(), EnvSource::Secret { name: "HADRON_TEST_SECRET_NOT_SET_4242".into(), key: None }));
    let secret = run_worker(&fx.run_json(&secret));
    assert_eq!((secret.outcome, secret.reason.as_str()), (Outcome::Failed, "SecretMissing"), "{secret:?}");
    assert!(secret.message.contains("HADRON_TEST_SECRET_NOT_SET_4242"), "{}", secret.message);

    let mut no_base = fx.spec("nobase", script_command());
    no_base.base_branch = "develop".into();
    no_base.work_branch = "hadron/other".into();
    let no_base = run_worker(&fx.run_json(&no_base));
    assert_eq!(no_base.reason, "BaseBranchMissing", "{no_base:?}");

    let mut bad_branch = fx.spec("badbranch", script_command());
    bad_branch.work_branch = "--force".into();
    assert_eq!(run_worker(&fx.run_json(&bad_branch)).reason, "InvalidRunSpec");

    let mut bad_url = fx.spec("badurl", script_command());
    bad_url.clone_url = fx.root().join("missing.git").display().to_string();
    assert_eq!(run_worker(&fx.run_json(&bad_url)).reason, "CloneFailed");

    assert_eq!(fx.remote(&["for-each-ref", "--format=%(refname)", "refs/heads/"]), "refs/heads/main", "no failed run pushed anything");
}

#[test]
fn a_misspelt_template_variable_fails_the_run_instead_of_vanishing() {
    let fx = Fixture::new();
    let mut command = sh("echo \"$1\" > f.txt");
    command.push("{{promptFil}}".into());
    let typo = run_worker(&fx.run_json(&fx.spec("typo", command)));
    assert_eq!((typo.outcome, typo.reason.as_str()), (Outcome::Failed, "TemplateFailed"), "{typo:?}");
    assert!(typo.message.contains("command element 4") && typo.message.contains("{{promptFil}}"), "{}", typo.message);

    let mut prompt = fx.spec("prompt-typo", sh("echo x > f.txt"));
    prompt.prompt_template = "Do {{titel}}".into();
    let prompt = run_worker(&fx.run_json(&prompt));
    assert_eq!((prompt.outcome, prompt.reason.as_str()), (Outcome::Failed, "TemplateFailed"), "{prompt:?}");
    assert!(prompt.message.starts_with("template error: prompt:") && prompt.message.contains("{{titel}}"), "{}", prompt.message);
    assert_eq!(fx.remote(&["for-each-ref", "--format=%(refname)", "refs/heads/"]), "refs/heads/main", "nothing ran, nothing pushed");
}

#[test]
fn the_agent_runs_once_per_worker() {
    let fx = Fixture::new();
    // The agent's sandbox shows it nothing of the test's folders: it counts
    // its runs in its report folder, which the run directory keeps.
    let command = sh(r#"echo run >> "$(dirname "$HADRON_REPORT_FILE")/runs.log"; echo change >> file.txt"#);
    let spec = fx.spec("implement", command);
    let run_json = fx.run_json(&spec);
    let counter = run_json.parent().expect("run dir").join("agent-out/runs.log");
    let first = run_worker(&run_json);
    assert_eq!(first.outcome, Outcome::Succeeded, "{first:?}\n{}", log_of(&first));
    let second = run_worker(&run_json);
    assert_eq!(second, first, "the second call returns the recorded result");
    assert_eq!(std::fs::read_to_string(&counter).expect("counter"), "run\n");
    assert_eq!(fx.remote(&["rev-list", "--count", "main..hadron/add-greeting"]), "1");

    // A crash after the push but before result.json: the commit's trailer
    // is found on the remote (from a fresh clone, too) and the agent does not run again.
    let dir = run_json.parent().expect("run dir");
    assert!(!dir.join("workspace").exists(), "the workspace clone is removed once the result is written");
    std::fs::remove_file(dir.join("result.json")).expect("rm result");
    let third = run_worker(&run_json);
    assert_eq!(third.outcome, Outcome::Succeeded, "{third:?}\n{}", log_of(&third));
    assert_eq!(third.pushed_commit, first.pushed_commit);
    assert_eq!(std::fs::read_to_string(&counter).expect("counter"), "run\n", "the agent ran again");
    assert_eq!(fx.remote(&["rev-list", "--count", "main..hadron/add-greeting"]), "1");
}

#[test]
fn a_branch_that_moved_is_rebased_onto_never_forced() {
    let fx = Fixture::new();
    let human = fx.root().join("human");
    git(fx.root(), HUMAN, &["clone", "-q", "target.git", "human"]).expect("git");
    // While the agent works, a person pushes to the work branch: the agent
    // says it is ready in its private /tmp and waits there for the word.
    let script = "touch \"$TMPDIR/ready\"; while [ ! -e \"$TMPDIR/go\" ]; do sleep 0.05; done; echo agent > agent.txt";
    let run_json = fx.run_json(&fx.spec("implement", sh(script)));
    let agent_tmp = run_json.parent().expect("run dir").join("agent-tmp");
    let person = {
        let human = human.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            while !agent_tmp.join("ready").exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::fs::write(human.join("human.txt"), "by-hand\n").expect("write");
            git(&human, HUMAN, &["add", "human.txt"]).expect("git add");
            git(&human, HUMAN, &["commit", "-q", "-m", "human"]).expect("git commit");
            git(&human, HUMAN, &["push", "-q", "origin", "HEAD:refs/heads/hadron/add-greeting"]).expect("git push");
            std::fs::write(agent_tmp.join("go"), "").expect("go");
        })
    };
    let result = run_worker(&run_json);
    person.join().expect("the person's thread");
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    let head = result.pushed_commit.clone().expect("pushed");
    let human_commit = git(&human, HUMAN, &["rev-parse", "HEAD"]).expect("git");
    assert_eq!(fx.remote(&["rev-parse", "hadron/add-greeting"]), head);
    assert_eq!(fx.remote(&["rev-parse", &format!("{head}^")]), human_commit, "the human commit is kept under the agent's");
    assert_eq!(fx.remote(&["show", &format!("{head}:human.txt")]), "by-hand");
    assert_eq!(fx.remote(&["show", &format!("{head}:agent.txt")]), "agent");
    assert!(result.message.contains("rebase"), "{}", result.message);
}

#[test]
fn usage_from_claude_style_stdout_is_priced() {
    let fx = Fixture::new();
    let script =
        r#"echo change > f.txt; echo '{"type":"result","result":"done it","usage":{"input_tokens":2000000,"output_tokens":1000000}}'"#;
    let mut spec = fx.spec("implement", sh(script));
    spec.pricing = Some(Pricing { input_per_million: 3.0, output_per_million: 15.0, cached_input_per_million: None });
    let result = run_worker(&fx.run_json(&spec));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!((result.tokens_in, result.tokens_out, result.summary.as_str()), (2_000_000, 1_000_000, "done it"));
    assert!((result.cost_usd - 21.0).abs() < 1e-9, "{}", result.cost_usd);
}

/// Runs this test binary as a child process whose only test is
/// [`worker_child_entry`], with `run.json` as the last argument.
fn child_command() -> WorkerCommand {
    let exe = std::env::current_exe().expect("test binary path");
    WorkerCommand::new(exe, ["--ignored", "--exact", "worker_child_entry", "--nocapture", "--test-threads=1"])
}

/// The worker process of [`secrets_reach_the_agent_but_never_the_log`] and
/// [`driver_runs_the_real_entrypoint`]: it calls `run_worker` on the
/// `run.json` named in its arguments, as `hadron worker --run` does.
#[test]
#[ignore = "entry point of child worker processes started by other tests"]
fn worker_child_entry() {
    let Some(run) = std::env::args().find(|a| a.ends_with("run.json")) else { return };
    let result = run_worker(Path::new(&run));
    assert!(!result.worker.is_empty(), "{result:?}");
}

#[test]
fn secrets_reach_the_agent_but_never_the_log() {
    let fx = Fixture::new();
    let secret_value = "sk-test-0123456789-abcdefghij";
    let mut spec = fx.spec("implement", sh("echo \"token=$TOKEN\"; echo \"err $TOKEN\" >&2; printf %s \"${#TOKEN}\" > token-length.txt"));
    spec.env.push(("TOKEN".into(), EnvSource::Secret { name: "HADRON_TEST_TOKEN".into(), key: None }));
    let run_json = fx.run_json(&spec);
    let cmd = child_command();
    let status =
        Command::new(&cmd.program).args(&cmd.args).arg(&run_json).env("HADRON_TEST_TOKEN", secret_value).output().expect("child runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stdout));
    let result = RunResult::read(&run_json.with_file_name("result.json")).expect("result.json");
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    let commit = result.pushed_commit.clone().expect("pushed");
    assert_eq!(fx.remote(&["show", &format!("{commit}:token-length.txt")]), secret_value.len().to_string());
    let log = log_of(&result);
    assert!(log.contains("token=***") && log.contains("err ***"), "{log}");
    for file in ["worker.log", "result.json", "run.json"] {
        let text = std::fs::read_to_string(run_json.with_file_name(file)).expect("read");
        assert!(!text.contains(secret_value), "{file} holds the secret");
    }
}

/// A stand-in worker: sleeps, then writes a successful result.json.
fn fake_worker(worker: &str, sleep: &str) -> WorkerCommand {
    let result = RunResult {
        worker: worker.into(),
        outcome: Outcome::Succeeded,
        reason: "Completed".into(),
        message: "fake".into(),
        pushed_commit: Some("0".repeat(40)),
        tokens_in: 1,
        tokens_out: 2,
        cost_usd: 0.0,
        summary: "fake worker".into(),
        log_path: String::new(),
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: "2026-01-01T00:00:01Z".into(),
        unconfined: None,
        session_id: None,
    };
    let json = serde_json::to_string(&result).expect("json");
    let script =
        format!("sleep {sleep} & wait; d=$(dirname \"$1\"); printf '%s' '{json}' > \"$d/r.tmp\" && mv \"$d/r.tmp\" \"$d/result.json\"");
    WorkerCommand::new("sh", ["-c", script.as_str(), "fake-worker"])
}

fn state_of(driver: &LocalDriver, worker: &str) -> Option<WorkerState> {
    driver.observe().expect("observe").into_iter().find(|o| o.worker == worker).map(|o| o.state)
}

fn pid_of(driver: &LocalDriver, worker: &str) -> u32 {
    let text = std::fs::read(driver.run_dir(worker).join("pid.json")).expect("pid.json");
    let v: serde_json::Value = serde_json::from_slice(&text).expect("json");
    u32::try_from(v["pid"].as_u64().expect("pid")).expect("u32")
}

#[test]
fn driver_starts_once_and_observes_the_result() {
    let fx = Fixture::new();
    let spec = fx.spec("implement", vec!["unused".into()]);
    let (tx, rx) = mpsc::channel();
    let driver = LocalDriver::new(fx.root().join("runs"), fake_worker(&spec.worker, "1")).expect("driver").with_exit_hook(move |w| {
        let _ = tx.send(w.to_owned());
    });
    driver.start(&spec).expect("start");
    // Its exit is a notice: the loop need not look before the driver's own
    // deadline (wall time 600 s plus the 120 s grace).
    let recheck = driver.recheck_after(std::slice::from_ref(&spec.worker)).expect("a deadline to enforce");
    assert!(recheck > Duration::from_secs(700) && recheck <= Duration::from_secs(720), "{recheck:?}");
    let pid = pid_of(&driver, &spec.worker);
    driver.start(&spec).expect("second start is a no-op");
    assert_eq!(pid_of(&driver, &spec.worker), pid, "no second process");
    let result = wait_for("the fake worker's result", || match state_of(&driver, &spec.worker) {
        Some(WorkerState::Finished(r)) => Some(r),
        Some(WorkerState::Running) => None,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!((result.worker.as_str(), result.summary.as_str()), (spec.worker.as_str(), "fake worker"));
    assert_eq!(rx.recv_timeout(Duration::from_secs(120)).expect("exit hook"), spec.worker);
    driver.start(&spec).expect("start after finish is a no-op");
    assert_eq!(pid_of(&driver, &spec.worker), pid);

    let mut bad = spec.clone();
    bad.worker = "../escape".into();
    assert_eq!(driver.start(&bad).map_err(|e| e.reason()), Err("InvalidWorkerName"));
    assert!(matches!(driver.cancel("never-started"), Err(DriverError::UnknownWorker(_))));
}

#[test]
fn a_new_driver_finds_running_work_and_cancels_it() {
    let fx = Fixture::new();
    let spec = fx.spec("implement", vec!["unused".into()]);
    let runs = fx.root().join("runs");
    let command = fake_worker(&spec.worker, "300");
    {
        let driver = LocalDriver::new(&runs, command.clone()).expect("driver");
        driver.start(&spec).expect("start");
    }
    let driver = LocalDriver::new(&runs, command)
        .expect("a new driver on the same runs")
        .with_stop_grace(Duration::from_secs(5))
        .with_exit_hook(|_| {});
    // Adopted, not its child: no exit notice, so it is looked at often.
    assert_eq!(driver.recheck_after(std::slice::from_ref(&spec.worker)), Some(Duration::from_millis(250)));
    let observed = driver.observe().expect("observe");
    assert_eq!(observed.len(), 1);
    assert_eq!(observed[0].state, WorkerState::Running);
    assert!(observed[0].started_at.is_some());
    let pgid = pid_of(&driver, &spec.worker);
    assert!(group_exists(pgid));
    driver.cancel(&spec.worker).expect("cancel");
    match state_of(&driver, &spec.worker) {
        Some(WorkerState::Finished(r)) => assert_eq!((r.outcome, r.reason.as_str()), (Outcome::Failed, "Cancelled")),
        other => panic!("expected a cancelled result, got {other:?}"),
    }
    wait_for("the process group to go", || (!group_exists(pgid)).then_some(()));
    driver.cancel(&spec.worker).expect("cancelling again is harmless");
}

#[test]
fn two_installations_sharing_a_runs_folder_never_touch_each_others_workers() {
    let fx = Fixture::new();
    let runs = fx.root().join("runs");
    let (team_a, team_b) = (Installation::named("team-a").expect("a label"), Installation::named("team-b").expect("a label"));
    // The same request, stage and attempt in both control repos.
    let spec_a = fx.spec_of(&team_a, "implement", vec!["unused".into()]);
    let spec_b = fx.spec_of(&team_b, "implement", vec!["unused".into()]);
    assert_ne!(spec_a.worker, spec_b.worker, "two installations never share a run folder");
    let driver = |installation: &Installation, spec: &RunSpec| {
        LocalDriver::new(&runs, fake_worker(&spec.worker, "300"))
            .expect("driver")
            .with_installation(installation.clone())
            .with_stop_grace(Duration::from_secs(5))
    };
    let (a, b) = (driver(&team_a, &spec_a), driver(&team_b, &spec_b));
    a.start(&spec_a).expect("a starts its worker");
    b.start(&spec_b).expect("b starts its worker");
    assert_eq!(a.start(&spec_b).map_err(|e| e.reason()), Err("ForeignWorker"), "a does not start b's worker");
    // A run folder from before installations existed is nobody's.
    let legacy = "hadron-add-greeting-implement-1-0a1b2c3d";
    std::fs::create_dir_all(runs.join(legacy)).expect("mkdir");
    let mut old = serde_json::to_value(RunSpec { worker: legacy.into(), ..spec_a.clone() }).expect("json");
    old.as_object_mut().expect("an object").remove("installation");
    std::fs::write(runs.join(legacy).join("run.json"), old.to_string()).expect("write run.json");

    let workers = |d: &LocalDriver| d.observe().expect("observe").into_iter().map(|o| (o.worker, o.state)).collect::<Vec<_>>();
    assert_eq!(workers(&a), [(spec_a.worker.clone(), WorkerState::Running)], "a sees its own worker only");
    assert_eq!(workers(&b), [(spec_b.worker.clone(), WorkerState::Running)], "b sees its own worker only");
    let b_pid = pid_of(&b, &spec_b.worker);
    let err = a.cancel(&spec_b.worker).expect_err("not a's to cancel");
    assert_eq!(err.reason(), "ForeignWorker");
    assert!(err.to_string().contains("team-b") && err.to_string().contains("team-a"), "{err}");
    assert!(group_exists(b_pid), "b's worker still runs");
    assert_eq!(a.log_tail(&spec_b.worker, 100).map_err(|e| e.reason()), Err("ForeignWorker"), "nor its log a's to show");
    assert_eq!(workers(&b), [(spec_b.worker.clone(), WorkerState::Running)]);

    // b cancels its own; a's pruning passes over b's finished run.
    b.cancel(&spec_b.worker).expect("b cancels its worker");
    wait_for("b's worker to go", || (!group_exists(b_pid)).then_some(()));
    assert_eq!(a.prune(&[spec_b.worker.clone(), legacy.to_owned()], Duration::ZERO).expect("prune"), 0);
    assert!(runs.join(&spec_b.worker).join("result.json").exists(), "b's record is b's to remove");
    assert!(runs.join(legacy).is_dir(), "so is the old one");
    assert_eq!(workers(&a), [(spec_a.worker.clone(), WorkerState::Running)], "a's worker ran on throughout");
    assert_eq!(b.prune(std::slice::from_ref(&spec_b.worker), Duration::ZERO).expect("prune"), 1);
    assert!(!runs.join(&spec_b.worker).exists());

    let a_pid = pid_of(&a, &spec_a.worker);
    a.cancel(&spec_a.worker).expect("a cancels its worker");
    wait_for("a's worker to go", || (!group_exists(a_pid)).then_some(()));
}

#[test]
fn a_killed_worker_is_lost() {
    let fx = Fixture::new();
    let spec = fx.spec("implement", vec!["unused".into()]);
    let driver = LocalDriver::new(fx.root().join("runs"), fake_worker(&spec.worker, "300")).expect("driver");
    driver.start(&spec).expect("start");
    let pid = pid_of(&driver, &spec.worker);
    let raw = i32::try_from(pid).expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let reason = wait_for("the run to be lost", || match state_of(&driver, &spec.worker) {
        Some(WorkerState::Lost { reason }) => Some(reason),
        Some(WorkerState::Running) => None,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(reason, "ProcessGone");
    wait_for("the orphaned sleep to be stopped", || (!group_exists(pid)).then_some(()));
}

#[test]
fn the_driver_stops_a_worker_past_its_wall_time() {
    let fx = Fixture::new();
    let mut spec = fx.spec("implement", vec!["unused".into()]);
    spec.wall_time_secs = Some(1);
    let driver = LocalDriver::new(fx.root().join("runs"), fake_worker(&spec.worker, "300"))
        .expect("driver")
        .with_wall_time_grace(Duration::from_secs(1))
        .with_stop_grace(Duration::from_secs(2));
    driver.start(&spec).expect("start");
    let pid = pid_of(&driver, &spec.worker);
    let result = wait_for("the wall-time stop", || match state_of(&driver, &spec.worker) {
        Some(WorkerState::Finished(r)) => Some(r),
        Some(WorkerState::Running) => None,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!((result.outcome, result.reason.as_str()), (Outcome::Failed, "WallTimeExceeded"), "{result:?}");
    wait_for("the process group to go", || (!group_exists(pid)).then_some(()));
}

#[test]
fn driver_runs_the_real_entrypoint() {
    let fx = Fixture::new();
    let spec = fx.spec("implement", script_command());
    let driver = LocalDriver::new(fx.root().join("runs"), child_command()).expect("driver");
    driver.start(&spec).expect("start");
    let result = wait_for("the worker's result", || match state_of(&driver, &spec.worker) {
        Some(WorkerState::Finished(r)) => Some(r),
        Some(WorkerState::Running) => None,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}\n{}", log_of(&result));
    assert_eq!(fx.remote(&["rev-parse", "refs/heads/hadron/add-greeting"]), result.pushed_commit.expect("pushed"));
    assert_eq!(result.tokens_out, 20);
}

#[test]
fn cancelling_a_real_worker_stops_its_agent_too() {
    let fx = Fixture::new();
    let spec = fx.spec("implement", sh("sleep 300"));
    let driver = LocalDriver::new(fx.root().join("runs"), child_command()).expect("driver").with_stop_grace(Duration::from_secs(5));
    driver.start(&spec).expect("start");
    let agent_json = driver.run_dir(&spec.worker).join("agent.json");
    let agent_pid = wait_for("the agent to start", || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&agent_json).ok()?).ok()?;
        v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    });
    let worker_pid = pid_of(&driver, &spec.worker);
    assert_ne!(agent_pid, worker_pid, "the agent has its own process group");
    assert!(group_exists(agent_pid));
    driver.cancel(&spec.worker).expect("cancel");
    match state_of(&driver, &spec.worker) {
        Some(WorkerState::Finished(r)) => assert_eq!(r.reason, "Cancelled"),
        other => panic!("expected a cancelled result, got {other:?}"),
    }
    wait_for("the agent's group to go", || (!group_exists(agent_pid)).then_some(()));
    wait_for("the worker's group to go", || (!group_exists(worker_pid)).then_some(()));
}

#[test]
fn the_log_tail_is_the_last_lines_of_the_worker_log_read_from_its_end() {
    let fx = Fixture::new();
    let runs = fx.root().join("runs");
    let driver = LocalDriver::new(&runs, fake_worker("unused", "1")).expect("driver");
    let worker = "hadron-fix-implement-1-0a1b2c3d";
    assert_eq!(driver.log_tail(worker, 4096).expect("no log yet"), None, "a worker without a log has none");
    std::fs::create_dir_all(runs.join(worker)).expect("mkdir");
    let log: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(runs.join(worker).join("worker.log"), &log).expect("write the log");
    let tail = driver.log_tail(worker, 100).expect("read").expect("a log");
    assert!(tail.len() <= 100 && tail.ends_with("line 1999\n"), "{tail:?}");
    assert!(tail.starts_with("line "), "it starts at a line, not in the middle of one: {tail:?}");
    let whole = driver.log_tail(worker, 1 << 20).expect("read").expect("a log");
    assert_eq!(whole, log, "a short log is shown whole");
    assert_eq!(driver.log_tail("../escape", 100).map_err(|e| e.reason()), Err("InvalidWorkerName"));
}

/// What `worker.log` keeps of the agent's and git's output (log.rs): the
/// first 256 KiB and the last 1 MiB, with a marker between.
const LOG_OUTPUT_KEPT: usize = (256 << 10) + (1 << 20);

#[test]
fn an_agent_printing_50_mb_leaves_a_bounded_log_with_a_marker_and_its_last_lines() {
    let fx = Fixture::new();
    // 25 MB in 64 KiB lines on stdout, 25 MB in 200-byte lines on stderr,
    // then one last line on each.
    let script = "line=$(head -c 65535 /dev/zero | tr '\\0' o); i=0; while [ $i -lt 381 ]; do echo \"$line\"; i=$((i+1)); done; \
                  yes \"$(head -c 199 /dev/zero | tr '\\0' e)\" | head -c 25000000 >&2; \
                  echo LAST-OUT-LINE; echo LAST-ERR-LINE >&2; echo change > f.txt";
    let result = run_worker(&fx.run_json(&fx.spec("implement", sh(script))));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    let size = std::fs::metadata(&result.log_path).expect("the log").len() as usize;
    assert!(size < LOG_OUTPUT_KEPT + (128 << 10), "worker.log is {size} bytes");
    let log = log_of(&result);
    let marker = log.lines().find(|l| l.contains("of output dropped here")).expect("a marker line");
    let dropped: u64 = marker.split(" … ").nth(1).and_then(|m| m.split(' ').next()).and_then(|n| n.parse().ok()).expect("a count");
    assert!(dropped > 48_000_000, "{marker}");
    let at = |what: &str| log.find(what).unwrap_or_else(|| panic!("{what:?} is in the log"));
    assert!(at("[agent out] oooo") < at("of output dropped here"), "the head is kept");
    assert!(at("of output dropped here") < at("[agent out] LAST-OUT-LINE"), "the tail is after the marker");
    assert!(at("of output dropped here") < at("[agent err] LAST-ERR-LINE"));
    assert!(at("[agent out] LAST-OUT-LINE") < at("agent finished"), "the tail is written when the agent finishes");
    assert!(at("agent finished") < at("result: Succeeded"), "Hadron's lines all go through");
}

#[test]
fn a_3_mib_summary_is_cut_to_4_kib_and_its_approval_file_still_counts() {
    let fx = Fixture::new();
    let script = "{ printf '{\"tokensIn\": 10, \"summary\": \"'; head -c 3145728 /dev/zero | tr '\\0' s; printf '\"}'; } > \"$HADRON_REPORT_FILE\"; \
                  echo change > f.txt";
    let result = run_worker(&fx.run_json(&fx.spec("implement", sh(script))));
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert_eq!(result.tokens_in, 10, "the figures count");
    assert!(result.summary.len() <= 4096, "{}", result.summary.len());
    assert!(result.summary.starts_with("sss") && result.summary.ends_with("… [cut: 3.0 MiB reported, 3.9 KiB kept]"), "{}", result.summary);
    let result_json = std::fs::metadata(Path::new(&result.log_path).with_file_name("result.json")).expect("result.json").len();
    assert!(result_json < 8192, "result.json is {result_json} bytes");

    // The approval file Hadron proposes at a gate carries the summaries. A
    // 3 MiB summary made it bigger than the 1 MiB a control-repo file may
    // be, so the merged approval was refused and never counted.
    let commit = result.pushed_commit.clone().expect("pushed");
    let approval = |summary: &str| {
        let text = format!("implement on ../target.git: {summary} (commit {})", &commit[..12]);
        let yaml = hadron::gates::render_approval("add-greeting", "review", "0011223344556677", 0, &text).expect("renders");
        let request = "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: add-greeting\nspec:\n  title: Add a greeting\n  repos:\n    - url: ../target.git\n";
        Catalog::load([("requests/add-greeting.yaml", request.as_bytes()), ("approvals/add-greeting/review.yaml", yaml.as_bytes())])
    };
    let counted = approval(&result.summary);
    assert!(counted.desired.approvals.contains_key(&("add-greeting".to_owned(), "review".to_owned())), "{:?}", counted.diagnostics);
    let refused = approval(&"s".repeat(3 << 20));
    assert!(refused.desired.approvals.is_empty() && refused.error_count() > 0, "the uncut summary is what broke the gate");
}

#[test]
fn an_absurd_usage_report_is_one_invalid_usage_report() {
    let fx = Fixture::new();
    for (stage, report) in [
        ("tokens", r#"{"tokensIn": 1e300, "summary": "cheap"}"#),
        ("cost", r#"{"costUSD": 1e300}"#),
        ("negative", r#"{"tokensOut": -1, "costUSD": 0.5}"#),
    ] {
        let script = format!("printf '%s' '{report}' > \"$HADRON_REPORT_FILE\"; echo change > f.txt");
        let result = run_worker(&fx.run_json(&fx.spec(stage, sh(&script))));
        assert_eq!((result.outcome, result.reason.as_str()), (Outcome::Failed, "InvalidUsageReport"), "{report}: {result:?}");
        assert_eq!((result.tokens_in, result.tokens_out, result.cost_usd), (0, 0, 0.0), "{report}: nothing of it counts");
        assert!(result.pushed_commit.is_none() && result.summary.is_empty(), "{result:?}");
        assert!(result.message.contains("the agent reported"), "{}", result.message);
    }
}

/// The worker process of
/// [`the_worker_stays_small_while_its_agent_prints_one_endless_line`]: runs
/// the worker like [`worker_child_entry`], then writes its own peak memory
/// (`VmHWM`, in kB) to `peak-kb` beside `run.json`.
#[test]
#[ignore = "entry point of a child worker process started by another test"]
fn worker_child_entry_reporting_its_peak_memory() {
    let Some(run) = std::env::args().find(|a| a.ends_with("run.json")) else { return };
    let result = run_worker(Path::new(&run));
    assert!(!result.worker.is_empty(), "{result:?}");
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let peak = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("a VmHWM line").trim().trim_end_matches(" kB");
    std::fs::write(Path::new(&run).with_file_name("peak-kb"), peak).expect("write peak-kb");
}

#[test]
fn the_worker_stays_small_while_its_agent_prints_one_endless_line() {
    let fx = Fixture::new();
    // 64 MB without a newline: a line reader holds it whole, several times over.
    let spec = fx.spec("implement", sh("head -c 64000000 /dev/zero | tr '\\0' x; echo change > f.txt"));
    let run_json = fx.run_json(&spec);
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["--ignored", "--exact", "worker_child_entry_reporting_its_peak_memory", "--nocapture", "--test-threads=1"])
        .arg(&run_json)
        .output()
        .expect("child runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let result = RunResult::read(&run_json.with_file_name("result.json")).expect("result.json");
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    let peak_kb: u64 = std::fs::read_to_string(run_json.with_file_name("peak-kb")).expect("peak-kb").trim().parse().expect("a number");
    assert!(peak_kb < 96 * 1024, "the worker peaked at {peak_kb} kB for 64 MB of output");
    let log = log_of(&result);
    assert!(log.len() < LOG_OUTPUT_KEPT + (256 << 10), "worker.log is {} bytes", log.len());
    assert!(log.contains("[agent out …] xxx") && log.contains("of output dropped here"), "the line is split and its middle dropped");
}

#[test]
fn a_required_sandbox_that_cannot_run_runs_no_agent_and_says_why() {
    let fx = Fixture::new();
    let spec = RunSpec { sandbox: hadron::workers::spec::SandboxMode::Required, ..fx.spec("implement", sh("echo ran > ran.txt")) };
    // The real binary, on a machine without bubblewrap.
    let without_bwrap = |run_json: &Path| {
        Command::new(env!("CARGO_BIN_EXE_hadron"))
            .args(["worker", "--run"])
            .arg(run_json)
            .env("HADRON_BWRAP", "/nonexistent/bwrap")
            .status()
            .expect("the worker runs")
    };
    let run_json = fx.run_json(&spec);
    assert!(!without_bwrap(&run_json).success());
    let result = RunResult::read(&run_json.with_file_name("result.json")).expect("a result");
    assert_eq!(result.reason, "SandboxUnavailable", "{result:?}");
    assert!(result.message.contains("sandbox: required") && result.message.contains("bubblewrap"), "{}", result.message);
    assert_eq!(fx.remote(&["branch", "--list", "hadron/add-greeting"]), "", "nothing was pushed");

    // Preferred: the agent runs, and the result says it ran unconfined.
    let spec = RunSpec { worker: format!("{}-p", spec.worker), ..fx.spec("implement", sh("echo ran > ran.txt")) };
    let run_json = fx.run_json(&spec);
    assert!(without_bwrap(&run_json).success());
    let result = RunResult::read(&run_json.with_file_name("result.json")).expect("a result");
    assert!(result.unconfined.as_deref().is_some_and(|why| why.contains("not installed")), "{result:?}");
}
