-- Each file of an outbox entry in a row of its own: publishing 10,000
-- status files writes a few multi-row statements instead of one ~10 MB
-- JSON value (which the database copied twice in memory). Entries written
-- before keep their files in `outbox.files` (JSON); newer ones write `{}`
-- there. Rows go with their entry (pruning deletes the entry).
CREATE TABLE outbox_files (
    outbox_id BIGINT  NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    path      TEXT    NOT NULL,
    content   TEXT,
    PRIMARY KEY (outbox_id, path)
);
