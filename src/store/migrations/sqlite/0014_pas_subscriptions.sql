-- The cluster's PAS subscriptions: one row per practice binding's
-- notification route (`PRACTICE/PAYER_KEY`). Whichever daemon claims the row
-- (holder + lease_until) registers the subscription at the payer and records
-- its id and the SHA-256 of the bearer token the payer presents; every daemon
-- serves the route and checks the token against this row, so a notification
-- is accepted by whichever daemon receives it. `fingerprint` names what the
-- subscription was registered from (practice NPI, binding, payer, endpoint):
-- a start or reload that wants another one replaces it. A row with no
-- `subscription_id` is a registration still to be done (or that failed).

CREATE TABLE pas_subscriptions (
    route           TEXT NOT NULL PRIMARY KEY,
    fingerprint     TEXT NOT NULL,
    subscription_id TEXT,
    token_sha256    TEXT,
    holder          TEXT,
    lease_until     TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
