-- Who owns a case while it is being submitted (issue 18): a lease taken
-- together with `ready -> submitting`, with a fencing token that grows with
-- every grant. A result carrying an older token changes nothing. The claim
-- reads the case row under a row lock (FOR NO KEY UPDATE), so two daemons
-- claiming at once are served one after the other.
-- `owner_host`/`owner_pid`/`owner_start` let a claimant on the same host see
-- at once that the holder's process is gone.

ALTER TABLE cases ADD COLUMN owner       TEXT;
ALTER TABLE cases ADD COLUMN owner_host  TEXT;
ALTER TABLE cases ADD COLUMN owner_pid   BIGINT;
ALTER TABLE cases ADD COLUMN owner_start TEXT;
ALTER TABLE cases ADD COLUMN owner_since TEXT COLLATE "C";
ALTER TABLE cases ADD COLUMN owner_until TEXT COLLATE "C";
ALTER TABLE cases ADD COLUMN owner_token BIGINT NOT NULL DEFAULT 0;

-- One payer reference belongs to one case of that payer: adopting a request
-- can never take another case's.
DROP INDEX cases_by_payer_ref;
CREATE UNIQUE INDEX cases_payer_ref_unique ON cases (payer, payer_ref) WHERE payer_ref IS NOT NULL;
