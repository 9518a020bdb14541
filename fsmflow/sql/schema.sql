-- fsmflow schema, version 3.
--
-- One append-only table holds the history of every workflow instance: one row per event.
-- seq 0 starts an instance; each finished step appends the next seq; a terminal row has
-- status 'completed', 'failed' or 'cancelled'. Rows are never updated.
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
                    CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    completed       boolean     GENERATED ALWAYS AS (status = 'completed') STORED,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    fingerprint     text,
    attempt_id      uuid,
    duration_ms     double precision,
    error           jsonb,
    definition      jsonb,
    forked_from_instance text,
    forked_from_seq integer,
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

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=3';
