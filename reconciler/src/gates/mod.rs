//! Approval gates in plain git.
//!
//! At an `approval` gate Hadron opens the branch `hadron/approve/<request>/<gate>`
//! holding `approvals/<request>/<gate>.yaml` ([`branch::ApprovalBranches`]). A
//! person merges that branch into the base branch and pushes; that merge is the
//! approval. [`history`] finds who merged (the committer of the commit that
//! brought the file onto the first-parent history of the base branch) and who
//! asked (the author of the commit that first added `requests/<request>.yaml`).
//! [`decide`] turns those facts and the approver policy of `hadron.yaml` into a
//! [`GateDecision`]. [`approve::approve_as_person`] is the local "merge the
//! approval branch" a person would do, used by `hadron approve`.
//!
//! Forge teams (`spec.approvers.teams`) need a forge API to resolve members and
//! are not considered here; without a forge only `spec.approvers.users` counts.

pub mod approve;
pub mod branch;
mod git_ops;
pub mod history;

use crate::ids::is_dns_label;
use crate::model::kinds::ApprovalDecision;
use crate::model::{API_VERSION, Approval, ApprovalSpec, ApproverPolicy, Metadata};

pub use approve::approve_as_person;
pub use branch::{ApprovalBranches, OpenOutcome, Proposal};
pub use history::{approver_of, requester_of};

/// Errors of the approval gate machinery.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A request or gate name is not a DNS-1123 label, so it cannot go into a ref name.
    #[error("{what} `{value}` is not a DNS-1123 label (lower-case letters, digits and `-`, at most 63 characters)")]
    InvalidName {
        /// Which name (`request`, `gate`).
        what: &'static str,
        /// The refused value.
        value: String,
    },
    /// The base branch name is not one git accepts.
    #[error("`{0}` is not a valid branch name")]
    InvalidBranch(String),
    /// The remote URL is refused (it could be read as an option or run a remote helper).
    #[error("the control repo URL is refused: {0}")]
    InvalidRemoteUrl(&'static str),
    /// A committer or author identity cannot be written into a commit.
    #[error("the identity `{0}` contains `<`, `>` or a line break, or is empty")]
    InvalidIdentity(String),
    /// A `git` command failed.
    #[error("git {op} failed: {detail}")]
    GitCommand {
        /// The git sub-command.
        op: &'static str,
        /// Its (redacted) standard error.
        detail: String,
    },
    /// The remote refused a push (not a fast-forward, or the ref moved) after every retry.
    #[error("the push to `{refname}` was rejected {attempts} times: {detail}")]
    PushRejected {
        /// The ref pushed to.
        refname: String,
        /// How many attempts were made.
        attempts: u32,
        /// The (redacted) rejection.
        detail: String,
    },
    /// Reading or writing git objects or refs failed.
    #[error("git object store: {op}: {detail}")]
    GitObject {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        detail: String,
    },
    /// The base branch does not exist on the remote.
    #[error("the base branch `{0}` does not exist in the control repo")]
    BaseBranchMissing(String),
    /// The approval branch does not exist on the remote.
    #[error("the approval branch `{0}` does not exist in the control repo")]
    ApprovalBranchMissing(String),
    /// The approval branch is already part of the base branch: there is nothing to merge.
    #[error("the approval branch `{0}` is already merged")]
    AlreadyMerged(String),
    /// A path the approval file needs is taken by a file of another kind.
    #[error("`{0}` in the base branch is not a folder, so the approval file cannot be added")]
    PathConflict(String),
    /// The Approval object could not be rendered as YAML.
    #[error("rendering the approval failed: {0}")]
    Render(String),
    /// A file-system operation in the work directory failed.
    #[error("{op} `{path}`: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl GateError {
    /// A stable CamelCase reason for conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            GateError::InvalidName { .. } => "InvalidName",
            GateError::InvalidBranch(_) => "InvalidBranch",
            GateError::InvalidRemoteUrl(_) => "InvalidRemoteUrl",
            GateError::InvalidIdentity(_) => "InvalidIdentity",
            GateError::GitCommand { .. } => "GitCommandFailed",
            GateError::PushRejected { .. } => "PushRejected",
            GateError::GitObject { .. } => "GitObjectError",
            GateError::BaseBranchMissing(_) => "BaseBranchMissing",
            GateError::ApprovalBranchMissing(_) => "ApprovalBranchMissing",
            GateError::AlreadyMerged(_) => "AlreadyMerged",
            GateError::PathConflict(_) => "PathConflict",
            GateError::Render(_) => "RenderFailed",
            GateError::Io { .. } => "IoError",
        }
    }

    pub(crate) fn object(op: &'static str, err: impl std::fmt::Display) -> Self {
        GateError::GitObject { op, detail: err.to_string() }
    }
}

/// A person as git records them: a name and an email (either may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The name, trimmed.
    pub name: String,
    /// The email, trimmed, without `<` `>`.
    pub email: String,
}

impl Person {
    /// A person from a name and an email.
    pub fn new(name: impl Into<String>, email: impl Into<String>) -> Self {
        Person { name: name.into(), email: email.into() }
    }

    /// Refuses identities that cannot be written into a commit header.
    pub(crate) fn check_writable(&self) -> Result<(), GateError> {
        let bad = |s: &str| s.contains(['<', '>', '\n', '\r', '\0']);
        if self.name.trim().is_empty() || bad(&self.name) || bad(&self.email) {
            return Err(GateError::InvalidIdentity(format!("{} <{}>", self.name, self.email)));
        }
        Ok(())
    }

    /// Whether two records name the same person. This is Hadron's one
    /// identity rule without a forge, used both for the requester check and
    /// for `spec.approvers.users`: the same person when the names are equal
    /// (trimmed, not empty) OR the emails are equal (trimmed, not empty,
    /// case-insensitively). Matching on either field means a requester cannot
    /// approve their own request by changing only their name or only their
    /// email.
    pub fn same_as(&self, other: &Person) -> bool {
        let (a, b) = (self.name.trim(), other.name.trim());
        if !a.is_empty() && a == b {
            return true;
        }
        let (a, b) = (self.email.trim(), other.email.trim());
        !a.is_empty() && a.eq_ignore_ascii_case(b)
    }

    /// Whether an entry of `spec.approvers.users` (a name or an email) names
    /// this person, by [`Person::same_as`].
    pub fn listed_as(&self, entry: &str) -> bool {
        self.same_as(&Person::new(entry, entry))
    }
}

/// Who approved: the committer of the commit that brought the approval file
/// onto the base branch, and that commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    /// Committer name.
    pub name: String,
    /// Committer email.
    pub email: String,
    /// The commit (hex id), usually the merge commit of the approval branch.
    pub commit: String,
}

impl Approver {
    /// The approver as a [`Person`].
    pub fn person(&self) -> Person {
        Person::new(self.name.clone(), self.email.clone())
    }
}

/// What an approval gate says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    /// A valid approval by an allowed approver for the current generation.
    Approved {
        /// Who approved.
        by: Approver,
    },
    /// No approval yet.
    Waiting,
    /// An approval exists but for an older (or other) spec generation.
    Stale {
        /// The generation it was given for.
        given_for: String,
    },
    /// An approval exists for this generation but does not count.
    Rejected {
        /// Who merged it; `None` when no commit on the base branch could be
        /// found to have brought the file (for example a shallow history).
        by: Option<Approver>,
        /// Why, for people: goes into the status message.
        why: String,
    },
}

impl GateDecision {
    /// A stable CamelCase reason for conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            GateDecision::Approved { .. } => "Approved",
            GateDecision::Waiting => "WaitingForApproval",
            GateDecision::Stale { .. } => "ApprovalStale",
            GateDecision::Rejected { .. } => "ApprovalRejected",
        }
    }
}

/// Decides an approval gate. Pure.
///
/// `approver` and `requester` are what the history says, or why it could not
/// say (a lookup error, a shallow history): an unknown one never skips a rule,
/// the approval then does not count.
///
/// * no approval file → [`GateDecision::Waiting`];
/// * an approval for another generation → [`GateDecision::Stale`];
/// * the approver unknown, the requester unknown, the approver the requester
///   ([`Person::same_as`]), no `users` configured, or the approver not in
///   `policy.users` ([`Person::listed_as`]) → [`GateDecision::Rejected`];
/// * otherwise [`GateDecision::Approved`].
pub fn decide(
    approval: Option<&Approval>,
    approver: Result<&Approver, &str>,
    requester: Result<&Person, &str>,
    policy: &ApproverPolicy,
    current_generation: &str,
) -> GateDecision {
    let Some(approval) = approval else {
        return GateDecision::Waiting;
    };
    if approval.spec.generation != current_generation {
        return GateDecision::Stale { given_for: approval.spec.generation.clone() };
    }
    let approver = match approver {
        Ok(approver) => approver,
        Err(why) => {
            return GateDecision::Rejected { by: None, why: format!("the approver is unknown: {why}") };
        }
    };
    let by = Some(approver.clone());
    let who = approver.person();
    let requester = match requester {
        Ok(requester) => requester,
        Err(why) => {
            return GateDecision::Rejected {
                by,
                why: format!(
                    "the requester of this change request could not be determined ({why}), so no approval counts: the requester may not approve their own request"
                ),
            };
        }
    };
    if who.same_as(requester) {
        return GateDecision::Rejected {
            by,
            why: format!(
                "{} <{}> is the requester of this change request (added by {} <{}>) and may not approve it; another allowed approver must merge the approval branch",
                approver.name, approver.email, requester.name, requester.email
            ),
        };
    }
    if policy.users.is_empty() {
        let teams = if policy.teams.is_empty() {
            String::new()
        } else {
            " (spec.approvers.teams needs a forge to resolve members and is not used with plain git)".to_owned()
        };
        return GateDecision::Rejected {
            by,
            why: format!("no approvers are allowed: add user names or emails under spec.approvers.users in hadron.yaml{teams}"),
        };
    }
    if !policy.users.iter().any(|u| who.listed_as(u)) {
        return GateDecision::Rejected {
            by,
            why: format!(
                "{} <{}> is not an allowed approver: add them to spec.approvers.users in hadron.yaml, or have an allowed approver merge",
                approver.name, approver.email
            ),
        };
    }
    GateDecision::Approved { by: approver.clone() }
}

/// The path of the approval file of a gate: `approvals/<request>/<gate>.yaml`.
pub fn approval_path(request: &str, gate: &str) -> String {
    format!("approvals/{request}/{gate}.yaml")
}

/// The branch Hadron opens for a gate: `hadron/approve/<request>/<gate>`.
pub fn approval_branch(request: &str, gate: &str) -> String {
    format!("hadron/approve/{request}/{gate}")
}

/// `(request, gate)` of `hadron/approve/<request>/<gate>` (both DNS-1123
/// labels), the inverse of [`approval_branch`]; `None` for any other branch.
pub fn parse_approval_branch(branch: &str) -> Option<(String, String)> {
    let (request, gate) = branch.strip_prefix("hadron/approve/")?.split_once('/')?;
    (crate::ids::is_dns_label(request) && crate::ids::is_dns_label(gate)).then(|| (request.to_owned(), gate.to_owned()))
}

/// The Approval object Hadron proposes for a gate.
pub fn approval_object(request: &str, gate: &str, generation: &str, revision: u32, summary: &str) -> Approval {
    Approval {
        api_version: API_VERSION.to_owned(),
        kind: "Approval".to_owned(),
        metadata: Metadata { name: format!("{request}-{gate}"), labels: Default::default(), annotations: Default::default() },
        spec: ApprovalSpec {
            request: request.to_owned(),
            gate: gate.to_owned(),
            generation: generation.to_owned(),
            summary: summary.to_owned(),
            revision,
            decision: ApprovalDecision::Approve,
            feedback: String::new(),
        },
    }
}

/// The comment an approval file starts with: the two moves a person has.
pub const APPROVAL_HEADER: &str = "\
# Merging this file into the base branch approves the work (an allowed
# approver must merge; the requester may not). To ask for changes instead,
# add `decision: changes` and a `feedback:` (what to change, Markdown) under
# spec before merging: the stage runs again with it, and the gate asks again.
";

/// Renders the approval file deterministically (same input, same bytes).
pub fn render_approval(request: &str, gate: &str, generation: &str, revision: u32, summary: &str) -> Result<String, GateError> {
    let body = serde_saphyr::to_string(&approval_object(request, gate, generation, revision, summary))
        .map_err(|e| GateError::Render(e.to_string()))?;
    Ok(format!("{APPROVAL_HEADER}{body}"))
}

/// An approval file with the decision `changes` and `feedback`, from the
/// file Hadron proposed (`text`): what a person writes to ask for changes.
pub fn ask_for_changes(text: &str, feedback: &str) -> Result<String, GateError> {
    let mut approval: Approval = serde_saphyr::from_str(text).map_err(|e| GateError::Render(e.to_string()))?;
    approval.spec.decision = ApprovalDecision::Changes;
    approval.spec.feedback = feedback.trim().to_owned();
    let body = serde_saphyr::to_string(&approval).map_err(|e| GateError::Render(e.to_string()))?;
    Ok(format!("{APPROVAL_HEADER}{body}"))
}

/// Checks that request and gate names are DNS-1123 labels, safe in ref names and paths.
pub(crate) fn check_names(request: &str, gate: &str) -> Result<(), GateError> {
    if !is_dns_label(request) {
        return Err(GateError::InvalidName { what: "request", value: request.to_owned() });
    }
    if !is_dns_label(gate) {
        return Err(GateError::InvalidName { what: "gate", value: gate.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approver(name: &str, email: &str) -> Approver {
        Approver { name: name.into(), email: email.into(), commit: "c0ffee".into() }
    }

    #[test]
    fn rendering_is_deterministic_and_round_trips() {
        let a = render_approval("fix", "review", "0123abcd", 0, "implement: ok").expect("renders");
        let b = render_approval("fix", "review", "0123abcd", 0, "implement: ok").expect("renders");
        assert_eq!(a, b);
        let back: Approval = serde_saphyr::from_str(&a).expect("parses");
        assert_eq!(back, approval_object("fix", "review", "0123abcd", 0, "implement: ok"));
        assert!(a.contains("kind: Approval"), "{a}");
        assert!(a.contains("name: fix-review"), "{a}");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_names("fix", "review").is_ok());
        for (r, g) in [("../x", "g"), ("r", "-g"), ("R", "g"), ("r", "a/b"), ("r", "")] {
            let err = check_names(r, g).expect_err("refused");
            assert_eq!(err.reason(), "InvalidName");
        }
    }

    #[test]
    fn same_person_when_name_or_email_matches() {
        assert!(Person::new("Alice", "Alice@Example.com").same_as(&Person::new("alice2", "alice@example.com")));
        assert!(Person::new("alice", "a@x").same_as(&Person::new("alice", "b@x")), "the name alone is enough");
        assert!(Person::new("alice", "A@x").same_as(&Person::new("Other", "a@X")), "the email alone is enough");
        assert!(Person::new("alice", "").same_as(&Person::new("alice", "a@x")));
        assert!(!Person::new("alice", "a@x").same_as(&Person::new("bob", "b@x")));
        assert!(!Person::new("", "").same_as(&Person::new("", "")), "empty fields never match");
        assert!(!Person::new("Alice", "").same_as(&Person::new("alice", "")), "names compare exactly");
    }

    #[test]
    fn the_allow_list_uses_the_same_rule() {
        let bob = Person::new("bob", "bob@example.com");
        assert!(bob.listed_as("bob") && bob.listed_as(" BOB@example.com "));
        assert!(!bob.listed_as("Bob") && !bob.listed_as("other@example.com") && !bob.listed_as(""));
    }

    #[test]
    fn the_requester_with_another_email_or_name_is_rejected() {
        let approval = approval_object("fix", "review", "g1", 0, "");
        let policy = ApproverPolicy { users: vec!["bob".into(), "bob@example.com".into()], teams: vec![] };
        let requester = Person::new("bob", "bob@example.com");
        for (name, email) in [("bob", "other@example.com"), ("Robert", "BOB@example.com")] {
            match decide(Some(&approval), Ok(&approver(name, email)), Ok(&requester), &policy, "g1") {
                GateDecision::Rejected { why, .. } => assert!(why.contains("is the requester"), "{why}"),
                other => panic!("{name} <{email}>: {other:?}"),
            }
        }
        let d = decide(Some(&approval), Ok(&approver("bob", "bob@example.com")), Ok(&Person::new("alice", "a@x")), &policy, "g1");
        assert!(matches!(d, GateDecision::Approved { .. }), "{d:?}");
    }

    #[test]
    fn an_unknown_requester_means_the_approval_does_not_count() {
        let approval = approval_object("fix", "review", "g1", 0, "");
        let policy = ApproverPolicy { users: vec!["bob".into()], teams: vec![] };
        let bob = approver("bob", "bob@example.com");
        match decide(Some(&approval), Ok(&bob), Err("reading the history failed: object missing"), &policy, "g1") {
            GateDecision::Rejected { by, why } => {
                assert_eq!(by, Some(bob.clone()));
                assert!(why.contains("requester") && why.contains("could not be determined"), "{why}");
                assert!(why.contains("object missing"), "the cause is named: {why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejected_without_approver_or_with_teams_only() {
        let approval = approval_object("fix", "review", "g1", 0, "");
        let policy = ApproverPolicy { users: vec![], teams: vec!["acme/leads".into()] };
        match decide(Some(&approval), Err("no commit brought the file"), Err("-"), &policy, "g1") {
            GateDecision::Rejected { by: None, why } => assert!(why.contains("unknown"), "{why}"),
            other => panic!("{other:?}"),
        }
        match decide(Some(&approval), Ok(&approver("bob", "bob@x")), Ok(&Person::new("alice", "a@x")), &policy, "g1") {
            GateDecision::Rejected { why, .. } => {
                assert!(why.contains("hadron.yaml") && why.contains("forge"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn users_match_name_or_email() {
        let approval = approval_object("fix", "review", "g1", 0, "");
        let by_email = ApproverPolicy { users: vec!["BOB@x".into()], teams: vec![] };
        let d = decide(Some(&approval), Ok(&approver("Robert", "bob@x")), Ok(&Person::new("alice", "a@x")), &by_email, "g1");
        assert!(matches!(d, GateDecision::Approved { .. }), "{d:?}");
        assert_eq!(d.reason(), "Approved");
    }
}
