-- Reports (issue 14): each request's history as the report reads it, kept
-- beside the event log instead of folded out of it at report time (the fold
-- over a million events was most of `precert report`'s time, bench-report).
--
-- A row is derived from the case's status changes alone and rewritten, by
-- the same fold, in the transaction that appends any status change
-- (`store::facts`); `precert db rebuild-facts` rewrites them all. The event
-- log stays the source of truth: `last_at` is the latest time among the
-- changes folded, so a report as of an instant reads the rows with
-- `last_at` at or before it and folds the events of the others, and says
-- exactly what the fold alone says.
CREATE TABLE case_facts (
    case_id      INTEGER PRIMARY KEY REFERENCES cases(id),
    -- The latest status change folded (by id) and the latest time among them.
    last_id      INTEGER NOT NULL,
    last_at      TEXT NOT NULL,
    -- The status the latest change left it in.
    status       TEXT NOT NULL,
    -- The first move from `submitting` to a payer state, and how many.
    submitted_at TEXT,
    submissions  INTEGER NOT NULL,
    approved_at  TEXT,
    partial_at   TEXT,
    denied_at    TEXT,
    -- The first move to `denied` (its event carries the reason code).
    denied_id    INTEGER,
    pend_at      TEXT,
    pends        INTEGER NOT NULL,
    cancelled_at TEXT,
    -- The first move from a denial or a partial approval back to `ready`.
    appealed_at  TEXT
);
-- The requests changed after a report's instant (folded from the events).
CREATE INDEX case_facts_last_at ON case_facts (last_at);

INSERT INTO case_facts (case_id, last_id, last_at, status, submitted_at, submissions, approved_at, partial_at,
                        denied_at, denied_id, pend_at, pends, cancelled_at, appealed_at)
SELECT e.case_id, MAX(e.id), MAX(e.at),
       (SELECT e2.to_status FROM case_events e2 WHERE e2.case_id = e.case_id AND e2.to_status IS NOT NULL
          ORDER BY e2.id DESC LIMIT 1),
       MIN(e.at) FILTER (WHERE e.from_status = 'submitting'
                         AND e.to_status IN ('pending', 'pended_for_info', 'approved', 'partially_approved', 'denied')),
       COUNT(*) FILTER (WHERE e.from_status = 'submitting'
                        AND e.to_status IN ('pending', 'pended_for_info', 'approved', 'partially_approved', 'denied')),
       MIN(e.at) FILTER (WHERE e.to_status = 'approved'),
       MIN(e.at) FILTER (WHERE e.to_status = 'partially_approved'),
       MIN(e.at) FILTER (WHERE e.to_status = 'denied'),
       MIN(e.id) FILTER (WHERE e.to_status = 'denied'),
       MIN(e.at) FILTER (WHERE e.to_status = 'pended_for_info'),
       COUNT(*) FILTER (WHERE e.to_status = 'pended_for_info'),
       MIN(e.at) FILTER (WHERE e.to_status = 'cancelled'),
       MIN(e.at) FILTER (WHERE e.from_status IN ('denied', 'partially_approved') AND e.to_status = 'ready')
FROM case_events e
WHERE e.to_status IS NOT NULL
GROUP BY e.case_id;
