-- Hadron store schema, PostgreSQL flavour. Timestamps are unix milliseconds (BIGINT).
-- Keep in step with ../sqlite/0001_init.sql: same tables, columns and constraints.

CREATE TABLE requests (
    name              TEXT   PRIMARY KEY NOT NULL,
    generation        TEXT   NOT NULL,
    observed_revision TEXT   NOT NULL,
    phase             TEXT   NOT NULL,
    stage             TEXT,
    message           TEXT   NOT NULL DEFAULT '',
    updated_at        BIGINT NOT NULL
);

CREATE TABLE attempts (
    worker_name   TEXT   PRIMARY KEY NOT NULL,
    request       TEXT   NOT NULL REFERENCES requests (name) ON DELETE CASCADE,
    generation    TEXT   NOT NULL,
    stage         TEXT   NOT NULL,
    repo          TEXT   NOT NULL,
    attempt       BIGINT NOT NULL CHECK (attempt >= 0),
    driver        TEXT   NOT NULL,
    state         TEXT   NOT NULL
        CHECK (state IN ('Pending', 'Running', 'Succeeded', 'Failed', 'Cancelled')),
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    cost_usd      DOUBLE PRECISION,
    tokens_in     BIGINT CHECK (tokens_in >= 0),
    tokens_out    BIGINT CHECK (tokens_out >= 0),
    result        TEXT,
    pushed_commit TEXT,
    UNIQUE (request, generation, stage, repo, attempt)
);

CREATE INDEX attempts_by_request ON attempts (request, stage, attempt);

CREATE TABLE events (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    request  TEXT,
    actor    TEXT   NOT NULL,
    action   TEXT   NOT NULL,
    revision TEXT,
    detail   TEXT   NOT NULL DEFAULT ''
);

CREATE INDEX events_by_request ON events (request, id);

-- The audit log is append-only: the database itself refuses changes.
CREATE FUNCTION hadron_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'hadron events are append-only';
END;
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
FOR EACH ROW EXECUTE FUNCTION hadron_events_append_only();

CREATE TABLE outbox (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at       BIGINT NOT NULL,
    message          TEXT   NOT NULL,
    files            TEXT   NOT NULL,
    state            TEXT   NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published')),
    published_commit TEXT,
    published_at     BIGINT
);

CREATE INDEX outbox_by_state ON outbox (state, id);

CREATE TABLE webhook_deliveries (
    delivery_id TEXT   PRIMARY KEY NOT NULL,
    event       TEXT   NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (received_at);

CREATE TABLE kv (
    key        TEXT   PRIMARY KEY NOT NULL,
    value      TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
