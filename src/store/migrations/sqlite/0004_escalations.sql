-- Escalations and the mail outbox (issue 7). Timestamps are UTC RFC 3339
-- text with microseconds, as in 0001, so they compare correctly as text.

-- When the payer got the request: the start of its decision deadline.
ALTER TABLE cases ADD COLUMN submitted_at TEXT;
UPDATE cases SET submitted_at = (
    SELECT MIN(e.at) FROM case_events e
    WHERE e.case_id = cases.id AND e.from_status = 'submitting'
      AND e.to_status IN ('pending', 'pended_for_info', 'approved', 'partially_approved', 'denied')
);

-- Something a person must act on, raised by a rule.
CREATE TABLE escalations (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    practice_id     TEXT    NOT NULL,
    -- NULL for escalations about a payer rather than a case (circuit open).
    case_id         INTEGER REFERENCES cases (id),
    payer           TEXT,
    -- denied, pended_for_info, partially_approved, stall_warning, stalled,
    -- service_date_near, needs_attention, letter_missing, payer_paused
    reason          TEXT    NOT NULL,
    -- One escalation per key at a time: `case:ID:REASON` or
    -- `payer:PRACTICE:PAYER:REASON`.
    dedupe_key      TEXT    NOT NULL,
    -- supervisors | operations: who hears of it first.
    audience        TEXT    NOT NULL,
    -- 0 = the first level; 1 = the next (managers).
    level           INTEGER NOT NULL DEFAULT 0,
    -- open | acknowledged | resolved
    state           TEXT    NOT NULL,
    -- Higher is more urgent (digest order).
    severity        INTEGER NOT NULL,
    -- The deadline that matters: the payer's decision deadline, the appeal
    -- deadline, the service date.
    due_at          TEXT,
    -- One line without PHI, for lists and digests.
    summary         TEXT    NOT NULL,
    -- JSON: what the rule saw (days pending, windows, reason).
    detail          TEXT    NOT NULL,
    opened_at       TEXT    NOT NULL,
    -- Mails sent for it so far (the first, reminders, the next level).
    sends           INTEGER NOT NULL DEFAULT 0,
    -- Reminders sent at the current level.
    reminders       INTEGER NOT NULL DEFAULT 0,
    last_sent_at    TEXT,
    -- The next reminder or move to the next level; NULL once acknowledged.
    next_action_at  TEXT,
    acknowledged_at TEXT,
    acknowledged_by TEXT,
    note            TEXT,
    closed_at       TEXT
);

CREATE UNIQUE INDEX escalations_active ON escalations (dedupe_key) WHERE state IN ('open', 'acknowledged');
-- The dedupe check looks up every escalation with a key, resolved ones
-- included (the repeat window): without this, a table scan per check
-- (measured by bench-escalations).
CREATE INDEX escalations_by_key ON escalations (dedupe_key, closed_at);
CREATE INDEX escalations_by_case ON escalations (case_id, state);
CREATE INDEX escalations_due ON escalations (state, next_action_at);

-- Mail waiting to go out, written in the transaction that caused it; the
-- sender delivers it with retries and marks it sent.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Stable per mail (without <>): a resend after a crash carries the same one.
    message_id      TEXT    NOT NULL UNIQUE,
    practice_id     TEXT    NOT NULL,
    escalation_id   INTEGER REFERENCES escalations (id),
    -- escalation | reminder | next_level | digest
    kind            TEXT    NOT NULL,
    -- JSON list of every recipient (to and cc), for `precert outbox`.
    recipients      TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    -- JSON mail::OutgoingMail: the rendered message.
    mail            TEXT    NOT NULL,
    -- pending | sending | sent | failed
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    -- While `sending`: the claim runs out then (a sender that died).
    lease_until     TEXT,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    sent_at         TEXT
);

CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_claims ON outbox (state, lease_until);
