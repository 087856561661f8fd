-- The intake API (issue 16): per-practice tokens, and the webhook outbox
-- filled in the transaction of the change it reports. Times as in 0001.

-- A token is `pct_KEY_SECRET`: KEY finds the row, SECRET is checked
-- against its SHA-256 (a copy of the database lets nobody in).
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id       TEXT    NOT NULL UNIQUE,
    secret_hash  TEXT    NOT NULL,
    practice_id  TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    -- read | write
    scope        TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);

-- One live token per practice and name.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (practice_id, name) WHERE revoked_at IS NULL;

-- The practices with a webhook (`[api] webhook_url`), written by the
-- daemon from its configuration at start and at each reload: a change to a
-- case of one of them queues a delivery, whichever process makes it.
CREATE TABLE webhook_targets (
    practice_id TEXT PRIMARY KEY,
    updated_at  TEXT NOT NULL
);

-- Deliveries, one per case event (its id is the idempotency key).
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        INTEGER NOT NULL UNIQUE REFERENCES case_events (id),
    practice_id     TEXT    NOT NULL,
    case_id         INTEGER NOT NULL REFERENCES cases (id),
    -- decision | status
    kind            TEXT    NOT NULL,
    -- The JSON body, fixed when queued.
    payload         TEXT    NOT NULL,
    -- pending | sending | delivered | failed
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    lease_until     TEXT,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    delivered_at    TEXT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at, id);
CREATE INDEX webhook_outbox_lease ON webhook_outbox (state, lease_until, id);
CREATE INDEX webhook_outbox_by_practice ON webhook_outbox (practice_id, id);
