-- Reports (issue 14) fold every request's status changes out of the event
-- log. This index holds only status changes (a third of the events) with
-- every column the fold reads, in (case, id) order: the report reads it
-- alone, one case after another, never the events' table with its JSON
-- details, and a request's status as of an instant is one seek into it.
CREATE INDEX case_events_report ON case_events (case_id, id, at, from_status, to_status)
    WHERE to_status IS NOT NULL;
