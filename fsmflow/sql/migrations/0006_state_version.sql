-- fsmflow schema version 6: typed state. Each history row records the state_version of a
-- typed workflow's state (the version of its state model the row was written with), so an
-- instance stored under an older version is upgraded when it resumes or is forked.
-- One nullable column (NULL: an untyped workflow's row, or version 1): no table rewrite, no
-- existing row touched, no new grants. One transaction.

ALTER TABLE fsmflow_transitions ADD COLUMN IF NOT EXISTS state_version integer;

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=6';
