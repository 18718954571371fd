//! What Hadron keeps per request in the `kv` table, behind a typed API: each
//! kind of entry ([`RequestEntry`]) has its key prefix here and nowhere else,
//! and housekeeping forgets every kind of a deleted request at once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Key prefix of the plan comment on a pull request of the control repo (`plan-comment/<number>`).
const PLAN_COMMENT_PREFIX: &str = "plan-comment/";

/// The plan comment Hadron keeps on a pull request into the control branch:
/// which comment it is, and for which head and base it was last written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanComment {
    /// The comment's id on the forge.
    pub comment: u64,
    /// The PR head the comment describes.
    pub head: String,
    /// The control-branch commit it was previewed against.
    pub base: String,
}

/// A kind of entry the store keeps per request. Its key is
/// `<prefix><request>` or `<prefix><request>/<part>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestEntry {
    /// SHA-256 of the status file Hadron last published.
    StatusDigest,
    /// Per gate: the token (generation) an approval branch was opened for.
    ApprovalBranch,
    /// Per gate: who merged the approval PR, as a webhook claimed it. No
    /// longer written or read (a delivery is a trigger, never evidence);
    /// kept so housekeeping forgets what older stores hold.
    ApprovalMerged,
    /// Per gate: the approval PR opened for it last ([`PrRecord`]).
    ApprovalPr,
    /// Per gate: the numbers of every approval PR opened for it, oldest
    /// first (an approval file may have come with any of them).
    ApprovalPrs,
    /// Per gate: the approval Hadron counted ([`PassedGate`]).
    ApprovalPassed,
    /// Per target repo: the PR opened there ([`PrRecord`]).
    TargetPr,
    /// The last commit status Hadron set in the control repo.
    ControlStatus,
    /// Per gate: the last revision Hadron commented on in its approval PR
    /// (`<generation> r<number> <started|ready|exhausted>`).
    RevisionComment,
}

impl RequestEntry {
    /// Every kind, for housekeeping.
    pub const ALL: [RequestEntry; 9] = [
        RequestEntry::StatusDigest,
        RequestEntry::ApprovalBranch,
        RequestEntry::ApprovalMerged,
        RequestEntry::ApprovalPr,
        RequestEntry::ApprovalPrs,
        RequestEntry::ApprovalPassed,
        RequestEntry::TargetPr,
        RequestEntry::ControlStatus,
        RequestEntry::RevisionComment,
    ];

    /// The key prefix of this kind (stable: it is in every existing store).
    pub fn prefix(self) -> &'static str {
        match self {
            RequestEntry::StatusDigest => "status-digest/",
            RequestEntry::ApprovalBranch => "approval-branch/",
            RequestEntry::ApprovalMerged => "approval-merged/",
            RequestEntry::ApprovalPr => "approval-pr/",
            RequestEntry::ApprovalPrs => "approval-prs/",
            RequestEntry::ApprovalPassed => "approval-passed/",
            RequestEntry::TargetPr => "target-pr/",
            RequestEntry::ControlStatus => "control-status/",
            RequestEntry::RevisionComment => "revision-comment/",
        }
    }

    /// The key of this kind for `request`, and `part` (a gate or a repo) where the kind has one.
    pub fn key(self, request: &str, part: Option<&str>) -> String {
        match part {
            Some(part) => format!("{}{request}/{part}", self.prefix()),
            None => format!("{}{request}", self.prefix()),
        }
    }
}

/// A PR Hadron opened, and what it was opened for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrRecord {
    /// PR number in its repository.
    pub number: u64,
    /// Its web address.
    pub url: String,
    /// The generation (target PRs) or approval token (approval PRs) it was made for.
    pub made_for: String,
}

/// An approval gate Hadron let through: for which generation, who approved
/// and the commit that brought the approval file. A gate with this record
/// for the request's generation stays passed whatever the approver policy
/// says later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassedGate {
    /// The request generation the approval was counted for.
    pub generation: String,
    /// Who approved, as the decision named them.
    pub by: String,
    /// The commit that brought the approval file.
    pub commit: String,
    /// The revision of the work approved (0: the stage's first result).
    #[serde(default)]
    pub revision: u32,
}

impl Store {
    /// The digest of every status file Hadron published, by request (one query).
    pub async fn status_digests(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let prefix = RequestEntry::StatusDigest.prefix();
        Ok(self.kv_with_prefix(prefix).await?.into_iter().map(|(k, v)| (k[prefix.len()..].to_owned(), v)).collect())
    }

    /// Records (`Some`) or forgets (`None`) the digests of published status
    /// files, in one transaction.
    pub async fn set_status_digests(&self, digests: &[(&str, Option<String>)], at: i64) -> Result<(), StoreError> {
        let entries: Vec<(String, Option<&str>)> =
            digests.iter().map(|(name, digest)| (RequestEntry::StatusDigest.key(name, None), digest.as_deref())).collect();
        self.kv_write_all(&entries, at).await
    }

    /// The token an approval branch of `request`'s `gate` was opened for.
    pub async fn approval_branch_opened_for(&self, request: &str, gate: &str) -> Result<Option<String>, StoreError> {
        self.kv_get(&RequestEntry::ApprovalBranch.key(request, Some(gate))).await
    }

    /// Records the token an approval branch was opened for.
    pub async fn set_approval_branch_opened_for(&self, request: &str, gate: &str, token: &str, at: i64) -> Result<(), StoreError> {
        self.kv_set(&RequestEntry::ApprovalBranch.key(request, Some(gate)), token, at).await
    }

    /// The approval PR opened for `request`'s `gate`; an unreadable record counts as none.
    pub async fn approval_pr(&self, request: &str, gate: &str) -> Result<Option<PrRecord>, StoreError> {
        self.pr_record(&RequestEntry::ApprovalPr.key(request, Some(gate))).await
    }

    /// Records the approval PR opened for `request`'s `gate`, and adds its
    /// number to the gate's list (one transaction).
    pub async fn set_approval_pr(&self, request: &str, gate: &str, pr: &PrRecord, at: i64) -> Result<(), StoreError> {
        let mut numbers = self.approval_prs(request, gate).await?;
        if !numbers.contains(&pr.number) {
            numbers.push(pr.number);
        }
        let record = serde_json::to_string(pr).expect("because a PR record of strings and a number serialises");
        let list = serde_json::to_string(&numbers).expect("because a list of numbers serialises");
        let entries = [
            (RequestEntry::ApprovalPr.key(request, Some(gate)), Some(record.as_str())),
            (RequestEntry::ApprovalPrs.key(request, Some(gate)), Some(list.as_str())),
        ];
        self.kv_write_all(&entries, at).await
    }

    /// The numbers of every approval PR opened for `request`'s `gate`,
    /// oldest first (a store from before the list holds the last one only).
    pub async fn approval_prs(&self, request: &str, gate: &str) -> Result<Vec<u64>, StoreError> {
        let listed = self.kv_get(&RequestEntry::ApprovalPrs.key(request, Some(gate))).await?;
        let mut numbers: Vec<u64> = listed.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default();
        if let Some(last) = self.approval_pr(request, gate).await?
            && !numbers.contains(&last.number)
        {
            numbers.push(last.number);
        }
        Ok(numbers)
    }

    /// Every approval gate Hadron let through, by (request, gate) (one
    /// query); unreadable records count as none.
    pub async fn approvals_passed(&self) -> Result<BTreeMap<(String, String), PassedGate>, StoreError> {
        let prefix = RequestEntry::ApprovalPassed.prefix();
        Ok(self
            .kv_with_prefix(prefix)
            .await?
            .into_iter()
            .filter_map(|(key, text)| {
                let (request, gate) = key[prefix.len()..].split_once('/')?;
                let passed = serde_json::from_str(&text).ok()?;
                Some(((request.to_owned(), gate.to_owned()), passed))
            })
            .collect())
    }

    /// Records that `request`'s `gate` was let through.
    pub async fn record_approval_passed(&self, request: &str, gate: &str, passed: &PassedGate, at: i64) -> Result<(), StoreError> {
        let text = serde_json::to_string(passed).expect("because a passed-gate record of strings serialises");
        self.kv_set(&RequestEntry::ApprovalPassed.key(request, Some(gate)), &text, at).await
    }

    /// The PR opened in target repo `repo` for `request`; an unreadable record counts as none.
    pub async fn target_pr(&self, request: &str, repo: &str) -> Result<Option<PrRecord>, StoreError> {
        self.pr_record(&RequestEntry::TargetPr.key(request, Some(repo))).await
    }

    /// Records the PR opened in target repo `repo` for `request`.
    pub async fn set_target_pr(&self, request: &str, repo: &str, pr: &PrRecord, at: i64) -> Result<(), StoreError> {
        self.set_pr_record(&RequestEntry::TargetPr.key(request, Some(repo)), pr, at).await
    }

    /// The last commit status Hadron set for `request` in the control repo (its marker).
    pub async fn control_status(&self, request: &str) -> Result<Option<String>, StoreError> {
        self.kv_get(&RequestEntry::ControlStatus.key(request, None)).await
    }

    /// Records the last commit status set for `request` in the control repo.
    pub async fn set_control_status(&self, request: &str, marker: &str, at: i64) -> Result<(), StoreError> {
        self.kv_set(&RequestEntry::ControlStatus.key(request, None), marker, at).await
    }

    /// The revision Hadron last commented on in the approval PR of `gate`.
    pub async fn revision_comment(&self, request: &str, gate: &str) -> Result<Option<String>, StoreError> {
        self.kv_get(&RequestEntry::RevisionComment.key(request, Some(gate))).await
    }

    /// Records that Hadron commented on revision `marker` in the approval PR of `gate`.
    pub async fn set_revision_comment(&self, request: &str, gate: &str, marker: &str, at: i64) -> Result<(), StoreError> {
        self.kv_set(&RequestEntry::RevisionComment.key(request, Some(gate)), marker, at).await
    }

    /// Forgets every per-request entry of the requests `keep` says no to;
    /// returns how many.
    pub async fn prune_request_entries(&self, keep: impl Fn(&str) -> bool) -> Result<u64, StoreError> {
        let mut gone = Vec::new();
        for kind in RequestEntry::ALL {
            let prefix = kind.prefix();
            for (key, _) in self.kv_with_prefix(prefix).await? {
                let request = key[prefix.len()..].split('/').next().unwrap_or("");
                if !keep(request) {
                    gone.push((key, None));
                }
            }
        }
        self.kv_write_all(&gone, 0).await?;
        Ok(u64::try_from(gone.len()).unwrap_or(u64::MAX))
    }

    /// The plan comment on pull request `number` of the control repo.
    pub async fn plan_comment(&self, number: u64) -> Result<Option<PlanComment>, StoreError> {
        Ok(self.kv_get(&format!("{PLAN_COMMENT_PREFIX}{number}")).await?.and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Records the plan comment on pull request `number`.
    pub async fn set_plan_comment(&self, number: u64, comment: &PlanComment, at: i64) -> Result<(), StoreError> {
        let text = serde_json::to_string(comment).expect("because a plan comment record of strings and numbers serialises");
        self.kv_set(&format!("{PLAN_COMMENT_PREFIX}{number}"), &text, at).await
    }

    /// Forgets the plan comments of pull requests that are no longer open
    /// (`open`: the numbers that are); returns how many were forgotten.
    pub async fn forget_plan_comments(&self, open: &BTreeSet<u64>) -> Result<usize, StoreError> {
        let gone: Vec<(String, Option<&str>)> = self
            .kv_with_prefix(PLAN_COMMENT_PREFIX)
            .await?
            .into_iter()
            .filter(|(key, _)| key.strip_prefix(PLAN_COMMENT_PREFIX).and_then(|n| n.parse::<u64>().ok()).is_none_or(|n| !open.contains(&n)))
            .map(|(key, _)| (key, None))
            .collect();
        self.kv_write_all(&gone, 0).await?;
        Ok(gone.len())
    }

    async fn pr_record(&self, key: &str) -> Result<Option<PrRecord>, StoreError> {
        Ok(self.kv_get(key).await?.and_then(|text| serde_json::from_str(&text).ok()))
    }

    async fn set_pr_record(&self, key: &str, pr: &PrRecord, at: i64) -> Result<(), StoreError> {
        let text = serde_json::to_string(pr).expect("because a PR record of strings and a number serialises");
        self.kv_set(key, &text, at).await
    }
}
