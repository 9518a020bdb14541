-- fsmflow's queries. Each block starts with "-- name: <name>" and a one-line description.
-- fsmflow_transitions stands for the configured (validated, quoted) table name.

-- name: append
-- Append seq $3 only if the instance's last row is seq $3 - 1 (zero rows: lost the race).
INSERT INTO fsmflow_transitions
    (workflow_name, instance_id, seq, trigger, source_state, dest_state, context, status,
     fingerprint, attempt_id, duration_ms, error)
SELECT $1::text, $2::text, $3::integer, $4::text, $5::text, $6::text, $7::jsonb, $8::text,
       $9::text, $10::uuid, $11::float8, $12::jsonb
WHERE coalesce(
    (SELECT max(seq) FROM fsmflow_transitions WHERE workflow_name = $1 AND instance_id = $2),
    -1) = $3 - 1;

-- name: start
-- Insert seq 0 of a new instance (fails with a unique violation if it already exists).
INSERT INTO fsmflow_transitions
    (workflow_name, instance_id, seq, dest_state, context, status, fingerprint, attempt_id,
     definition, forked_from_instance, forked_from_seq)
VALUES ($1, $2, 0, $3, $4::jsonb, 'running', $5, $6::uuid, $7::jsonb, $8, $9);

-- name: last_record
-- The latest row of one instance and the seq before it (two primary-key index probes).
SELECT l.*,
       (SELECT max(p.seq) FROM fsmflow_transitions p
        WHERE p.workflow_name = $1 AND p.instance_id = $2 AND p.seq < l.seq) AS prev_seq
FROM fsmflow_transitions l
WHERE l.workflow_name = $1 AND l.instance_id = $2
ORDER BY l.seq DESC
LIMIT 1;

-- name: record_at
-- One row of an instance by seq.
SELECT * FROM fsmflow_transitions
WHERE workflow_name = $1 AND instance_id = $2 AND seq = $3;

-- name: history
-- Every row of one instance in order.
SELECT * FROM fsmflow_transitions
WHERE workflow_name = $1 AND instance_id = $2
ORDER BY seq;

-- name: latest_unfinished
-- The most recently started instance of a workflow whose last row is not terminal.
SELECT s.instance_id FROM fsmflow_transitions s
WHERE s.workflow_name = $1 AND s.seq = 0
  AND (SELECT l.status FROM fsmflow_transitions l
       WHERE l.workflow_name = s.workflow_name AND l.instance_id = s.instance_id
       ORDER BY l.seq DESC LIMIT 1) = 'running'
ORDER BY s.created_at DESC, s.instance_id DESC
LIMIT 1;

-- name: check_schema
-- At open: the table's schema comment, its columns, and the session's durability setting.
SELECT obj_description(to_regclass($1), 'pg_class') AS comment,
       to_regclass($1) IS NOT NULL AS exists,
       ARRAY(SELECT attname::text FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped) AS columns,
       current_setting('synchronous_commit') AS synchronous_commit,
       has_table_privilege(to_regclass($1), 'SELECT') AS can_select,
       has_table_privilege(to_regclass($1), 'INSERT') AS can_insert;

-- name: reset
-- Delete every row (reset_db).
TRUNCATE fsmflow_transitions;
