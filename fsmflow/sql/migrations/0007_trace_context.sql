-- fsmflow schema version 7: trace context. An instance's seq-0 row records the W3C
-- traceparent of the span that started it (the first run, a submission or a fork), so that
-- every later run of the instance (a resume after a crash, a worker's takeover) continues
-- the same trace. One nullable column (NULL: no tracing configured when it started, or an
-- older row): no table rewrite, no existing row touched, no new grants. One transaction.

ALTER TABLE fsmflow_transitions ADD COLUMN IF NOT EXISTS trace_parent text;

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=7';
