-- The web console (issue 13): its users, their sessions, and the audit of
-- what they saw and did. Timestamps are UTC RFC 3339 text with
-- microseconds, as in 0001, so they compare correctly as text.

CREATE TABLE console_users (
    name                TEXT    PRIMARY KEY,
    -- admin | supervisor | operator
    role                TEXT    NOT NULL,
    -- JSON list of practice ids the user may see; an admin sees all.
    practices           TEXT    NOT NULL,
    -- Argon2id, as a PHC string (the salt and parameters inside).
    password_hash       TEXT    NOT NULL,
    disabled            INTEGER NOT NULL DEFAULT 0,
    -- Failed sign-ins in a row; a success or a new password resets it.
    failed_logins       INTEGER NOT NULL DEFAULT 0,
    locked_until        TEXT,
    created_at          TEXT    NOT NULL,
    password_changed_at TEXT    NOT NULL,
    last_login_at       TEXT
);

CREATE TABLE console_sessions (
    -- SHA-256 of the cookie's random token: a copy of the database signs
    -- nobody in.
    token_hash   TEXT    PRIMARY KEY,
    user_name    TEXT    NOT NULL REFERENCES console_users (name),
    -- The session's CSRF token, carried by every form.
    csrf         TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    last_seen_at TEXT    NOT NULL,
    -- The absolute end, however busy the session.
    expires_at   TEXT    NOT NULL,
    remote       TEXT
);

CREATE INDEX console_sessions_by_user ON console_sessions (user_name);

-- Who saw or did what, when, from where: sign-ins (failed ones too),
-- every page with patient data, reveals, downloads and actions.
CREATE TABLE console_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT    NOT NULL,
    -- The signed-in user, or the name typed at a failed sign-in.
    user_name   TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    practice_id TEXT,
    case_id     INTEGER,
    remote      TEXT,
    -- JSON object; never patient data.
    detail      TEXT    NOT NULL
);

CREATE INDEX console_audit_by_case ON console_audit (case_id, id);

CREATE TRIGGER console_audit_no_update BEFORE UPDATE ON console_audit
BEGIN
    SELECT RAISE(ABORT, 'console_audit is append-only');
END;

CREATE TRIGGER console_audit_no_delete BEFORE DELETE ON console_audit
BEGIN
    SELECT RAISE(ABORT, 'console_audit is append-only');
END;

-- The worklist shows the most recently changed cases first, a page at a
-- time.
CREATE INDEX cases_by_updated ON cases (updated_at, id);
CREATE INDEX cases_by_practice_updated ON cases (practice_id, updated_at, id);
