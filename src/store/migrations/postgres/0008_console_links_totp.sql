-- The console, continued (issue 13): the key that signs acknowledgement
-- links in mail, the record that each link is used once, and optional
-- TOTP for console users (PostgreSQL; the same schema as
-- migrations/sqlite/0008_console_links_totp.sql).

-- Keys the console generates for itself on first use (`ack_link`: 32
-- random bytes, base64), shared by every daemon and console on this ledger
-- so a link made by one is good at another.
CREATE TABLE console_keys (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL
);

-- Acknowledgement links that were used: the link's random nonce, so a link
-- works once. The link itself carries no patient data.
CREATE TABLE console_used_links (
    nonce         TEXT    PRIMARY KEY,
    escalation_id BIGINT  NOT NULL,
    used_at       TEXT    COLLATE "C" NOT NULL,
    used_by       TEXT    NOT NULL
);

-- The user's TOTP seed (base32) once they enrolled, and the last time step
-- a code was accepted for (a code works once).
ALTER TABLE console_users ADD COLUMN totp_secret TEXT;
ALTER TABLE console_users ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0;
