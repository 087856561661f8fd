-- The payer's own reference for a submitted request, and the letters kept
-- for each case.

ALTER TABLE cases ADD COLUMN payer_ref TEXT;
CREATE INDEX cases_by_payer_ref ON cases (payer, payer_ref);

CREATE TABLE letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id     INTEGER NOT NULL REFERENCES cases (id),
    kind        TEXT    NOT NULL,
    -- Relative to the data directory; the file is 0600.
    stored_path TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    media_type  TEXT    NOT NULL,
    fetched_at  TEXT    NOT NULL,
    UNIQUE (case_id, sha256)
);
