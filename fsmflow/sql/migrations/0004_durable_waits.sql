-- fsmflow: no-transaction
-- fsmflow schema version 4: durable waits. The history gets a 'waiting' status and the
-- columns of a wait (waiting_since, wake_at) and of a delivered event (event_id); events
-- sent to instances get their own append-only table.
--
-- Statement by statement outside a transaction, each one safe to run again: the new
-- columns are nullable (no rewrite), the status check is swapped NOT VALID and validated
-- without blocking appends, and the history's new indexes are built CONCURRENTLY.
-- By hand: run each statement with psql, without -1.

ALTER TABLE fsmflow_transitions
    ADD COLUMN IF NOT EXISTS waiting_since timestamptz,
    ADD COLUMN IF NOT EXISTS wake_at timestamptz,
    ADD COLUMN IF NOT EXISTS event_id bigint;

-- The status check of versions 1-3 was unnamed: drop whichever check names the status
-- column, then add the named one of version 4 (not yet validated).
DO $fsmflow$
DECLARE
    found record;
BEGIN
    FOR found IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'fsmflow_transitions'::regclass AND contype = 'c'
          AND pg_get_constraintdef(oid) LIKE '%status%'
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I',
                       'fsmflow_transitions'::regclass, found.conname);
    END LOOP;
    ALTER TABLE fsmflow_transitions ADD CONSTRAINT fsmflow_transitions_status_check
        CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'cancelled')) NOT VALID;
END
$fsmflow$;

ALTER TABLE fsmflow_transitions VALIDATE CONSTRAINT fsmflow_transitions_status_check;

CREATE TABLE IF NOT EXISTS fsmflow_transitions_events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_name   text        NOT NULL,
    instance_id     text        NOT NULL,
    event           text        NOT NULL,
    key             text,
    payload         json        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX IF NOT EXISTS fsmflow_transitions_events_instance_idx
    ON fsmflow_transitions_events (workflow_name, instance_id, id);

CREATE UNIQUE INDEX IF NOT EXISTS fsmflow_transitions_events_key_idx
    ON fsmflow_transitions_events (workflow_name, instance_id, key)
    WHERE key IS NOT NULL;

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS fsmflow_transitions_event_idx
    ON fsmflow_transitions (workflow_name, instance_id, event_id)
    WHERE event_id IS NOT NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS fsmflow_transitions_wake_idx
    ON fsmflow_transitions (workflow_name, wake_at)
    WHERE status = 'waiting' AND wake_at IS NOT NULL;

COMMENT ON TABLE fsmflow_transitions IS 'fsmflow schema_version=4';
