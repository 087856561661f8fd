-- A payer's session slots, shared by every daemon on this database: a run
-- against a playbook holds one of its `max_sessions` slots for as long as it
-- runs (renewed with its job's lease), so N daemons together never open more
-- sessions to one portal than the playbook allows. A slot whose holder stopped
-- renewing is free once `expires_at` has passed; `token` grows with every
-- grant, so a holder that lost its slot cannot renew or free the next one's.
-- A claim is one INSERT … ON CONFLICT DO UPDATE … WHERE expired: the row
-- lock serialises claimants of one slot.

CREATE TABLE payer_slots (
    playbook   TEXT   NOT NULL,
    slot       BIGINT NOT NULL,
    holder     TEXT   NOT NULL,
    token      BIGINT NOT NULL,
    expires_at TEXT   COLLATE "C" NOT NULL,
    PRIMARY KEY (playbook, slot)
);
