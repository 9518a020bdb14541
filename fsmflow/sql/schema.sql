-- fsmflow schema, version 7.
--
-- One append-only table holds the history of every workflow instance: one row per event.
-- seq 0 starts an instance; each finished step appends the next seq; a terminal row has
-- status 'completed', 'failed' or 'cancelled'; a 'waiting' row says the instance waits in
-- dest_state (since waiting_since, until wake_at at the latest) for an event or a deadline.
-- Events sent to instances are appended to a second table, fsmflow_transitions_events; the history
-- row that delivers one names it in event_id. Rows of neither table are ever updated.
-- A typed workflow's rows record the state_version their context was written with.
-- An instance's seq-0 row records the W3C traceparent of the span that started it (NULL: none).
-- Instances submitted to the worker fleet are queued in fsmflow_transitions_queue until they
-- end, and live workers are listed in fsmflow_transitions_workers: coordination state only
-- (updated and deleted as instances are claimed and end), never the truth of an instance.
--
-- Apply by hand with:  psql "$DATABASE_URL" -f schema.sql
-- (fsmflow's init_db applies this same file to a new table, with the configured table name
-- substituted for fsmflow_transitions; `fsmflow migrate` upgrades an older table in place
-- with the files in migrations/: version 1 plus every migration is exactly this file.)
-- context is json, not jsonb: the exact text fsmflow wrote, keys in their order.

CREATE TABLE IF NOT EXISTS fsmflow_transitions (
    workflow_name   text        NOT NULL,
    instance_id     text        NOT NULL,
    seq             integer     NOT NULL CHECK (seq >= 0),
    trigger         text,
    source_state    text,
    dest_state      text,
    context         json        NOT NULL,
    status          text        NOT NULL DEFAULT 'running'
                    CONSTRAINT fsmflow_transitions_status_check
                    CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'cancelled')),
    completed       boolean     GENERATED ALWAYS AS (status = 'completed') STORED,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    fingerprint     text,
    attempt_id      uuid,
    duration_ms     double precision,
    error           jsonb,
    definition      jsonb,
    forked_from_instance text,
    forked_from_seq integer,
    waiting_since   timestamptz,
    wake_at         timestamptz,
    event_id        bigint,
    state_version   integer,
    trace_parent    text,
    PRIMARY KEY (workflow_name, instance_id, seq)
);

-- Instances of a workflow by start time: choosing the instance to resume, listing.
CREATE INDEX IF NOT EXISTS fsmflow_transitions_started_idx
    ON fsmflow_transitions (workflow_name, created_at DESC, instance_id)
    WHERE seq = 0;

-- Instances by terminal status (listing failed ones, prune's candidates): only terminal
-- rows, the last row of their instance except after `fsmflow retry`.
CREATE INDEX IF NOT EXISTS fsmflow_transitions_terminal_idx
    ON fsmflow_transitions (workflow_name, status, created_at DESC, instance_id)
    WHERE status <> 'running';

-- An event is delivered at most once: one history row per event, ever.
CREATE UNIQUE INDEX IF NOT EXISTS fsmflow_transitions_event_idx
    ON fsmflow_transitions (workflow_name, instance_id, event_id)
    WHERE event_id IS NOT NULL;

-- Waiting rows with a deadline, by deadline: which instances' timers are due.
CREATE INDEX IF NOT EXISTS fsmflow_transitions_wake_idx
    ON fsmflow_transitions (workflow_name, wake_at)
    WHERE status = 'waiting' AND wake_at IS NOT NULL;

-- Events sent to instances, append-only (sending, delivering and timing out need only
-- SELECT and INSERT). An event is pending until a history row names it in event_id.
CREATE TABLE IF NOT EXISTS fsmflow_transitions_events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_name   text        NOT NULL,
    instance_id     text        NOT NULL,
    event           text        NOT NULL,
    key             text,
    payload         json        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- An instance's events in the order they were sent.
CREATE INDEX IF NOT EXISTS fsmflow_transitions_events_instance_idx
    ON fsmflow_transitions_events (workflow_name, instance_id, id);

-- One event per idempotency key and instance: sending again with the key is a no-op.
CREATE UNIQUE INDEX IF NOT EXISTS fsmflow_transitions_events_key_idx
    ON fsmflow_transitions_events (workflow_name, instance_id, key)
    WHERE key IS NOT NULL;

-- The worker fleet's queue: one row per submitted instance that has not ended. ready_at:
-- runnable from then on (a deadline, 'infinity' while it waits for an event); claimed_by:
-- the worker that claimed it (a hint: the instance's advisory lock stays the fence); wakes:
-- bumped by every event, cancel and retry, so a worker suspends it only if none came.
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

-- The claim: unclaimed instances of a workflow, oldest ready first.
CREATE INDEX IF NOT EXISTS fsmflow_transitions_queue_ready_idx
    ON fsmflow_transitions_queue (workflow_name, ready_at)
    WHERE claimed_by IS NULL;

-- Takeover: the claims of one (dead) worker.
CREATE INDEX IF NOT EXISTS fsmflow_transitions_queue_claimed_idx
    ON fsmflow_transitions_queue (claimed_by)
    WHERE claimed_by IS NOT NULL;

-- Live workers: their session (liveness), heartbeat and counts (`fsmflow workers`).
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

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=7';
