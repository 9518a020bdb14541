-- fsmflow schema version 5: the worker fleet. Two helper tables beside the history, which
-- is not touched: the queue of instances submitted to workers, and the live workers.
-- Both hold coordination state only (what is runnable, who claimed it); the history stays
-- the truth and append-only. New tables only: one transaction, no lock on the history.

CREATE TABLE IF NOT EXISTS fsmflow_transitions_queue (
    workflow_name   text        NOT NULL,
    instance_id     text        NOT NULL,
    ready_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_by      text,
    claimed_at      timestamptz,
    wakes           bigint      NOT NULL DEFAULT 0,
    failures        integer     NOT NULL DEFAULT 0,
    submitted_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_name, instance_id)
);

CREATE INDEX IF NOT EXISTS fsmflow_transitions_queue_ready_idx
    ON fsmflow_transitions_queue (workflow_name, ready_at)
    WHERE claimed_by IS NULL;

CREATE INDEX IF NOT EXISTS fsmflow_transitions_queue_claimed_idx
    ON fsmflow_transitions_queue (claimed_by)
    WHERE claimed_by IS NOT NULL;

CREATE TABLE IF NOT EXISTS fsmflow_transitions_workers (
    worker_id       text        PRIMARY KEY,
    host            text        NOT NULL,
    pid             integer     NOT NULL,
    workflows       text[]      NOT NULL,
    concurrency     integer     NOT NULL,
    session_pid     integer     NOT NULL,
    session_start   timestamptz,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    running         integer     NOT NULL DEFAULT 0,
    finished        bigint      NOT NULL DEFAULT 0,
    stopping        boolean     NOT NULL DEFAULT false
);

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=5';
