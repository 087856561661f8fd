-- The expected amount of a request (an optional intake field, in whole
-- cents; NULL: unknown, never zero), beside the case's JSON like its payer
-- and urgency: the report sums it over the requests at risk without reading
-- every case's JSON. Cases stored before this migration carry no amount
-- (the field did not exist), so nothing is backfilled.
ALTER TABLE cases ADD COLUMN expected_cents BIGINT;
