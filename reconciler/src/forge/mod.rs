//! The forge: Gitea through its REST API.
//!
//! [`gitea::GiteaClient`] opens and updates approval PRs in the control repo
//! and PRs in target repos, sets and reads commit statuses, looks up who
//! merged a PR and resolves team membership. [`approver_allowed`] is the pure
//! decision of whether a forge user may approve a request.

pub mod gitea;

pub use gitea::{
    ApprovalPrView, CommitView, EnsuredPr, GiteaClient, GiteaConfig, GiteaError, MergeInfo, PrAction, RepoRef, RetryPolicy, StageView,
    TargetPrView, TokenSource,
};

use crate::model::kinds::ApproverPolicy;

/// The state Hadron sets on a commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    /// Work is under way or waiting (for example for an approval).
    Pending,
    /// Done and good.
    Success,
    /// Done and failed (the agent or a check failed).
    Failure,
    /// Hadron itself could not do the work.
    Error,
}

impl CommitState {
    /// The value Gitea expects in `CreateStatusOption.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Success => "success",
            CommitState::Failure => "failure",
            CommitState::Error => "error",
        }
    }
}

/// The outcome of the commit statuses of a ref, as a CI gate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CombinedState {
    /// Every status (or every required context) is `success`.
    Success,
    /// Some status is `failure` or `error` (or a state Hadron does not know,
    /// such as `warning`: a gate fails closed).
    Failure,
    /// Some status is still `pending`, a required context has no status yet,
    /// or there are no statuses at all.
    Pending,
}

impl CombinedState {
    /// A stable CamelCase reason for conditions, metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            CombinedState::Success => "ChecksSucceeded",
            CombinedState::Failure => "ChecksFailed",
            CombinedState::Pending => "ChecksPending",
        }
    }
}

/// Whether a forge user may approve, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproverDecision {
    /// Listed in `users`.
    AllowedAsUser,
    /// A member of this `org/team` from `teams`.
    AllowedByTeam {
        /// The team, as written in the policy.
        team: String,
    },
    /// The requester of the change request: never allowed.
    Requester,
    /// Neither listed nor in a listed team (also when the policy is empty).
    NotAllowed,
}

impl ApproverDecision {
    /// True for the two allowed variants.
    pub fn is_allowed(&self) -> bool {
        matches!(self, ApproverDecision::AllowedAsUser | ApproverDecision::AllowedByTeam { .. })
    }

    /// A stable CamelCase reason for conditions, metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ApproverDecision::AllowedAsUser => "ApproverListed",
            ApproverDecision::AllowedByTeam { .. } => "ApproverInTeam",
            ApproverDecision::Requester => "ApproverIsRequester",
            ApproverDecision::NotAllowed => "ApproverNotAllowed",
        }
    }
}

/// Decides whether the forge user `login` may approve. Pure.
///
/// Logins compare case-insensitively (Gitea user names do). The requester is
/// never allowed, whatever the policy says; an empty policy allows nobody.
/// `team_membership` lists the policy teams (`org/team`) that `login` is a
/// member of, as resolved by [`GiteaClient::teams_of`]; teams not in the
/// policy are ignored.
pub fn approver_allowed(
    login: &str,
    requester_login: Option<&str>,
    policy: &ApproverPolicy,
    team_membership: &[String],
) -> ApproverDecision {
    let login = login.trim();
    if login.is_empty() {
        return ApproverDecision::NotAllowed;
    }
    if requester_login.is_some_and(|r| r.trim().eq_ignore_ascii_case(login)) {
        return ApproverDecision::Requester;
    }
    if policy.users.iter().any(|u| u.trim().eq_ignore_ascii_case(login)) {
        return ApproverDecision::AllowedAsUser;
    }
    for team in &policy.teams {
        if team_membership.iter().any(|m| m.trim().eq_ignore_ascii_case(team.trim())) {
            return ApproverDecision::AllowedByTeam { team: team.clone() };
        }
    }
    ApproverDecision::NotAllowed
}

/// The lower-case `owner/name` of a repo given as `owner/name` or as a clone URL.
pub fn repo_full_name(repo: &str) -> String {
    let repo = repo.trim().trim_end_matches('/');
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    let path = if let Some((_, rest)) = repo.split_once("://") {
        rest.split_once('/').map_or("", |(_, path)| path)
    } else if let Some((_, path)) = repo.split_once(':').filter(|(host, _)| !host.contains('/')) {
        path
    } else {
        repo
    };
    let mut segments = path.rsplit('/').filter(|s| !s.is_empty());
    let name = segments.next().unwrap_or_default();
    match segments.next() {
        Some(owner) => format!("{owner}/{name}").to_ascii_lowercase(),
        None => name.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(users: &[&str], teams: &[&str]) -> ApproverPolicy {
        ApproverPolicy { users: users.iter().map(|s| (*s).to_owned()).collect(), teams: teams.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn requester_is_never_allowed_even_when_listed() {
        let p = policy(&["alice"], &["acme/leads"]);
        let d = approver_allowed("Alice", Some("alice"), &p, &["acme/leads".to_owned()]);
        assert_eq!(d, ApproverDecision::Requester);
        assert!(!d.is_allowed());
        assert_eq!(d.reason(), "ApproverIsRequester");
    }

    #[test]
    fn listed_user_is_allowed_case_insensitively() {
        let p = policy(&["Bob"], &[]);
        assert_eq!(approver_allowed("bob", Some("alice"), &p, &[]), ApproverDecision::AllowedAsUser);
        assert_eq!(approver_allowed("carol", Some("alice"), &p, &[]), ApproverDecision::NotAllowed);
    }

    #[test]
    fn team_member_is_allowed_only_for_policy_teams() {
        let p = policy(&[], &["acme/leads"]);
        assert_eq!(
            approver_allowed("dave", None, &p, &["acme/leads".to_owned()]),
            ApproverDecision::AllowedByTeam { team: "acme/leads".to_owned() }
        );
        assert_eq!(approver_allowed("dave", None, &p, &["acme/other".to_owned()]), ApproverDecision::NotAllowed);
    }

    #[test]
    fn empty_policy_and_empty_login_allow_nobody() {
        let p = policy(&[], &[]);
        assert_eq!(approver_allowed("bob", None, &p, &[]), ApproverDecision::NotAllowed);
        let p = policy(&[""], &[]);
        assert_eq!(approver_allowed("", None, &p, &[]), ApproverDecision::NotAllowed);
    }

    #[test]
    fn commit_state_strings_are_gitea_values() {
        let all = [CommitState::Pending, CommitState::Success, CommitState::Failure, CommitState::Error];
        let names: Vec<_> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["pending", "success", "failure", "error"]);
    }
}
