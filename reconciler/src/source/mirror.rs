//! The mirror and fetching into it: [`Source::fetch`] brings the configured
//! branch of the control repo into the private bare mirror under the data
//! folder, which is made on first use.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::{Revision, Source, SourceError};

impl Source {
    /// Fetch the branch from the remote into the mirror and return its commit.
    /// On failure the last good revision stays as it was.
    pub fn fetch(&mut self) -> Result<Revision, SourceError> {
        let rev = self.fetch_inner()?;
        self.last_good = Some(rev);
        Ok(rev)
    }

    fn fetch_inner(&mut self) -> Result<Revision, SourceError> {
        let raw_url = self.cfg.url.clone();
        let branch = self.cfg.branch.clone();
        let tracking = self.tracking_ref.clone();
        let url = self.url.clone();
        let local = url.scheme == gix::url::Scheme::File;

        if local {
            let path = PathBuf::from(url.path.to_string());
            if !path.exists() {
                return Err(SourceError::RepoNotFound {
                    url: crate::redact::url_credentials(&raw_url),
                    message: format!("{} does not exist", path.display()),
                });
            }
        }

        crate::git::remove_stale_locks(&self.mirror_path(), crate::git::STALE_LOCK_AGE);
        let repo = self.mirror()?;
        let branch_ref = format!("refs/heads/{branch}");
        let id = self.fetch_ref(&branch_ref, &tracking, "hadron fetch", || SourceError::BranchNotFound {
            url: crate::redact::url_credentials(&raw_url),
            branch: branch.clone(),
        })?;
        repo.find_commit(id).map_err(|e| SourceError::Corrupt { message: format!("{branch_ref} does not point to a commit: {e}") })?;
        Ok(Revision(id))
    }
}

impl Source {
    /// Fetches `remote_ref` of the control repo into the mirror's
    /// `local_ref` (forced) and returns what it points at; `missing` is the
    /// error when the remote does not have that ref.
    pub(super) fn fetch_ref(
        &self,
        remote_ref: &str,
        local_ref: &str,
        action: &str,
        missing: impl FnOnce() -> SourceError,
    ) -> Result<gix::ObjectId, SourceError> {
        use gix::remote::Direction;
        let raw_url = &self.cfg.url;
        let local = self.url.scheme == gix::url::Scheme::File;
        let remote_err = |e: gix::Error| SourceError::from_remote(&e, raw_url, local);
        // Nothing interrupts a fetch: a shutdown lets the running pass finish.
        let interrupt = AtomicBool::new(false);
        let refspec = format!("+{remote_ref}:{local_ref}");
        let repo = self.mirror()?;
        let remote = repo
            .remote_at(self.url.clone())
            .map_err(remote_err)?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs([refspec.as_str()], Direction::Fetch)
            .map_err(|e| SourceError::InvalidConfig { message: format!("refspec {refspec:?}: {e}") })?;
        let connection = remote.connect(Direction::Fetch).map_err(remote_err)?;
        let prepare = connection.prepare_fetch(gix::progress::Discard, Default::default()).map_err(remote_err)?;
        if !prepare.ref_map().remote_refs.iter().any(|r| r.unpack().0 == remote_ref) {
            return Err(missing());
        }
        prepare
            .with_reflog_message(gix::remote::fetch::RefLogMessage::Prefixed { action: action.into() })
            .receive(gix::progress::Discard, &interrupt)
            .map_err(remote_err)?;
        Ok(repo
            .find_reference(local_ref)
            .map_err(|e| SourceError::from_local(&e))?
            .into_fully_peeled_id()
            .map_err(|e| SourceError::from_local(&e))?
            .detach())
    }
}

/// Open the mirror at `path`, creating it if needed.
///
/// The mirror is created in a sibling folder and renamed into place, so a
/// crash during creation leaves no half-made mirror; a folder without `HEAD`
/// (left by a crash of an older version) is removed, as the mirror is only
/// a cache of the control repo.
pub(super) fn open_mirror(path: &Path) -> Result<gix::Repository, SourceError> {
    let mut repo = if path.join("HEAD").is_file() {
        crate::git::open(path).map_err(|e| SourceError::from_local(&e))?
    } else {
        let io = |what: &str, p: &Path, e| SourceError::io(format!("{what} {}", p.display()), e);
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| io("removing the half-made mirror", path, e))?;
        }
        let tmp = path.with_extension(format!("init-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io("removing", &tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io("creating", &tmp, e))?;
        drop(gix::init_bare(&tmp).map_err(|e| SourceError::from_local(&e))?);
        std::fs::rename(&tmp, path).map_err(|e| io("moving the new mirror to", path, e))?;
        crate::git::open(path).map_err(|e| SourceError::from_local(&e))?
    };
    configure_mirror(&mut repo)?;
    Ok(repo)
}

/// Make fetches non-interactive: never prompt on a terminal for credentials
/// (the equivalent of `GIT_TERMINAL_PROMPT=0`, set in memory only).
fn configure_mirror(repo: &mut gix::Repository) -> Result<(), SourceError> {
    let mut snapshot = repo.config_snapshot_mut();
    snapshot
        .append_config(["gitoxide.credentials.terminalPrompt=false"], gix::config::Source::Api)
        .map_err(|e| SourceError::from_local(&e))?;
    snapshot.commit().map_err(|e| SourceError::from_local(&e))?;
    Ok(())
}
