-- The console's worklist at 100 000 cases (bench-console):
-- * a practice and payer with or without a status: the counts per status
--   read this index alone, and a status's page comes in its order
--   (newest change first) without a sort;
CREATE INDEX cases_worklist ON cases (practice_id, payer, status, updated_at, id);
-- * a search by case ID prefix, case-insensitive as on SQLite: the query
--   asks `lower(case_ref) LIKE lower($n)`; `text_pattern_ops` lets a
--   prefix pattern use the index whatever the database's collation;
CREATE INDEX cases_by_ref_lower ON cases (lower(case_ref) text_pattern_ops);
-- * a search by the payer's reference, whatever the payer (the unique
--   index leads with the payer).
CREATE INDEX cases_by_payer_ref_only ON cases (payer_ref);
