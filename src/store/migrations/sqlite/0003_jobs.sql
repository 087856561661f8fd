-- The daemon's durable work: the job queue and the record of cron fires.
-- Timestamps are UTC RFC 3339 text with microseconds, as in 0001, so they
-- compare correctly as text.

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    -- A config::Job name: submit, poll, letters, escalations, digest.
    kind             TEXT    NOT NULL,
    practice_id      TEXT    NOT NULL,
    -- The payer the job works on; NULL for practice-wide jobs (digest).
    payer            TEXT,
    -- The case the job is about, when it is about one.
    case_id          INTEGER REFERENCES cases (id),
    -- queued | leased | done | dead
    state            TEXT    NOT NULL,
    -- Not before this time (a retry's backoff).
    run_at           TEXT    NOT NULL,
    -- Leases taken so far: a run that crashed the daemon counts too.
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    -- Fencing token: bumped by every lease; a worker's complete/fail/renew
    -- must present the token of its own lease, so a worker whose lease
    -- expired and was taken over cannot commit a late result.
    lease_token      INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    finished_at      TEXT
);

CREATE INDEX jobs_ready ON jobs (state, run_at);
CREATE INDEX jobs_by_practice ON jobs (practice_id, kind, state);

CREATE TABLE cron_fires (
    practice_id  TEXT    NOT NULL,
    job          TEXT    NOT NULL,
    -- The slot, as an instant: the key that makes each slot fire once,
    -- across restarts and however many schedulers race for it.
    scheduled_at TEXT    NOT NULL,
    fired_at     TEXT    NOT NULL,
    -- fired: the slot ran (its jobs were queued or skipped);
    -- baseline: the first time the schedule was seen, nothing ran.
    outcome      TEXT    NOT NULL,
    -- Earlier slots missed while the daemon was down, folded into this one.
    missed       INTEGER NOT NULL DEFAULT 0,
    enqueued     INTEGER NOT NULL DEFAULT 0,
    -- Payers whose previous run was still queued or leased.
    skipped      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (practice_id, job, scheduled_at)
);
