//! The single git writer for Hadron's `status/**` files.
//!
//! [`StatusWriter::publish`] makes Hadron's own files appear on the control repo's branch
//! without ever losing a human commit:
//!
//! 1. fetch the branch head from the remote into a private bare clone (`work_dir`, under
//!    Hadron's data dir) with the `git` CLI;
//! 2. apply the requested changes (write or delete, paths under `status/` only) onto the
//!    head's tree with gix's tree editor; every other path keeps exactly what the head has;
//! 3. if the tree did not change, stop: no empty commits, so publishing the same content
//!    twice is a no-op (this is what makes re-publishing from the outbox after a crash
//!    exactly-once);
//! 4. otherwise write one commit (explicit `hadron <hadron@localhost>` author and committer,
//!    the message plus a `Hadron-Revision: <sha>` trailer, the fetched head as its only
//!    parent) with gix;
//! 5. push it with `git push -- <remote> <commit>:refs/heads/<branch>`: fast-forward only,
//!    never `--force`, never a `+` refspec. If the push is rejected because someone pushed
//!    meanwhile, go back to 1 after a jittered exponential backoff, up to `max_attempts`.
//!
//! gix cannot push, so pushing (and, to use the same transport, credentials and URL handling,
//! fetching) is done with the `git` CLI. Every argument is built by Hadron itself: the
//! remote URL comes after `--`, the branch is validated as a ref name, and the pushed source
//! is a hex object id. Global git configuration cannot change identities or run hooks.
//!
//! All calls block (child processes and sleeps); call them from a blocking thread
//! (for example `tokio::task::spawn_blocking`). The branch must already exist on the remote
//! (a control repo always has one commit with `hadron.yaml`); a missing branch is a
//! [`WriterError::Fetch`]. Use one writer per `work_dir` at a time (Hadron's leader
//! election guarantees a single writer); separate writers on separate `work_dir`s may
//! race each other freely, like a human does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use gix::object::tree::EntryKind;

/// The only top-level folder Hadron writes in the control repo.
pub const STATUS_DIR: &str = "status";

/// The trailer key naming the control-repo revision a status commit was computed from.
pub const REVISION_TRAILER_KEY: &str = "Hadron-Revision";

/// Private ref in `work_dir` holding the last fetched head of the remote branch.
const UPSTREAM_REF: &str = "refs/hadron/upstream";

/// The control repo's ref that only the current leader moves (2+ replicas):
/// a new leader points it at a claim commit of its epoch, and every status
/// push moves it atomically with the branch, expecting the value this
/// writer last gave it. A push of an older epoch, even one already in
/// flight when the new leader took over, is refused by the git server.
pub const LEADER_REF: &str = "refs/hadron/leader";

/// Private ref in `work_dir` holding the remote's leader ref as last read.
const REMOTE_LEADER_REF: &str = "refs/hadron/remote-leader";

/// Private ref in `work_dir` holding the last commit prepared for pushing, so it survives
/// garbage collection until it is pushed or superseded.
const PENDING_REF: &str = "refs/hadron/pending";

/// Errors of the status writer.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// A path in the change set is not a clean relative path under `status/`.
    #[error("path {path:?} is not a clean relative path under status/; nothing was written")]
    PathOutsideStatus {
        /// The refused path.
        path: String,
    },
    /// A path in the change set names a folder on the branch head, not a file.
    #[error("path {path:?} is a folder on the branch head, not a file; nothing was written")]
    PathIsFolder {
        /// The refused path.
        path: String,
    },
    /// The revision given for the trailer is not a hex commit id.
    #[error("revision {value:?} for the Hadron-Revision trailer is not a hex commit id")]
    InvalidRevision {
        /// The refused value.
        value: String,
    },
    /// The writer configuration cannot be used.
    #[error("invalid status writer configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// The `git` program could not be started.
    #[error("could not run git: {source}")]
    GitUnavailable {
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// Fetching the branch head from the remote failed.
    #[error("fetching branch {branch:?} from {remote} failed: {detail}")]
    Fetch {
        /// The branch that was fetched.
        branch: String,
        /// The remote, with any credentials removed.
        remote: String,
        /// What git reported (credentials removed).
        detail: String,
    },
    /// Every push attempt was rejected because the branch kept moving.
    #[error("push to branch {branch:?} rejected after {attempts} attempts: {detail}")]
    PushRejected {
        /// The branch pushed to.
        branch: String,
        /// How many attempts were made.
        attempts: u32,
        /// What git reported for the last attempt (credentials removed).
        detail: String,
    },
    /// Pushing failed for a reason that retrying on a new head does not fix
    /// (transport failure, a hook or branch protection declining the update).
    #[error("push to branch {branch:?} failed: {detail}")]
    Push {
        /// The branch pushed to.
        branch: String,
        /// What git reported (credentials removed).
        detail: String,
    },
    /// A newer leader has claimed the control repo (`refs/hadron/leader`
    /// moved): this writer's epoch is over and it pushes nothing more.
    #[error(
        "the control repo's leader ref ({LEADER_REF}) belongs to a newer leader (epoch {theirs}, this writer's is {ours}): status commits of epoch {ours} are refused"
    )]
    Fenced {
        /// This writer's epoch.
        ours: i64,
        /// The epoch the remote's leader ref names, when readable (`0`: unknown).
        theirs: i64,
    },
    /// The leader lease is not held for certain: nothing was pushed.
    #[error("{0}")]
    LeaseLost(#[from] crate::leader::LeaseLost),
    /// Reading or writing objects or refs in the private clone failed.
    #[error("git object database error while {context}: {source}")]
    Git {
        /// What the writer was doing.
        context: &'static str,
        /// The underlying gix error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl WriterError {
    /// Whether publishing the same change set again can never succeed (a
    /// path Hadron refuses to write), as opposed to a transient failure.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            WriterError::PathOutsideStatus { .. }
                | WriterError::PathIsFolder { .. }
                | WriterError::Fenced { .. }
                | WriterError::LeaseLost(_)
        )
    }

    /// A stable CamelCase reason, for status conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            WriterError::PathOutsideStatus { .. } => "PathOutsideStatus",
            WriterError::PathIsFolder { .. } => "PathIsFolder",
            WriterError::InvalidRevision { .. } => "InvalidRevision",
            WriterError::Config { .. } => "InvalidWriterConfig",
            WriterError::GitUnavailable { .. } => "GitUnavailable",
            WriterError::Fetch { .. } => "FetchFailed",
            WriterError::PushRejected { .. } => "PushRejected",
            WriterError::Push { .. } => "PushFailed",
            WriterError::Git { .. } => "GitError",
            WriterError::Fenced { .. } => "StatusFenced",
            WriterError::LeaseLost(e) => e.reason(),
        }
    }

    fn git(context: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        WriterError::Git { context, source: Box::new(source) }
    }
}

/// Above this many new status files, a publish writes their blobs as one
/// pack (`git fast-import`) instead of one loose object each; git's own
/// `transfer.unpackLimit` is 100 for the same reason.
pub const PACK_THRESHOLD: usize = 100;

/// Name and email used as both author and committer of status commits.
pub use crate::git::Identity;

/// Configuration of a [`StatusWriter`]. Its `Debug` output hides credentials in `remote_url`.
#[derive(Clone)]
pub struct WriterConfig {
    /// Local path or URL of the control repo (anything `git fetch`/`git push` accept).
    pub remote_url: String,
    /// Branch of the control repo to publish to, without `refs/heads/` (e.g. `main`).
    pub branch: String,
    /// Folder of the private bare clone used for writing; created if missing.
    pub work_dir: PathBuf,
    /// Author and committer of status commits.
    pub author: Identity,
    /// How many fetch-apply-commit-push rounds to try before giving up (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second round; doubles each round, with jitter.
    pub base_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// The leader epoch the commits are made under (2+ replicas on
    /// PostgreSQL), written as a `Hadron-Epoch:` trailer.
    pub epoch: Option<i64>,
}

impl WriterConfig {
    /// A configuration with the default identity (`hadron <hadron@localhost>`),
    /// 10 attempts and a backoff from 100 ms up to 10 s.
    pub fn new(remote_url: impl Into<String>, branch: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        WriterConfig {
            remote_url: remote_url.into(),
            branch: branch.into(),
            work_dir: work_dir.into(),
            author: Identity::default(),
            max_attempts: 10,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            epoch: None,
        }
    }

    /// The same, with commits made under leader epoch `epoch`.
    pub fn with_epoch(mut self, epoch: Option<i64>) -> Self {
        self.epoch = epoch;
        self
    }
}

impl std::fmt::Debug for WriterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterConfig")
            .field("remote_url", &crate::redact::url_credentials(&self.remote_url))
            .field("branch", &self.branch)
            .field("work_dir", &self.work_dir)
            .field("author", &self.author)
            .field("max_attempts", &self.max_attempts)
            .field("base_backoff", &self.base_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// What [`StatusWriter::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The status commit now on the branch, or `None` when the branch already had this content.
    pub commit: Option<String>,
    /// How many fetch-apply-push rounds were needed (1 when nothing was rejected).
    pub attempts: u32,
    /// Whether a commit was pushed.
    pub pushed: bool,
}

/// A status commit written in the private clone but not yet pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedCommit {
    /// Hex id of the new commit.
    pub commit: String,
    /// Hex id of the fetched branch head it was built on (its only parent).
    pub parent: String,
}

/// Result of one push attempt that reached the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// The branch now points at the pushed commit.
    Pushed,
    /// The remote refused the update because it is not a fast-forward of the current head
    /// (someone pushed meanwhile). Fetching again and re-applying is the remedy.
    Rejected {
        /// What git reported (credentials removed).
        detail: String,
    },
}

/// How long a [`StatusWriter::prefetch`] stands in for the fetch of a
/// publish: a pass's decisions take far less, and an older fetch would
/// mostly earn a rejected push.
const PREFETCH_FRESH: Duration = Duration::from_secs(10);

/// Hadron's single git writer for `status/**` files of one branch of the control repo.
#[derive(Debug)]
pub struct StatusWriter {
    config: WriterConfig,
    /// When [`StatusWriter::prefetch`] fetched: the next
    /// [`StatusWriter::prepare`] soon after starts from that fetch instead
    /// of fetching again.
    prefetched: Option<Instant>,
    /// Under a leader epoch: the value this writer last gave the remote's
    /// [`LEADER_REF`] (its claim, then each status commit it pushed).
    /// `None` until it has claimed.
    fence: Option<gix::ObjectId>,
    /// Checked right before every push.
    lease: crate::leader::LeaseGuard,
}

impl StatusWriter {
    /// Checks `lease` right before every push (the leader's guard).
    pub fn set_lease(&mut self, lease: crate::leader::LeaseGuard) {
        self.lease = lease;
    }

    /// Check the configuration and open (or create) the private bare clone in `work_dir`.
    pub fn new(config: WriterConfig) -> Result<Self, WriterError> {
        validate_config(&config)?;
        let dir = &config.work_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| WriterError::Config { detail: format!("cannot create work_dir {}: {e}", dir.display()) })?;
        if open_repo(dir).is_err() {
            let empty = std::fs::read_dir(dir)
                .map_err(|e| WriterError::Config { detail: format!("cannot read work_dir {}: {e}", dir.display()) })?
                .next()
                .is_none();
            if !empty && !dir.join("HEAD").exists() {
                // A clone a crash left half-made (`kill -9` during its
                // creation): it is Hadron's private cache of the remote, and
                // the outbox holds what was not pushed, so it is made again.
                tracing::warn!(dir = %dir.display(), "removing a half-made private clone left by a crash");
                std::fs::remove_dir_all(dir)
                    .and_then(|()| std::fs::create_dir_all(dir))
                    .map_err(|e| WriterError::Config { detail: format!("cannot remove the half-made clone {}: {e}", dir.display()) })?;
            } else if !empty {
                return Err(WriterError::Config { detail: format!("work_dir {} is neither empty nor a git repository", dir.display()) });
            }
            gix::init_bare(dir).map_err(|e| WriterError::git("creating the private clone", e))?;
        }
        Ok(StatusWriter { config, prefetched: None, fence: None, lease: crate::leader::LeaseGuard::unguarded() })
    }

    /// Packs the loose objects earlier publishes left in the private clone
    /// (`git repack -d`: incremental, then the packed loose files go), so
    /// they never pile up; automatic `git gc` is off for Hadron's git.
    /// Safe beside a publish: only objects already in a pack are removed.
    /// Takes `work_dir` alone so housekeeping can run it without the writer.
    pub fn maintain(work_dir: &Path, identity: crate::git::Identity) -> Result<(), WriterError> {
        crate::git::Git::bare(work_dir, identity)
            .run_ok("repack", ["repack", "-d", "-q"])
            .map(|_| ())
            .map_err(|e| WriterError::git("packing the private clone", e))
    }

    /// The configuration this writer was built with.
    pub fn config(&self) -> &WriterConfig {
        &self.config
    }

    /// Publish `changes` (path → `Some(content)` to write, `None` to delete) to the branch
    /// as one commit with `message` and a `Hadron-Revision: <revision>` trailer.
    ///
    /// Only the given paths are touched; all must be clean relative paths under `status/`,
    /// otherwise nothing is written. When the branch already has exactly this content, no
    /// commit is made (`commit: None`), which makes repeated calls idempotent. A push
    /// rejected because the branch moved is retried on the new head.
    pub fn publish<B: AsRef<[u8]>>(
        &mut self,
        changes: &BTreeMap<String, Option<B>>,
        message: &str,
        revision: &str,
    ) -> Result<PublishOutcome, WriterError> {
        validate_changes(changes)?;
        validate_revision(revision)?;
        if self.config.epoch.is_some() && self.fence.is_none() {
            self.claim()?;
        }
        let max = self.config.max_attempts;
        let mut last_detail = String::new();
        for attempt in 1..=max {
            let Some(prepared) = self.prepare(changes, message, revision)? else {
                tracing::debug!(branch = %self.config.branch, attempt, "status already published");
                return Ok(PublishOutcome { commit: None, attempts: attempt, pushed: false });
            };
            match self.push(&prepared)? {
                PushResult::Pushed => {
                    tracing::info!(
                        branch = %self.config.branch,
                        commit = %prepared.commit,
                        attempt,
                        "published status commit"
                    );
                    return Ok(PublishOutcome { commit: Some(prepared.commit), attempts: attempt, pushed: true });
                }
                PushResult::Rejected { detail } => {
                    tracing::debug!(
                        branch = %self.config.branch,
                        attempt,
                        %detail,
                        "status push rejected; fetching the new head"
                    );
                    last_detail = detail;
                    if attempt < max {
                        std::thread::sleep(self.backoff(attempt));
                    }
                }
            }
        }
        Err(WriterError::PushRejected { branch: self.config.branch.clone(), attempts: max, detail: last_detail })
    }

    /// Steps 1–4 of [`publish`](Self::publish) without pushing: fetch the branch head, apply
    /// `changes` onto its tree and, unless the tree is unchanged (`Ok(None)`), write the
    /// status commit in the private clone. Push it with [`push`](Self::push).
    pub fn prepare<B: AsRef<[u8]>>(
        &mut self,
        changes: &BTreeMap<String, Option<B>>,
        message: &str,
        revision: &str,
    ) -> Result<Option<PreparedCommit>, WriterError> {
        validate_changes(changes)?;
        validate_revision(revision)?;
        // A `kill -9` during a ref update leaves its lock behind; this clone
        // is Hadron's alone, so an old lock is nobody's.
        crate::git::remove_stale_locks(&self.config.work_dir, crate::git::STALE_LOCK_AGE);
        if self.prefetched.take().is_none_or(|at| at.elapsed() > PREFETCH_FRESH) {
            self.fetch()?;
        }
        let repo = open_repo(&self.config.work_dir).map_err(|e| WriterError::git("opening the private clone", e))?;
        let head_id = peeled(&repo, UPSTREAM_REF)?;
        let head_tree = repo
            .find_commit(head_id)
            .map_err(|e| WriterError::git("reading the head commit", e))?
            .tree()
            .map_err(|e| WriterError::git("reading the head tree", e))?;
        let head_tree_id = head_tree.id;

        for path in changes.keys() {
            let entry = head_tree.lookup_entry_by_path(path).map_err(|e| WriterError::git("looking up a status path", e))?;
            if entry.is_some_and(|e| e.mode().is_tree()) {
                return Err(WriterError::PathIsFolder { path: path.clone() });
            }
        }

        // Many blobs go into one pack written by `git fast-import`; a few are
        // written loose by gix (cheaper than starting a process).
        let contents: Vec<&[u8]> = changes.values().filter_map(|c| c.as_ref().map(AsRef::as_ref)).collect();
        let mut packed =
            if contents.len() > PACK_THRESHOLD { self.write_blobs_packed(&contents)?.into_iter() } else { Vec::new().into_iter() };
        let mut editor = repo.edit_tree(head_tree_id).map_err(|e| WriterError::git("starting the tree edit", e))?;
        for (path, content) in changes {
            match content {
                Some(bytes) => {
                    let blob = match packed.next() {
                        Some(id) => id,
                        None => repo.write_blob(bytes.as_ref()).map_err(|e| WriterError::git("writing a status blob", e))?.detach(),
                    };
                    editor.upsert(path.as_str(), EntryKind::Blob, blob).map_err(|e| WriterError::git("editing the tree", e))?;
                }
                None => {
                    editor.remove(path.as_str()).map_err(|e| WriterError::git("editing the tree", e))?;
                }
            }
        }
        let new_tree = editor.write().map_err(|e| WriterError::git("writing the tree", e))?.detach();
        if new_tree == head_tree_id {
            return Ok(None);
        }

        let commit = self.new_commit(&repo, commit_message(message, revision, self.config.epoch), new_tree, Some(head_id))?;
        repo.reference(PENDING_REF, commit, gix::refs::transaction::PreviousValue::Any, "hadron: prepared status commit")
            .map_err(|e| WriterError::git("recording the prepared commit", e))?;
        Ok(Some(PreparedCommit { commit: commit.to_string(), parent: head_id.to_string() }))
    }

    /// Step 5 of [`publish`](Self::publish): push a prepared commit to the branch,
    /// fast-forward only. A non-fast-forward refusal is [`PushResult::Rejected`]; any other
    /// failure is an error.
    pub fn push(&mut self, prepared: &PreparedCommit) -> Result<PushResult, WriterError> {
        let commit = gix::ObjectId::from_hex(prepared.commit.as_bytes())
            .map_err(|_| WriterError::InvalidRevision { value: prepared.commit.clone() })?;
        let target = self.branch_ref();
        let refspec = format!("{commit}:{target}");
        self.lease.check()?;
        let output = match (self.config.epoch, self.fence) {
            (Some(ours), Some(fence)) => {
                // The branch and the leader ref in one atomic update; the
                // server compares the leader ref with what this writer last
                // gave it, under its lock.
                let next = self.write_leader_commit(ours, Some(fence), &format!("status commit {commit}"))?;
                let lease = format!("--force-with-lease={LEADER_REF}:{fence}");
                let leader = format!("{next}:{LEADER_REF}");
                let output = self.run_git_at(
                    "status-push",
                    &["push", "--porcelain", "--no-verify", "--atomic", &lease, "--", &self.config.remote_url, &refspec, &leader],
                )?;
                match push_line(&output.stdout, LEADER_REF) {
                    Some((flag, summary)) if flag == "!" => {
                        // Refused. Git words a refusal many ways (client-side
                        // "stale info", the server's "atomic push failure" or
                        // "atomic transaction failed" when another ref's lock
                        // is held), so the words do not decide: the leader
                        // ref does. Moved by someone else, this writer is
                        // fenced; still this writer's, the refusal was about
                        // the branch or the server, which the branch's own
                        // line below tells.
                        let now = self.read_remote_leader()?;
                        if now != Some(fence) {
                            return Err(WriterError::Fenced { ours, theirs: now.and_then(|id| self.epoch_of(id)).unwrap_or(0) });
                        }
                        tracing::debug!(%summary, "the leader ref's update was refused with the branch's; the fence holds");
                    }
                    Some((flag, _)) if output.success && matches!(flag.as_str(), "" | "*" | "=" | "+") => self.fence = Some(next),
                    _ => {}
                }
                output
            }
            _ => self.run_git_at("status-push", &["push", "--porcelain", "--no-verify", "--", &self.config.remote_url, &refspec])?,
        };
        let stdout = &output.stdout;
        let stderr = &output.stderr;
        let line = push_line(stdout, &target);
        match line {
            // " " fast-forward, "*" new branch, "=" already there.
            Some((flag, _)) if output.success && matches!(flag.as_str(), "" | "*" | "=") => Ok(PushResult::Pushed),
            Some((flag, summary)) if flag == "!" && is_retryable_rejection(&summary) => {
                Ok(PushResult::Rejected { detail: summary.trim().to_owned() })
            }
            Some((flag, summary)) => Err(WriterError::Push {
                branch: self.config.branch.clone(),
                detail: format!("{flag} {} {}", summary.trim(), stderr.trim()).trim().to_owned(),
            }),
            None => Err(WriterError::Push { branch: self.config.branch.clone(), detail: stderr.trim().to_owned() }),
        }
    }

    /// Fetch the branch head from the remote into [`UPSTREAM_REF`] of the private clone.
    /// Fetches the branch ahead of a [`StatusWriter::publish`] that is
    /// likely to follow (while the caller still decides what to write), so
    /// that publish starts from it. Were the branch to move in between, the
    /// push is rejected and publish fetches again, as it always does.
    pub fn prefetch(&mut self) -> Result<(), WriterError> {
        self.prefetched = None;
        self.fetch()?;
        self.prefetched = Some(Instant::now());
        Ok(())
    }

    /// Claims the control repo for this writer's epoch: points the remote's
    /// [`LEADER_REF`] at a new commit naming the epoch, expecting the value
    /// it has now, unless that value names a newer epoch
    /// ([`WriterError::Fenced`]). Called by the first publish of a leader.
    pub fn claim(&mut self) -> Result<(), WriterError> {
        let Some(ours) = self.config.epoch else { return Ok(()) };
        for _ in 0..5 {
            let current = self.read_remote_leader()?;
            if let Some(current) = current {
                let theirs = self.epoch_of(current).unwrap_or(0);
                if theirs > ours {
                    return Err(WriterError::Fenced { ours, theirs });
                }
            }
            let claim = self.write_leader_commit(ours, current, "claim")?;
            let lease = format!("--force-with-lease={LEADER_REF}:{}", current.map(|c| c.to_string()).unwrap_or_default());
            let refspec = format!("{claim}:{LEADER_REF}");
            self.lease.check()?;
            let output = self.run_git(&["push", "--porcelain", "--no-verify", &lease, "--", &self.config.remote_url, &refspec])?;
            match push_line(&output.stdout, LEADER_REF) {
                Some((flag, _)) if output.success && flag != "!" => {
                    tracing::info!(epoch = ours, claim = %claim, "claimed the control repo's leader ref");
                    self.fence = Some(claim);
                    return Ok(());
                }
                // Another replica moved it between the read and the push:
                // read again (an older one racing is outdone, a newer one wins).
                Some((flag, _)) if flag == "!" => continue,
                _ => {
                    return Err(WriterError::Push {
                        branch: LEADER_REF.to_owned(),
                        detail: format!("{} {}", output.stdout.trim(), output.stderr.trim()).trim().to_owned(),
                    });
                }
            }
        }
        Err(WriterError::Fenced { ours, theirs: self.remote_leader_epoch().unwrap_or(0) })
    }

    /// The remote's leader ref, fetched into [`REMOTE_LEADER_REF`]; `None`
    /// when the remote has none yet.
    fn read_remote_leader(&self) -> Result<Option<gix::ObjectId>, WriterError> {
        let refspec = format!("+{LEADER_REF}:{REMOTE_LEADER_REF}");
        let output = self.run_git(&["fetch", "--no-tags", "--no-write-fetch-head", "--quiet", "--", &self.config.remote_url, &refspec])?;
        if !output.success {
            let said = output.stderr.to_ascii_lowercase();
            if said.contains("couldn't find remote ref") || said.contains("could not find remote ref") {
                return Ok(None);
            }
            return Err(WriterError::Fetch {
                branch: LEADER_REF.to_owned(),
                remote: crate::redact::url_credentials(&self.config.remote_url),
                detail: output.stderr.trim().to_owned(),
            });
        }
        let repo = open_repo(&self.config.work_dir).map_err(|e| WriterError::git("opening the private clone", e))?;
        Ok(Some(peeled(&repo, REMOTE_LEADER_REF)?))
    }

    /// The epoch the remote's leader ref names now, when it can be read.
    fn remote_leader_epoch(&self) -> Option<i64> {
        self.read_remote_leader().ok().flatten().and_then(|id| self.epoch_of(id))
    }

    /// The `Hadron-Epoch:` trailer of commit `id` in the private clone.
    fn epoch_of(&self, id: gix::ObjectId) -> Option<i64> {
        let repo = open_repo(&self.config.work_dir).ok()?;
        let commit = repo.find_commit(id).ok()?;
        let message = commit.message_raw().ok()?.to_string();
        message.lines().rev().find_map(|l| l.strip_prefix(&format!("{EPOCH_TRAILER_KEY}: "))?.trim().parse().ok())
    }

    /// The next value of the leader ref: a commit with the empty tree whose
    /// parent is the ref's value now (so every move of the ref is a
    /// fast-forward, which a server refusing forced updates accepts), naming
    /// `epoch` and what it is for (`claim`, or the status commit it goes with).
    fn write_leader_commit(&self, epoch: i64, parent: Option<gix::ObjectId>, what: &str) -> Result<gix::ObjectId, WriterError> {
        let repo = open_repo(&self.config.work_dir).map_err(|e| WriterError::git("opening the private clone", e))?;
        let tree = repo.write_object(gix::objs::Tree::empty()).map_err(|e| WriterError::git("writing the empty tree", e))?.detach();
        let message = format!("Hadron leader, epoch {epoch}: {what}\n\n{EPOCH_TRAILER_KEY}: {epoch}\n");
        self.new_commit(&repo, message, tree, parent)
    }

    /// Writes a commit by this writer's identity (author and committer, now).
    fn new_commit(
        &self,
        repo: &gix::Repository,
        message: String,
        tree: gix::ObjectId,
        parent: Option<gix::ObjectId>,
    ) -> Result<gix::ObjectId, WriterError> {
        let author = &self.config.author;
        let signature = gix::actor::Signature {
            name: author.name.as_str().into(),
            email: author.email.as_str().into(),
            time: gix::date::Time::now_utc(),
        };
        let mut time_buf = gix::date::parse::TimeBuf::default();
        let sig_ref = signature.to_ref(&mut time_buf);
        Ok(repo.new_commit_as(sig_ref, sig_ref, message, tree, parent).map_err(|e| WriterError::git("writing a commit", e))?.id)
    }

    fn fetch(&self) -> Result<(), WriterError> {
        let refspec = format!("+{}:{UPSTREAM_REF}", self.branch_ref());
        let output = self.run_git_at(
            "status-fetch",
            &["fetch", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules", "--quiet", "--", &self.config.remote_url, &refspec],
        )?;
        if output.success {
            Ok(())
        } else {
            Err(WriterError::Fetch {
                branch: self.config.branch.clone(),
                remote: crate::redact::url_credentials(&self.config.remote_url),
                detail: output.stderr.trim().to_owned(),
            })
        }
    }

    fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.config.branch)
    }

    /// Writes `blobs` as one pack with `git fast-import` and returns their
    /// ids, in order: no loose file per blob, and no compressor allocated
    /// per object in Hadron's own process.
    fn write_blobs_packed(&self, blobs: &[&[u8]]) -> Result<Vec<gix::ObjectId>, WriterError> {
        use std::io::Write;
        let ids = blobs
            .iter()
            .map(|b| gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WriterError::git("hashing a status blob", e))?;
        let io = |e: std::io::Error| WriterError::git("packing status blobs with git fast-import", e);
        let mut child = crate::git::Git::bare(&self.config.work_dir, self.config.author.clone())
            .command(["fast-import", "--quiet", "--done"])
            // glibc gives freed memory back to the kernel after each object
            // and takes it again for the next (37,000 `brk` calls for 10,000
            // blobs): keeping 16 MiB took fast-import from ~600 to ~120 ms
            // on this workload. Other C libraries ignore the variable.
            .env("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=16777216")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io)?;
        let written = (|| {
            let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
            let mut stdin = std::io::BufWriter::new(stdin);
            for blob in blobs {
                write!(stdin, "blob\ndata {}\n", blob.len())?;
                stdin.write_all(blob)?;
                stdin.write_all(b"\n")?;
            }
            stdin.write_all(b"done\n")?;
            stdin.flush()
        })();
        let output = child.wait_with_output().map_err(io)?;
        if !output.status.success() {
            let detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(io(std::io::Error::other(format!("{}: {detail}", output.status))));
        }
        written.map_err(io)?;
        Ok(ids)
    }

    /// Jittered exponential backoff after the failed round `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::spread_random(Backoff::new(self.config.base_backoff, self.config.max_backoff).delay(attempt))
    }

    /// Run `git` on the private clone through Hadron's one git runner.
    fn run_git(&self, args: &[&str]) -> Result<crate::git::Ran, WriterError> {
        self.run_git_at("", args)
    }

    /// [`StatusWriter::run_git`], reaching the fault point `point` (see
    /// [`crate::fault`]) once git runs.
    fn run_git_at(&self, point: &str, args: &[&str]) -> Result<crate::git::Ran, WriterError> {
        crate::git::Git::bare(&self.config.work_dir, self.config.author.clone()).run_at(point, args).map_err(|e| match e {
            crate::git::GitError::Unavailable { source } => WriterError::GitUnavailable { source },
            crate::git::GitError::Failed { detail, .. } => WriterError::Push { branch: self.config.branch.clone(), detail },
        })
    }
}

/// The object a ref of the private clone points at (`refs/hadron/upstream`,
/// `refs/hadron/remote-leader`), peeled.
fn peeled(repo: &gix::Repository, name: &str) -> Result<gix::ObjectId, WriterError> {
    Ok(repo
        .find_reference(name)
        .map_err(|e| WriterError::git("reading a ref of the private clone", e))?
        .into_fully_peeled_id()
        .map_err(|e| WriterError::git("peeling a ref of the private clone", e))?
        .detach())
}

/// Open the private clone ignoring global and system git configuration.
fn open_repo(dir: &Path) -> Result<gix::Repository, gix::Error> {
    crate::git::open(dir)
}

/// The flag and summary of the `git push --porcelain` line of `target`.
fn push_line(stdout: &str, target: &str) -> Option<(String, String)> {
    stdout.lines().find_map(|line| {
        let mut fields = line.splitn(3, '\t');
        let flag = fields.next()?;
        let spec = fields.next()?;
        let summary = fields.next().unwrap_or_default();
        spec.ends_with(&format!(":{target}")).then(|| (flag.trim().to_owned(), summary.to_owned()))
    })
}

/// Whether a `!` push summary means "the branch moved; fetch and re-apply".
fn is_retryable_rejection(summary: &str) -> bool {
    let s = summary.to_ascii_lowercase();
    if s.contains("[rejected]") {
        // Client-side: "fetch first", "non-fast-forward", "stale info".
        return true;
    }
    // Server-side races: the ref moved between advertisement and update.
    s.contains("non-fast-forward")
        || s.contains("failed to update ref")
        || s.contains("cannot lock ref")
        || s.contains("failed to lock")
        || s.contains("incorrect old value")
        // An atomic push the server could not commit (a lock held by
        // another push).
        || s.contains("atomic transaction failed")
}

/// The trailer key naming the leader epoch a status commit was made under.
pub const EPOCH_TRAILER_KEY: &str = "Hadron-Epoch";

/// Build the commit message: `message` (or a default subject), the revision
/// trailer and, under a leader lease, the epoch trailer.
fn commit_message(message: &str, revision: &str, epoch: Option<i64>) -> String {
    let body = message.trim();
    let body = if body.is_empty() { "Update status" } else { body };
    let epoch = epoch.map(|e| format!("{EPOCH_TRAILER_KEY}: {e}\n")).unwrap_or_default();
    format!("{body}\n\n{REVISION_TRAILER_KEY}: {revision}\n{epoch}")
}

/// Check that `path` is a clean relative path of a file under `status/`:
/// `status/<component>[/<component>…]`, no empty, `.`, `..` or `.git` components,
/// no leading `/`, no backslash, NUL or newline.
pub fn validate_status_path(path: &str) -> Result<(), WriterError> {
    let refuse = || WriterError::PathOutsideStatus { path: path.to_owned() };
    let mut components = path.split('/');
    if components.next() != Some(STATUS_DIR) {
        return Err(refuse());
    }
    let mut count = 0usize;
    for component in components {
        count += 1;
        if component.is_empty()
            || component == "."
            || component == ".."
            || component.eq_ignore_ascii_case(".git")
            || component.contains(['\\', '\0', '\n', '\r'])
        {
            return Err(refuse());
        }
    }
    if count == 0 {
        return Err(refuse());
    }
    Ok(())
}

fn validate_changes<B>(changes: &BTreeMap<String, Option<B>>) -> Result<(), WriterError> {
    changes.keys().try_for_each(|path| validate_status_path(path))
}

fn validate_revision(revision: &str) -> Result<(), WriterError> {
    let ok = (4..=64).contains(&revision.len()) && revision.bytes().all(|b| b.is_ascii_hexdigit());
    if ok { Ok(()) } else { Err(WriterError::InvalidRevision { value: revision.to_owned() }) }
}

fn validate_config(config: &WriterConfig) -> Result<(), WriterError> {
    let refuse = |detail: String| Err(WriterError::Config { detail });
    let url = &config.remote_url;
    if url.is_empty() || url.starts_with('-') || url.contains(['\0', '\n', '\r']) {
        return refuse(format!("remote_url {:?} is not usable", crate::redact::url_credentials(url)));
    }
    let branch = &config.branch;
    let full = format!("refs/heads/{branch}");
    if branch.is_empty() || branch.starts_with('-') || branch.contains(':') || gix::refs::FullName::try_from(full.as_str()).is_err() {
        return refuse(format!("branch {branch:?} is not a valid branch name"));
    }
    if config.max_attempts == 0 {
        return refuse("max_attempts must be at least 1".to_owned());
    }
    for (what, value) in [("author name", &config.author.name), ("author email", &config.author.email)] {
        if value.is_empty() || value.contains(['<', '>', '\n', '\r', '\0']) {
            return refuse(format!("{what} {value:?} cannot be used in a git signature"));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
