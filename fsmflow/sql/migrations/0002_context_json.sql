-- fsmflow schema version 2: context is stored as json, the exact text fsmflow encoded,
-- so a resumed step receives its context with the keys in the order they were written
-- (jsonb sorts keys by length, then bytes). Rows written before keep jsonb's order.
--
-- Rewrites the table under an ACCESS EXCLUSIVE lock: on a big table, run it in a quiet
-- moment (`fsmflow init-db` applies it in one transaction). By hand:
--   psql "$DATABASE_URL" -1 -f 0002_context_json.sql   (with your table name substituted)

ALTER TABLE fsmflow_transitions ALTER COLUMN context TYPE json USING context::json;

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=2';
