-- Hadron store schema, SQLite flavour. Timestamps are unix milliseconds (INTEGER).
-- Keep in step with ../postgres/0001_init.sql: same tables, columns and constraints.

CREATE TABLE requests (
    name              TEXT    PRIMARY KEY NOT NULL,
    generation        TEXT    NOT NULL,
    observed_revision TEXT    NOT NULL,
    phase             TEXT    NOT NULL,
    stage             TEXT,
    message           TEXT    NOT NULL DEFAULT '',
    updated_at        INTEGER NOT NULL
);

CREATE TABLE attempts (
    worker_name   TEXT    PRIMARY KEY NOT NULL,
    request       TEXT    NOT NULL REFERENCES requests (name) ON DELETE CASCADE,
    generation    TEXT    NOT NULL,
    stage         TEXT    NOT NULL,
    repo          TEXT    NOT NULL,
    attempt       INTEGER NOT NULL CHECK (attempt >= 0),
    driver        TEXT    NOT NULL,
    state         TEXT    NOT NULL
        CHECK (state IN ('Pending', 'Running', 'Succeeded', 'Failed', 'Cancelled')),
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    cost_usd      REAL,
    tokens_in     INTEGER CHECK (tokens_in >= 0),
    tokens_out    INTEGER CHECK (tokens_out >= 0),
    result        TEXT,
    pushed_commit TEXT,
    UNIQUE (request, generation, stage, repo, attempt)
);

CREATE INDEX attempts_by_request ON attempts (request, stage, attempt);

CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    request  TEXT,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    revision TEXT,
    detail   TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX events_by_request ON events (request, id);

-- The audit log is append-only: the database itself refuses changes.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'hadron events are append-only');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'hadron events are append-only');
END;

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at       INTEGER NOT NULL,
    message          TEXT    NOT NULL,
    files            TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published')),
    published_commit TEXT,
    published_at     INTEGER
);

CREATE INDEX outbox_by_state ON outbox (state, id);

CREATE TABLE webhook_deliveries (
    delivery_id TEXT    PRIMARY KEY NOT NULL,
    event       TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);

CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (received_at);

CREATE TABLE kv (
    key        TEXT    PRIMARY KEY NOT NULL,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);
