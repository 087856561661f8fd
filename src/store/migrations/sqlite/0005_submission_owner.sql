-- Who owns a case while it is being submitted (issue 18): a lease taken
-- together with `ready -> submitting`, with a fencing token that grows with
-- every grant. A result carrying an older token changes nothing.
-- `owner_host`/`owner_pid`/`owner_start` let a claimant on the same host see
-- at once that the holder's process is gone (start = the process's start
-- time, so a reused PID is not mistaken for the holder).

ALTER TABLE cases ADD COLUMN owner       TEXT;
ALTER TABLE cases ADD COLUMN owner_host  TEXT;
ALTER TABLE cases ADD COLUMN owner_pid   INTEGER;
ALTER TABLE cases ADD COLUMN owner_start TEXT;
ALTER TABLE cases ADD COLUMN owner_since TEXT;
ALTER TABLE cases ADD COLUMN owner_until TEXT;
ALTER TABLE cases ADD COLUMN owner_token INTEGER NOT NULL DEFAULT 0;

-- One payer reference belongs to one case of that payer: adopting a request
-- can never take another case's.
DROP INDEX cases_by_payer_ref;
CREATE UNIQUE INDEX cases_payer_ref_unique ON cases (payer, payer_ref) WHERE payer_ref IS NOT NULL;
