-- The event log keeps a retention window: events older than the cut-off may
-- be deleted (by `Store::prune_events`), every other change is still refused
-- by the database. The cut-off only moves forward.
CREATE TABLE event_retention (
    id            INT    PRIMARY KEY CHECK (id = 1),
    pruned_before BIGINT NOT NULL
);

INSERT INTO event_retention (id, pruned_before) VALUES (1, 0);

CREATE FUNCTION hadron_event_retention_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.pruned_before < OLD.pruned_before THEN
        RAISE EXCEPTION 'the event retention cut-off only moves forward';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER event_retention_forward BEFORE UPDATE ON event_retention
FOR EACH ROW EXECUTE FUNCTION hadron_event_retention_forward();

CREATE OR REPLACE FUNCTION hadron_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < (SELECT pruned_before FROM event_retention WHERE id = 1) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'hadron events are append-only: only events older than the retention cut-off are deleted';
END;
$$;

CREATE INDEX events_by_time ON events (at);
CREATE INDEX outbox_by_published ON outbox (state, published_at);
