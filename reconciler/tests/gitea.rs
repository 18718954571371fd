//! The Gitea client against a Gitea double that checks every request against
//! the Gitea 1.22 and 1.14 API descriptions, plus decoding of the recorded
//! Gitea API answers.

#[allow(dead_code)] // each test crate uses a part of the helpers
#[path = "support/git.rs"]
mod git;
#[allow(dead_code)] // each test crate uses a part of the double
#[path = "support/gitea_double.rs"]
mod gitea_double;

use std::time::Duration;

use anyhow::Result;
use gitea_double::{GiteaDouble, gitea_fixtures};
use hadron::forge::gitea::{CommitStatus, MEMBERSHIP_TTL, PullRequest, Repository, User};
use hadron::forge::{
    ApprovalPrView, ApproverDecision, CombinedState, CommitState, CommitView, GiteaClient, GiteaConfig, GiteaError, PrAction, RepoRef,
    RetryPolicy, StageView, TargetPrView, TokenSource,
};
use hadron::model::kinds::ApproverPolicy;

const TOKEN: &str = "t0k3n-for-tests-only";
const CONTROL: &str = "hadron/control";

struct Setup {
    double: GiteaDouble,
    client: GiteaClient,
    _dir: tempfile::TempDir,
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, initial_delay: Duration::from_millis(5), max_delay: Duration::from_millis(50) }
}

fn client_for(base_url: &str, token: &str, dir: &tempfile::TempDir, retry: RetryPolicy) -> Result<GiteaClient> {
    client_with_ttl(base_url, token, dir, retry, MEMBERSHIP_TTL)
}

/// A client whose team answers are kept for `ttl`.
fn client_with_ttl(base_url: &str, token: &str, dir: &tempfile::TempDir, retry: RetryPolicy, ttl: Duration) -> Result<GiteaClient> {
    let token_file = dir.path().join(format!("token-{}", rand_suffix()));
    std::fs::write(&token_file, format!("{token}\n"))?;
    let mut config = GiteaConfig::new(base_url, TokenSource::File(token_file), RepoRef::parse(CONTROL)?);
    config.retry = retry;
    config.timeout = Duration::from_secs(60);
    config.membership_ttl = ttl;
    Ok(GiteaClient::new(config)?)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn setup() -> Result<Setup> {
    let double = GiteaDouble::start(TOKEN, "hadron-bot").await;
    double.add_repo(CONTROL, "main");
    double.add_repo("acme/api", "trunk");
    let dir = tempfile::tempdir()?;
    let client = client_for(&double.base_url(), TOKEN, &dir, fast_retry(4))?;
    Ok(Setup { double, client, _dir: dir })
}

fn approval_view(client: &GiteaClient) -> ApprovalPrView {
    let sha = "4f5e7d8f15cf79387cfd8a0d30c58855ab61e138";
    ApprovalPrView {
        request: "add-login".to_owned(),
        gate: "review".to_owned(),
        request_title: "Add a login page".to_owned(),
        generation: "3".to_owned(),
        requester: Some("alice".to_owned()),
        stages: vec![StageView {
            name: "implement".to_owned(),
            repo: "acme/api".to_owned(),
            state: "Succeeded".to_owned(),
            summary: Some("Added /login | with\ntests".to_owned()),
            cost: Some("$0.42".to_owned()),
            pr_url: None,
        }],
        commits: vec![CommitView::new(
            "acme/api",
            sha,
            client.commit_url(&RepoRef::new("acme", "api"), sha),
            "Add login page\n\nlong text",
        )],
        cost: Some("$0.42".to_owned()),
        budget: Some("$5.00".to_owned()),
    }
}

#[test]
fn every_fixture_for_a_call_we_make_decodes() -> Result<()> {
    let api = gitea_fixtures().join("api");
    let read = |name: &str| std::fs::read_to_string(api.join(name));
    let pr: PullRequest = serde_json::from_str(&read("pr.json")?)?;
    assert_eq!((pr.number, pr.state.as_str(), pr.head.ref_name.as_str()), (1, "open", "feature"));
    assert_eq!(pr.base.ref_name, "master");
    assert_eq!(pr.html_url, "https://try.gitea.io/jcitizen/my-repo/pulls/1");
    assert!(!pr.merged && pr.merged_by.is_none());
    let prs: Vec<PullRequest> = serde_json::from_str(&read("prs.json")?)?;
    assert!(!prs.is_empty());
    let status: CommitStatus = serde_json::from_str(&read("status.json")?)?;
    assert_eq!(status.status.as_deref(), Some("success"));
    assert_eq!(status.context, "continuous-integration/drone");
    let statuses: Vec<CommitStatus> = serde_json::from_str(&read("statuses.json")?)?;
    assert_eq!(statuses[0].status.as_deref(), Some("success"));
    let repo: Repository = serde_json::from_str(&read("repo.json")?)?;
    assert_eq!(repo.full_name, "go-gitea/gitea");
    assert_eq!(repo.default_branch, "master");
    let user: User = serde_json::from_str(&read("user.json")?)?;
    assert_eq!(user.login, "jcitizen");
    Ok(())
}

#[tokio::test]
async fn approval_pr_is_opened_once_then_updated_in_place() -> Result<()> {
    let s = setup().await?;
    let mut view = approval_view(&s.client);
    let first = s.client.ensure_approval_pr(&view).await?;
    assert_eq!(first.action, PrAction::Opened);
    assert_eq!(first.html_url, format!("{}/{CONTROL}/pulls/1", s.double.base_url()));

    let again = s.client.ensure_approval_pr(&view).await?;
    assert_eq!(again.action, PrAction::Unchanged);
    assert_eq!(again.number, first.number);

    view.stages.push(StageView {
        name: "docs".to_owned(),
        repo: "acme/docs".to_owned(),
        state: "Succeeded".to_owned(),
        summary: Some("Documented the login".to_owned()),
        cost: None,
        pr_url: Some("https://gitea.example/acme/docs/pulls/7".to_owned()),
    });
    view.cost = Some("$0.61".to_owned());
    let updated = s.client.ensure_approval_pr(&view).await?;
    assert_eq!(updated.action, PrAction::Updated);
    assert_eq!(updated.number, first.number);

    let pulls = s.double.pulls(CONTROL);
    assert_eq!(pulls.len(), 1, "no duplicate PR: {pulls:?}");
    let pr = &pulls[0];
    assert_eq!(pr.head, "hadron/approve/add-login/review");
    assert_eq!(pr.base, "main");
    assert_eq!(pr.title, "Approve review of add-login: Add a login page");
    for needle in [
        "| implement | acme/api | Succeeded | $0.42 | – |",
        "### implement: summary reported by the agent\n\n```text\nAdded /login | with\ntests\n```\n",
        "| docs | acme/docs | Succeeded | – | [PR](https://gitea.example/acme/docs/pulls/7) |",
        "### docs: summary reported by the agent\n\n```text\nDocumented the login\n```\n",
        &format!("[`4f5e7d8f15`]({}/acme/api/commit/4f5e7d8f15cf79387cfd8a0d30c58855ab61e138) ` Add login page `", s.double.base_url()),
        "Spent so far: **$0.61** (budget $5.00)",
        "## What merging means",
        "adds `approvals/add-login/review.yaml` to `main`",
        "Requested by **alice**, who may not approve it.",
    ] {
        assert!(pr.body.contains(needle), "body lacks {needle:?}:\n{}", pr.body);
    }
    assert!(!pr.body.contains("long text"), "only the commit subject goes in");
    assert_eq!(s.double.count("POST", &format!("/api/v1/repos/{CONTROL}/pulls")), 1);
    assert_eq!(s.double.count("PATCH", &format!("/api/v1/repos/{CONTROL}/pulls/1")), 1);
    let requests = s.double.requests();
    assert!(requests.iter().all(|r| r.authorized), "every request carries `Authorization: token …`");
    let list = requests.iter().find(|r| r.method == "GET").expect("a list call");
    assert!(list.query.contains(&("state".to_owned(), "open".to_owned())), "{:?}", list.query);
    let create = requests.iter().find(|r| r.method == "POST").and_then(|r| r.body.clone()).expect("a create body");
    assert_eq!(create["head"], "hadron/approve/add-login/review");
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn a_conflict_on_create_updates_the_pr_that_appeared_meanwhile() -> Result<()> {
    let s = setup().await?;
    let repo = RepoRef::new("acme", "api");
    let first = s.client.ensure_pr(&repo, "hadron/x", "trunk", "T", "one").await?;
    assert_eq!(first.action, PrAction::Opened);
    // The first list call is answered "none open" by a stale replica: the
    // create then meets 409 and the client must fall back to updating.
    s.double.stale_pr_list_once("acme/api");
    let pulls_before = s.double.pulls("acme/api").len();
    let second = s.client.ensure_pr(&repo, "hadron/x", "trunk", "T", "two").await?;
    assert_eq!(second.action, PrAction::Updated);
    assert_eq!(s.double.pulls("acme/api").len(), pulls_before);
    assert_eq!(s.double.pulls("acme/api")[0].body, "two");
    assert_eq!(s.double.count("POST", "/api/v1/repos/acme/api/pulls"), 2, "the second create met 409");
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn commit_status_is_set_with_context_description_and_link() -> Result<()> {
    let s = setup().await?;
    let repo = RepoRef::new("acme", "api");
    let sha = "aa11bb22cc33dd44ee55ff6677889900aabbccdd";
    let got = s
        .client
        .set_status(&repo, sha, "add-login", CommitState::Pending, "waiting for approval", Some("https://hadron.example/r/add-login"))
        .await?;
    assert_eq!(got.status.as_deref(), Some("pending"));
    assert_eq!(got.context, "hadron/add-login");
    s.client.set_status(&repo, sha, "add-login", CommitState::Error, &"x".repeat(400), None).await?;
    let stored = s.double.statuses("acme/api", sha);
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].state, "pending");
    assert_eq!(stored[0].context, "hadron/add-login");
    assert_eq!(stored[0].description, "waiting for approval");
    assert_eq!(stored[0].target_url, "https://hadron.example/r/add-login");
    assert_eq!(stored[1].state, "error");
    assert!(stored[1].description.chars().count() <= 255);
    assert_eq!(s.client.combined_status(&repo, sha, None).await?, CombinedState::Failure);
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn combined_status_decodes_success_failure_pending_and_contexts() -> Result<()> {
    let s = setup().await?;
    let repo = RepoRef::new("acme", "api");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let ctx = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(s.client.combined_status(&repo, sha, None).await?, CombinedState::Pending, "no statuses yet");
    s.double.add_status("acme/api", sha, "ci/build", "pending");
    assert_eq!(s.client.combined_status(&repo, sha, None).await?, CombinedState::Pending);
    s.double.add_status("acme/api", sha, "ci/build", "success");
    assert_eq!(s.client.combined_status(&repo, sha, None).await?, CombinedState::Success);
    s.double.add_status("acme/api", sha, "ci/lint", "failure");
    assert_eq!(s.client.combined_status(&repo, sha, None).await?, CombinedState::Failure);
    assert_eq!(s.client.combined_status(&repo, sha, Some(&ctx(&["ci/build"]))).await?, CombinedState::Success);
    assert_eq!(
        s.client.combined_status(&repo, sha, Some(&ctx(&["ci/build", "ci/test"]))).await?,
        CombinedState::Pending,
        "a required context without a status is pending"
    );
    assert_eq!(s.client.combined_status(&repo, sha, Some(&ctx(&["ci/build", "ci/lint"]))).await?, CombinedState::Failure);
    // More contexts than one page: the wanted one is on the second page.
    let many = "1111111111111111111111111111111111111111";
    for i in 0..60 {
        s.double.add_status("acme/api", many, &format!("ctx/{i:02}"), "success");
    }
    s.double.add_status("acme/api", many, "ctx/59", "failure");
    assert_eq!(s.client.combined_status(&repo, many, Some(&ctx(&["ctx/00", "ctx/59"]))).await?, CombinedState::Failure);
    assert_eq!(s.client.combined_status(&repo, many, Some(&ctx(&["ctx/00", "ctx/58"]))).await?, CombinedState::Success);
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn target_pr_is_opened_to_the_default_branch_and_its_url_returned() -> Result<()> {
    let s = setup().await?;
    let repo = RepoRef::new("acme", "api");
    let sha = "5555555555555555555555555555555555555555";
    let view = TargetPrView {
        request: "add-login".to_owned(),
        request_title: "Add a login page".to_owned(),
        description: Some("Users need to log in.".to_owned()),
        stages: vec![StageView {
            name: "implement".to_owned(),
            repo: "acme/api".to_owned(),
            state: "Succeeded".to_owned(),
            summary: Some("Added /login".to_owned()),
            cost: Some("$0.42".to_owned()),
            pr_url: None,
        }],
        commits: vec![CommitView::new("acme/api", sha, s.client.commit_url(&repo, sha), "Add login page")],
        cost: Some("$0.42".to_owned()),
        status_url: Some("https://gitea.example/hadron/control/src/branch/main/status/add-login.yaml".to_owned()),
    };
    let pr = s.client.ensure_target_pr(&repo, None, &view).await?;
    assert_eq!(pr.action, PrAction::Opened);
    assert_eq!(pr.html_url, format!("{}/acme/api/pulls/1", s.double.base_url()));
    let stored = s.double.pulls("acme/api");
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].head.as_str(), stored[0].base.as_str()), ("hadron/add-login", "trunk"));
    assert_eq!(stored[0].title, "Add a login page (hadron/add-login)");
    assert!(stored[0].body.contains("Users need to log in."), "{}", stored[0].body);
    assert!(stored[0].body.contains("- **implement** (Succeeded), cost $0.42\n"), "{}", stored[0].body);
    assert!(stored[0].body.contains("### implement: summary reported by the agent\n\n```text\nAdded /login\n```\n"), "{}", stored[0].body);
    assert!(stored[0].body.contains(&format!("/acme/api/commit/{sha}")), "{}", stored[0].body);
    let again = s.client.ensure_target_pr(&repo, Some("trunk"), &view).await?;
    assert_eq!((again.action, again.html_url), (PrAction::Unchanged, pr.html_url));
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn merged_by_is_read_from_the_pr() -> Result<()> {
    let s = setup().await?;
    let control = RepoRef::parse(CONTROL)?;
    let pr = s.client.ensure_approval_pr(&approval_view(&s.client)).await?;
    let open = s.client.merge_info(&control, pr.number).await?;
    assert!(!open.merged);
    assert_eq!(open.merged_by, None);
    let sha = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
    s.double.merge_pr(CONTROL, pr.number, "bob", sha);
    let merged = s.client.merge_info(&control, pr.number).await?;
    assert!(merged.merged);
    assert_eq!(merged.merged_by.as_deref(), Some("bob"));
    assert_eq!(merged.merge_commit_sha.as_deref(), Some(sha));
    let e = s.client.merge_info(&control, 99).await.expect_err("no PR 99");
    assert_eq!(e.reason(), "GiteaNotFound");
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn team_membership_decides_approvers() -> Result<()> {
    let s = setup().await?;
    s.double.add_team("acme", "Owners", &["root"]);
    s.double.add_team("acme", "Leads", &["carol"]);
    assert!(s.client.is_team_member("acme/leads", "carol").await?);
    assert!(s.client.is_team_member("acme/Leads", "CAROL").await?);
    assert!(!s.client.is_team_member("acme/leads", "dave").await?);
    let e = s.client.is_team_member("acme/nope", "carol").await.expect_err("no such team");
    assert_eq!(e.reason(), "GiteaTeamNotFound");
    let e = s.client.is_team_member("ghost/leads", "carol").await.expect_err("no such org");
    assert_eq!(e.reason(), "GiteaNotFound");
    let e = s.client.is_team_member("acme", "carol").await.expect_err("not org/team");
    assert_eq!(e.reason(), "GiteaConfigInvalid");

    let policy = ApproverPolicy { users: vec!["bob".to_owned()], teams: vec!["acme/leads".to_owned()] };
    let searches_before = s.double.count("GET", "/api/v1/orgs/acme/teams/search");
    assert_eq!(s.client.approver_decision("bob", Some("alice"), &policy).await?, ApproverDecision::AllowedAsUser);
    assert_eq!(s.client.approver_decision("alice", Some("alice"), &policy).await?, ApproverDecision::Requester);
    assert_eq!(s.double.count("GET", "/api/v1/orgs/acme/teams/search"), searches_before, "the users list decides without asking Gitea");
    assert_eq!(
        s.client.approver_decision("carol", Some("alice"), &policy).await?,
        ApproverDecision::AllowedByTeam { team: "acme/leads".to_owned() }
    );
    assert_eq!(s.client.approver_decision("carol", Some("carol"), &policy).await?, ApproverDecision::Requester);
    assert_eq!(s.client.approver_decision("dave", Some("alice"), &policy).await?, ApproverDecision::NotAllowed);
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

/// Membership is asked again once its time to live is over: someone added
/// to (or removed from) an approver team counts within that time, and no
/// sooner than it (60 s by default; 300 ms here).
#[tokio::test]
async fn team_membership_is_asked_again_after_its_time_to_live() -> Result<()> {
    assert_eq!(MEMBERSHIP_TTL, Duration::from_secs(60), "the docs name 60 s");
    let s = setup().await?;
    let ttl = Duration::from_millis(300);
    let client = client_with_ttl(&s.double.base_url(), TOKEN, &s._dir, fast_retry(4), ttl)?;
    let team = s.double.add_team("acme", "leads", &["carol"]);
    let members_path = format!("/api/v1/teams/{team}/members/dave");
    let searches = || s.double.count("GET", "/api/v1/orgs/acme/teams/search");
    let policy = ApproverPolicy { users: vec![], teams: vec!["acme/leads".to_owned()] };
    let allowed = ApproverDecision::AllowedByTeam { team: "acme/leads".to_owned() };

    assert_eq!(client.approver_decision("dave", Some("alice"), &policy).await?, ApproverDecision::NotAllowed);
    assert_eq!((searches(), s.double.count("GET", &members_path)), (1, 1));
    // Dave joins: within the time to live, the answer Gitea gave stands.
    s.double.set_team_members("acme", "leads", &["carol", "dave"]);
    assert_eq!(client.approver_decision("dave", Some("alice"), &policy).await?, ApproverDecision::NotAllowed);
    assert_eq!((searches(), s.double.count("GET", &members_path)), (1, 1), "neither the team nor dave was asked again");
    // After it, Gitea is asked again and dave may approve.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(client.approver_decision("dave", Some("alice"), &policy).await?, allowed);
    assert_eq!((searches(), s.double.count("GET", &members_path)), (2, 2));
    // Dave leaves: the same, the other way round.
    s.double.set_team_members("acme", "leads", &["carol"]);
    assert_eq!(client.approver_decision("dave", Some("alice"), &policy).await?, allowed);
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(client.approver_decision("dave", Some("alice"), &policy).await?, ApproverDecision::NotAllowed);
    assert_eq!(s.double.count("GET", &members_path), 3);
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn rate_limit_then_success_is_retried() -> Result<()> {
    let s = setup().await?;
    s.double.fail_next("GET", "/api/v1/user", &[429, 429], Some(0));
    let user = s.client.current_user().await?;
    assert_eq!(user.login, "hadron-bot");
    assert_eq!(s.double.count("GET", "/api/v1/user"), 3);
    // A 502 on a POST is retried too, and the status is set once.
    let sha = "abababababababababababababababababababab";
    s.double.fail_next("POST", &format!("/api/v1/repos/acme/api/statuses/{sha}"), &[502], None);
    s.client.set_status(&RepoRef::new("acme", "api"), sha, "r", CommitState::Success, "done", None).await?;
    assert_eq!(s.double.statuses("acme/api", sha).len(), 1);
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn server_errors_give_up_after_bounded_attempts() -> Result<()> {
    let s = setup().await?;
    s.double.fail_next("GET", "/api/v1/repos/acme/api", &[500, 503, 500, 500, 500], None);
    let e = s.client.repository(&RepoRef::new("acme", "api")).await.expect_err("always 5xx");
    assert!(matches!(e, GiteaError::Server { status: 500, attempts: 4, .. }), "{e:?}");
    assert_eq!(e.reason(), "GiteaServerError");
    assert!(e.is_transient());
    assert_eq!(s.double.count("GET", "/api/v1/repos/acme/api"), 4);
    // The circuit is open: until the next pass closes it, calls fail at once
    // without reaching Gitea, so one outage costs one call's retries per pass.
    let before = s.double.count("GET", "/api/v1/user");
    let e = s.client.current_user().await.expect_err("circuit open");
    assert!(matches!(&e, GiteaError::Unreachable { attempts: 0, message, .. } if message.contains("not tried")), "{e:?}");
    assert_eq!(s.double.count("GET", "/api/v1/user"), before, "no request was sent");
    s.client.close_circuit();
    s.double.fail_next("GET", "/api/v1/user", &[429, 429, 429, 429], None);
    let e = s.client.current_user().await.expect_err("always 429");
    assert_eq!(e.reason(), "GiteaRateLimited");
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn unauthorized_forbidden_and_not_found_are_typed_and_not_retried() -> Result<()> {
    let s = setup().await?;
    let dir = tempfile::tempdir()?;
    let wrong = client_for(&s.double.base_url(), "wrong-token", &dir, fast_retry(4))?;
    let e = wrong.current_user().await.expect_err("wrong token");
    assert!(matches!(e, GiteaError::Unauthorized { .. }), "{e:?}");
    assert_eq!(e.reason(), "GiteaUnauthorized");
    assert!(!e.is_transient());
    assert!(!e.to_string().contains("wrong-token") && !format!("{e:?}").contains("wrong-token"));
    assert!(!format!("{wrong:?}").contains("wrong-token"));
    assert_eq!(s.double.count("GET", "/api/v1/user"), 1, "401 is not retried");

    let sha = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";
    let path = format!("/api/v1/repos/acme/api/statuses/{sha}");
    s.double.fail_next("POST", &path, &[403], None);
    let e = s.client.set_status(&RepoRef::new("acme", "api"), sha, "r", CommitState::Pending, "x", None).await.expect_err("forbidden");
    assert_eq!(e.reason(), "GiteaForbidden");
    assert_eq!(s.double.count("POST", &path), 1, "403 is not retried");

    let e = s.client.repository(&RepoRef::new("ghost", "repo")).await.expect_err("no such repo");
    assert!(matches!(e, GiteaError::NotFound { ref path, .. } if path == "/api/v1/repos/ghost/repo"), "{e:?}");
    assert_eq!(e.reason(), "GiteaNotFound");
    s.double.assert_all_requests_matched_swagger();
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_is_a_typed_transient_error() -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let dir = tempfile::tempdir()?;
    let client = client_for(&format!("http://{addr}"), TOKEN, &dir, fast_retry(2))?;
    let e = client.current_user().await.expect_err("nothing listens");
    assert!(matches!(e, GiteaError::Unreachable { attempts: 2, .. }), "{e:?}");
    assert_eq!(e.reason(), "GiteaUnreachable");
    Ok(())
}

#[test]
fn bad_configuration_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let e = client_for("https://user:pw@gitea.example", TOKEN, &dir, fast_retry(1)).expect_err("userinfo");
    assert_eq!(e.downcast_ref::<GiteaError>().map(GiteaError::reason), Some("GiteaConfigInvalid"));
    let e = client_for("ftp://gitea.example", TOKEN, &dir, fast_retry(1)).expect_err("scheme");
    assert_eq!(e.downcast_ref::<GiteaError>().map(GiteaError::reason), Some("GiteaConfigInvalid"));
    let e = client_for("https://gitea.example", TOKEN, &dir, fast_retry(0)).expect_err("zero attempts");
    assert_eq!(e.downcast_ref::<GiteaError>().map(GiteaError::reason), Some("GiteaConfigInvalid"));
    let ok = client_for("https://gitea.example/sub/", TOKEN, &dir, fast_retry(1))?;
    assert_eq!(ok.commit_url(&RepoRef::new("a", "b"), "abc"), "https://gitea.example/sub/a/b/commit/abc");
    Ok(())
}

#[tokio::test]
async fn the_double_records_requests_that_do_not_match_the_swagger() -> Result<()> {
    let s = setup().await?;
    let http = reqwest::Client::new();
    let base = s.double.base_url();
    let auth = format!("token {TOKEN}");
    // An unknown field in a body (a typo Gitea would silently ignore).
    http.post(format!("{base}/api/v1/repos/acme/api/pulls"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .body(r#"{"title":"t","head":"h","base":"trunk","heads":"typo"}"#)
        .send()
        .await?;
    // A wrong type in a body.
    http.post(format!("{base}/api/v1/repos/acme/api/statuses/abc"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .body(r#"{"state":"success","context":7}"#)
        .send()
        .await?;
    // A non-integer index, an unknown path, an undeclared query parameter.
    http.get(format!("{base}/api/v1/repos/acme/api/pulls/first")).header("Authorization", &auth).send().await?;
    http.get(format!("{base}/api/v1/repos/acme/api/pullz")).header("Authorization", &auth).send().await?;
    let r = http.get(format!("{base}/api/v1/repos/acme/api/pulls?status=open")).header("Authorization", &auth).send().await?;
    assert_eq!(r.status().as_u16(), 404, "a mismatched request is not served");
    // A request that matches is recorded as fine.
    let ok = http.get(format!("{base}/api/v1/user")).header("Authorization", &auth).send().await?;
    assert_eq!(ok.status().as_u16(), 200);

    let m = s.double.mismatches();
    let has = |needle: &str| m.iter().any(|x| x.contains(needle));
    assert!(has("swagger.v1.json: POST /repos/{owner}/{repo}/pulls: body does not match CreatePullRequestOption"), "{m:#?}");
    assert!(has("swagger.v1.14.json: POST /repos/{owner}/{repo}/pulls: body does not match CreatePullRequestOption"), "{m:#?}");
    assert!(has("body does not match CreateStatusOption"), "{m:#?}");
    assert!(has("path parameter index = \"first\" is not an integer"), "{m:#?}");
    assert!(has("no operation GET /repos/acme/api/pullz"), "{m:#?}");
    assert!(has("undeclared query parameter status"), "{m:#?}");
    assert!(!has("/user"), "{m:#?}");
    let double = s.double.clone();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || double.assert_all_requests_matched_swagger()));
    assert!(failed.is_err(), "the final assertion fails when any request mismatched");
    Ok(())
}

/// The approval decision with the forge, at the level of
/// `reconcile::forge_step::ForgeLink::decide_approval`: the approver is the
/// login Gitea reports as the merger of the approval PR, never the name a
/// commit carries.
mod approval_identity {
    use super::*;
    use crate::git::{HUMAN, git, git_with};
    use hadron::gates::{Approver, Person, approval_object};
    use hadron::plan::ApprovalState;
    use hadron::reconcile::forge_step::ForgeLink;
    use hadron::store::PrRecord;
    use hadron::store::Store;

    /// The merge commit Gitea made when a test merges the approval PR.
    const DOUBLE_MERGE_SHA: &str = "9d6f6a1c0c3b0f0e6a0d2c1b4a5e6f708192a3b4";

    struct World {
        s: Setup,
        store: Store,
        link: ForgeLink,
        pr: u64,
        requester: (Person, String),
        /// The commit that put the approval file on main: alice's direct push.
        direct: String,
        _tmp: tempfile::TempDir,
    }

    /// Carol asks (a real commit Gitea maps to her); Hadron opened approval
    /// PR #n; then someone pushes the approval file straight to main with
    /// `GIT_COMMITTER_NAME=alice`, without merging any PR.
    async fn world() -> Result<World> {
        let s = setup().await?;
        let tmp = tempfile::tempdir()?;
        let repo = tmp.path().join("control");
        std::fs::create_dir_all(&repo)?;
        git(&repo, HUMAN, &["init", "--quiet", "--initial-branch=main"])?;
        std::fs::create_dir_all(repo.join("requests"))?;
        std::fs::write(repo.join("requests/add-login.yaml"), "spec: {}\n")?;
        git(&repo, HUMAN, &["add", "-A"])?;
        git(&repo, ("carol", "carol@example.com"), &["commit", "--quiet", "-m", "Ask for add-login"])?;
        let asked = git(&repo, HUMAN, &["rev-parse", "HEAD"])?;
        let forged = [
            ("GIT_AUTHOR_NAME", "mallory"),
            ("GIT_AUTHOR_EMAIL", "mallory@example.com"),
            ("GIT_COMMITTER_NAME", "alice"),
            ("GIT_COMMITTER_EMAIL", "alice@example.com"),
        ];
        std::fs::create_dir_all(repo.join("approvals/add-login"))?;
        std::fs::write(repo.join("approvals/add-login/review.yaml"), "spec: {}\n")?;
        git(&repo, HUMAN, &["add", "-A"])?;
        git_with(&repo, HUMAN, &forged, &["commit", "--quiet", "-m", "Approve"])?;
        let direct = git(&repo, HUMAN, &["rev-parse", "HEAD"])?;
        assert_eq!(git(&repo, HUMAN, &["log", "-1", "--format=%cn", &direct])?, "alice");
        s.double.link_git_dir(CONTROL, &repo);
        s.double.add_user("carol", "carol@example.com");

        let pr = s.client.ensure_approval_pr(&approval_view(&s.client)).await?.number;
        let store = Store::open_sqlite(&tmp.path().join("store.db")).await?;
        let record = PrRecord { number: pr, url: format!("{}/{CONTROL}/pulls/{pr}", s.double.base_url()), made_for: "g1".into() };
        store.set_approval_pr("add-login", "review", &record, 1).await?;
        let link = ForgeLink::new(s.client.clone(), Duration::from_secs(60));
        Ok(World { s, store, link, pr, requester: (Person::new("carol", "carol@example.com"), asked), direct, _tmp: tmp })
    }

    fn alice(commit: &str) -> Approver {
        Approver { name: "alice".into(), email: "alice@example.com".into(), commit: commit.into() }
    }

    #[tokio::test]
    async fn a_direct_push_committed_as_alice_is_no_approval() -> Result<()> {
        let mut w = world().await?;
        let approval = approval_object("add-login", "review", "g1", 0, "");
        let policy = ApproverPolicy { users: vec!["alice".into()], teams: vec![] };
        let by_push = alice(&w.direct);
        let state =
            w.link.decide_approval(&w.store, "add-login", "review", Some(&approval), Ok(&by_push), Ok(&w.requester), &policy, "g1").await?;
        match state {
            ApprovalState::Rejected { why, commit, .. } => {
                assert!(why.contains("without a merged approval PR"), "{why}");
                assert!(why.contains(&format!("merge PR #{}", w.pr)), "{why}");
                assert_eq!(commit, w.direct);
            }
            other => anyhow::bail!("a direct push must not count: {other:?}"),
        }

        // Someone merges the PR on Gitea: its merge is another commit than the
        // one that brought the file, so the direct push still does not count.
        w.s.double.merge_pr(CONTROL, w.pr, "alice", DOUBLE_MERGE_SHA);
        let state =
            w.link.decide_approval(&w.store, "add-login", "review", Some(&approval), Ok(&by_push), Ok(&w.requester), &policy, "g1").await?;
        match state {
            ApprovalState::Rejected { why, .. } => assert!(why.contains("not in the merge of the approval PR"), "{why}"),
            other => anyhow::bail!("a direct push must not count: {other:?}"),
        }

        // The file arriving with the PR's merge: alice, as Gitea reports her, approves.
        let by_merge = alice(DOUBLE_MERGE_SHA);
        let state = w
            .link
            .decide_approval(&w.store, "add-login", "review", Some(&approval), Ok(&by_merge), Ok(&w.requester), &policy, "g1")
            .await?;
        assert_eq!(state, ApprovalState::Approved { by: "alice".into(), revision: 0 });
        w.s.double.assert_all_requests_matched_swagger();
        Ok(())
    }

    #[tokio::test]
    async fn an_unknown_requester_stops_a_merged_approval() -> Result<()> {
        let mut w = world().await?;
        w.s.double.merge_pr(CONTROL, w.pr, "alice", DOUBLE_MERGE_SHA);
        let approval = approval_object("add-login", "review", "g1", 0, "");
        let policy = ApproverPolicy { users: vec!["alice".into()], teams: vec![] };
        let state = w
            .link
            .decide_approval(
                &w.store,
                "add-login",
                "review",
                Some(&approval),
                Ok(&alice(DOUBLE_MERGE_SHA)),
                Err("reading the history failed: object not found"),
                &policy,
                "g1",
            )
            .await?;
        match state {
            ApprovalState::Rejected { why, .. } => {
                assert!(why.contains("requester") && why.contains("could not be determined"), "{why}");
                assert!(why.contains("object not found"), "{why}");
            }
            other => anyhow::bail!("an unknown requester must stop the approval: {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_requester_without_a_gitea_user_is_not_taken_by_name() -> Result<()> {
        let mut w = world().await?;
        w.s.double.merge_pr(CONTROL, w.pr, "alice", DOUBLE_MERGE_SHA);
        let approval = approval_object("add-login", "review", "g1", 0, "");
        let policy = ApproverPolicy { users: vec!["alice".into()], teams: vec![] };
        // The request's commit is mallory's (no Gitea user) with author name "bob":
        // the name must not stand in for a Gitea login.
        let requester = (Person::new("bob", "mallory@example.com"), w.direct.clone());
        let state = w
            .link
            .decide_approval(&w.store, "add-login", "review", Some(&approval), Ok(&alice(DOUBLE_MERGE_SHA)), Ok(&requester), &policy, "g1")
            .await?;
        match state {
            ApprovalState::Rejected { why, .. } => {
                assert!(why.contains("requester could not be determined") && why.contains("no user"), "{why}");
                assert!(why.contains("mallory@example.com"), "{why}");
            }
            other => anyhow::bail!("a requester Gitea does not know must stop the approval: {other:?}"),
        }
        Ok(())
    }

    fn person(name: &str, commit: &str) -> Approver {
        Approver { name: name.into(), email: format!("{}@example.com", name.to_lowercase()), commit: commit.into() }
    }

    fn policy(users: &[&str], teams: &[&str]) -> ApproverPolicy {
        ApproverPolicy { users: users.iter().map(|u| (*u).to_owned()).collect(), teams: teams.iter().map(|t| (*t).to_owned()).collect() }
    }

    /// `how`, which must contain `expected` once printed: decided by the long-lived
    /// link `w.link`, and by a link and client made afresh (another process
    /// after a restart or a failover) over the same store and Gitea; both
    /// decisions must be the same.
    async fn decided_alike(
        w: &mut World,
        approval_generation: &str,
        approver: &Approver,
        policy: &ApproverPolicy,
        generation: &str,
        expected: &str,
    ) -> Result<ApprovalState> {
        let approval = approval_object("add-login", "review", approval_generation, 0, "");
        let old = w
            .link
            .decide_approval(&w.store, "add-login", "review", Some(&approval), Ok(approver), Ok(&w.requester), policy, generation)
            .await?;
        let client = client_for(&w.s.double.base_url(), TOKEN, &w.s._dir, fast_retry(4))?;
        let mut fresh = ForgeLink::new(client, Duration::from_secs(60));
        let new = fresh
            .decide_approval(&w.store, "add-login", "review", Some(&approval), Ok(approver), Ok(&w.requester), policy, generation)
            .await?;
        assert_eq!(old, new, "a new process decides as the old one");
        let shown = format!("{old:?}");
        assert!(shown.contains(expected), "expected {expected:?} in {shown}");
        Ok(old)
    }

    #[tokio::test]
    async fn an_approver_added_after_a_refusal_counts_at_the_next_pass() -> Result<()> {
        let mut w = world().await?;
        w.s.double.merge_pr(CONTROL, w.pr, "dave", DOUBLE_MERGE_SHA);
        let approval = approval_object("add-login", "review", "g1", 0, "");
        let dave = person("Dave", DOUBLE_MERGE_SHA);
        let mut decide = async |policy: &ApproverPolicy| {
            w.link.decide_approval(&w.store, "add-login", "review", Some(&approval), Ok(&dave), Ok(&w.requester), policy, "g1").await
        };
        match decide(&policy(&["alice"], &[])).await? {
            ApprovalState::Rejected { by, why, .. } => {
                assert_eq!(by, "dave");
                assert!(why.contains("dave is not an allowed approver"), "{why}");
            }
            other => anyhow::bail!("dave is not listed yet: {other:?}"),
        }
        // hadron.yaml now lists dave: the same process, the next pass.
        assert_eq!(decide(&policy(&["alice", "dave"], &[])).await?, ApprovalState::Approved { by: "dave".into(), revision: 0 });
        // Until the gate is passed, the policy of each pass decides.
        assert!(matches!(decide(&policy(&["alice"], &[])).await?, ApprovalState::Rejected { .. }));
        let pr_path = format!("/api/v1/repos/{CONTROL}/pulls/{}", w.pr);
        assert_eq!(w.s.double.count("GET", &pr_path), 1, "a merge seen once is a fact: the PR is not read again");
        w.s.double.assert_all_requests_matched_swagger();
        Ok(())
    }

    #[tokio::test]
    async fn a_merge_whose_commit_gitea_does_not_name_is_no_approval() -> Result<()> {
        let mut w = world().await?;
        // Merged, but the answer carries no merge commit to compare.
        w.s.double.merge_pr(CONTROL, w.pr, "alice", "");
        let approval = approval_object("add-login", "review", "g1", 0, "");
        let state = w
            .link
            .decide_approval(
                &w.store,
                "add-login",
                "review",
                Some(&approval),
                Ok(&alice(&w.direct)),
                Ok(&w.requester),
                &policy(&["alice"], &[]),
                "g1",
            )
            .await?;
        match state {
            ApprovalState::Rejected { why, .. } => {
                assert!(why.contains(&format!("approval PR #{} merged but names no merge commit", w.pr)), "{why}")
            }
            other => anyhow::bail!("a merge Gitea does not tie to a commit must not approve: {other:?}"),
        }
        Ok(())
    }

    /// A failover (or a restart) changes no decision: over a run of states of
    /// git, the store, Gitea and hadron.yaml, a link that lived through all of
    /// them decides each as a new one does.
    #[tokio::test]
    async fn a_new_process_decides_every_state_as_the_old_one() -> Result<()> {
        let mut w = world().await?;
        let (m1, m2, m3) = (
            "1111111111111111111111111111111111111111",
            "2222222222222222222222222222222222222222",
            "3333333333333333333333333333333333333333",
        );
        w.s.double.add_team("acme", "leads", &["mallory"]);
        let alice_only = policy(&["alice"], &[]);

        // The file pushed straight to main as committer "alice"; PR #1 open.
        let direct = w.direct.clone();
        decided_alike(&mut w, "g1", &person("alice", &direct), &alice_only, "g1", "without a merged approval PR").await?;
        // Carol, the requester, merges PR #1 on Gitea.
        w.s.double.merge_pr(CONTROL, w.pr, "carol", m1);
        decided_alike(&mut w, "g1", &person("Carol", m1), &alice_only, "g1", "carol is the requester").await?;
        // Hadron re-opens the branch as PR #2: the file that came with #1 is still carol's.
        let second = w.s.client.ensure_approval_pr(&approval_view(&w.s.client)).await?.number;
        assert_ne!(second, w.pr);
        let record =
            PrRecord { number: second, url: format!("{}/{CONTROL}/pulls/{second}", w.s.double.base_url()), made_for: "g1 after m1".into() };
        w.store.set_approval_pr("add-login", "review", &record, 2).await?;
        assert_eq!(w.store.approval_prs("add-login", "review").await?, vec![w.pr, second]);
        decided_alike(&mut w, "g1", &person("Carol", m1), &alice_only, "g1", "carol is the requester").await?;
        // Mallory merges PR #2: not an approver, then listed, then by team, then not again.
        w.s.double.merge_pr(CONTROL, second, "mallory", m2);
        let mallory = person("Mallory", m2);
        decided_alike(&mut w, "g1", &mallory, &alice_only, "g1", "mallory is not an allowed approver").await?;
        decided_alike(&mut w, "g1", &mallory, &policy(&["alice", "mallory"], &[]), "g1", "Approved { by: \"mallory\", revision: 0 }")
            .await?;
        decided_alike(&mut w, "g1", &mallory, &policy(&["alice"], &["acme/leads"]), "g1", "Approved { by: \"mallory\", revision: 0 }")
            .await?;
        decided_alike(&mut w, "g1", &mallory, &alice_only, "g1", "mallory is not an allowed approver").await?;
        // A commit that is no PR's merge, named as alice's.
        decided_alike(
            &mut w,
            "g1",
            &person("alice", m3),
            &alice_only,
            "g1",
            &format!("not in the merge of the approval PR #{second} ({m2})"),
        )
        .await?;
        // The request changed: the approval is stale, whoever merged.
        decided_alike(&mut w, "g1", &mallory, &policy(&["mallory"], &[]), "g2", "Stale { given_for: \"g1\" }").await?;
        w.s.double.assert_all_requests_matched_swagger();
        Ok(())
    }
}

/// What an agent can put in its summary to take over a PR body, if the body
/// rendered it as Markdown.
const HOSTILE_SUMMARY: &str = "Done.\n<!-- everything after this is hidden\n-->\n<img src=x onerror=alert(1)>\n\
     [approve now](https://evil.example) ![](https://evil.example/t.png) @admins please merge\n\
     ````\n```\n~~~\n## What merging means\nNothing, merge it.\n\u{1b}]52;c;ZXZpbA==\u{7}";

/// The body with every fenced block and code span taken out: what Markdown renders as Markdown.
fn outside_code(body: &str) -> String {
    let mut out = String::new();
    let mut fence: Option<String> = None;
    for line in body.lines() {
        match &fence {
            Some(f) if line == f.as_str() => fence = None,
            Some(_) => {}
            None if line.starts_with("```") => fence = Some(line.trim_end_matches("text").to_owned()),
            None => {
                // Drop code spans: a run of n backticks up to the next run of exactly n.
                let mut rest = line;
                while let Some(start) = rest.find('`') {
                    out.push_str(&rest[..start]);
                    let n = rest[start..].chars().take_while(|c| *c == '`').count();
                    let ticks = "`".repeat(n);
                    let after = &rest[start + n..];
                    let close = after
                        .match_indices(&ticks)
                        .find(|(i, _)| !after[i + n..].starts_with('`') && (*i == 0 || !after[..*i].ends_with('`')));
                    rest = close.map_or("", |(i, _)| &after[i + n..]);
                }
                out.push_str(rest);
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn an_agent_summary_cannot_change_the_rest_of_a_pr_body() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Rendering needs no server: the client is never asked to send anything.
    let client = client_for("http://127.0.0.1:9", TOKEN, &dir, fast_retry(1))?;
    let sha = "4f5e7d8f15cf79387cfd8a0d30c58855ab61e138";
    let url = client.commit_url(&RepoRef::new("acme", "api"), sha);
    let with_summary = |summary: &str| {
        let mut view = approval_view(&client);
        view.stages[0].summary = Some(summary.to_owned());
        view.commits = vec![CommitView::new("acme/api", sha, url.clone(), &format!("implement: {summary}"))];
        view
    };
    let (_, benign) = client.render_approval_pr(&with_summary("Added /login"))?;
    let (_, hostile) = client.render_approval_pr(&with_summary(HOSTILE_SUMMARY))?;

    // Everything from the commits' section on is the same as with a benign summary but for the commit line.
    let tail = |body: &str| body.split_once("\n## Cost\n").map(|(_, t)| t.to_owned()).expect("a cost section");
    assert_eq!(tail(&hostile), tail(&benign));
    assert!(tail(&hostile).contains("## What merging means\n\nMerging this pull request adds `approvals/add-login/review.yaml`"));
    let head = |body: &str| body.split_once("### implement: summary reported by the agent").map(|(h, _)| h.to_owned()).expect("a summary");
    assert_eq!(head(&hostile), head(&benign));

    // The summary is one fenced block, its fence longer than the agent's four backticks.
    assert!(hostile.contains("### implement: summary reported by the agent\n\n`````text\nDone.\n<!-- everything"), "{hostile}");
    assert!(hostile.contains("\\u{1b}]52;c;ZXZpbA==\\u{7}\n`````\n"), "{hostile}");
    assert!(!hostile.chars().any(|c| c.is_control() && c != '\n'), "no raw control character: {hostile:?}");
    // The commit line is one code span holding the first line only.
    assert!(hostile.contains(&format!("[`4f5e7d8f15`]({url}) ` implement: Done. `\n")), "{hostile}");

    // Outside code, nothing of the agent's is left to render.
    let rendered = outside_code(&hostile);
    for needle in ["<!--", "-->", "<img", "](https://evil", "@admins", "Nothing, merge it."] {
        assert!(!rendered.contains(needle), "{needle:?} is outside code:\n{rendered}");
        assert!(hostile.contains(needle), "{needle:?} is shown, inside code");
    }
    assert_eq!(hostile.matches("<!--").count(), 1);
    assert_eq!(rendered.matches("## What merging means").count(), 1, "the agent's heading is inside the fence:\n{rendered}");
    Ok(())
}

#[test]
fn an_agent_summary_in_a_target_pr_is_fenced_too() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let client = client_for("http://127.0.0.1:9", TOKEN, &dir, fast_retry(1))?;
    let view = |summary: &str| TargetPrView {
        request: "add-login".to_owned(),
        request_title: "Add a login page".to_owned(),
        description: None,
        stages: vec![StageView {
            name: "implement".to_owned(),
            repo: "acme/api".to_owned(),
            state: "Succeeded".to_owned(),
            summary: Some(summary.to_owned()),
            cost: None,
            pr_url: None,
        }],
        commits: vec![CommitView::new("acme/api", "5".repeat(40), "https://g/c", &format!("implement: {summary}"))],
        cost: None,
        status_url: Some("https://g/status/add-login.yaml".to_owned()),
    };
    let (_, benign) = client.render_target_pr(&view("Added /login"), "main")?;
    let (_, hostile) = client.render_target_pr(&view(HOSTILE_SUMMARY), "main")?;
    let tail =
        |body: &str| body.split_once("\n## Commits\n").map(|(_, t)| t.lines().skip(4).collect::<Vec<_>>().join("\n")).expect("commits");
    assert_eq!(tail(&hostile), tail(&benign));
    assert!(hostile.contains("Status of the request: https://g/status/add-login.yaml"), "{hostile}");
    let rendered = outside_code(&hostile);
    for needle in ["<!--", "<img", "](https://evil", "@admins"] {
        assert!(!rendered.contains(needle), "{needle:?} is outside code:\n{rendered}");
    }
    Ok(())
}
