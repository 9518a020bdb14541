-- fsmflow schema version 2: context is stored as json, the exact text fsmflow encoded,
-- so a resumed step receives its context with the keys in the order they were written
-- (jsonb sorts keys by length, then bytes). Rows written before keep jsonb's order.
--
-- Rewrites the table (and rebuilds its indexes) under an ACCESS EXCLUSIVE lock: runners
-- wait while it runs; see Upgrading in the README for how long. `fsmflow migrate` applies
-- it in one transaction. By hand (your table name substituted):
--   psql "$DATABASE_URL" -1 -f 0002_context_json.sql

ALTER TABLE fsmflow_transitions ALTER COLUMN context TYPE json USING context::json;

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=2';
