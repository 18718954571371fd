-- Commit statuses of target-repo heads, as reported by CI (locally through
-- `hadron ci-status`, later by the forge). A `ci` gate reads them.
CREATE TABLE commit_statuses (
    repo TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    context TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'success', 'failure')),
    at BIGINT NOT NULL,
    PRIMARY KEY (repo, commit_sha, context)
);
