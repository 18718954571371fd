//! Team endpoints: team ids, membership, and the approver decision that
//! needs them.
//!
//! Membership can change at any time on Gitea, so it is never kept for
//! good: a team's id and a user's membership are used for the client's
//! time to live ([`GiteaConfig::membership_ttl`](super::GiteaConfig), 60 s
//! by default) and then asked again. Errors are never kept.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use super::GiteaClient;
use super::error::GiteaError;
use super::wire::TeamSearchResults;
use super::{MAX_PAGES, PAGE_LIMIT};
use crate::forge::{ApproverDecision, approver_allowed};
use crate::model::kinds::ApproverPolicy;

/// Gitea's answers about teams, each with when it was given.
#[derive(Debug)]
pub(super) struct TeamCache {
    ttl: Duration,
    /// (org, team), lowercase → team id.
    ids: HashMap<(String, String), (u64, Instant)>,
    /// (team id, login lowercase) → member or not.
    members: HashMap<(u64, String), (bool, Instant)>,
}

impl TeamCache {
    pub(super) fn new(ttl: Duration) -> Self {
        TeamCache { ttl, ids: HashMap::new(), members: HashMap::new() }
    }

    fn fresh<T: Copy>(&self, entry: Option<&(T, Instant)>, now: Instant) -> Option<T> {
        entry.filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl).map(|(v, _)| *v)
    }

    /// Drops what is too old, so the cache holds only what a TTL still allows.
    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.ids.retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        self.members.retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
    }
}

impl GiteaClient {
    fn team_cache(&self) -> std::sync::MutexGuard<'_, TeamCache> {
        self.teams.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The id of team `team` of organisation `org`
    /// (`GET /orgs/{org}/teams/search?q=`; names compare case-insensitively).
    /// An id found is used for the membership time to live.
    pub async fn team_id(&self, org: &str, team: &str) -> Result<u64, GiteaError> {
        let key = (org.to_lowercase(), team.to_lowercase());
        {
            let cache = self.team_cache();
            if let Some(id) = cache.fresh(cache.ids.get(&key), Instant::now()) {
                return Ok(id);
            }
        }
        for page in 1..=MAX_PAGES {
            let found: TeamSearchResults = self
                .get(
                    &["orgs", org, "teams", "search"],
                    &[("q", team.to_owned()), ("page", page.to_string()), ("limit", PAGE_LIMIT.to_string())],
                )
                .await?;
            let n = found.data.len();
            if let Some(t) = found.data.into_iter().find(|t| t.name.eq_ignore_ascii_case(team)) {
                let now = Instant::now();
                let mut cache = self.team_cache();
                cache.expire(now);
                cache.ids.insert(key, (t.id, now));
                return Ok(t.id);
            }
            if n < PAGE_LIMIT {
                break;
            }
        }
        Err(GiteaError::TeamNotFound { org: org.to_owned(), team: team.to_owned() })
    }

    /// Whether `login` is a member of `org/team`
    /// (`GET /teams/{id}/members/{username}`: 200 yes, 404 no). The answer
    /// is used for the membership time to live.
    pub async fn is_team_member(&self, org_team: &str, login: &str) -> Result<bool, GiteaError> {
        let (org, team) = match org_team.trim().split_once('/') {
            Some((o, t)) if !o.is_empty() && !t.is_empty() && !t.contains('/') => (o, t),
            _ => return Err(GiteaError::Config(format!("approver team {org_team:?} is not of the form org/team"))),
        };
        let id = self.team_id(org, team).await?;
        let key = (id, login.to_lowercase());
        {
            let cache = self.team_cache();
            if let Some(member) = cache.fresh(cache.members.get(&key), Instant::now()) {
                return Ok(member);
            }
        }
        let answer = self.send(Method::GET, &["teams", &id.to_string(), "members", login], &[], None).await?;
        let member = if answer.status == StatusCode::NOT_FOUND {
            false
        } else {
            answer.ok()?;
            true
        };
        let now = Instant::now();
        let mut cache = self.team_cache();
        cache.expire(now);
        cache.members.insert(key, (member, now));
        Ok(member)
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

    /// [`approver_allowed`] with team membership looked up on Gitea (within
    /// the membership time to live), only when the users list does not
    /// already decide. `policy` is the one in force now: nothing of an
    /// earlier decision is reused.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_fresh_only_within_the_ttl() {
        let mut cache = TeamCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        cache.members.insert((7, "dave".into()), (true, t0));
        cache.ids.insert(("acme".into(), "leads".into()), (7, t0));
        assert_eq!(cache.fresh(cache.members.get(&(7, "dave".into())), t0 + Duration::from_secs(59)), Some(true));
        assert_eq!(cache.fresh(cache.members.get(&(7, "dave".into())), t0 + Duration::from_secs(60)), None);
        cache.expire(t0 + Duration::from_secs(61));
        assert!(cache.members.is_empty() && cache.ids.is_empty(), "expired answers are dropped");
    }
}
