-- fsmflow schema, version 1 (as fsmflow 0.1 created it; kept to test the migrations).
--
-- One append-only table holds the history of every workflow instance: one row per event.
-- seq 0 starts an instance; each finished step appends the next seq; a terminal row has
-- status 'completed', 'failed' or 'cancelled'. Rows are never updated.
--
-- Never applied to a new table (schema.sql is the current schema): the migrations test
-- checks that this file plus every later migration gives exactly schema.sql.

CREATE TABLE IF NOT EXISTS fsmflow_transitions (
    workflow_name   text        NOT NULL,
    instance_id     text        NOT NULL,
    seq             integer     NOT NULL CHECK (seq >= 0),
    trigger         text,
    source_state    text,
    dest_state      text,
    context         jsonb       NOT NULL,
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

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=1';
