-- fsmflow's queries. Each block starts with "-- name: <name>" and a one-line description.
-- fsmflow_transitions stands for the configured (validated, quoted) table name.

-- name: append
-- Append seq $3 only if the instance's last row is seq $3 - 1 (zero rows: lost the race).
-- A waiting row ($8 'waiting') records when its wait began ($13, or now for a new wait:
-- the server's clock) and its first deadline $14 seconds later (NULL: none); $15 names
-- the event the row delivers; $16 is the state_version of a typed workflow's state (NULL:
-- an untyped workflow).
INSERT INTO fsmflow_transitions
    (workflow_name, instance_id, seq, trigger, source_state, dest_state, context, status,
     fingerprint, attempt_id, duration_ms, error, waiting_since, wake_at, event_id,
     state_version)
SELECT $1::text, $2::text, $3::integer, $4::text, $5::text, $6::text, $7::json, $8::text,
       $9::text, $10::uuid, $11::float8, $12::jsonb,
       w.since, w.since + make_interval(secs => $14::float8), $15::bigint, $16::integer
FROM (SELECT CASE WHEN $8::text = 'waiting'
                  THEN coalesce($13::timestamptz, clock_timestamp()) END AS since) w
WHERE coalesce(
    (SELECT max(seq) FROM fsmflow_transitions WHERE workflow_name = $1 AND instance_id = $2),
    -1) = $3 - 1;

-- name: append_batch
-- The group commit: the rows of several instances that append at the same moment on one
-- owner connection, in one statement and one transaction (one WAL flush). Each row is
-- appended only if its own instance's last row is its seq - 1, and a row whose seq was
-- taken meanwhile is skipped (ON CONFLICT DO NOTHING), never failing the others: RETURNING
-- names the rows that landed. $1 is a JSON array of rows, each the arguments of "append"
-- ($1 .. $16) as a JSON array (strings, numbers, null; a timestamp as ISO 8601 text): one
-- value to encode on the client instead of 16 arrays of typed elements.
INSERT INTO fsmflow_transitions
    (workflow_name, instance_id, seq, trigger, source_state, dest_state, context, status,
     fingerprint, attempt_id, duration_ms, error, waiting_since, wake_at, event_id,
     state_version)
SELECT r.workflow_name, r.instance_id, r.seq, r.trigger, r.source_state, r.dest_state,
       r.context::json, r.status, r.fingerprint, r.attempt_id::uuid, r.duration_ms,
       r.error::jsonb, w.since, w.since + make_interval(secs => r.wait_seconds), r.event_id,
       r.state_version
FROM jsonb_array_elements($1::jsonb) AS e(a)
CROSS JOIN LATERAL (
    SELECT a->>0 AS workflow_name, a->>1 AS instance_id, (a->>2)::integer AS seq,
           a->>3 AS trigger, a->>4 AS source_state, a->>5 AS dest_state, a->>6 AS context,
           a->>7 AS status, a->>8 AS fingerprint, a->>9 AS attempt_id,
           (a->>10)::float8 AS duration_ms, a->>11 AS error,
           (a->>12)::timestamptz AS waiting_since, (a->>13)::float8 AS wait_seconds,
           (a->>14)::bigint AS event_id, (a->>15)::integer AS state_version) r
CROSS JOIN LATERAL (SELECT CASE WHEN r.status = 'waiting'
                           THEN coalesce(r.waiting_since, clock_timestamp()) END AS since) w
WHERE coalesce(
    (SELECT max(t.seq) FROM fsmflow_transitions t
     WHERE t.workflow_name = r.workflow_name AND t.instance_id = r.instance_id),
    -1) = r.seq - 1
ON CONFLICT DO NOTHING
RETURNING workflow_name, instance_id, seq;

-- name: start
-- Insert seq 0 of a new instance (fails with a unique violation if it already exists);
-- $11 is the W3C traceparent of the span that started it (NULL: none).
INSERT INTO fsmflow_transitions
    (workflow_name, instance_id, seq, dest_state, context, status, fingerprint, attempt_id,
     definition, forked_from_instance, forked_from_seq, state_version, trace_parent)
VALUES ($1, $2, 0, $3, $4::json, 'running', $5, $6::uuid, $7::jsonb, $8, $9, $10::integer,
        $11::text);

-- name: trace_parent
-- The traceparent an instance's seq-0 row stored (a later run continues its trace).
SELECT trace_parent FROM fsmflow_transitions
WHERE workflow_name = $1 AND instance_id = $2 AND seq = 0;

-- name: open
-- An instance's start, in one statement and one round trip: take its session advisory
-- lock ($1), read its last row (as last_record does) and, for a new instance whose seq 0
-- was given ($9 true), insert that seq 0. The insert commits asynchronously
-- (synchronous_commit off for this statement's transaction only): it waits for no WAL
-- flush of its own, and the instance's first transition, a synchronous commit, flushes it
-- with its own row. A crash of the server before that leaves no instance; any other crash
-- leaves a resumable start. Nothing is read or written unless the lock was taken; a seq 0
-- that exists by now (a start racing this one) is left alone: "started" says 0. $11 is
-- the W3C traceparent of the span that started it (NULL: none).
WITH lock AS MATERIALIZED (SELECT pg_try_advisory_lock($1::int8) AS got),
last AS MATERIALIZED (
    SELECT l.*,
           (SELECT max(p.seq) FROM fsmflow_transitions p
            WHERE p.workflow_name = $2 AND p.instance_id = $3 AND p.seq < l.seq) AS prev_seq,
           (SELECT count(*) FROM fsmflow_transitions c
            WHERE c.workflow_name = $2 AND c.instance_id = $3) AS row_count
    FROM lock, fsmflow_transitions l
    WHERE lock.got AND l.workflow_name = $2 AND l.instance_id = $3
    ORDER BY l.seq DESC
    LIMIT 1),
started AS (
    INSERT INTO fsmflow_transitions
        (workflow_name, instance_id, seq, dest_state, context, status, fingerprint,
         attempt_id, definition, state_version, trace_parent)
    SELECT $2::text, $3::text, 0, $4::text, $5::json, 'running', $6::text, $7::uuid,
           $8::jsonb, $10::integer, $11::text
    FROM lock
    WHERE lock.got AND $9::boolean AND NOT EXISTS (SELECT FROM last)
      AND set_config('synchronous_commit', 'off', true) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING seq)
SELECT lock.got, (SELECT count(*) FROM started) AS started, last.*
FROM lock LEFT JOIN last ON true;

-- name: last_record
-- The latest row of one instance, the seq before it and how many rows it has (primary-key
-- index probes and an index-only count): a gap anywhere in its history shows.
SELECT l.*,
       (SELECT max(p.seq) FROM fsmflow_transitions p
        WHERE p.workflow_name = $1 AND p.instance_id = $2 AND p.seq < l.seq) AS prev_seq,
       (SELECT count(*) FROM fsmflow_transitions c
        WHERE c.workflow_name = $1 AND c.instance_id = $2) AS row_count
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
       ORDER BY l.seq DESC LIMIT 1) IN ('running', 'waiting')
ORDER BY s.created_at DESC, s.instance_id DESC
LIMIT 1;

-- name: check_schema
-- At open: the table's schema, comment and columns, and the session's durability setting.
SELECT obj_description(to_regclass($1), 'pg_class') AS comment,
       to_regclass($1) IS NOT NULL AS exists,
       (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = to_regclass($1)) AS schema_name,
       ARRAY(SELECT attname::text FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped) AS columns,
       current_setting('synchronous_commit') AS synchronous_commit,
       has_table_privilege(to_regclass($1), 'SELECT') AS can_select,
       has_table_privilege(to_regclass($1), 'INSERT') AS can_insert,
       to_regclass($2) IS NOT NULL AS events_exist,
       coalesce(has_table_privilege(to_regclass($2), 'SELECT'), false)
           AND coalesce(has_table_privilege(to_regclass($2), 'INSERT'), false) AS can_send;

-- name: table_indexes
-- init_db: the names of the table's indexes (so it logs the ones it had to create).
SELECT ARRAY(SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = to_regclass($1)) AS indexes;

-- name: reset
-- Delete every row of the history, the events and the fleet's queue (reset_db); live
-- workers keep their rows (they register again if theirs is gone).
TRUNCATE fsmflow_transitions, fsmflow_transitions_events, fsmflow_transitions_queue;

-- name: list_instances
-- Instances, newest first: of workflow $1 (NULL: every workflow), whose status is in $2
-- (NULL: any), last updated before $3 (NULL: any time), at most $4, after the keyset
-- ($5 started_at, $6 workflow_name, $7 instance_id) of the previous page's last instance.
-- Index-backed at any size: a loose scan of the primary key finds the workflow names.
-- Then one of two branches runs (the other's one-time filter is false):
-- * any status, or 'running' among $2: the partial started index walks each workflow's
--   instances in order and a primary-key probe finds each instance's last row. Instances
--   that started at or after $3 cannot have been updated before it, so $3 also bounds
--   the index range.
-- * terminal statuses only: the partial terminal index finds the terminal rows of each
--   workflow with such a status (no walk over running instances: rare statuses are
--   cheap), a primary-key probe keeps those that are still their instance's last row (a
--   failed row followed by `fsmflow retry`'s running row is not), and one more finds the
--   instance's seq 0 for its start time.
WITH RECURSIVE names(name) AS (
    SELECT coalesce($1::text, (SELECT min(workflow_name) FROM fsmflow_transitions))
  UNION ALL
    SELECT (SELECT min(t.workflow_name) FROM fsmflow_transitions t
            WHERE t.workflow_name > n.name)
    FROM names n
    WHERE n.name IS NOT NULL AND $1::text IS NULL
)
SELECT u.* FROM (
  SELECT i.* FROM names n
  CROSS JOIN LATERAL (
    SELECT s.workflow_name, s.instance_id, s.created_at AS started_at,
           s.forked_from_instance, l.seq, l.status,
           coalesce(l.dest_state, l.source_state) AS current_state,
           l.created_at AS updated_at
    FROM fsmflow_transitions s
    CROSS JOIN LATERAL (
        SELECT p.seq, p.status, p.source_state, p.dest_state, p.created_at
        FROM fsmflow_transitions p
        WHERE p.workflow_name = s.workflow_name AND p.instance_id = s.instance_id
        ORDER BY p.seq DESC
        LIMIT 1
    ) l
    WHERE s.workflow_name = n.name AND s.seq = 0
      AND s.created_at <= least(coalesce($3::timestamptz, 'infinity'),
                                coalesce($5::timestamptz, 'infinity'))
      AND ($5::timestamptz IS NULL OR s.created_at < $5::timestamptz
           OR (s.workflow_name, s.instance_id) > ($6::text, $7::text))
      AND ($2::text[] IS NULL OR l.status = ANY ($2::text[]))
      AND ($3::timestamptz IS NULL OR l.created_at < $3::timestamptz)
    ORDER BY s.created_at DESC, s.instance_id
    LIMIT $4::integer
  ) i
  WHERE n.name IS NOT NULL AND ($2::text[] IS NULL OR 'running' = ANY ($2::text[]))
UNION ALL
  SELECT i.* FROM names n
  CROSS JOIN LATERAL (
    SELECT s.workflow_name, s.instance_id, s.created_at AS started_at,
           s.forked_from_instance, l.seq, l.status,
           coalesce(l.dest_state, l.source_state) AS current_state,
           l.created_at AS updated_at
    FROM fsmflow_transitions l
    CROSS JOIN LATERAL (  -- LIMIT keeps the terminal rows the outer side of the loop
        SELECT f.workflow_name, f.instance_id, f.created_at, f.forked_from_instance
        FROM fsmflow_transitions f
        WHERE f.workflow_name = l.workflow_name AND f.instance_id = l.instance_id
          AND f.seq = 0
        LIMIT 1
    ) s
    WHERE l.workflow_name = n.name AND l.status <> 'running'
      AND l.status = ANY ($2::text[])
      AND ($3::timestamptz IS NULL OR l.created_at < $3::timestamptz)
      AND l.seq = (  -- still the last row (a scalar probe: never a join over the table)
          SELECT p.seq FROM fsmflow_transitions p
          WHERE p.workflow_name = l.workflow_name AND p.instance_id = l.instance_id
          ORDER BY p.seq DESC
          LIMIT 1)
      AND s.created_at <= least(coalesce($3::timestamptz, 'infinity'),
                                coalesce($5::timestamptz, 'infinity'))
      AND ($5::timestamptz IS NULL OR s.created_at < $5::timestamptz
           OR (s.workflow_name, s.instance_id) > ($6::text, $7::text))
    ORDER BY s.created_at DESC, s.instance_id
    LIMIT $4::integer
  ) i
  WHERE n.name IS NOT NULL AND NOT ($2::text[] IS NULL OR 'running' = ANY ($2::text[]))
) u
ORDER BY u.started_at DESC, u.workflow_name, u.instance_id
LIMIT $4::integer;

-- name: server_time
-- The database server's clock (prune cutoffs are computed on it, not on the client's).
SELECT clock_timestamp() AS now;

-- name: lock_instances
-- Inside prune's transaction: take the transaction advisory lock (64-bit keys $3) of
-- each instance ($1, $2) that no runner owns right now; returns the instances locked.
SELECT c.workflow_name, c.instance_id
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c(workflow_name, instance_id, key)
WHERE pg_try_advisory_xact_lock(c.key);

-- name: delete_instances
-- Inside prune's transaction, after lock_instances: delete every row of the instances
-- ($1, $2) whose last row is still terminal and older than $3; counts what went.
WITH doomed AS (
    SELECT c.workflow_name, c.instance_id
    FROM unnest($1::text[], $2::text[]) AS c(workflow_name, instance_id)
    CROSS JOIN LATERAL (
        SELECT p.status, p.created_at FROM fsmflow_transitions p
        WHERE p.workflow_name = c.workflow_name AND p.instance_id = c.instance_id
        ORDER BY p.seq DESC
        LIMIT 1
    ) l
    WHERE l.status IN ('completed', 'failed', 'cancelled') AND l.created_at < $3::timestamptz
), deleted AS (
    DELETE FROM fsmflow_transitions t
    USING doomed d
    WHERE t.workflow_name = d.workflow_name AND t.instance_id = d.instance_id
    RETURNING t.seq
), deleted_events AS (  -- the events sent to them go with them
    DELETE FROM fsmflow_transitions_events e
    USING doomed d
    WHERE e.workflow_name = d.workflow_name AND e.instance_id = d.instance_id
), dequeued AS (  -- and any queue row a crash left behind
    DELETE FROM fsmflow_transitions_queue q
    USING doomed d
    WHERE q.workflow_name = d.workflow_name AND q.instance_id = d.instance_id
)
SELECT count(*) FILTER (WHERE seq = 0) AS instances, count(*) AS rows FROM deleted;

-- name: health
-- fsmflow check: the table, its schema comment and columns, the role's privileges on it,
-- and the server facts that decide whether appends are durable and possible at all.
SELECT to_regclass($1) IS NOT NULL AS exists,
       obj_description(to_regclass($1), 'pg_class') AS comment,
       ARRAY(SELECT attname::text FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped) AS columns,
       coalesce(has_table_privilege(to_regclass($1), 'SELECT'), false) AS can_select,
       coalesce(has_table_privilege(to_regclass($1), 'INSERT'), false) AS can_insert,
       coalesce(has_table_privilege(to_regclass($1), 'DELETE'), false) AS can_delete,
       to_regclass($2) IS NOT NULL AS events_exist,
       coalesce(has_table_privilege(to_regclass($2), 'SELECT'), false)
           AND coalesce(has_table_privilege(to_regclass($2), 'INSERT'), false) AS can_send,
       current_setting('synchronous_commit') AS synchronous_commit,
       current_setting('server_version') AS server_version,
       pg_is_in_recovery() AS in_recovery;

-- name: reset_lock_table
-- Inside reset_db's transaction: no runner reads, appends or sends until it commits.
LOCK TABLE fsmflow_transitions, fsmflow_transitions_events, fsmflow_transitions_queue
    IN ACCESS EXCLUSIVE MODE;

-- name: reset_instances
-- Inside reset_db's transaction, under the table lock: every instance in the table.
SELECT DISTINCT workflow_name, instance_id FROM fsmflow_transitions;

-- name: held_instances
-- The instances ($1, $2) whose advisory lock (64-bit keys $3) a session holds right now.
-- Each free lock is taken and given back at once (CASE fixes the order), so checking
-- many instances never fills the lock table.
SELECT c.workflow_name, c.instance_id
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c(workflow_name, instance_id, key)
WHERE CASE WHEN pg_try_advisory_lock(c.key) THEN NOT pg_advisory_unlock(c.key) ELSE true END
ORDER BY c.workflow_name, c.instance_id;

-- name: migration_facts
-- fsmflow migrate: who owns the table ($1) and whether this session's role may ALTER it
-- (only the owner or a member of the owning role may).
SELECT pg_get_userbyid(c.relowner) AS owner, current_user::text AS role,
       pg_has_role(c.relowner, 'MEMBER') AS may_alter
FROM pg_class c
WHERE c.oid = to_regclass($1);

-- name: invalid_indexes
-- fsmflow migrate, before a CONCURRENTLY step: fsmflow's own indexes (names $2) of the
-- table ($1) left INVALID by an interrupted CREATE INDEX CONCURRENTLY (dropped, then built
-- again); anybody else's index is left alone.
SELECT n.nspname::text AS schema_name, c.relname::text AS index_name
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid = to_regclass($1) AND NOT i.indisvalid AND c.relname = ANY ($2::text[])
ORDER BY c.relname;

-- name: try_migrate_lock
-- fsmflow migrate: take the migrators' session advisory lock ($1) if free, never wait in
-- the server (a waiting session holds a transaction that CREATE INDEX CONCURRENTLY waits for).
SELECT pg_try_advisory_lock($1::bigint);

-- name: wait_check
-- A waiting runner, on every wake-up: the server's clock, the instance's last row (seq,
-- status, when its wait began) and its oldest pending event among the names $3 (an event
-- is pending until a history row names it). Primary-key and index probes only.
SELECT clock_timestamp() AS now, l.seq, l.status, l.waiting_since,
       e.id, e.event, e.key, e.payload, e.created_at
FROM (SELECT p.seq, p.status, p.waiting_since FROM fsmflow_transitions p
      WHERE p.workflow_name = $1 AND p.instance_id = $2
      ORDER BY p.seq DESC LIMIT 1) l
LEFT JOIN LATERAL (
    SELECT v.id, v.event, v.key, v.payload, v.created_at FROM fsmflow_transitions_events v
    WHERE v.workflow_name = $1 AND v.instance_id = $2 AND v.event = ANY ($3::text[])
      AND NOT EXISTS (SELECT 1 FROM fsmflow_transitions h
                      WHERE h.workflow_name = $1 AND h.instance_id = $2 AND h.event_id = v.id)
    ORDER BY v.id
    LIMIT 1
) e ON true;

-- name: send_event
-- Store one event ($3 name, $4 key or NULL, $5 payload) for instance ($1, $2) and, once
-- it commits, wake its waiting runner (channel $6, payload $7). A key already used for
-- the instance stores nothing and returns no row. (For an instance submitted to the
-- worker fleet, the same transaction runs the fleet's wake: see Events.send.)
WITH stored AS (
    INSERT INTO fsmflow_transitions_events (workflow_name, instance_id, event, key, payload)
    VALUES ($1, $2, $3, $4, $5::json)
    ON CONFLICT (workflow_name, instance_id, key) WHERE key IS NOT NULL DO NOTHING
    RETURNING *
)
SELECT s.*, NULL::integer AS delivered_seq, pg_notify($6, $7) AS notified FROM stored s;

-- name: event_by_key
-- The event sent to instance ($1, $2) with idempotency key $3, if any, and the seq of the
-- row that delivered it.
SELECT v.*, (SELECT h.seq FROM fsmflow_transitions h
             WHERE h.workflow_name = $1 AND h.instance_id = $2 AND h.event_id = v.id)
            AS delivered_seq
FROM fsmflow_transitions_events v
WHERE v.workflow_name = $1 AND v.instance_id = $2 AND v.key = $3;

-- name: instance_events
-- The events sent to instance ($1, $2), oldest first, at most $3, and the seq of the row
-- that delivered each (NULL: pending); $4 true keeps the pending ones only.
SELECT v.*, d.seq AS delivered_seq
FROM fsmflow_transitions_events v
LEFT JOIN LATERAL (
    SELECT h.seq FROM fsmflow_transitions h
    WHERE h.workflow_name = $1 AND h.instance_id = $2 AND h.event_id = v.id
) d ON true
WHERE v.workflow_name = $1 AND v.instance_id = $2 AND (NOT $4::boolean OR d.seq IS NULL)
ORDER BY v.id
LIMIT $3;

-- name: due_waits
-- Instances of workflow $1 waiting with a deadline in ($4, $2] ($4 NULL: any time before
-- $2), earliest first, at most $3: the deadline index, and a primary-key probe that the
-- waiting row is still the instance's last. The index keeps the waiting rows of waits
-- that ended (rows are never updated), so a sweep bounds $4 by its previous sweep (minus
-- a margin): then it reads only the deadlines of that window, flat at any history size.
SELECT w.instance_id, w.seq, w.dest_state, w.wake_at
FROM fsmflow_transitions w
WHERE w.workflow_name = $1 AND w.status = 'waiting' AND w.wake_at IS NOT NULL
  AND w.wake_at <= $2::timestamptz
  AND w.wake_at > coalesce($4::timestamptz, '-infinity')
  AND w.seq = (SELECT p.seq FROM fsmflow_transitions p
               WHERE p.workflow_name = w.workflow_name AND p.instance_id = w.instance_id
               ORDER BY p.seq DESC LIMIT 1)
ORDER BY w.wake_at
LIMIT $3::integer;

-- name: notify
-- Wake the runner waiting on an instance (channel $1, payload $2) once this commits.
SELECT pg_notify($1, $2);
