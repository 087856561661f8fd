-- The case ledger: cases and their append-only event log.
-- Timestamps are UTC RFC 3339 text with microseconds ("...Z"), which sorts
-- correctly as text in SQLite and PostgreSQL alike.

CREATE TABLE cases (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    practice_id   TEXT    NOT NULL,
    case_ref      TEXT    NOT NULL,
    payer         TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    urgency       TEXT    NOT NULL,
    service_start TEXT    NOT NULL,
    service_end   TEXT    NOT NULL,
    -- The validated case as JSON (crate::case::CaseData).
    data          TEXT    NOT NULL,
    -- The payer's decision as JSON (crate::case::Decision), once known.
    decision      TEXT,
    -- Bumped by every change; writers compare-and-set on it.
    version       INTEGER NOT NULL DEFAULT 1,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    UNIQUE (practice_id, case_ref)
);

CREATE INDEX cases_by_status ON cases (status, payer);
CREATE INDEX cases_by_practice ON cases (practice_id, status);

CREATE TABLE case_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id     INTEGER NOT NULL REFERENCES cases (id),
    at          TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    -- Who did it: `user:NAME`, `job:poll#42`, `import:FILE`.
    actor       TEXT    NOT NULL,
    -- What else matters, as a JSON object. No secrets.
    detail      TEXT    NOT NULL
);

CREATE INDEX case_events_by_case ON case_events (case_id, id);

-- The audit trail is append-only: the database itself refuses to change it.
CREATE TRIGGER case_events_no_update BEFORE UPDATE ON case_events
BEGIN
    SELECT RAISE(ABORT, 'case_events is append-only');
END;

CREATE TRIGGER case_events_no_delete BEFORE DELETE ON case_events
BEGIN
    SELECT RAISE(ABORT, 'case_events is append-only');
END;
