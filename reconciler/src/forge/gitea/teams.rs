//! Team endpoints: team ids, membership, and the approver decision that
//! needs them.

use reqwest::{Method, StatusCode};

use super::GiteaClient;
use super::error::GiteaError;
use super::wire::TeamSearchResults;
use super::{MAX_PAGES, PAGE_LIMIT};
use crate::forge::{ApproverDecision, approver_allowed};
use crate::model::kinds::ApproverPolicy;

impl GiteaClient {
    /// The id of team `team` of organisation `org`
    /// (`GET /orgs/{org}/teams/search?q=`; names compare case-insensitively).
    pub async fn team_id(&self, org: &str, team: &str) -> Result<u64, GiteaError> {
        for page in 1..=MAX_PAGES {
            let found: TeamSearchResults = self
                .get(
                    &["orgs", org, "teams", "search"],
                    &[("q", team.to_owned()), ("page", page.to_string()), ("limit", PAGE_LIMIT.to_string())],
                )
                .await?;
            let n = found.data.len();
            if let Some(t) = found.data.into_iter().find(|t| t.name.eq_ignore_ascii_case(team)) {
                return Ok(t.id);
            }
            if n < PAGE_LIMIT {
                break;
            }
        }
        Err(GiteaError::TeamNotFound { org: org.to_owned(), team: team.to_owned() })
    }

    /// Whether `login` is a member of `org/team`
    /// (`GET /teams/{id}/members/{username}`: 200 yes, 404 no).
    pub async fn is_team_member(&self, org_team: &str, login: &str) -> Result<bool, GiteaError> {
        let (org, team) = match org_team.trim().split_once('/') {
            Some((o, t)) if !o.is_empty() && !t.is_empty() && !t.contains('/') => (o, t),
            _ => return Err(GiteaError::Config(format!("approver team {org_team:?} is not of the form org/team"))),
        };
        let id = self.team_id(org, team).await?.to_string();
        let answer = self.send(Method::GET, &["teams", &id, "members", login], &[], None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        answer.ok()?;
        Ok(true)
    }

    /// The teams of `policy.teams` that `login` is a member of.
    pub async fn teams_of(&self, login: &str, policy: &ApproverPolicy) -> Result<Vec<String>, GiteaError> {
        let mut member_of = Vec::new();
        for team in &policy.teams {
            if self.is_team_member(team, login).await? {
                member_of.push(team.clone());
            }
        }
        Ok(member_of)
    }

    /// [`approver_allowed`] with team membership looked up on Gitea, only
    /// when the users list does not already decide.
    pub async fn approver_decision(
        &self,
        login: &str,
        requester_login: Option<&str>,
        policy: &ApproverPolicy,
    ) -> Result<ApproverDecision, GiteaError> {
        let first = approver_allowed(login, requester_login, policy, &[]);
        if first != ApproverDecision::NotAllowed || policy.teams.is_empty() || login.trim().is_empty() {
            return Ok(first);
        }
        let teams = self.teams_of(login.trim(), policy).await?;
        Ok(approver_allowed(login, requester_login, policy, &teams))
    }
}
