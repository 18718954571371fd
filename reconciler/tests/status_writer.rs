//! The status writer against real git: a bare control repo that refuses non-fast-forward
//! updates and deletions, and the `git` CLI acting as the human.

#[allow(dead_code)] // each test crate uses a part of the helpers
#[path = "support/git.rs"]
mod git;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use git::{HUMAN, git, git_output};
use hadron::status::writer::{Identity, PushResult, StatusWriter, WriterConfig};
use tempfile::TempDir;

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

/// A bare control repo seeded by a human, plus a scratch folder.
struct Fixture {
    tmp: TempDir,
    bare: PathBuf,
    seed: String,
}

impl Fixture {
    fn new() -> Result<Self> {
        let tmp = TempDir::new()?;
        let bare = tmp.path().join("control.git");
        std::fs::create_dir(&bare)?;
        git(&bare, HUMAN, &["init", "--bare", "--initial-branch=main"])?;
        git(&bare, HUMAN, &["config", "receive.denyNonFastForwards", "true"])?;
        git(&bare, HUMAN, &["config", "receive.denyDeletes", "true"])?;
        git(&bare, HUMAN, &["config", "core.logAllRefUpdates", "always"])?;
        let human = tmp.path().join("seed");
        let bare_str = bare.to_str().context("utf-8 temp path")?;
        let human_str = human.to_str().context("utf-8 temp path")?;
        git(tmp.path(), HUMAN, &["clone", "--quiet", bare_str, human_str])?;
        write(&human, "hadron.yaml", "kind: Settings\n")?;
        write(&human, "requests/a.yaml", "kind: ChangeRequest\n")?;
        write(&human, "status/human-note.md", "written by a person\n")?;
        git(&human, HUMAN, &["add", "-A"])?;
        git(&human, HUMAN, &["commit", "--quiet", "-m", "seed"])?;
        git(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
        let seed = git(&bare, HUMAN, &["rev-parse", "refs/heads/main"])?;
        Ok(Fixture { tmp, bare, seed })
    }

    fn url(&self) -> String {
        self.bare.to_string_lossy().into_owned()
    }

    fn config(&self, work: &str) -> WriterConfig {
        let mut config = WriterConfig::new(self.url(), "main", self.tmp.path().join(work));
        config.base_backoff = Duration::from_millis(1);
        config.max_backoff = Duration::from_millis(50);
        config.max_attempts = 500;
        config
    }

    fn writer(&self, work: &str) -> Result<StatusWriter> {
        Ok(StatusWriter::new(self.config(work))?)
    }

    /// A fresh human clone in `name`.
    fn human_clone(&self, name: &str) -> Result<PathBuf> {
        let dir = self.tmp.path().join(name);
        let dir_str = dir.to_str().context("utf-8 temp path")?.to_owned();
        git(self.tmp.path(), HUMAN, &["clone", "--quiet", &self.url(), &dir_str])?;
        Ok(dir)
    }

    fn head(&self) -> Result<String> {
        git(&self.bare, HUMAN, &["rev-parse", "refs/heads/main"])
    }

    /// Content of `path` at the branch head, `None` if absent.
    fn show(&self, path: &str) -> Result<Option<String>> {
        let out = git_output(&self.bare, HUMAN, &["show", &format!("refs/heads/main:{path}")])?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Commits on the branch touching `path`.
    fn commits_touching(&self, path: &str) -> Result<Vec<String>> {
        let log = git(&self.bare, HUMAN, &["log", "--format=%H", "refs/heads/main", "--", path])?;
        Ok(log.lines().map(str::to_owned).collect())
    }

    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool> {
        let out = git_output(&self.bare, HUMAN, &["merge-base", "--is-ancestor", ancestor, descendant])?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!("merge-base failed: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

fn write(dir: &Path, path: &str, content: &str) -> Result<()> {
    let full = dir.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(full, content)?;
    Ok(())
}

fn changes(items: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<Vec<u8>>> {
    items.iter().map(|(p, c)| ((*p).to_owned(), c.map(|c| c.as_bytes().to_vec()))).collect()
}

#[test]
fn publish_writes_one_commit_skips_unchanged_and_deletes() -> Result<()> {
    let fx = Fixture::new()?;
    let mut writer = fx.writer("work")?;
    let set = changes(&[("status/a.yaml", Some("phase: Running\n")), ("status/b.yaml", Some("phase: Pending\n"))]);
    let outcome = writer.publish(&set, "status: 2 requests", REV)?;
    assert!(outcome.pushed);
    assert_eq!(outcome.attempts, 1);
    let commit = outcome.commit.context("a commit was expected")?;
    assert_eq!(fx.head()?, commit);
    assert_eq!(git(&fx.bare, HUMAN, &["rev-parse", "refs/heads/main^"])?, fx.seed);
    let ident = git(&fx.bare, HUMAN, &["show", "-s", "--format=%an <%ae>|%cn <%ce>", &commit])?;
    assert_eq!(ident, "hadron <hadron@localhost>|hadron <hadron@localhost>");
    let trailer = git(&fx.bare, HUMAN, &["show", "-s", "--format=%(trailers:key=Hadron-Revision,valueonly)", &commit])?;
    assert_eq!(trailer, REV);
    assert_eq!(git(&fx.bare, HUMAN, &["show", "-s", "--format=%s", &commit])?, "status: 2 requests");
    let touched = git(&fx.bare, HUMAN, &["diff-tree", "--no-commit-id", "--name-only", "-r", &commit])?;
    assert_eq!(touched, "status/a.yaml\nstatus/b.yaml");
    assert_eq!(fx.show("status/a.yaml")?.as_deref(), Some("phase: Running\n"));
    assert_eq!(fx.show("status/b.yaml")?.as_deref(), Some("phase: Pending\n"));
    assert_eq!(fx.show("hadron.yaml")?.as_deref(), Some("kind: Settings\n"));
    assert_eq!(fx.show("status/human-note.md")?.as_deref(), Some("written by a person\n"));

    // Same content again: no commit.
    let again = writer.publish(&set, "status: 2 requests", REV)?;
    assert_eq!(again.commit, None);
    assert!(!again.pushed);
    assert_eq!(fx.head()?, commit);

    // Delete a status file, with a configured identity.
    let mut config = fx.config("work");
    config.author = Identity { name: "hadron-bot".to_owned(), email: "bot@example.com".to_owned() };
    let mut bot = StatusWriter::new(config)?;
    let deleted = bot.publish(&changes(&[("status/b.yaml", None)]), "status: b gone", REV)?;
    let del_commit = deleted.commit.context("deletion commit expected")?;
    assert_eq!(fx.head()?, del_commit);
    assert_eq!(fx.show("status/b.yaml")?, None);
    assert_eq!(fx.show("status/a.yaml")?.as_deref(), Some("phase: Running\n"));
    let ident = git(&fx.bare, HUMAN, &["show", "-s", "--format=%an <%ae>|%cn <%ce>", &del_commit])?;
    assert_eq!(ident, "hadron-bot <bot@example.com>|hadron-bot <bot@example.com>");
    // Deleting what is already gone: no commit.
    let gone = bot.publish(&changes(&[("status/b.yaml", None)]), "status: b gone", REV)?;
    assert_eq!(gone.commit, None);
    assert_eq!(fx.head()?, del_commit);
    Ok(())
}

#[test]
fn deleting_every_status_file_removes_the_folder_and_objects_are_sound() -> Result<()> {
    let fx = Fixture::new()?;
    let mut writer = fx.writer("work")?;
    writer.publish(&changes(&[("status/x/y.yaml", Some("deep\n"))]), "add", REV)?;
    assert_eq!(fx.show("status/x/y.yaml")?.as_deref(), Some("deep\n"));
    let out = writer.publish(&changes(&[("status/x/y.yaml", None), ("status/human-note.md", None)]), "remove all", REV)?;
    assert!(out.pushed);
    assert_eq!(git(&fx.bare, HUMAN, &["ls-tree", "-r", "--name-only", "refs/heads/main", "--", "status"])?, "");
    assert_eq!(git(&fx.bare, HUMAN, &["ls-tree", "--name-only", "refs/heads/main"])?, "hadron.yaml\nrequests");
    git(&fx.bare, HUMAN, &["fsck", "--strict", "--no-dangling"])?;
    Ok(())
}

#[test]
fn paths_outside_status_are_refused_and_nothing_is_pushed() -> Result<()> {
    let fx = Fixture::new()?;
    let mut writer = fx.writer("work")?;
    for bad in ["requests/x.yaml", "status/../hadron.yaml", "/etc/x", "status", "status//x.yaml", "status/./x.yaml", "status/.git/config"] {
        for content in [Some("x: 1\n"), None] {
            let set = changes(&[("status/ok.yaml", Some("fine\n")), (bad, content)]);
            let err = writer.publish(&set, "bad", REV).expect_err("a path outside status/ must be refused");
            assert_eq!(err.reason(), "PathOutsideStatus", "{bad}: {err}");
            let err = writer.prepare(&set, "bad", REV).expect_err("prepare refuses too");
            assert_eq!(err.reason(), "PathOutsideStatus", "{bad}: {err}");
            assert_eq!(fx.head()?, fx.seed, "{bad} must not change the branch");
        }
    }
    assert_eq!(fx.show("status/ok.yaml")?, None);

    // A status path that is a folder on the head is refused too.
    let human = fx.human_clone("human")?;
    write(&human, "status/dir/x.yaml", "human\n")?;
    git(&human, HUMAN, &["add", "-A"])?;
    git(&human, HUMAN, &["commit", "--quiet", "-m", "human folder"])?;
    git(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
    let head = fx.head()?;
    let err = writer.publish(&changes(&[("status/dir", Some("blob\n"))]), "bad", REV).expect_err("a folder is not a status file");
    assert_eq!(err.reason(), "PathIsFolder");
    assert_eq!(fx.head()?, head);
    assert_eq!(fx.show("status/dir/x.yaml")?.as_deref(), Some("human\n"));

    // A revision that is not hex is refused.
    let err = writer.publish(&changes(&[("status/ok.yaml", Some("x\n"))]), "m", "main; rm -rf").expect_err("bad revision");
    assert_eq!(err.reason(), "InvalidRevision");
    assert_eq!(fx.head()?, head);
    Ok(())
}

#[test]
fn invalid_configuration_and_fetch_failures_are_typed() -> Result<()> {
    let fx = Fixture::new()?;
    for branch in ["", "-x", "a..b", "a:b", "ma in", "main.lock"] {
        let mut config = fx.config("work-bad");
        config.branch = branch.to_owned();
        let err = StatusWriter::new(config).expect_err("invalid branch");
        assert_eq!(err.reason(), "InvalidWriterConfig", "{branch:?}");
    }
    let mut config = fx.config("work-bad");
    config.remote_url = "--upload-pack=touch /tmp/pwned".to_owned();
    assert_eq!(StatusWriter::new(config).map(|_| ()).expect_err("bad url").reason(), "InvalidWriterConfig");

    let mut config = fx.config("work-missing");
    config.remote_url = fx.tmp.path().join("no-such-repo.git").to_string_lossy().into_owned();
    let mut writer = StatusWriter::new(config)?;
    let err = writer.publish(&changes(&[("status/a.yaml", Some("x\n"))]), "m", REV).expect_err("missing remote");
    assert_eq!(err.reason(), "FetchFailed");

    let mut config = fx.config("work-branch");
    config.branch = "no-such-branch".to_owned();
    let mut writer = StatusWriter::new(config)?;
    let err = writer.publish(&changes(&[("status/a.yaml", Some("x\n"))]), "m", REV).expect_err("missing branch");
    assert_eq!(err.reason(), "FetchFailed");
    assert_eq!(fx.head()?, fx.seed);
    Ok(())
}

#[test]
fn a_push_declined_by_a_hook_is_a_push_error_not_retried() -> Result<()> {
    let fx = Fixture::new()?;
    let hook = fx.bare.join("hooks").join("pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'branch is protected' >&2\nexit 1\n")?;
    let status = Command::new("chmod").arg("+x").arg(&hook).status()?;
    ensure!(status.success(), "chmod failed");
    let mut writer = fx.writer("work")?;
    let err = writer.publish(&changes(&[("status/a.yaml", Some("x\n"))]), "m", REV).expect_err("the hook declines every push");
    assert_eq!(err.reason(), "PushFailed", "{err}");
    assert!(err.to_string().contains("declined"), "{err}");
    assert_eq!(fx.head()?, fx.seed);

    // A leader's atomic push (branch and leader ref) declined by the hook
    // is the same error, not a fence and not a retry.
    std::fs::remove_file(&hook)?;
    let mut leader = StatusWriter::new(fx.config("leader").with_epoch(Some(3)))?;
    leader.publish(&changes(&[("status/a.yaml", Some("y\n"))]), "m", REV)?;
    let head = fx.head()?;
    std::fs::write(&hook, "#!/bin/sh\necho 'branch is protected' >&2\nexit 1\n")?;
    ensure!(Command::new("chmod").arg("+x").arg(&hook).status()?.success(), "chmod failed");
    let err = leader.publish(&changes(&[("status/a.yaml", Some("z\n"))]), "m", REV).expect_err("declined");
    assert_eq!((err.reason(), err.to_string().contains("declined")), ("PushFailed", true), "{err}");
    assert_eq!(fx.head()?, head);
    Ok(())
}

#[test]
fn a_stale_prepared_commit_is_rejected_not_forced() -> Result<()> {
    let fx = Fixture::new()?;
    let mut writer = fx.writer("work")?;
    let prepared = writer.prepare(&changes(&[("status/a.yaml", Some("v1\n"))]), "m", REV)?.context("a commit was expected")?;
    assert_eq!(prepared.parent, fx.seed);
    // A human pushes meanwhile.
    let human = fx.human_clone("human")?;
    write(&human, "requests/h.yaml", "human\n")?;
    git(&human, HUMAN, &["add", "-A"])?;
    git(&human, HUMAN, &["commit", "--quiet", "-m", "human"])?;
    git(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
    let human_head = fx.head()?;
    match writer.push(&prepared)? {
        PushResult::Rejected { detail } => assert!(!detail.is_empty()),
        PushResult::Pushed => bail!("a stale commit must not be pushed"),
    }
    assert_eq!(fx.head()?, human_head);
    // publish re-applies on the new head.
    let outcome = writer.publish(&changes(&[("status/a.yaml", Some("v1\n"))]), "m", REV)?;
    let commit = outcome.commit.context("a commit was expected")?;
    assert_eq!(git(&fx.bare, HUMAN, &["rev-parse", &format!("{commit}^")])?, human_head);
    assert_eq!(fx.show("requests/h.yaml")?.as_deref(), Some("human\n"));
    assert_eq!(fx.show("status/a.yaml")?.as_deref(), Some("v1\n"));
    Ok(())
}

#[test]
fn crash_between_commit_and_push_publishes_exactly_once() -> Result<()> {
    let fx = Fixture::new()?;
    let set = changes(&[("status/r.yaml", Some("phase: Succeeded\n"))]);
    {
        let mut writer = fx.writer("work")?;
        let prepared = writer.prepare(&set, "status: r", REV)?.context("a commit was expected")?;
        // Committed in the private clone, never pushed: the process "crashes" here.
        let work = fx.tmp.path().join("work");
        assert_eq!(git(&work, HUMAN, &["cat-file", "-t", &prepared.commit])?, "commit");
        assert_eq!(fx.head()?, fx.seed);
        assert!(fx.commits_touching("status/r.yaml")?.is_empty());
    }
    // Restart on the same work_dir; the outbox re-publishes the same content.
    let mut restarted = fx.writer("work")?;
    let outcome = restarted.publish(&set, "status: r", REV)?;
    assert!(outcome.pushed);
    assert_eq!(fx.commits_touching("status/r.yaml")?.len(), 1);
    assert_eq!(fx.show("status/r.yaml")?.as_deref(), Some("phase: Succeeded\n"));

    // Crash after the push but before the outbox recorded it: publishing again is a no-op.
    let mut again = fx.writer("work")?;
    let outcome = again.publish(&set, "status: r", REV)?;
    assert_eq!(outcome.commit, None);
    assert_eq!(fx.commits_touching("status/r.yaml")?.len(), 1);

    // Same with the step functions: prepared and pushed, then "restart" and re-publish.
    let set2 = changes(&[("status/r.yaml", Some("phase: Failed\n"))]);
    let mut stepper = fx.writer("work")?;
    let prepared = stepper.prepare(&set2, "status: r", REV)?.context("commit expected")?;
    assert_eq!(stepper.push(&prepared)?, PushResult::Pushed);
    drop(stepper);
    let mut after = fx.writer("work")?;
    assert_eq!(after.publish(&set2, "status: r", REV)?.commit, None);
    assert_eq!(fx.commits_touching("status/r.yaml")?.len(), 2);
    assert_eq!(fx.head()?, prepared.commit);
    Ok(())
}

#[test]
fn human_edits_to_status_files_survive_unless_hadron_rewrites_that_file() -> Result<()> {
    let fx = Fixture::new()?;
    let mut writer = fx.writer("work")?;
    writer.publish(&changes(&[("status/a.yaml", Some("hadron a1\n")), ("status/b.yaml", Some("hadron b1\n"))]), "status", REV)?;
    let human = fx.human_clone("human")?;
    write(&human, "status/a.yaml", "human edit\n")?;
    git(&human, HUMAN, &["commit", "--quiet", "-am", "human edits a status file"])?;
    git(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;

    let out = writer.publish(&changes(&[("status/b.yaml", Some("hadron b2\n"))]), "status", REV)?;
    assert!(out.pushed);
    assert_eq!(fx.show("status/a.yaml")?.as_deref(), Some("human edit\n"));
    assert_eq!(fx.show("status/b.yaml")?.as_deref(), Some("hadron b2\n"));
    let out = writer.publish(&changes(&[("status/b.yaml", Some("hadron b2\n"))]), "status", REV)?;
    assert_eq!(out.commit, None);
    assert_eq!(fx.show("status/a.yaml")?.as_deref(), Some("human edit\n"));
    assert_eq!(fx.show("status/human-note.md")?.as_deref(), Some("written by a person\n"));

    let out = writer.publish(&changes(&[("status/a.yaml", Some("hadron a2\n"))]), "status", REV)?;
    assert!(out.pushed);
    assert_eq!(fx.show("status/a.yaml")?.as_deref(), Some("hadron a2\n"));
    Ok(())
}

#[test]
fn a_prefetch_is_used_once_and_a_push_after_it_is_kept() -> Result<()> {
    let fx = Fixture::new()?;
    let mut writer = fx.writer("work")?;
    // A person pushes between the prefetch and the publish: the publish
    // starts from the prefetched head, is refused, fetches and lands on top.
    writer.prefetch()?;
    let human = fx.human_clone("human")?;
    write(&human, "requests/late.yaml", "n: 1\n")?;
    git(&human, HUMAN, &["add", "-A"])?;
    git(&human, HUMAN, &["commit", "--quiet", "-m", "late"])?;
    git(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
    let late = git(&human, HUMAN, &["rev-parse", "HEAD"])?;
    let outcome = writer.publish(&changes(&[("status/a.yaml", Some("phase: Running\n"))]), "status: a", REV)?;
    assert_eq!(outcome.attempts, 2, "the push from the prefetched head is refused once");
    let commit = outcome.commit.context("a commit")?;
    assert_eq!(git(&fx.bare, HUMAN, &["rev-parse", &format!("{commit}^")])?, late, "the person's commit is kept");
    // Used once: the next publish fetches again and starts from the new head.
    git(&human, HUMAN, &["pull", "--quiet", "--rebase", "origin", "main"])?;
    write(&human, "requests/later.yaml", "n: 2\n")?;
    git(&human, HUMAN, &["add", "-A"])?;
    git(&human, HUMAN, &["commit", "--quiet", "-m", "later"])?;
    git(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
    let again = writer.publish(&changes(&[("status/a.yaml", Some("phase: Succeeded\n"))]), "status: a", REV)?;
    assert_eq!(again.attempts, 1, "no stale prefetch is used twice");
    assert_eq!(fx.show("requests/later.yaml")?.as_deref(), Some("n: 2\n"));
    Ok(())
}

#[test]
fn racing_a_human_loses_no_commit_and_never_forces() -> Result<()> {
    const UPDATES: usize = 200;
    let fx = Fixture::new()?;
    let human = fx.human_clone("human")?;
    let stop = Arc::new(AtomicBool::new(false));
    let human_pushes = Arc::new(AtomicUsize::new(0));

    let human_thread = {
        let stop = Arc::clone(&stop);
        let human_pushes = Arc::clone(&human_pushes);
        let human = human.clone();
        std::thread::spawn(move || -> Result<Vec<String>> {
            let mut pushed = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                write(&human, &format!("requests/human-{n}.yaml"), &format!("n: {n}\n"))?;
                git(&human, HUMAN, &["add", "-A"])?;
                git(&human, HUMAN, &["commit", "--quiet", "-m", &format!("human {n}")])?;
                loop {
                    let out = git_output(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
                    if out.status.success() {
                        break;
                    }
                    git(&human, HUMAN, &["pull", "--quiet", "--rebase", "origin", "main"])?;
                }
                pushed.push(git(&human, HUMAN, &["rev-parse", "HEAD"])?);
                human_pushes.fetch_add(1, Ordering::SeqCst);
                n += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            Ok(pushed)
        })
    };

    // Start once the human is pushing (generous deadline, no timing assertion).
    let deadline = Instant::now() + Duration::from_secs(120);
    while human_pushes.load(Ordering::SeqCst) == 0 {
        ensure!(Instant::now() < deadline, "the human never pushed");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut writer = fx.writer("work")?;
    let mut retries = 0u32;
    let mut writer_commits = Vec::new();
    let mut publish_result = Ok(());
    for i in 0..UPDATES {
        let path = format!("status/r-{}.yaml", i % 20);
        let content = format!("update: {i}\n");
        let set = changes(&[(path.as_str(), Some(content.as_str()))]);
        match writer.publish(&set, &format!("status update {i}"), REV) {
            Ok(outcome) => {
                retries += outcome.attempts - 1;
                match outcome.commit {
                    Some(c) => writer_commits.push(c),
                    None => {
                        publish_result = Err(anyhow::anyhow!("update {i} changed content but made no commit"));
                        break;
                    }
                }
            }
            Err(e) => {
                publish_result = Err(e.into());
                break;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let human_commits = human_thread.join().map_err(|_| anyhow::anyhow!("human thread panicked"))??;
    publish_result?;
    println!("race: {} status commits, {} human commits, {} writer push retries", writer_commits.len(), human_commits.len(), retries);

    let head = fx.head()?;
    ensure!(!human_commits.is_empty());
    for c in human_commits.iter().chain(&writer_commits) {
        assert!(fx.is_ancestor(c, &head)?, "commit {c} was lost");
    }
    for r in 0..20 {
        let last = (0..UPDATES).filter(|i| i % 20 == r).max().context("non-empty")?;
        assert_eq!(fx.show(&format!("status/r-{r}.yaml"))?, Some(format!("update: {last}\n")));
    }
    for n in 0..human_commits.len() {
        assert_eq!(fx.show(&format!("requests/human-{n}.yaml"))?, Some(format!("n: {n}\n")));
    }
    let status_commits = git(&fx.bare, HUMAN, &["log", "--format=%H", &format!("{}..refs/heads/main", fx.seed), "--", "status/"])?;
    assert_eq!(status_commits.lines().count(), UPDATES, "exactly one commit per update");

    // The remote's reflog: every update of main moved it forward from where it was.
    let reflog = std::fs::read_to_string(fx.bare.join("logs/refs/heads/main"))?;
    let entries: Vec<(String, String)> = reflog
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            (f.next().unwrap_or_default().to_owned(), f.next().unwrap_or_default().to_owned())
        })
        .collect();
    assert_eq!(entries.len(), 1 + UPDATES + human_commits.len());
    let zero = "0".repeat(40);
    let mut previous = zero.clone();
    for (old, new) in &entries {
        assert_eq!(old, &previous, "the head jumped");
        if *old != zero {
            assert!(fx.is_ancestor(old, new)?, "{old} -> {new} is not a fast-forward");
        }
        previous = new.clone();
    }
    assert_eq!(previous, head);
    git(&fx.bare, HUMAN, &["fsck", "--strict", "--no-dangling"])?;
    Ok(())
}

/// `git count-objects -v`'s loose object count.
fn loose_objects(dir: &Path) -> Result<u64> {
    let out = git(dir, HUMAN, &["count-objects", "-v"])?;
    let line = out.lines().find_map(|l| l.strip_prefix("count: ")).context("count-objects prints a count")?;
    Ok(line.trim().parse()?)
}

#[test]
fn many_files_are_one_pack_and_maintenance_packs_what_small_publishes_left_loose() -> Result<()> {
    let f = Fixture::new()?;
    let mut writer = f.writer("work")?;
    let work = f.tmp.path().join("work");
    // 300 files (over the threshold): their blobs arrive as one pack.
    let files: BTreeMap<String, Option<Vec<u8>>> =
        (0..300).map(|i| (format!("status/r-{i}.yaml"), Some(format!("phase: Running\nn: {i}\n").into_bytes()))).collect();
    ensure!(files.len() > hadron::status::writer::PACK_THRESHOLD);
    let published = writer.publish(&files, "status: 300 requests", REV)?;
    ensure!(published.commit.clone().is_some_and(|c| c == f.head().unwrap_or_default()), "the branch is the published commit");
    ensure!(f.show("status/r-299.yaml")?.as_deref() == Some("phase: Running\nn: 299\n"));
    ensure!(f.show("status/human-note.md")?.as_deref() == Some("written by a person\n"), "a person's file is kept");
    let loose = loose_objects(&work)?;
    ensure!(loose < 30, "the 300 blobs are packed; loose are only the fetched seed, trees and the commit: {loose}");
    // A few files at a time are written loose; maintenance packs them.
    for n in 0..3 {
        let one: BTreeMap<String, Option<Vec<u8>>> =
            [(format!("status/r-{n}.yaml"), Some(format!("phase: Succeeded\nn: {n}\n").into_bytes()))].into();
        writer.publish(&one, "status: one", REV)?;
    }
    ensure!(loose_objects(&work)? >= loose + 3, "small publishes write loose objects");
    StatusWriter::maintain(&work, Identity::default())?;
    ensure!(loose_objects(&work)? == 0, "all packed");
    ensure!(f.show("status/r-2.yaml")?.as_deref() == Some("phase: Succeeded\nn: 2\n"));
    // The clone still publishes after packing, and the remote has every blob.
    let more: BTreeMap<String, Option<Vec<u8>>> = [("status/r-0.yaml".to_owned(), Some(b"phase: Failed\n".to_vec()))].into();
    writer.publish(&more, "status: r-0", REV)?;
    ensure!(f.show("status/r-0.yaml")?.as_deref() == Some("phase: Failed\n"));
    git(&f.bare, HUMAN, &["fsck", "--connectivity-only", "--no-dangling"])?;
    Ok(())
}

/// Epochs named by the `Hadron-Epoch:` trailers of the branch's commits, oldest first.
fn epochs_on_main(fx: &Fixture) -> Result<Vec<i64>> {
    let log = git(&fx.bare, HUMAN, &["log", "--reverse", "--format=%(trailers:key=Hadron-Epoch,valueonly)", "refs/heads/main"])?;
    Ok(log.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

#[test]
fn a_deposed_leader_is_refused_by_the_git_server_and_never_re_applies_its_files() -> Result<()> {
    use hadron::status::writer::{LEADER_REF, WriterError};
    let fx = Fixture::new()?;
    let mut old = StatusWriter::new(fx.config("old").with_epoch(Some(4)))?;
    let mut new = StatusWriter::new(fx.config("new").with_epoch(Some(5)))?;
    old.publish(&changes(&[("status/a.yaml", Some("phase: Running\n"))]), "epoch 4", REV)?;
    assert!(git(&fx.bare, HUMAN, &["rev-parse", LEADER_REF]).is_ok(), "the first publish claims the leader ref");

    // The old leader has built its next commit (fetched, not pushed) when
    // the new one takes over; the branch has not moved, so only the fence
    // can refuse it.
    let prepared = old.prepare(&changes(&[("status/a.yaml", Some("phase: Running\nstage: late\n"))]), "epoch 4, late", REV)?;
    let prepared = prepared.context("a change")?;
    new.claim()?;
    let head = fx.head()?;
    let refused = old.push(&prepared).expect_err("a push of an older epoch is refused");
    assert!(matches!(refused, WriterError::Fenced { ours: 4, theirs: 5 }), "{refused}");
    assert_eq!(fx.head()?, head, "the branch did not move");

    // The new leader publishes; the old one, asked to publish again, does
    // not fetch the new head and re-apply its files onto it.
    new.publish(&changes(&[("status/a.yaml", Some("phase: Succeeded\n"))]), "epoch 5", REV)?;
    let after = fx.head()?;
    let again = old.publish(&changes(&[("status/a.yaml", Some("phase: Running\n"))]), "epoch 4, again", REV);
    assert!(matches!(again, Err(WriterError::Fenced { ours: 4, theirs: 5 })), "{again:?}");
    assert_eq!(fx.head()?, after);
    assert_eq!(fx.show("status/a.yaml")?.as_deref(), Some("phase: Succeeded\n"), "no status file rolled back");

    // An even older leader cannot claim the repo back.
    let mut older = StatusWriter::new(fx.config("older").with_epoch(Some(3)))?;
    assert!(matches!(older.claim(), Err(WriterError::Fenced { ours: 3, theirs: 5 })));

    // A person's push meanwhile is retried over, as always.
    let human = fx.human_clone("person")?;
    write(&human, "requests/b.yaml", "kind: ChangeRequest\n")?;
    git(&human, HUMAN, &["add", "-A"])?;
    git(&human, HUMAN, &["commit", "--quiet", "-m", "a request"])?;
    git(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
    let stale = new.prepare(&changes(&[("status/b.yaml", Some("phase: Pending\n"))]), "epoch 5, b", REV)?.context("a change")?;
    git(&human, HUMAN, &["commit", "--quiet", "--allow-empty", "-m", "another"])?;
    git(&human, HUMAN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
    assert!(matches!(new.push(&stale)?, PushResult::Rejected { .. }), "the branch moved: fetch and re-apply, not fenced");
    new.publish(&changes(&[("status/b.yaml", Some("phase: Pending\n"))]), "epoch 5, b", REV)?;
    assert_eq!(fx.show("requests/b.yaml")?.as_deref(), Some("kind: ChangeRequest\n"));
    let epochs = epochs_on_main(&fx)?;
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "epochs never go backwards on the branch: {epochs:?}");
    assert_eq!(epochs, vec![4, 5, 5]);
    Ok(())
}

#[test]
fn a_server_side_refusal_that_is_not_the_fence_is_retried_not_taken_for_a_newer_leader() -> Result<()> {
    use hadron::status::writer::WriterError;
    let fx = Fixture::new()?;
    let mut writer = StatusWriter::new(fx.config("leader").with_epoch(Some(2)))?;
    writer.publish(&changes(&[("status/a.yaml", Some("phase: Running\n"))]), "epoch 2", REV)?;
    // Another push holds the branch's lock on the server (as a person's
    // push does for a moment): the server fails the whole atomic
    // transaction, and says so on the leader ref's line too.
    let prepared = writer.prepare(&changes(&[("status/a.yaml", Some("phase: Succeeded\n"))]), "epoch 2, next", REV)?.context("a change")?;
    let lock = fx.bare.join("refs/heads/main.lock");
    std::fs::write(&lock, "")?;
    let refused = writer.push(&prepared);
    std::fs::remove_file(&lock)?;
    match refused {
        Ok(PushResult::Rejected { detail }) => assert!(!detail.is_empty(), "the refusal says why"),
        other => panic!("a locked branch is a refusal to retry, not a newer leader: {other:?}"),
    }
    // The fence is still this writer's: the next publish lands.
    writer.publish(&changes(&[("status/a.yaml", Some("phase: Succeeded\n"))]), "epoch 2, next", REV)?;
    assert_eq!(fx.show("status/a.yaml")?.as_deref(), Some("phase: Succeeded\n"));
    assert!(!matches!(writer.claim(), Err(WriterError::Fenced { .. })), "nobody else claimed the repo");
    Ok(())
}
