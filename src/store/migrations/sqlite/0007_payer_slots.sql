-- A payer's session slots, shared by every daemon on this ledger: a run
-- against a playbook holds one of its `max_sessions` slots for as long as it
-- runs (renewed with its job's lease), so N daemons together never open more
-- sessions to one portal than the playbook allows. A slot whose holder stopped
-- renewing is free once `expires_at` has passed; `token` grows with every
-- grant, so a holder that lost its slot cannot renew or free the next one's.

CREATE TABLE payer_slots (
    playbook   TEXT    NOT NULL,
    slot       INTEGER NOT NULL,
    holder     TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    expires_at TEXT    NOT NULL,
    PRIMARY KEY (playbook, slot)
);
