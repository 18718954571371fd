//! Tests against real repositories made by the `git` CLI, acting as the human.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::*;

/// Run git in `dir` with a fixed identity and no global or system config.
fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Test Human",
            "-c",
            "user.email=human@example.com",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.autocrlf=false",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test Human")
        .env("GIT_AUTHOR_EMAIL", "human@example.com")
        .env("GIT_COMMITTER_NAME", "Test Human")
        .env("GIT_COMMITTER_EMAIL", "human@example.com")
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {args:?} failed in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A bare "remote" repo plus a working clone the human commits in.
struct Fixture {
    _tmp: tempfile::TempDir,
    remote: PathBuf,
    work: PathBuf,
    data: PathBuf,
}

impl Fixture {
    fn new() -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let remote = tmp.path().join("remote.git");
        let work = tmp.path().join("work");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&remote)?;
        std::fs::create_dir_all(&work)?;
        git(&remote, &["init", "--bare", "-q", "-b", "main"])?;
        git(&work, &["init", "-q", "-b", "main"])?;
        git(&work, &["remote", "add", "origin", "--", remote.to_str().context("utf8")?])?;
        Ok(Fixture { _tmp: tmp, remote, work, data })
    }

    fn write(&self, path: &str, content: &[u8]) -> Result<()> {
        let full = self.work.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(full, content)?;
        Ok(())
    }

    fn remove(&self, path: &str) -> Result<()> {
        git(&self.work, &["rm", "-q", "-r", "--", path])?;
        Ok(())
    }

    /// Commit everything and push `main` (or `branch`) to the remote; returns the commit id.
    fn commit_push(&self, msg: &str, branch: &str) -> Result<String> {
        git(&self.work, &["add", "-A"])?;
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", msg])?;
        git(&self.work, &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")])?;
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn cfg(&self) -> SourceConfig {
        SourceConfig::new(self.remote.to_string_lossy(), &self.data)
    }

    fn source(&self) -> Result<Source> {
        Ok(Source::new(self.cfg(), LoadOptions::default())?)
    }
}

/// The regular files of the working tree (not symlinks, not `.git`), as the oracle.
fn files_on_disk(root: &Path) -> Result<FileMap> {
    fn walk(root: &Path, dir: &Path, out: &mut FileMap) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if path.file_name().is_some_and(|n| n == ".git") || kind.is_symlink() {
                continue;
            }
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path.strip_prefix(root)?.to_str().context("utf8")?.replace('\\', "/");
                out.insert(rel, Blob::Data(std::fs::read(&path)?));
            }
        }
        Ok(())
    }
    let mut out = FileMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// What the caller does with a change set: a full one replaces its map, an
/// incremental one removes `deletes` and inserts `upserts`.
fn apply(files: &mut FileMap, changes: &ChangeSet) {
    if changes.full {
        files.clear();
    }
    for path in &changes.deletes {
        files.remove(path);
    }
    for (path, blob) in &changes.upserts {
        files.insert(path.clone(), blob.clone());
    }
}

/// The files at `rev` as a fresh source (a mirror of its own) loads them,
/// in full: the oracle for incremental loads. `rev` must be reachable from
/// the branch.
fn files_at(cfg: &SourceConfig, rev: Revision) -> Result<FileMap> {
    let data = tempfile::tempdir()?;
    let mut source = Source::new(SourceConfig { data_dir: data.path().to_owned(), ..cfg.clone() }, LoadOptions::default())?;
    source.fetch()?;
    let changes = source.load(rev)?;
    ensure!(changes.full, "a fresh source's first load is full");
    let mut files = FileMap::new();
    apply(&mut files, &changes);
    Ok(files)
}

/// Number of blobs that must be read to go from `old` to `new` per `git diff-tree`:
/// added or modified entries whose new side is a regular file.
fn changed_files(work: &Path, old: &str, new: &str) -> Result<u64> {
    let raw = git(work, &["diff-tree", "-r", "--no-renames", "--raw", old, new])?;
    let mut n = 0;
    for line in raw.lines().filter(|l| l.starts_with(':')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let new_mode = fields.get(1).copied().unwrap_or_default();
        let status = fields.get(4).copied().unwrap_or_default();
        if status != "D" && (new_mode == "100644" || new_mode == "100755") {
            n += 1;
        }
    }
    Ok(n)
}

#[test]
fn source_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Source>();
    assert_send::<SourceError>();
}

#[test]
fn scripted_history_incremental_equals_full_and_reads_only_changed_blobs() -> Result<()> {
    let fx = Fixture::new()?;
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    type Step<'a> = Box<dyn Fn(&Fixture) -> Result<()> + 'a>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "initial",
            Box::new(|fx: &Fixture| {
                fx.write("hadron.yaml", b"kind: Settings\n")?;
                fx.write("agents/a.yaml", b"kind: Agent\nname: a\n")?;
                fx.write("agents/b.yaml", b"kind: Agent\nname: b\n")?;
                fx.write("requests/r1.yaml", b"kind: ChangeRequest\n")?;
                fx.write("requests/empty.yaml", b"")?;
                fx.write("approvals/r1/design.yaml", b"gate: design\n")?;
                fx.write("approvals/r1/deploy.yaml", b"gate: deploy\n")?;
                fx.write("approvals/r1/nested/deep.yaml", b"deep\n")?;
                fx.write("status/blob.bin", &binary)?;
                fx.write("docs/readme.md", b"# docs\n")?;
                Ok(())
            }),
        ),
        (
            "edit and add",
            Box::new(|fx: &Fixture| {
                fx.write("agents/a.yaml", b"kind: Agent\nname: a\nmodel: better\n")?;
                fx.write("requests/r2.yaml", b"kind: ChangeRequest\nname: r2\n")?;
                Ok(())
            }),
        ),
        ("delete", Box::new(|fx: &Fixture| fx.remove("agents/b.yaml"))),
        (
            "rename folder",
            Box::new(|fx: &Fixture| {
                git(&fx.work, &["mv", "--", "approvals/r1", "approvals/r9"])?;
                Ok(())
            }),
        ),
        (
            "binary edit and empty becomes non-empty",
            Box::new(|fx: &Fixture| {
                let mut b: Vec<u8> = (0..=255u8).rev().collect();
                b.extend_from_slice(&[0, 0, 0, 0xff]);
                fx.write("status/blob.bin", &b)?;
                fx.write("requests/empty.yaml", b"now: filled\n")?;
                fx.write("status/empty-too.yaml", b"")?;
                Ok(())
            }),
        ),
        (
            "file becomes folder",
            Box::new(|fx: &Fixture| {
                fx.remove("requests/r2.yaml")?;
                fx.write("requests/r2.yaml/inner.yaml", b"inner\n")?;
                Ok(())
            }),
        ),
        (
            "folder becomes file",
            Box::new(|fx: &Fixture| {
                fx.remove("requests/r2.yaml")?;
                fx.write("requests/r2.yaml", b"back to a file\n")?;
                Ok(())
            }),
        ),
        (
            "executable bit",
            Box::new(|fx: &Fixture| {
                git(&fx.work, &["update-index", "--chmod=+x", "--", "hadron.yaml"])?;
                Ok(())
            }),
        ),
        (
            "symlink is ignored",
            Box::new(|fx: &Fixture| {
                std::os::unix::fs::symlink("hadron.yaml", fx.work.join("link.yaml"))?;
                Ok(())
            }),
        ),
        ("only unrelated change", Box::new(|fx: &Fixture| fx.write("docs/readme.md", b"# docs v2\n"))),
        ("nothing at all", Box::new(|_: &Fixture| Ok(()))),
        ("delete a whole folder", Box::new(|fx: &Fixture| fx.remove("agents"))),
        (
            "rename a file within the same commit as an edit elsewhere",
            Box::new(|fx: &Fixture| {
                git(&fx.work, &["mv", "--", "requests/r1.yaml", "requests/renamed.yaml"])?;
                fx.write("hadron.yaml", b"kind: Settings\nversion: 2\n")?;
                Ok(())
            }),
        ),
    ];
    let mut steps = steps;
    // A file that changes many times, including back to an earlier content.
    for i in 0..12u32 {
        let content = format!("phase: Running\nround: {}\n", i % 5).into_bytes();
        steps.push(("status churn", Box::new(move |fx: &Fixture| fx.write("status/r1.yaml", &content))));
    }

    let mut source = fx.source()?;
    let mut files = FileMap::new();
    let mut prev_commit: Option<String> = None;
    for (i, (name, step)) in steps.iter().enumerate() {
        step(&fx)?;
        let commit = fx.commit_push(name, "main")?;
        let rev = source.fetch()?;
        assert_eq!(rev.to_string(), commit, "step {i} ({name}): fetched revision");
        assert_eq!(source.last_good(), Some(rev));

        let before = source.blobs_read();
        let changes = source.load(rev)?;
        let read = source.blobs_read() - before;
        assert_eq!(changes.revision, rev);
        match &prev_commit {
            None => {
                assert!(changes.full, "first load is full");
                assert_eq!(read, changes.upserts.len() as u64);
            }
            Some(prev) => {
                assert!(!changes.full, "step {i} ({name}): later loads are incremental");
                let expected = changed_files(&fx.work, prev, &commit)?;
                assert_eq!(read, expected, "step {i} ({name}): blobs read");
                assert_eq!(changes.upserts.len() as u64, expected);
            }
        }
        apply(&mut files, &changes);

        let full = files_at(&fx.cfg(), rev)?;
        assert_eq!(files, full, "step {i} ({name}): incremental map equals full load");
        assert_eq!(files, files_on_disk(&fx.work)?, "step {i} ({name}): map equals the committed tree");
        assert_eq!(source.last_loaded(), Some(rev));
        prev_commit = Some(commit);
    }
    // Spot checks on the final state.
    assert!(files.contains_key("approvals/r9/nested/deep.yaml"));
    assert!(!files.keys().any(|k| k.starts_with("approvals/r1/")));
    assert!(!files.contains_key("link.yaml"), "symlinks are not files");
    assert_eq!(files.get("status/empty-too.yaml"), Some(&Blob::Data(Vec::new())));

    // Loading the same revision again changes nothing and reads nothing.
    let rev = source.last_good().context("fetched")?;
    let before = source.blobs_read();
    let again = source.load(rev)?;
    assert!(again.is_empty());
    assert_eq!(source.blobs_read(), before);

    // A restarted source (same mirror, nothing loaded yet) loads in full again.
    let mut restarted = fx.source()?;
    let full = restarted.load(rev)?;
    assert!(full.full);
    let mut fresh = FileMap::new();
    apply(&mut fresh, &full);
    assert_eq!(fresh, files);
    Ok(())
}

#[test]
fn incremental_load_can_jump_over_several_commits_and_back() -> Result<()> {
    let fx = Fixture::new()?;
    for i in 0..20 {
        fx.write(&format!("requests/r{i}.yaml"), format!("n: {i}\n").as_bytes())?;
    }
    let first = fx.commit_push("twenty", "main")?;
    fx.write("requests/r3.yaml", b"n: changed\n")?;
    fx.commit_push("one", "main")?;
    fx.remove("requests/r4.yaml")?;
    fx.write("requests/new.yaml", b"new\n")?;
    let third = fx.commit_push("two", "main")?;

    let mut source = fx.source()?;
    source.fetch()?;
    let first = Revision::from_hex(&first)?;
    let third = Revision::from_hex(&third)?;
    let mut files = FileMap::new();
    apply(&mut files, &source.load(first)?);
    assert_eq!(source.blobs_read(), 20);

    let forward = source.load(third)?;
    assert_eq!(source.blobs_read(), 22, "r3 and new.yaml only");
    assert_eq!(forward.deletes, vec!["requests/r4.yaml".to_owned()]);
    apply(&mut files, &forward);
    assert_eq!(files, files_at(&fx.cfg(), third)?);

    // Going backwards (e.g. the branch was reset) is just another diff.
    let back = source.load(first)?;
    apply(&mut files, &back);
    assert_eq!(files, files_at(&fx.cfg(), first)?);
    assert_eq!(back.deletes, vec!["requests/new.yaml".to_owned()]);
    Ok(())
}

#[test]
fn path_filter_skips_unrelated_trees_and_large_blobs_are_markers() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"kind: Settings\n")?;
    fx.write("hadron.yaml.bak", b"not wanted\n")?;
    fx.write("agents/a.yaml", b"a\n")?;
    fx.write("agentsx/a.yaml", b"not wanted\n")?;
    fx.write("status/r.yaml", b"s\n")?;
    for i in 0..50 {
        fx.write(&format!("src/module{i}/lib.rs"), format!("// {i}\n").as_bytes())?;
    }
    let big = vec![b'x'; 2 * 1024 * 1024 + 7];
    fx.write("requests/big.yaml", &big)?;
    fx.commit_push("init", "main")?;

    let mut source = Source::new(fx.cfg(), LoadOptions { filter: PathFilter::hadron(), ..LoadOptions::default() })?;
    let rev = source.fetch()?;
    let changes = source.load(rev)?;
    let paths: Vec<&str> = changes.upserts.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, vec!["agents/a.yaml", "hadron.yaml", "requests/big.yaml", "status/r.yaml"]);
    assert_eq!(source.blobs_read(), 3, "the large blob is not read");
    let big_blob = changes.upserts.iter().find(|(p, _)| p == "requests/big.yaml").map(|(_, b)| b.clone());
    assert_eq!(big_blob, Some(Blob::TooLarge { size: big.len() as u64 }));

    // A commit touching only unrelated paths yields an empty change set and reads nothing.
    fx.write("src/module3/lib.rs", b"// changed\n")?;
    fx.write("agentsx/a.yaml", b"still not wanted\n")?;
    let commit2 = fx.commit_push("unrelated", "main")?;
    let rev2 = source.fetch()?;
    assert_eq!(rev2.to_string(), commit2);
    let changes = source.load(rev2)?;
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(source.blobs_read(), 3);

    // Shrinking the big file below the cap turns the marker into data.
    fx.write("requests/big.yaml", b"small now\n")?;
    fx.commit_push("shrink", "main")?;
    let rev3 = source.fetch()?;
    let changes = source.load(rev3)?;
    assert_eq!(changes.upserts, vec![("requests/big.yaml".to_owned(), Blob::Data(b"small now\n".to_vec()))]);
    Ok(())
}

#[test]
fn files_the_caller_holds_already_are_neither_read_nor_listed() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("requests/a.yaml", b"a\n")?;
    fx.commit_push("init", "main")?;
    let mut source = fx.source()?;
    let first = source.fetch()?;
    source.load(first)?;
    // Hadron publishes two status files; a person changes a request and hand-edits a third.
    let blob = |bytes: &[u8]| gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, bytes);
    let known: std::collections::BTreeMap<String, gix::ObjectId> = [
        ("status/a.yaml".to_owned(), blob(b"phase: Pending\n")?),
        ("status/b.yaml".to_owned(), blob(b"phase: Running\n")?),
        ("status/c.yaml".to_owned(), blob(b"phase: Succeeded\n")?),
        ("status/d.yaml".to_owned(), blob(b"phase: Failed\n")?),
    ]
    .into();
    fx.write("status/a.yaml", b"phase: Pending\n")?;
    fx.write("status/b.yaml", b"phase: Running\n")?;
    fx.write("status/c.yaml", b"phase: Succeeded, says a person\n")?;
    fx.write("requests/a.yaml", b"a2\n")?;
    fx.commit_push("publish and edit", "main")?;
    let rev = source.fetch()?;
    let before = source.blobs_read();
    let changes = source.load_except(rev, &known)?;
    let paths: Vec<&str> = changes.upserts.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["requests/a.yaml", "status/c.yaml"], "what Hadron holds as written is skipped; the rest is read");
    assert_eq!(source.blobs_read() - before, 2);
    // Deleting a file the caller holds is still a delete; beside it, a
    // file the caller holds is still skipped.
    std::fs::remove_file(fx.work.join("status/a.yaml"))?;
    fx.write("status/d.yaml", b"phase: Failed\n")?;
    fx.commit_push("remove", "main")?;
    let rev = source.fetch()?;
    let changes = source.load_except(rev, &known)?;
    assert_eq!(changes.deletes, ["status/a.yaml"]);
    assert!(changes.upserts.is_empty(), "{:?}", changes.upserts);
    Ok(())
}

#[test]
fn path_filter_semantics() {
    let f = PathFilter::prefixes(["hadron.yaml", "/agents/", "approvals/r1"]);
    assert!(f.matches_file("hadron.yaml"));
    assert!(!f.matches_file("hadron.yaml.bak"));
    assert!(f.matches_file("agents/a.yaml"));
    assert!(f.matches_file("agents/deep/a.yaml"));
    assert!(!f.matches_file("agentsx/a.yaml"));
    assert!(f.matches_file("agents"), "an entry matches the path equal to it");
    assert!(f.matches_file("approvals/r1/gate.yaml"));
    assert!(!f.matches_file("approvals/r2/gate.yaml"));
    assert!(f.may_contain("approvals"));
    assert!(f.may_contain("approvals/r1"));
    assert!(f.may_contain("approvals/r1/x"));
    assert!(!f.may_contain("approvals/r2"));
    assert!(!f.may_contain("src"));
    assert!(PathFilter::All.matches_file("anything/at/all"));
    assert!(PathFilter::All.may_contain("src"));
}

#[test]
fn other_branch_is_read() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"on main\n")?;
    fx.commit_push("main", "main")?;
    fx.write("hadron.yaml", b"on control\n")?;
    fx.write("agents/x.yaml", b"x\n")?;
    let control = fx.commit_push("control", "control")?;

    let mut source = Source::new(fx.cfg().with_branch("control"), LoadOptions::default())?;
    let rev = source.fetch()?;
    assert_eq!(rev.to_string(), control);
    let mut files = FileMap::new();
    apply(&mut files, &source.load(rev)?);
    assert_eq!(files.get("hadron.yaml"), Some(&Blob::Data(b"on control\n".to_vec())));
    assert!(files.contains_key("agents/x.yaml"));
    Ok(())
}

#[test]
fn a_ref_lock_left_by_a_killed_fetch_is_removed_once_stale() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    fx.commit_push("main", "main")?;
    let mut source = fx.source()?;
    source.fetch()?;
    fx.write("hadron.yaml", b"y\n")?;
    let head = fx.commit_push("main", "main")?;
    // What a kill -9 in the middle of a fetch leaves: the tracking ref's lock.
    let mirror = fx.data.join("mirror.git");
    let tracking = std::fs::read_dir(mirror.join("refs/remotes"))?.next().context("a remote folder")??.path();
    let lock = tracking.join("main.lock");
    std::fs::write(&lock, b"0000000000000000000000000000000000000000\n")?;
    // A fresh lock may belong to a live fetch: it stays, and the fetch fails.
    assert!(source.fetch().is_err(), "a fresh lock is respected");
    assert!(lock.exists());
    let old = std::time::SystemTime::now() - crate::git::STALE_LOCK_AGE - Duration::from_secs(1);
    std::fs::File::options().write(true).open(&lock)?.set_modified(old)?;
    assert_eq!(source.fetch()?.to_string(), head, "a stale lock is removed and the fetch goes on");
    assert!(!lock.exists());
    Ok(())
}

#[test]
fn a_half_made_mirror_left_by_a_crash_is_made_again() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    let head = fx.commit_push("main", "main")?;
    // What a kill -9 during the first `init` can leave: the folder, no HEAD.
    let mirror = fx.data.join("mirror.git");
    std::fs::create_dir_all(mirror.join("refs"))?;
    std::fs::write(mirror.join("config"), b"[core]\n")?;
    let mut source = fx.source()?;
    assert_eq!(source.fetch()?.to_string(), head);
    assert!(mirror.join("HEAD").is_file());
    Ok(())
}

#[test]
fn missing_branch_is_branch_not_found() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    fx.commit_push("main", "main")?;
    let mut source = Source::new(fx.cfg().with_branch("nope"), LoadOptions::default())?;
    let err = source.fetch().err().context("must fail")?;
    assert!(matches!(err, SourceError::BranchNotFound { ref branch, .. } if branch == "nope"), "{err:?}");
    assert_eq!(err.reason(), "BranchNotFound");
    assert!(err.is_not_found());
    assert_eq!(source.last_good(), None);

    // A repository without any commit has no branch either.
    let empty = tempfile::tempdir()?;
    git(empty.path(), &["init", "--bare", "-q", "-b", "main"])?;
    let data = tempfile::tempdir()?;
    let mut source = Source::new(SourceConfig::new(empty.path().to_string_lossy(), data.path()), LoadOptions::default())?;
    let err = source.fetch().err().context("must fail")?;
    assert_eq!(err.reason(), "BranchNotFound", "{err:?}");
    Ok(())
}

#[test]
fn branch_deleted_upstream_is_not_found_and_last_good_stays() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    fx.commit_push("main", "main")?;
    fx.commit_push("side", "side")?;
    let mut source = Source::new(fx.cfg().with_branch("side"), LoadOptions::default())?;
    let good = source.fetch()?;
    git(&fx.remote, &["branch", "-q", "-D", "side"])?;
    let err = source.fetch().err().context("must fail")?;
    assert_eq!(err.reason(), "BranchNotFound");
    assert_eq!(source.last_good(), Some(good));
    Ok(())
}

#[test]
fn missing_repo_is_repo_not_found() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("does-not-exist.git");
    for url in [missing.to_string_lossy().into_owned(), format!("file://{}", missing.display())] {
        let mut source = Source::new(SourceConfig::new(&url, tmp.path().join("data")), LoadOptions::default())?;
        let err = source.fetch().err().context("must fail")?;
        assert!(matches!(err, SourceError::RepoNotFound { .. }), "{url}: {err:?}");
        assert_eq!(err.reason(), "RepoNotFound");
        assert!(!err.is_transient());
    }
    Ok(())
}

#[test]
fn garbage_path_is_a_typed_error() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir_all(garbage.join("refs"))?;
    std::fs::write(garbage.join("HEAD"), b"\x00\x01 definitely not a ref")?;
    std::fs::write(garbage.join("notes.txt"), b"hello")?;
    let mut source = Source::new(SourceConfig::new(garbage.to_string_lossy(), tmp.path().join("data")), LoadOptions::default())?;
    let err = source.fetch().err().context("must fail")?;
    eprintln!("garbage path: {err:?} / {}", err.reason());
    assert!(matches!(err, SourceError::RepoNotFound { .. } | SourceError::Corrupt { .. }), "{err:?}");
    assert_eq!(source.last_good(), None);
    Ok(())
}

#[test]
fn corrupt_remote_object_is_a_typed_error() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    let commit = fx.commit_push("main", "main")?;
    // Overwrite the commit's loose object in the remote with garbage.
    let object = fx.remote.join("objects").join(&commit[..2]).join(&commit[2..]);
    ensure!(object.is_file(), "expected a loose object at {}", object.display());
    let mut perms = std::fs::metadata(&object)?.permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&object, perms)?;
    std::fs::write(&object, b"this is not zlib data")?;
    let mut source = fx.source()?;
    let err = source.fetch().err().context("must fail")?;
    eprintln!("corrupt remote: {err:?} / {}", err.reason());
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(source.last_good(), None);
    Ok(())
}

#[test]
fn invalid_config_is_rejected_up_front() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for branch in ["", "a..b", "-rf", "a:b", "x*"] {
        let cfg = SourceConfig::new("/tmp/whatever", tmp.path()).with_branch(branch);
        let err = Source::new(cfg, LoadOptions::default()).err();
        assert!(matches!(err, Some(SourceError::InvalidConfig { .. })), "branch {branch:?}: {err:?}");
    }
}

#[test]
fn failed_fetch_keeps_last_good_and_restart_recovers_it() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    fx.commit_push("main", "main")?;
    let mut source = fx.source()?;
    let good = source.fetch()?;
    let changes = source.load(good)?;
    assert!(changes.full);

    let moved = fx.remote.with_extension("moved");
    std::fs::rename(&fx.remote, &moved)?;
    let err = source.fetch().err().context("must fail")?;
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(source.last_good(), Some(good));
    assert!(source.fetch().is_err(), "still gone");
    assert_eq!(source.last_good(), Some(good));

    // A restart with the same data dir knows the last good revision without
    // any fetch, and the mirror still serves it.
    drop(source);
    let mut restarted = fx.source()?;
    assert_eq!(restarted.last_good(), Some(good));
    let changes = restarted.load(good)?;
    assert!(changes.full && changes.upserts.iter().any(|(p, _)| p == "hadron.yaml"), "{changes:?}");

    // The remote comes back with a new commit: fetch works again.
    std::fs::rename(&moved, &fx.remote)?;
    fx.write("hadron.yaml", b"y\n")?;
    let newer = fx.commit_push("again", "main")?;
    let mut source = fx.source()?;
    let rev = source.fetch()?;
    assert_eq!(rev.to_string(), newer);
    Ok(())
}

#[test]
fn unknown_revision_is_reported() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    fx.commit_push("main", "main")?;
    let mut source = fx.source()?;
    source.fetch()?;
    let bogus = Revision::from_hex("0123456789012345678901234567890123456789")?;
    let err = source.load(bogus).err().context("must fail")?;
    assert_eq!(err.reason(), "UnknownRevision", "{err:?}");
    assert!(Revision::from_hex("xyz").is_err());
    Ok(())
}

#[test]
fn file_url_works_like_a_plain_path() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    fx.write("agents/a.yaml", b"a\n")?;
    let commit = fx.commit_push("main", "main")?;
    let mut by_path = fx.source()?;
    let url = format!("file://{}", fx.remote.display());
    let data = tempfile::tempdir()?;
    let mut by_url = Source::new(SourceConfig::new(url, data.path()), LoadOptions::default())?;
    let a = by_path.fetch()?;
    let b = by_url.fetch()?;
    assert_eq!(a, b);
    assert_eq!(a.to_string(), commit);
    assert_eq!(by_path.load(a)?, by_url.load(b)?);
    Ok(())
}

#[test]
fn relative_path_is_resolved() -> Result<()> {
    let cfg = SourceConfig::new("some/relative/repo", "/tmp/data");
    let local = cfg.local_path().context("a local path")?;
    assert!(local.is_absolute());
    assert!(local.ends_with("some/relative/repo"));
    assert_eq!(SourceConfig::new("https://example.com/x.git", "/d").local_path(), None);
    assert_eq!(SourceConfig::new("git@example.com:org/x.git", "/d").local_path(), None);
    assert_eq!(SourceConfig::new("ssh://git@example.com/org/x.git", "/d").local_path(), None);
    Ok(())
}

#[test]
fn non_bare_repo_reads_the_branch_commit_not_the_working_tree() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"committed\n")?;
    fx.write("agents/a.yaml", b"a\n")?;
    git(&fx.work, &["add", "-A"])?;
    git(&fx.work, &["commit", "-q", "-m", "init"])?;
    let commit = git(&fx.work, &["rev-parse", "HEAD"])?;
    // Uncommitted edits, a staged new file and an untracked file must not be seen.
    fx.write("hadron.yaml", b"dirty\n")?;
    fx.write("agents/staged.yaml", b"staged\n")?;
    git(&fx.work, &["add", "--", "agents/staged.yaml"])?;
    fx.write("requests/untracked.yaml", b"untracked\n")?;

    for url in [fx.work.to_string_lossy().into_owned(), format!("file://{}", fx.work.display())] {
        let data = tempfile::tempdir()?;
        let mut source = Source::new(SourceConfig::new(&url, data.path()), LoadOptions::default())?;
        let rev = source.fetch()?;
        assert_eq!(rev.to_string(), commit, "{url}");
        let mut files = FileMap::new();
        apply(&mut files, &source.load(rev)?);
        let expected: FileMap = BTreeMap::from([
            ("agents/a.yaml".to_owned(), Blob::Data(b"a\n".to_vec())),
            ("hadron.yaml".to_owned(), Blob::Data(b"committed\n".to_vec())),
        ]);
        assert_eq!(files, expected, "{url}");
    }
    Ok(())
}

#[test]
fn urls_are_redacted() {
    assert_eq!(crate::redact::url_credentials("https://user:s3cret@example.com/org/repo.git"), "https://***@example.com/org/repo.git");
    assert_eq!(crate::redact::url_credentials("https://example.com/x.git"), "https://example.com/x.git");
    assert_eq!(crate::redact::url_credentials("git@example.com:org/x.git"), "git@example.com:org/x.git");
    let err = SourceError::from_remote(&gix::error::ErrorExt::raise(gix::error::message("boom")), "https://token@example.com/x.git", false);
    assert!(!err.to_string().contains("token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_into_local_bare_repo_triggers_the_watcher() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    fx.commit_push("init", "main")?;
    let cfg = fx.cfg().with_poll_interval(Duration::from_secs(3600));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let handle = spawn_triggers(&cfg, tx);
    assert_eq!(handle.mode(), trigger::TriggerMode::Watch);

    fx.write("hadron.yaml", b"y\n")?;
    git(&fx.work, &["add", "-A"])?;
    git(&fx.work, &["commit", "-q", "-m", "second"])?;
    let start = Instant::now();
    git(&fx.work, &["push", "-q", "origin", "HEAD:refs/heads/main"])?;
    let pushed = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert!(matches!(got, Ok(Some(()))), "no trigger within 10 s: {got:?}");
    eprintln!(
        "watch trigger: {:?} after `git push` started, {:?} after it returned (debounce {:?})",
        start.elapsed(),
        pushed.elapsed(),
        trigger::DEBOUNCE
    );

    // packed refs count too: `git pack-refs` rewrites packed-refs.
    while rx.try_recv().is_ok() {}
    git(&fx.remote, &["pack-refs", "--all"])?;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert!(matches!(got, Ok(Some(()))), "no trigger for packed-refs: {got:?}");

    // The trigger leads to a fetch that sees the pushed commit.
    let mut source = Source::new(cfg.clone(), LoadOptions::default())?;
    let rev = tokio::task::spawn_blocking(move || source.fetch()).await??;
    assert_eq!(rev.to_string(), git(&fx.work, &["rev-parse", "HEAD"])?);
    drop(handle);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_sources_are_polled() -> Result<()> {
    let cfg = SourceConfig::new("https://example.invalid/control.git", "/tmp/unused").with_poll_interval(Duration::from_millis(50));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let handle = spawn_triggers(&cfg, tx);
    assert_eq!(handle.mode(), trigger::TriggerMode::Poll);
    for _ in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "no poll trigger: {got:?}");
    }
    drop(handle);
    Ok(())
}

#[test]
fn wiped_mirror_falls_back_to_a_full_load() -> Result<()> {
    let fx = Fixture::new()?;
    fx.write("hadron.yaml", b"x\n")?;
    fx.commit_push("one", "main")?;
    let mut source = fx.source()?;
    let first = source.fetch()?;
    assert!(source.load(first)?.full);

    // The data dir is wiped and the branch is rewritten with unrelated history.
    std::fs::remove_dir_all(source.mirror_path())?;
    git(&fx.work, &["checkout", "-q", "--orphan", "fresh"])?;
    git(&fx.work, &["rm", "-q", "-r", "-f", "--", "."])?;
    fx.write("agents/a.yaml", b"a\n")?;
    git(&fx.work, &["add", "-A"])?;
    git(&fx.work, &["commit", "-q", "-m", "rewritten"])?;
    git(&fx.work, &["push", "-q", "origin", "+HEAD:refs/heads/main"])?;
    let second = source.fetch()?;
    let changes = source.load(second)?;
    assert!(changes.full, "the old tree is gone from the fresh mirror, so the load is full");
    let mut files = FileMap::new();
    apply(&mut files, &changes);
    assert_eq!(files, files_on_disk(&fx.work)?);
    Ok(())
}
