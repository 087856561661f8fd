-- Scale: the escalation scan reads only the cases whose rules can fire
-- now, lists and lookups are indexed, and an unchanged poll is a
-- timestamp rather than an event.

-- When the time-based escalation rules must look at the case again: set
-- to the change's time by every status, decision or data change, and by
-- the scan to the next instant a rule could start to hold (a warning, a
-- deadline, the service date coming near, a letter overdue). NULL: no
-- rule can fire until the case changes.
ALTER TABLE cases ADD COLUMN next_check_at TEXT;
UPDATE cases SET next_check_at = updated_at WHERE status NOT IN ('cancelled', 'expired', 'not_required');
CREATE INDEX cases_next_check ON cases (practice_id, next_check_at, id) WHERE next_check_at IS NOT NULL;

-- The last time the payer was asked about the case and said nothing new
-- (the timeline records changes only).
ALTER TABLE cases ADD COLUMN last_polled_at TEXT;

-- The escalation rules a practice's cases were last scheduled by (a hash
-- of the effective rules): when they change, every case is looked at again.
CREATE TABLE escalation_rules_seen (
    practice_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    changed_at  TEXT NOT NULL
);

-- `cases list` pages by id under each filter; `cases show REF` finds a
-- case by its reference alone.
CREATE INDEX cases_list_practice ON cases (practice_id, id);
CREATE INDEX cases_list_payer ON cases (payer, id);
CREATE INDEX cases_list_status ON cases (status, id);
CREATE INDEX cases_by_ref ON cases (case_ref);
