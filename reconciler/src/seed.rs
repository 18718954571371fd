//! `hadron up DIR` on a plain folder: seed local bare repos under the data
//! dir (the control repo from DIR, one target repo per `DIR/targets/<name>/`)
//! with the `git` CLI, exactly as a person would. Seeding happens once; a
//! later `up` reuses the repos and loses nothing pushed to them.

use std::path::{Path, PathBuf};

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A file could not be read or written.
    #[error("cannot prepare `{path}`: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A seeded repo has branches but no `main`: Hadron will not delete it.
    #[error(
        "`{path}` has branches ({branches}) but no `main`, so it was not seeded by Hadron or was changed since; \
         push a `main` branch to it, or delete it to seed it again from the folder: rm -rf {path} (what was pushed there is lost)"
    )]
    NoMain {
        /// The repo.
        path: PathBuf,
        /// The branches it has.
        branches: String,
    },
    /// A git command failed.
    #[error("`git {args}` failed: {stderr}; check that git is installed")]
    Git {
        /// The arguments.
        args: String,
        /// What git said.
        stderr: String,
    },
}

impl SeedError {
    /// Stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            SeedError::Io { .. } => "SeedIo",
            SeedError::Git { .. } => "SeedGit",
            SeedError::NoMain { .. } => "SeedRepoWithoutMain",
        }
    }
}

/// The repos `up` works on.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// The control repo (a bare repo path).
    pub control: PathBuf,
    /// Target repos seeded from `targets/` (name, bare repo path).
    pub targets: Vec<(String, PathBuf)>,
    /// Whether this run created them (false when reused).
    pub created: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SeedError + '_ {
    move |source| SeedError::Io { path: path.to_owned(), source }
}

/// Runs git (through Hadron's one runner) as `hadron-seed`.
pub(crate) fn git(cwd: &Path, args: &[&str]) -> Result<String, SeedError> {
    let git = crate::git::Git::in_dir(cwd, crate::git::Identity::new("hadron-seed", "hadron-seed@localhost"));
    let out = git.run(args).map_err(|e| match e {
        crate::git::GitError::Unavailable { source } => SeedError::Io { path: PathBuf::from("git"), source },
        other => SeedError::Git { args: args.join(" "), stderr: other.to_string() },
    })?;
    if !out.success {
        return Err(SeedError::Git { args: args.join(" "), stderr: out.stderr.trim().to_owned() });
    }
    Ok(out.stdout)
}

fn copy_dir(from: &Path, to: &Path, skip_top: &[&str]) -> Result<(), SeedError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str.starts_with('.') || skip_top.contains(&name_str.as_ref()) {
            continue;
        }
        let kind = entry.file_type().map_err(io(&entry.path()))?;
        let target = to.join(&name);
        if kind.is_dir() {
            copy_dir(&entry.path(), &target, &[])?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).map_err(io(&target))?;
        }
    }
    Ok(())
}

/// Prefix of the staging folders seeding builds a repo in, beside its final place.
const STAGING_PREFIX: &str = ".seeding-";

/// Creates a bare repo at `bare` whose `main` holds the files of `content`.
///
/// The repo is built in a staging folder beside `bare` and renamed into
/// place once `main` is pushed, so a crash at any point leaves either no
/// repo or a whole one (plus a staging folder the next seeding removes).
fn seed_repo(content: &Path, bare: &Path, skip_top: &[&str], message: &str) -> Result<(), SeedError> {
    let parent = bare.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging = tempfile::Builder::new().prefix(STAGING_PREFIX).tempdir_in(parent).map_err(io(parent))?;
    let staged = staging.path().join("repo.git");
    let staged_str = staged.to_string_lossy().into_owned();
    git(staging.path(), &["init", "--bare", "-q", "--", &staged_str])?;
    let work_path = staging.path().join("w");
    copy_dir(content, &work_path, skip_top)?;
    git(&work_path, &["init", "-q"])?;
    git(&work_path, &["checkout", "-q", "-b", "main"])?;
    git(&work_path, &["add", "-A"])?;
    git(&work_path, &["commit", "-q", "--allow-empty", "-m", message])?;
    git(&work_path, &["push", "-q", "--", &staged_str, "HEAD:refs/heads/main"])?;
    std::fs::rename(&staged, bare).map_err(io(bare))?;
    Ok(())
}

/// Removes staging folders an interrupted seeding left in `repos`. Best
/// effort: a `git` child of the killed process may still be writing there
/// for a moment, so removal is retried briefly, and a folder that stays is
/// only logged (its random name never collides with a new seeding).
fn remove_stale_staging(repos: &Path) {
    let Ok(entries) = std::fs::read_dir(repos) else { return };
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            continue;
        }
        let path = entry.path();
        let mut last = None;
        // Up to 5 s: time for an orphaned git to finish, even on a loaded machine.
        for _ in 0..100 {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if let Some(e) = last {
            tracing::warn!(folder = %path.display(), error = %e, "could not remove a staging folder of an interrupted seeding; delete it by hand");
        }
    }
}

/// What a seeded repo's folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// Nothing there: seed it.
    Missing,
    /// A repo with `main`: use it.
    Ready,
    /// A folder with no branch at all (an interrupted seeding of an older
    /// Hadron, or a bare `git init`): nothing to lose, seed it again.
    Empty,
    /// A repo with branches but no `main`: someone pushed there, so Hadron
    /// does not delete it.
    NoMain(Vec<String>),
}

fn inspect(bare: &Path) -> Result<Found, SeedError> {
    if !bare.exists() {
        return Ok(Found::Missing);
    }
    if !is_git_repo(bare) {
        // Not even a repo (a crash inside `git init`): nothing was pushed.
        return Ok(Found::Empty);
    }
    let Ok(refs) = git(bare, &["for-each-ref", "--format=%(refname)", "refs/heads/"]) else {
        return Ok(Found::Empty);
    };
    let branches: Vec<String> = refs.lines().map(|l| l.trim_start_matches("refs/heads/").to_owned()).filter(|l| !l.is_empty()).collect();
    Ok(if branches.iter().any(|b| b == "main") {
        Found::Ready
    } else if branches.is_empty() {
        Found::Empty
    } else {
        Found::NoMain(branches)
    })
}

/// Seeds `bare` from `content` unless a whole repo is there already.
/// Returns whether it seeded.
fn ensure_repo(content: &Path, bare: &Path, skip_top: &[&str], message: &str) -> Result<bool, SeedError> {
    match inspect(bare)? {
        Found::Ready => Ok(false),
        Found::Missing => {
            seed_repo(content, bare, skip_top, message)?;
            Ok(true)
        }
        Found::Empty => {
            tracing::warn!(repo = %bare.display(), "a half-made repo (no branch) was left by an interrupted seeding; making it again");
            std::fs::remove_dir_all(bare).map_err(io(bare))?;
            seed_repo(content, bare, skip_top, message)?;
            Ok(true)
        }
        Found::NoMain(branches) => Err(SeedError::NoMain { path: bare.to_owned(), branches: branches.join(", ") }),
    }
}

/// Whether `dir` is a git repository (bare or with a work tree).
pub fn is_git_repo(dir: &Path) -> bool {
    dir.join(".git").exists() || (dir.join("HEAD").is_file() && dir.join("objects").is_dir())
}

/// Seeds (or finds) the control and target repos for `dir` under `data_dir/repos`.
pub fn seed(dir: &Path, data_dir: &Path) -> Result<Seeded, SeedError> {
    let repos = data_dir.join("repos");
    let control = repos.join("control.git");
    let mut targets = Vec::new();
    let targets_dir = dir.join("targets");
    let mut names = Vec::new();
    if targets_dir.is_dir() {
        for entry in std::fs::read_dir(&targets_dir).map_err(io(&targets_dir))? {
            let entry = entry.map_err(io(&targets_dir))?;
            if entry.file_type().map_err(io(&entry.path()))?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    remove_stale_staging(&repos);
    for name in names {
        let bare = repos.join(format!("{name}.git"));
        ensure_repo(&targets_dir.join(&name), &bare, &[], &format!("Seed {name} from {}", dir.display()))?;
        targets.push((name, bare));
    }
    let created = ensure_repo(dir, &control, &["targets", "status"], &format!("Seed the control repo from {}", dir.display()))?;
    Ok(Seeded { control, targets, created })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(root: &Path) -> PathBuf {
        let dir = root.join("ctl");
        std::fs::create_dir_all(dir.join("targets/app")).expect("mkdir");
        std::fs::write(dir.join("hadron.yaml"), "kind: Settings\n").expect("write");
        std::fs::write(dir.join("targets/app/README.md"), "# app\n").expect("write");
        dir
    }

    fn has_main(bare: &Path) -> bool {
        inspect(bare).expect("inspect") == Found::Ready
    }

    #[test]
    fn an_empty_bare_repo_left_by_a_crash_is_made_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = example(root.path());
        let data = root.path().join(".hadron");
        let control = data.join("repos/control.git");
        std::fs::create_dir_all(&control).expect("mkdir");
        git(&control, &["init", "--bare", "-q"]).expect("git init");
        // A staging folder of an interrupted seeding.
        std::fs::create_dir_all(data.join("repos/.seeding-abc/repo.git")).expect("mkdir");
        let seeded = seed(&dir, &data).expect("seeds");
        assert!(seeded.created, "the half-made control repo is seeded again");
        assert!(has_main(&control));
        assert!(has_main(&data.join("repos/app.git")));
        assert!(!data.join("repos/.seeding-abc").exists(), "stale staging folders are removed");
        let again = seed(&dir, &data).expect("reuses");
        assert!(!again.created, "a whole repo is reused");
    }

    #[test]
    fn a_repo_with_branches_but_no_main_is_kept_and_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = example(root.path());
        let data = root.path().join(".hadron");
        seed(&dir, &data).expect("seeds");
        let app = data.join("repos/app.git");
        git(&app, &["branch", "-m", "main", "work"]).expect("rename main");
        let err = seed(&dir, &data).expect_err("refuses");
        let text = err.to_string();
        assert_eq!(err.reason(), "SeedRepoWithoutMain");
        assert!(text.contains("work") && text.contains(&format!("rm -rf {}", app.display())), "{text}");
        assert!(app.exists(), "nothing is deleted");
    }
}
