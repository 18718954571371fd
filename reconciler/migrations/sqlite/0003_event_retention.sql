-- The event log keeps a retention window: events older than the cut-off may
-- be deleted (by `Store::prune_events`), every other change is still refused
-- by the database. The cut-off only moves forward.
CREATE TABLE event_retention (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_before INTEGER NOT NULL
);

INSERT INTO event_retention (id, pruned_before) VALUES (1, 0);

CREATE TRIGGER event_retention_forward BEFORE UPDATE ON event_retention
WHEN NEW.pruned_before < OLD.pruned_before
BEGIN
    SELECT RAISE(ABORT, 'the event retention cut-off only moves forward');
END;

DROP TRIGGER events_no_delete;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.at >= (SELECT pruned_before FROM event_retention WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'hadron events are append-only: only events older than the retention cut-off are deleted');
END;

CREATE INDEX events_by_time ON events (at);
CREATE INDEX outbox_by_published ON outbox (state, published_at);
