//! `hadron up DIR` on a plain folder: seed local bare repos under the data
//! dir (the control repo from DIR, one target repo per `DIR/targets/<name>/`)
//! with the `git` CLI, exactly as a person would. Seeding happens once; a
//! later `up` reuses the repos and loses nothing pushed to them.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Runs git with a fixed identity so the user's config does not matter.
pub(crate) fn git(cwd: &Path, args: &[&str]) -> Result<String, SeedError> {
    let out = Command::new("git")
        .args(["-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(cwd)
        .env("GIT_AUTHOR_NAME", "hadron-seed")
        .env("GIT_AUTHOR_EMAIL", "hadron-seed@localhost")
        .env("GIT_COMMITTER_NAME", "hadron-seed")
        .env("GIT_COMMITTER_EMAIL", "hadron-seed@localhost")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|source| SeedError::Io { path: PathBuf::from("git"), source })?;
    if !out.status.success() {
        return Err(SeedError::Git { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

/// Creates a bare repo at `bare` whose `main` holds the files of `content`.
fn seed_repo(content: &Path, bare: &Path, skip_top: &[&str], message: &str) -> Result<(), SeedError> {
    let parent = bare.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let bare_str = bare.to_string_lossy().into_owned();
    git(parent, &["init", "--bare", "-q", "--", &bare_str])?;
    let work = tempfile::Builder::new().prefix("hadron-seed-").tempdir().map_err(io(parent))?;
    let work_path = work.path().join("w");
    copy_dir(content, &work_path, skip_top)?;
    git(&work_path, &["init", "-q"])?;
    git(&work_path, &["checkout", "-q", "-b", "main"])?;
    git(&work_path, &["add", "-A"])?;
    git(&work_path, &["commit", "-q", "--allow-empty", "-m", message])?;
    git(&work_path, &["push", "-q", "--", &bare_str, "HEAD:refs/heads/main"])?;
    Ok(())
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
    let created = !control.exists();
    for name in names {
        let bare = repos.join(format!("{name}.git"));
        if !bare.exists() {
            seed_repo(&targets_dir.join(&name), &bare, &[], &format!("Seed {name} from {}", dir.display()))?;
        }
        targets.push((name, bare));
    }
    if created {
        seed_repo(dir, &control, &["targets", "status"], &format!("Seed the control repo from {}", dir.display()))?;
    }
    Ok(Seeded { control, targets, created })
}
