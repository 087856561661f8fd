-- The console's deadline filters ("due within N hours", "past the
-- deadline") at 100 000 cases (bench-console): each undecided case's
-- decision deadline, stored beside it instead of computed for every
-- undecided case on every page.
--
-- A deadline depends on the case (urgency, payer, state, plan type,
-- submission time) and on the escalation rules in force, which a reload of
-- the configuration may change. `deadline_rules` names the rules it was
-- computed under (a digest of them); every write that changes a case's
-- status or data clears both columns in the same statement, and the
-- console computes the missing or outdated ones (`Ledger::stale_deadlines`,
-- `Ledger::store_deadlines`) before it filters. A case whose practice has no
-- rules gets its digest and no deadline.
ALTER TABLE cases ADD COLUMN deadline_at TEXT;
ALTER TABLE cases ADD COLUMN deadline_rules TEXT;
-- The cases to compute: undecided, submitted ones without a deadline
-- (a partial index: it holds only them, so the look before each deadline
-- filter reads nothing when all are computed).
CREATE INDEX cases_deadline_stale ON cases (status, id)
    WHERE status IN ('pending', 'pended_for_info') AND submitted_at IS NOT NULL AND deadline_rules IS NULL;
-- A filter's range of deadlines under the rules in force, its counts per
-- status and practice read from this index alone; and the deadlines
-- stored under other rules, to forget after a change of the rules.
CREATE INDEX cases_deadline ON cases (deadline_rules, deadline_at, status, practice_id, payer, urgency)
    WHERE deadline_rules IS NOT NULL;
