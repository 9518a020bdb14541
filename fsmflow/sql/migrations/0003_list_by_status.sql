-- fsmflow: no-transaction
-- fsmflow schema version 3: the index that lists instances by a terminal status
-- (`fsmflow list --status failed`, prune's candidates) without walking every instance
-- of a workflow. Only terminal rows are in it, so it stays small and costs running
-- appends nothing.
--
-- Built CONCURRENTLY, statement by statement outside a transaction: runners keep reading
-- and appending while it builds. `fsmflow migrate` first drops an INVALID index that an
-- interrupted build left behind, so running it again resumes. The started index is
-- created here too if it is missing (fsmflow 0.1 skipped it for a 63-character table
-- name). By hand: run each statement with psql, without -1.

CREATE INDEX CONCURRENTLY IF NOT EXISTS fsmflow_transitions_started_idx
    ON fsmflow_transitions (workflow_name, created_at DESC, instance_id)
    WHERE seq = 0;

CREATE INDEX CONCURRENTLY IF NOT EXISTS fsmflow_transitions_terminal_idx
    ON fsmflow_transitions (workflow_name, status, created_at DESC, instance_id)
    WHERE status <> 'running';

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=3';
