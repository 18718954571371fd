//! Approval gates against real bare repositories, with the `git` CLI acting as
//! the people: alice asks, bob approves, carol is not an approver.

#[allow(dead_code)] // each test crate uses a part of the helpers
#[path = "support/git.rs"]
mod git;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use git::{git, git_command};
use hadron::gates::{
    ApprovalBranches, GateDecision, OpenOutcome, Person, Proposal, approve_as_person, approver_of, decide, render_approval, requester_of,
};
use hadron::model::{Approval, ApproverPolicy};

const ALICE: (&str, &str) = ("alice", "alice@example.com");
const BOB: (&str, &str) = ("bob", "bob@example.com");
const CAROL: (&str, &str) = ("carol", "carol@example.com");
const ADMIN: (&str, &str) = ("admin", "admin@example.com");

const SETTINGS: &str =
    "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  approvers:\n    users: [bob]\n";
const REQUEST: &str = "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: fix\nspec:\n  title: Fix it\n  repos: [{url: ../app.git}]\n  stages: [{name: implement}]\n  gates:\n    - {name: review, type: approval, after: implement}\n    - {name: security, type: approval, after: implement}\n";

fn write(dir: &Path, path: &str, text: &str) -> Result<()> {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().context("parent")?)?;
    std::fs::write(file, text)?;
    Ok(())
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    remote: PathBuf,
    url: String,
}

impl Fixture {
    /// A bare control repo refusing non-fast-forward pushes; admin commits the
    /// settings, then alice adds `requests/fix.yaml`.
    fn new() -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().to_path_buf();
        let remote = root.join("control.git");
        git(&root, ADMIN, &["init", "--quiet", "--bare", "--initial-branch=main", "control.git"])?;
        git(&remote, ADMIN, &["config", "receive.denyNonFastForwards", "true"])?;
        git(&remote, ADMIN, &["config", "receive.denyDeletes", "true"])?;
        let url = remote.to_str().context("utf-8 path")?.to_owned();
        let fx = Fixture { _tmp: tmp, root, remote, url };
        let admin = fx.clone_as("admin-wt", ADMIN)?;
        write(&admin, "hadron.yaml", SETTINGS)?;
        write(&admin, "README.md", "control repo\n")?;
        git(&admin, ADMIN, &["add", "-A"])?;
        git(&admin, ADMIN, &["commit", "--quiet", "-m", "Settings"])?;
        git(&admin, ADMIN, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
        let alice = fx.clone_as("alice-wt", ALICE)?;
        write(&alice, "requests/fix.yaml", REQUEST)?;
        git(&alice, ALICE, &["add", "-A"])?;
        git(&alice, ALICE, &["commit", "--quiet", "-m", "Ask for fix"])?;
        git(&alice, ALICE, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
        Ok(fx)
    }

    fn clone_as(&self, name: &str, who: (&str, &str)) -> Result<PathBuf> {
        git(&self.root, who, &["clone", "--quiet", &self.url, name])?;
        Ok(self.root.join(name))
    }

    fn branches(&self) -> Result<ApprovalBranches> {
        Ok(ApprovalBranches::new(self.root.join("hadron-work"), Person::new("hadron", "hadron@localhost"))?)
    }

    fn rev(&self, spec: &str) -> Result<String> {
        git(&self.remote, ADMIN, &["rev-parse", "--verify", spec])
    }

    fn show(&self, spec: &str) -> Result<String> {
        git(&self.remote, ADMIN, &["show", spec])
    }

    /// A commit by `who` on main touching an unrelated file.
    fn move_main(&self, who: (&str, &str), file: &str) -> Result<String> {
        let wt = self.clone_as(&format!("move-{file}"), who)?;
        write(&wt, file, "moved\n")?;
        git(&wt, who, &["add", "-A"])?;
        git(&wt, who, &["commit", "--quiet", "-m", "Unrelated change"])?;
        git(&wt, who, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
        self.rev("refs/heads/main")
    }

    fn repo(&self) -> Result<gix::Repository> {
        Ok(gix::open(&self.remote)?)
    }

    fn approval_in_main(&self, gate: &str) -> Result<Approval> {
        Ok(serde_saphyr::from_str(&self.show(&format!("main:approvals/fix/{gate}.yaml"))?)?)
    }
}

fn oid(hex: &str) -> Result<gix::ObjectId> {
    Ok(gix::ObjectId::from_hex(hex.as_bytes())?)
}

const BRANCH: &str = "refs/heads/hadron/approve/fix/review";

fn assert_only_approval_differs(fx: &Fixture, gate: &str) -> Result<()> {
    let branch = format!("refs/heads/hadron/approve/fix/{gate}");
    let two_dot = git(&fx.remote, ADMIN, &["diff", "--name-only", "refs/heads/main", &branch])?;
    assert_eq!(two_dot, format!("approvals/fix/{gate}.yaml"), "branch tree = main tree + the approval file");
    let three_dot = git(&fx.remote, ADMIN, &["diff", "--name-only", &format!("refs/heads/main...{branch}")])?;
    assert_eq!(three_dot, format!("approvals/fix/{gate}.yaml"), "what a PR of the branch would show");
    Ok(())
}

#[test]
fn open_creates_is_idempotent_and_updates_without_force() -> Result<()> {
    let fx = Fixture::new()?;
    let branches = fx.branches()?;
    let main0 = fx.rev("refs/heads/main")?;

    let c1 = match branches.open(
        &fx.url,
        "main",
        &Proposal { request: "fix", gate: "review", generation: "gen1", revision: 0, summary: "implement: done" },
    )? {
        OpenOutcome::Created { commit } => commit,
        other => bail!("expected Created, got {other:?}"),
    };
    assert_eq!(fx.rev(BRANCH)?, c1);
    assert_eq!(fx.rev(&format!("{c1}^"))?, main0, "created on top of main");
    let file = fx.show(&format!("{BRANCH}:approvals/fix/review.yaml"))?;
    assert_eq!(format!("{file}\n"), render_approval("fix", "review", "gen1", 0, "implement: done")?, "the exact file");
    let parsed: Approval = serde_saphyr::from_str(&file)?;
    assert_eq!((parsed.metadata.name.as_str(), parsed.spec.generation.as_str()), ("fix-review", "gen1"));
    let author = git(&fx.remote, ADMIN, &["log", "-1", "--format=%an <%ae>|%cn <%ce>", BRANCH])?;
    assert_eq!(author, "hadron <hadron@localhost>|hadron <hadron@localhost>");
    assert_only_approval_differs(&fx, "review")?;

    // Again: nothing pushed.
    let again = branches.open(
        &fx.url,
        "main",
        &Proposal { request: "fix", gate: "review", generation: "gen1", revision: 0, summary: "implement: done" },
    )?;
    assert_eq!(again, OpenOutcome::AlreadyOpen { commit: c1.clone() });
    assert_eq!(fx.rev(BRANCH)?, c1);
    assert_eq!(git(&fx.remote, ADMIN, &["rev-list", "--count", BRANCH])?, "3");

    // New generation, main unchanged: one commit on top of the branch.
    let c2 = match branches.open(
        &fx.url,
        "main",
        &Proposal { request: "fix", gate: "review", generation: "gen2", revision: 0, summary: "implement: redone" },
    )? {
        OpenOutcome::Updated { commit, previous } => {
            assert_eq!(previous, c1);
            commit
        }
        other => bail!("expected Updated, got {other:?}"),
    };
    assert_eq!(git(&fx.remote, ADMIN, &["rev-list", &format!("{c1}..{c2}")])?, c2, "exactly one new commit");
    assert_eq!(fx.rev(&format!("{c2}^"))?, c1);
    assert!(fx.show(&format!("{BRANCH}:approvals/fix/review.yaml"))?.contains("generation: gen2"));
    assert_only_approval_differs(&fx, "review")?;

    // New generation after main moved: still a fast-forward of the branch
    // (the remote refuses anything else), tree = new main + file.
    let main1 = fx.move_main(CAROL, "docs/notes.md")?;
    let c3 =
        match branches.open(&fx.url, "main", &Proposal { request: "fix", gate: "review", generation: "gen3", revision: 0, summary: "" })? {
            OpenOutcome::Updated { commit, previous } => {
                assert_eq!(previous, c2);
                commit
            }
            other => bail!("expected Updated, got {other:?}"),
        };
    git(&fx.remote, ADMIN, &["merge-base", "--is-ancestor", &c2, &c3]).context("old head is an ancestor")?;
    git(&fx.remote, ADMIN, &["merge-base", "--is-ancestor", &main1, &c3]).context("new main is an ancestor")?;
    assert_eq!(git(&fx.remote, ADMIN, &["rev-list", "--count", &format!("{c2}..{c3}")])?, "2", "new main commit + one");
    assert_only_approval_differs(&fx, "review")?;
    assert_eq!(git(&fx.remote, ADMIN, &["ls-tree", "-r", "--name-only", BRANCH, "approvals"])?, "approvals/fix/review.yaml");
    Ok(())
}

/// Installs a pre-receive hook on the bare repo that declines the first
/// `decline` pushes and counts every attempt in `attempts.log`.
fn hook_declining(fx: &Fixture, decline: u32) -> Result<PathBuf> {
    let log = fx.root.join("attempts.log");
    let hook = fx.remote.join("hooks").join("pre-receive");
    let script = format!(
        "#!/bin/sh\ncat >/dev/null\necho x >> '{log}'\nn=$(wc -l < '{log}')\nif [ \"$n\" -le {decline} ]; then echo 'busy, try again' >&2; exit 1; fi\nexit 0\n",
        log = log.display()
    );
    std::fs::write(&hook, script)?;
    let mut perms = std::fs::metadata(&hook)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&hook, perms)?;
    Ok(log)
}

#[test]
fn rejected_pushes_are_retried_then_reported() -> Result<()> {
    let fx = Fixture::new()?;
    let branches = fx.branches()?;
    let log = hook_declining(&fx, 1)?;
    let outcome =
        branches.open(&fx.url, "main", &Proposal { request: "fix", gate: "review", generation: "gen1", revision: 0, summary: "" })?;
    assert!(matches!(outcome, OpenOutcome::Created { .. }), "{outcome:?}");
    assert_eq!(std::fs::read_to_string(&log)?.lines().count(), 2, "declined once, then pushed");

    std::fs::remove_file(&log)?;
    hook_declining(&fx, 100)?;
    let err = branches
        .open(&fx.url, "main", &Proposal { request: "fix", gate: "review", generation: "gen2", revision: 0, summary: "" })
        .expect_err("always declined");
    assert_eq!(err.reason(), "PushRejected");
    assert_eq!(std::fs::read_to_string(&log)?.lines().count(), 3, "three attempts");
    assert!(fx.show(&format!("{BRANCH}:approvals/fix/review.yaml"))?.contains("gen1"), "the branch is unchanged");
    Ok(())
}

#[test]
fn refuses_names_that_are_not_labels() -> Result<()> {
    let fx = Fixture::new()?;
    let branches = fx.branches()?;
    for (request, gate) in [("../fix", "review"), ("fix", "review/../../x"), ("fix", "--force")] {
        let err =
            branches.open(&fx.url, "main", &Proposal { request, gate, generation: "g", revision: 0, summary: "" }).expect_err("refused");
        assert_eq!(err.reason(), "InvalidName", "{request} {gate}");
    }
    let err = branches
        .open("--upload-pack=touch /tmp/x", "main", &Proposal { request: "fix", gate: "review", generation: "g", revision: 0, summary: "" })
        .expect_err("refused");
    assert_eq!(err.reason(), "InvalidRemoteUrl");
    let err = branches
        .open(&fx.url, "no-such-branch", &Proposal { request: "fix", gate: "review", generation: "g", revision: 0, summary: "" })
        .expect_err("refused");
    assert_eq!(err.reason(), "BaseBranchMissing");
    Ok(())
}

#[test]
fn approve_as_person_is_attributed_to_bob() -> Result<()> {
    let fx = Fixture::new()?;
    let branches = fx.branches()?;
    branches.open(
        &fx.url,
        "main",
        &Proposal { request: "fix", gate: "review", generation: "gen1", revision: 0, summary: "implement: done" },
    )?;
    let work = fx.root.join("bob-approve");
    let merge = approve_as_person(&fx.url, "main", "fix", "review", &work, BOB.0, BOB.1, None)?;
    assert_eq!(fx.rev("refs/heads/main")?, merge, "the merge was pushed to main");
    assert_eq!(git(&fx.remote, ADMIN, &["log", "-1", "--format=%P", &merge])?.split(' ').count(), 2, "a real merge");

    let repo = fx.repo()?;
    let approver = approver_of(&repo, oid(&merge)?, "fix", "review")?.context("an approver")?;
    assert_eq!((approver.name.as_str(), approver.email.as_str()), BOB);
    assert_eq!(approver.commit, merge);
    let requester = requester_of(&repo, oid(&merge)?, "fix")?.context("a requester")?;
    assert_eq!(requester, Person::new(ALICE.0, ALICE.1));
    assert_eq!(approver_of(&repo, oid(&merge)?, "fix", "security")?, None, "no file, no approver");
    assert_eq!(requester_of(&repo, oid(&merge)?, "other")?, None);

    let approval = fx.approval_in_main("review")?;
    let policy = ApproverPolicy { users: vec!["bob".into()], teams: vec![] };
    let decision = decide(Some(&approval), Ok(&approver), Ok(&requester), &policy, "gen1");
    assert_eq!(decision, GateDecision::Approved { by: approver.clone() });

    // Opening again for the approved generation: already approved. The
    // lookups work the same on Hadron's private mirror.
    let outcome = branches.open(
        &fx.url,
        "main",
        &Proposal { request: "fix", gate: "review", generation: "gen1", revision: 0, summary: "implement: done" },
    )?;
    assert_eq!(outcome, OpenOutcome::AlreadyApproved { commit: merge.clone() });
    let mirror = gix::open(branches.mirror_dir(&fx.url))?;
    let mirror_main = mirror.find_reference("refs/remotes/origin/main")?.peel_to_id()?.detach();
    assert_eq!(approver_of(&mirror, mirror_main, "fix", "review")?, Some(approver.clone()));

    // After an edit the approval is stale; a new branch commit sits on main.
    assert_eq!(decide(Some(&approval), Ok(&approver), Ok(&requester), &policy, "gen2"), GateDecision::Stale { given_for: "gen1".into() });
    match branches.open(&fx.url, "main", &Proposal { request: "fix", gate: "review", generation: "gen2", revision: 0, summary: "" })? {
        OpenOutcome::Updated { commit, .. } => assert_eq!(fx.rev(&format!("{commit}^"))?, merge),
        other => bail!("expected Updated, got {other:?}"),
    }
    assert_only_approval_differs(&fx, "review")?;
    // A second approve of the same branch state is refused, not a silent no-op.
    let bob_again = approve_as_person(&fx.url, "main", "fix", "review", &work, BOB.0, BOB.1, None)?;
    assert_ne!(bob_again, merge);
    let err = approve_as_person(&fx.url, "main", "fix", "review", &work, BOB.0, BOB.1, None).expect_err("nothing to merge");
    assert_eq!(err.reason(), "AlreadyMerged");
    let err = approve_as_person(&fx.url, "main", "fix", "security", &work, BOB.0, BOB.1, None).expect_err("no branch");
    assert_eq!(err.reason(), "ApprovalBranchMissing");
    Ok(())
}

#[test]
fn plain_git_merge_by_bob_and_request_from_a_merged_pr() -> Result<()> {
    let fx = Fixture::new()?;
    // A second request arrives through a pull request: alice commits on a
    // branch, carol merges it with --no-ff. The requester is still alice.
    let alice = fx.root.join("alice-wt");
    git(&alice, ALICE, &["pull", "--quiet", "--ff-only", "origin", "main"])?;
    git(&alice, ALICE, &["checkout", "--quiet", "-b", "add-other"])?;
    write(&alice, "requests/other.yaml", &REQUEST.replace("name: fix", "name: other"))?;
    git(&alice, ALICE, &["add", "-A"])?;
    git(&alice, ALICE, &["commit", "--quiet", "-m", "Ask for other"])?;
    git(&alice, ALICE, &["push", "--quiet", "origin", "add-other"])?;
    let carol = fx.clone_as("carol-wt", CAROL)?;
    git(&carol, CAROL, &["merge", "--quiet", "--no-ff", "-m", "Merge PR add-other", "origin/add-other"])?;
    git(&carol, CAROL, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;

    let branches = fx.branches()?;
    branches.open(&fx.url, "main", &Proposal { request: "other", gate: "review", generation: "g1", revision: 0, summary: "" })?;
    // Bob approves with nothing but git.
    let bob = fx.clone_as("bob-wt", BOB)?;
    git(&bob, BOB, &["merge", "--no-ff", "-m", "Approve other/review", "origin/hadron/approve/other/review"])?;
    git(&bob, BOB, &["push", "--quiet", "origin", "main"])?;
    let merge = git(&bob, BOB, &["rev-parse", "HEAD"])?;

    let repo = fx.repo()?;
    let head = oid(&fx.rev("refs/heads/main")?)?;
    let approver = approver_of(&repo, head, "other", "review")?.context("an approver")?;
    assert_eq!((approver.name.as_str(), approver.email.as_str(), approver.commit.as_str()), (BOB.0, BOB.1, merge.as_str()));
    let requester = requester_of(&repo, head, "other")?.context("a requester")?;
    assert_eq!(requester, Person::new(ALICE.0, ALICE.1), "the PR author, not carol who merged it");
    assert_eq!(requester_of(&repo, head, "fix")?, Some(Person::new(ALICE.0, ALICE.1)));

    // A direct commit: bob cherry-picks hadron's approval commit. The
    // committer (bob), not the author (hadron), is the approver.
    branches.open(&fx.url, "main", &Proposal { request: "other", gate: "security", generation: "g1", revision: 0, summary: "" })?;
    git(&bob, BOB, &["fetch", "--quiet", "origin"])?;
    git(&bob, BOB, &["cherry-pick", "origin/hadron/approve/other/security"])?;
    git(&bob, BOB, &["push", "--quiet", "origin", "main"])?;
    let picked = git(&bob, BOB, &["rev-parse", "HEAD"])?;
    assert_eq!(git(&bob, BOB, &["log", "-1", "--format=%an", &picked])?, "hadron");
    let head = oid(&picked)?;
    let security = approver_of(&fx.repo()?, head, "other", "security")?.context("an approver")?;
    assert_eq!((security.name.as_str(), security.commit.as_str()), (BOB.0, picked.as_str()));
    assert_eq!(approver_of(&fx.repo()?, head, "other", "review")?, Some(approver.clone()));

    // A fast-forward: main takes hadron's commit as is, so hadron is the
    // "approver" and the policy rejects it.
    branches.open(&fx.url, "main", &Proposal { request: "fix", gate: "review", generation: "g1", revision: 0, summary: "" })?;
    git(&bob, BOB, &["fetch", "--quiet", "origin"])?;
    git(&bob, BOB, &["merge", "--quiet", "--ff-only", "origin/hadron/approve/fix/review"])?;
    git(&bob, BOB, &["push", "--quiet", "origin", "main"])?;
    let ff = git(&bob, BOB, &["rev-parse", "HEAD"])?;
    let hadron = approver_of(&fx.repo()?, oid(&ff)?, "fix", "review")?.context("an approver")?;
    assert_eq!((hadron.name.as_str(), hadron.commit.as_str()), ("hadron", ff.as_str()));
    let approval: Approval = serde_saphyr::from_str(&fx.show("main:approvals/fix/review.yaml")?)?;
    let policy = ApproverPolicy { users: vec!["bob".into()], teams: vec![] };
    assert!(matches!(
        decide(Some(&approval), Ok(&hadron), Ok(&Person::new(ALICE.0, ALICE.1)), &policy, "g1"),
        GateDecision::Rejected { .. }
    ));

    // Later commits on main do not change who approved.
    let later = oid(&fx.move_main(CAROL, "later.md")?)?;
    assert_eq!(approver_of(&fx.repo()?, later, "other", "review")?, Some(approver));
    Ok(())
}

#[test]
fn decisions_for_requester_outsider_stale_and_missing() -> Result<()> {
    let fx = Fixture::new()?;
    let branches = fx.branches()?;
    branches.open(&fx.url, "main", &Proposal { request: "fix", gate: "review", generation: "gen1", revision: 0, summary: "" })?;
    branches.open(&fx.url, "main", &Proposal { request: "fix", gate: "security", generation: "gen1", revision: 0, summary: "" })?;
    let work = fx.root.join("approvals");
    let by_alice = approve_as_person(&fx.url, "main", "fix", "review", &work, ALICE.0, ALICE.1, None)?;
    let by_carol = approve_as_person(&fx.url, "main", "fix", "security", &work, CAROL.0, CAROL.1, None)?;

    let repo = fx.repo()?;
    let head = oid(&fx.rev("refs/heads/main")?)?;
    let requester = requester_of(&repo, head, "fix")?.context("a requester")?;
    // Alice is listed, but she asked: her own merge never counts.
    let policy = ApproverPolicy { users: vec!["alice".into(), "bob@example.com".into()], teams: vec![] };

    let review = fx.approval_in_main("review")?;
    let alice = approver_of(&repo, head, "fix", "review")?.context("an approver")?;
    assert_eq!((alice.name.as_str(), alice.commit.as_str()), ("alice", by_alice.as_str()));
    match decide(Some(&review), Ok(&alice), Ok(&requester), &policy, "gen1") {
        GateDecision::Rejected { by, why } => {
            assert_eq!(by.as_ref(), Some(&alice));
            assert!(why.contains("requester"), "{why}");
        }
        other => bail!("expected Rejected, got {other:?}"),
    }

    let security = fx.approval_in_main("security")?;
    let carol = approver_of(&repo, head, "fix", "security")?.context("an approver")?;
    assert_eq!((carol.name.as_str(), carol.commit.as_str()), ("carol", by_carol.as_str()));
    match decide(Some(&security), Ok(&carol), Ok(&requester), &policy, "gen1") {
        GateDecision::Rejected { why, .. } => {
            assert!(why.contains("not an allowed approver") && why.contains("hadron.yaml"), "{why}")
        }
        other => bail!("expected Rejected, got {other:?}"),
    }
    let nobody = ApproverPolicy::default();
    match decide(Some(&security), Ok(&carol), Ok(&requester), &nobody, "gen1") {
        GateDecision::Rejected { why, .. } => assert!(why.contains("spec.approvers.users in hadron.yaml"), "{why}"),
        other => bail!("expected Rejected, got {other:?}"),
    }
    let carol_allowed = ApproverPolicy { users: vec!["carol".into()], teams: vec![] };
    assert!(matches!(decide(Some(&security), Ok(&carol), Ok(&requester), &carol_allowed, "gen1"), GateDecision::Approved { .. }));
    assert_eq!(
        decide(Some(&security), Ok(&carol), Ok(&requester), &carol_allowed, "gen2"),
        GateDecision::Stale { given_for: "gen1".into() }
    );
    assert_eq!(decide(None, Err("no approval"), Ok(&requester), &carol_allowed, "gen1"), GateDecision::Waiting);

    // Same person under another name: the email decides.
    let alias = hadron::gates::Approver { name: "Alice A.".into(), email: "ALICE@example.com".into(), commit: by_alice };
    let lenient = ApproverPolicy { users: vec!["Alice A.".into()], teams: vec![] };
    assert!(matches!(decide(Some(&review), Ok(&alias), Ok(&requester), &lenient, "gen1"), GateDecision::Rejected { .. }));
    Ok(())
}

/// Alice asked with alice <alice@example.com>. Merging the approval branch as
/// herself under another email, or under another name with her email, is
/// still her: one identity rule (name OR email) for the requester check and
/// the allow-list, so listing her does not let her approve her own request.
#[test]
fn the_requester_cannot_approve_under_another_email_or_name() -> Result<()> {
    let fx = Fixture::new()?;
    let branches = fx.branches()?;
    let work = fx.root.join("approvals");
    let policy = ApproverPolicy { users: vec!["alice".into(), "alice@example.com".into(), "bob".into()], teams: vec![] };
    for (gate, who) in [("review", ("alice", "other@example.com")), ("security", ("Alice Liddell", "ALICE@example.com"))] {
        branches.open(&fx.url, "main", &Proposal { request: "fix", gate, generation: "gen1", revision: 0, summary: "" })?;
        // What `hadron approve fix <gate> --as <name> --email <email>` does.
        let merge = approve_as_person(&fx.url, "main", "fix", gate, &work, who.0, who.1, None)?;
        let repo = fx.repo()?;
        let head = oid(&fx.rev("refs/heads/main")?)?;
        let approver = approver_of(&repo, head, "fix", gate)?.context("an approver")?;
        assert_eq!((approver.name.as_str(), approver.email.as_str(), approver.commit.as_str()), (who.0, who.1, merge.as_str()));
        let requester = requester_of(&repo, head, "fix")?.context("a requester")?;
        assert_eq!(requester, Person::new(ALICE.0, ALICE.1));
        match decide(Some(&fx.approval_in_main(gate)?), Ok(&approver), Ok(&requester), &policy, "gen1") {
            GateDecision::Rejected { by, why } => {
                assert_eq!(by.as_ref(), Some(&approver));
                assert!(why.contains("is the requester") && why.contains("may not approve"), "{gate}: {why}");
            }
            other => bail!("{who:?} is the requester alice and must not approve: {other:?}"),
        }
        // The unknown requester (a lookup that failed) stops it too.
        let unknown = decide(Some(&fx.approval_in_main(gate)?), Ok(&approver), Err("history unreadable"), &policy, "gen1");
        assert!(matches!(&unknown, GateDecision::Rejected { why, .. } if why.contains("could not be determined")), "{unknown:?}");
    }
    // Bob, listed, is someone else: his merge counts.
    branches.open(&fx.url, "main", &Proposal { request: "fix", gate: "review", generation: "gen2", revision: 0, summary: "" })?;
    approve_as_person(&fx.url, "main", "fix", "review", &work, BOB.0, BOB.1, None)?;
    let repo = fx.repo()?;
    let head = oid(&fx.rev("refs/heads/main")?)?;
    let bob = approver_of(&repo, head, "fix", "review")?.context("an approver")?;
    let requester = requester_of(&repo, head, "fix")?.context("a requester")?;
    let approval = fx.approval_in_main("review")?;
    assert_eq!(decide(Some(&approval), Ok(&bob), Ok(&requester), &policy, "gen2"), GateDecision::Approved { by: bob.clone() });
    Ok(())
}

/// Builds a 2,000-commit history with `git fast-import`: alice adds the
/// request first, an approval arrives by bob's merge at commit 1,500, and
/// 500 unrelated commits follow. Prints how long the lookups take.
#[test]
fn history_lookup_on_two_thousand_commits() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo_dir = tmp.path().join("big.git");
    git(tmp.path(), ADMIN, &["init", "--quiet", "--bare", "--initial-branch=main", "big.git"])?;
    let mut stream = String::new();
    let blob = |s: &mut String, text: &str| {
        s.push_str(&format!("data {}\n{text}\n", text.len()));
    };
    let mut mark = 0u32;
    let mut commit = |s: &mut String, who: (&str, &str), t: u64, msg: &str, from: Option<u32>, merge: Option<u32>, file: (&str, &str)| {
        mark += 1;
        s.push_str(&format!(
            "commit refs/heads/{}\nmark :{mark}\n",
            if merge.is_none() && from == Some(u32::MAX) { "side" } else { "main" }
        ));
        s.push_str(&format!("author {} <{}> {t} +0000\ncommitter {} <{}> {t} +0000\n", who.0, who.1, who.0, who.1));
        s.push_str(&format!("data {}\n{msg}\n", msg.len()));
        if let Some(f) = from.filter(|f| *f != u32::MAX) {
            s.push_str(&format!("from :{f}\n"));
        }
        if let Some(m) = merge {
            s.push_str(&format!("merge :{m}\n"));
        }
        s.push_str(&format!("M 100644 inline {}\n", file.0));
        blob(s, file.1);
        s.push('\n');
        mark
    };
    let mut t = 1_700_000_000u64;
    let mut last = commit(&mut stream, ALICE, t, "Ask for fix", None, None, ("requests/fix.yaml", REQUEST));
    let mut merge_mark = 0;
    for i in 2..=2000u32 {
        t += 60;
        if i == 1500 {
            // The approval commit on a side branch from main's head, then bob's merge.
            stream.push_str(&format!("reset refs/heads/side\nfrom :{last}\n\n"));
            let side = commit(
                &mut stream,
                ("hadron", "hadron@localhost"),
                t,
                "Open approval",
                Some(u32::MAX),
                None,
                ("approvals/fix/review.yaml", &render_approval("fix", "review", "g1", 0, "")?),
            );
            // fast-import does not merge trees: the merge names the file it brings.
            let approval = render_approval("fix", "review", "g1", 0, "")?;
            merge_mark =
                commit(&mut stream, BOB, t + 1, "Approve fix/review", Some(last), Some(side), ("approvals/fix/review.yaml", &approval));
            last = merge_mark;
            continue;
        }
        let who = if i % 3 == 0 { CAROL } else { ADMIN };
        last = commit(&mut stream, who, t, &format!("change {i}"), Some(last), None, (&format!("src/f{}.txt", i % 97), &format!("{i}\n")));
    }
    stream.push_str("done\n");
    let mut child =
        git_command(&repo_dir, ADMIN, &[], &["fast-import", "--quiet", "--done"]).stdin(std::process::Stdio::piped()).spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, stream.as_bytes())?;
    drop(child.stdin.take());
    assert!(child.wait()?.success(), "fast-import");
    assert_eq!(git(&repo_dir, ADMIN, &["rev-list", "--count", "main"])?, "2001", "2,000 on main plus the side commit");
    let merge = git(&repo_dir, ADMIN, &["rev-list", "--merges", "main"])?;
    assert_eq!(merge.lines().count(), 1);
    assert!(merge_mark > 0);

    let repo = gix::open(&repo_dir)?;
    let head = oid(&git(&repo_dir, ADMIN, &["rev-parse", "main"])?)?;
    let started = Instant::now();
    let approver = approver_of(&repo, head, "fix", "review")?.context("an approver")?;
    let approver_time = started.elapsed();
    let started = Instant::now();
    let requester = requester_of(&repo, head, "fix")?.context("a requester")?;
    let requester_time = started.elapsed();
    println!("2,000 commits: approver_of {approver_time:?}, requester_of {requester_time:?}");
    assert_eq!((approver.name.as_str(), approver.commit.as_str()), ("bob", merge.trim()));
    assert_eq!(requester, Person::new(ALICE.0, ALICE.1));
    Ok(())
}
