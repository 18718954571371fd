//! The loop's input: why a pass should run now. Webhooks, the file watch,
//! the poll timer and worker exits all send a [`Trigger`] into one
//! coalescing channel.

/// Why the reconcile loop should run a pass now. Serialised (tagged by
/// `kind`) when a follower relays a webhook's trigger to the leader.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind")]
pub enum Trigger {
    /// The control branch moved (a push to it); `after` is the new head.
    ControlPush {
        /// The commit the branch points at after the push.
        after: String,
    },
    /// Something happened in a watched target repo (a push or a commit status).
    TargetActivity {
        /// The repo's `owner/name`.
        repo: String,
        /// The commit concerned, if the event names one (none for a deleted branch).
        commit: Option<String>,
    },
    /// A delivery says an approval PR (`hadron/approve/<request>/<gate>`)
    /// was merged into the control branch: the loop asks Gitea's API. The
    /// merger and commit are what the delivery claims, kept for logs only.
    ApprovalMerged {
        /// The request name.
        request: String,
        /// The gate name.
        gate: String,
        /// Forge login the delivery names as the merger (`merged_by`, else
        /// the event's sender); not evidence.
        merged_by_login: String,
        /// The merge commit the delivery names; not evidence.
        merge_commit: Option<String>,
    },
    /// A delivery says an approval PR was reviewed (changes asked): the loop
    /// reads its reviews from Gitea's API; the delivery's word is not read.
    ApprovalReviewed {
        /// The request name.
        request: String,
        /// The gate name.
        gate: String,
    },
    /// A pull request into the control branch was opened, reopened or
    /// pushed to: its plan preview is written again.
    PullRequestChanged {
        /// The PR number.
        number: u64,
    },
    /// The poll interval expired.
    Poll,
    /// A worker process ended.
    WorkerExited,
    /// `hadron ci-status` recorded a CI result in this data dir's store.
    CiRecorded,
}

/// A trigger one replica relays to the others (through the store's
/// `relay`), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Relayed {
    /// The identity of the replica that received it (its own relays are
    /// not taken back by a leader that received the webhook itself).
    pub from: String,
    /// The trigger.
    pub trigger: Trigger,
}

impl Relayed {
    /// The payload sent.
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("because a trigger is plain data that always serialises")
    }

    /// A payload received; `None` when it is not a relayed trigger (sent by
    /// something else on the channel).
    pub fn from_payload(payload: &str) -> Option<Relayed> {
        serde_json::from_str(payload).ok()
    }
}

/// Whether the triggers of these kinds (a pass's, by [`Trigger::kind`]) are
/// worker exits and nothing else: such a pass needs no fetch.
pub fn only_worker_exits(kinds: &[&str]) -> bool {
    !kinds.is_empty() && kinds.iter().all(|k| *k == Trigger::WorkerExited.kind())
}

/// Whether the triggers of these kinds only say that the control repo may
/// have moved (its watch, its poll, a push webhook).
pub fn only_control_repo(kinds: &[&str]) -> bool {
    let control = [Trigger::Poll.kind(), Trigger::ControlPush { after: String::new() }.kind()];
    !kinds.is_empty() && kinds.iter().all(|k| control.contains(k))
}

impl Trigger {
    /// The variant's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ControlPush { .. } => "ControlPush",
            Self::TargetActivity { .. } => "TargetActivity",
            Self::ApprovalMerged { .. } => "ApprovalMerged",
            Self::ApprovalReviewed { .. } => "ApprovalReviewed",
            Self::PullRequestChanged { .. } => "PullRequestChanged",
            Self::Poll => "Poll",
            Self::WorkerExited => "WorkerExited",
            Self::CiRecorded => "CiRecorded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_told_apart_by_the_kinds_that_asked_for_them() {
        let exit = Trigger::WorkerExited.kind();
        let poll = Trigger::Poll.kind();
        let push = Trigger::ControlPush { after: "abc".into() }.kind();
        assert!(only_worker_exits(&[exit]));
        assert!(!only_worker_exits(&[exit, poll]));
        assert!(!only_worker_exits(&[]), "a timer's pass (no trigger) is a full pass");
        assert!(only_control_repo(&[poll, push]));
        assert!(!only_control_repo(&[poll, exit]));
        assert!(!only_control_repo(&[Trigger::CiRecorded.kind()]));
        assert!(!only_control_repo(&[]));
    }
}
