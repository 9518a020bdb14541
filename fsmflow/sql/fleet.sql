-- fsmflow's worker-fleet queries. Each block starts with "-- name: <name>" and a one-line
-- description. fsmflow_transitions stands for the configured table; its helper tables
-- fsmflow_transitions_queue (submitted instances that have not ended) and
-- fsmflow_transitions_workers (live workers) hold coordination state only: the history
-- stays the truth, and an instance's advisory lock stays the fence against two runners.

-- name: submit
-- Submit instance ($1, $2) to the fleet in one statement: seq 0 (state $3, context $4,
-- fingerprint $5, attempt $6, definition $7, trigger 'fsmflow:submit', state version
-- $10, traceparent $11), its queue row, and a wake-up for the workers (channel $8,
-- payload $9) once it commits. An existing instance fails the history's primary key:
-- nothing is written.
WITH started AS (
    INSERT INTO fsmflow_transitions
        (workflow_name, instance_id, seq, trigger, dest_state, context, status, fingerprint,
         attempt_id, definition, state_version, trace_parent)
    VALUES ($1, $2, 0, 'fsmflow:submit', $3, $4::json, 'running', $5, $6::uuid, $7::jsonb,
            $10::integer, $11::text)
    RETURNING workflow_name, instance_id, created_at
), queued AS (
    INSERT INTO fsmflow_transitions_queue AS q (workflow_name, instance_id, ready_at, submitted_at)
    SELECT s.workflow_name, s.instance_id, s.created_at, s.created_at FROM started s
    ON CONFLICT (workflow_name, instance_id) DO UPDATE
        SET ready_at = excluded.ready_at, claimed_by = NULL, claimed_at = NULL,
            wakes = q.wakes + 1, failures = 0
    RETURNING q.workflow_name
)
SELECT s.created_at, pg_notify($8, $9) IS NULL AS notified
FROM started s CROSS JOIN queued;

-- name: requeue
-- After `fsmflow retry`: put instance ($1, $2) back in the queue, runnable now, if it was
-- submitted to the fleet (its seq 0 says so); no row if it was not (a program runs it).
INSERT INTO fsmflow_transitions_queue AS q (workflow_name, instance_id, ready_at, submitted_at)
SELECT s.workflow_name, s.instance_id, clock_timestamp(), s.created_at
FROM fsmflow_transitions s
WHERE s.workflow_name = $1 AND s.instance_id = $2 AND s.seq = 0
  AND s.trigger = 'fsmflow:submit'
ON CONFLICT (workflow_name, instance_id) DO UPDATE
    SET ready_at = excluded.ready_at, claimed_by = NULL, claimed_at = NULL,
        wakes = q.wakes + 1, failures = 0
RETURNING q.workflow_name;

-- name: dequeue
-- Instance ($1, $2) ended (completed, failed, cancelled): it leaves the queue.
DELETE FROM fsmflow_transitions_queue
WHERE workflow_name = $1 AND instance_id = $2;

-- name: claim
-- Worker $3 claims up to $2 unclaimed instances of the workflows $1 that are ready now,
-- oldest ready first. SKIP LOCKED: workers claiming at the same moment never wait for each
-- other or claim one row twice. Index-backed per workflow (the ready index), reading at
-- most $2 rows of each: flat at any queue or history size.
WITH picked AS (
    SELECT c.workflow_name, c.instance_id
    FROM unnest($1::text[]) AS n(name)
    CROSS JOIN LATERAL (
        SELECT q.workflow_name, q.instance_id, q.ready_at
        FROM fsmflow_transitions_queue q
        WHERE q.workflow_name = n.name AND q.claimed_by IS NULL
          AND q.ready_at <= clock_timestamp()
        ORDER BY q.ready_at
        LIMIT $2::integer
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.ready_at
    LIMIT $2::integer
)
UPDATE fsmflow_transitions_queue q
SET claimed_by = $3::text, claimed_at = clock_timestamp()
FROM picked p
WHERE q.workflow_name = p.workflow_name AND q.instance_id = p.instance_id
RETURNING q.workflow_name, q.instance_id, q.wakes, q.failures, q.ready_at;

-- name: next_ready
-- In how many seconds the next unclaimed instance of the workflows $1 becomes ready, by
-- the server's clock (NULL: none queued but those waiting for an event).
SELECT extract(epoch FROM min(c.ready_at) - clock_timestamp())::float8 AS seconds
FROM unnest($1::text[]) AS n(name)
CROSS JOIN LATERAL (
    SELECT q.ready_at FROM fsmflow_transitions_queue q
    WHERE q.workflow_name = n.name AND q.claimed_by IS NULL AND q.ready_at < 'infinity'
    ORDER BY q.ready_at
    LIMIT 1
) c;

-- name: release
-- Worker $3 gives back its claim of ($1, $2): runnable again $4 seconds from now (0: as
-- it was), $5 true after a run that failed without progress (failures + 1, for back-off).
UPDATE fsmflow_transitions_queue
SET claimed_by = NULL, claimed_at = NULL,
    ready_at = CASE WHEN $4::float8 > 0
                    THEN greatest(ready_at, clock_timestamp() + make_interval(secs => $4::float8))
                    ELSE ready_at END,
    failures = CASE WHEN $5::boolean THEN failures + 1 ELSE 0 END
WHERE workflow_name = $1 AND instance_id = $2 AND claimed_by = $3
RETURNING failures;

-- name: suspend
-- Worker $3 gives back ($1, $2), which now waits: ready again at its deadline $4 (NULL:
-- only when an event comes) -- only if no event, cancel or retry came since the claim
-- ($5: the wakes it claimed at). No row: one came; the claim is released as it is instead.
UPDATE fsmflow_transitions_queue
SET claimed_by = NULL, claimed_at = NULL, failures = 0,
    ready_at = coalesce($4::timestamptz, 'infinity')
WHERE workflow_name = $1 AND instance_id = $2 AND claimed_by = $3 AND wakes = $5::bigint
RETURNING wakes;

-- name: wake
-- An event was sent to ($1, $2) (or it was cancelled): if it is queued, runnable now.
UPDATE fsmflow_transitions_queue
SET ready_at = least(ready_at, clock_timestamp()), wakes = wakes + 1
WHERE workflow_name = $1 AND instance_id = $2;

-- name: release_worker
-- Worker $1 stops: every claim it still holds is given back as it is (runnable at once),
-- and its row goes. Returns the workflows of the claims given back.
WITH released AS (
    UPDATE fsmflow_transitions_queue
    SET claimed_by = NULL, claimed_at = NULL
    WHERE claimed_by = $1
    RETURNING workflow_name, instance_id
), gone AS (  -- runs although nothing reads it (every data-modifying CTE does)
    DELETE FROM fsmflow_transitions_workers WHERE worker_id = $1
)
SELECT r.workflow_name, r.instance_id FROM released r;

-- name: register_worker
-- Worker $1 (host $2, pid $3, workflows $4, concurrency $5) is live on this session: its
-- pid and start time are how other workers tell whether it still is.
INSERT INTO fsmflow_transitions_workers AS w
    (worker_id, host, pid, workflows, concurrency, session_pid, session_start)
SELECT $1, $2, $3::integer, $4::text[], $5::integer, pg_backend_pid(),
       (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid())
ON CONFLICT (worker_id) DO UPDATE
    SET session_pid = excluded.session_pid, session_start = excluded.session_start,
        heartbeat_at = clock_timestamp()
RETURNING w.started_at;

-- name: reclaim
-- After worker $1 registered again (its row had been taken for dead): it claims back the
-- instances ($2, $3) it still runs, where nobody claimed them meanwhile.
UPDATE fsmflow_transitions_queue q
SET claimed_by = $1, claimed_at = clock_timestamp()
FROM unnest($2::text[], $3::text[]) AS c(workflow_name, instance_id)
WHERE q.workflow_name = c.workflow_name AND q.instance_id = c.instance_id
  AND q.claimed_by IS NULL;

-- name: heartbeat_worker
-- Worker $1 is alive: it runs $2 instances, finished $3, is stopping ($4). No row: it was
-- taken for dead (and its claims given back): it registers again.
UPDATE fsmflow_transitions_workers
SET heartbeat_at = clock_timestamp(), running = $2::integer, finished = $3::bigint,
    stopping = $4::boolean
WHERE worker_id = $1
RETURNING worker_id;

-- name: reap_workers
-- The sweep: workers whose session is gone (pid and start time, so a reused pid does not
-- count) or whose heartbeat is older than $1 seconds are deleted, and their claims -- and
-- any claim of a worker no longer listed -- are given back as they are, runnable at once.
WITH dead AS (
    DELETE FROM fsmflow_transitions_workers w
    WHERE w.heartbeat_at < clock_timestamp() - make_interval(secs => $1::float8)
       OR NOT EXISTS (
           SELECT 1 FROM pg_stat_activity a
           WHERE a.pid = w.session_pid
             AND (a.backend_start IS NULL OR w.session_start IS NULL
                  OR a.backend_start = w.session_start))
    RETURNING w.worker_id, w.host, w.pid
), released AS (
    UPDATE fsmflow_transitions_queue q
    SET claimed_by = NULL, claimed_at = NULL
    WHERE q.claimed_by IS NOT NULL
      AND (q.claimed_by IN (SELECT d.worker_id FROM dead d)
           OR NOT EXISTS (SELECT 1 FROM fsmflow_transitions_workers w
                          WHERE w.worker_id = q.claimed_by))
    RETURNING q.workflow_name, q.instance_id
)
SELECT (SELECT coalesce(array_agg(d.host || ':' || d.pid::text), '{}') FROM dead d) AS dead,
       (SELECT count(*) FROM released) AS released;

-- name: list_workers
-- The live workers (their session present, heartbeat younger than $1 seconds), oldest
-- first, with how many instances each has claimed right now (its heartbeat's count lags).
SELECT w.worker_id, w.host, w.pid, w.workflows, w.concurrency, w.started_at,
       w.heartbeat_at, w.running, w.finished, w.stopping,
       (SELECT count(*) FROM fsmflow_transitions_queue q
        WHERE q.claimed_by = w.worker_id) AS claimed
FROM fsmflow_transitions_workers w
WHERE w.heartbeat_at >= clock_timestamp() - make_interval(secs => $1::float8)
  AND EXISTS (SELECT 1 FROM pg_stat_activity a  -- its session, not a reused pid
              WHERE a.pid = w.session_pid
                AND (a.backend_start IS NULL OR w.session_start IS NULL
                     OR a.backend_start = w.session_start))
ORDER BY w.started_at, w.worker_id;

-- name: instance_workers
-- Which live worker (as list_workers: session present, heartbeat younger than $3 seconds)
-- runs each of the instances ($1, $2), if any. A dead worker's claim stays until a sweep
-- gives it back: it names no worker meanwhile.
SELECT q.workflow_name, q.instance_id, w.worker_id, w.host, w.pid, w.workflows,
       w.concurrency, w.started_at, w.heartbeat_at, w.running, w.finished, w.stopping,
       (SELECT count(*) FROM fsmflow_transitions_queue k
        WHERE k.claimed_by = w.worker_id) AS claimed
FROM unnest($1::text[], $2::text[]) AS c(workflow_name, instance_id)
JOIN fsmflow_transitions_queue q
  ON q.workflow_name = c.workflow_name AND q.instance_id = c.instance_id
JOIN fsmflow_transitions_workers w ON w.worker_id = q.claimed_by
WHERE w.heartbeat_at >= clock_timestamp() - make_interval(secs => $3::float8)
  AND EXISTS (SELECT 1 FROM pg_stat_activity a  -- its session, not a reused pid
              WHERE a.pid = w.session_pid
                AND (a.backend_start IS NULL OR w.session_start IS NULL
                     OR a.backend_start = w.session_start));

-- name: fleet_privileges
-- What a worker needs on the fleet's tables (queue $1, workers $2): they exist, and the
-- session's role may SELECT, INSERT, UPDATE and DELETE on both (a list of privileges in
-- has_table_privilege means any of them: each is asked on its own).
SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AS exist,
       coalesce(bool_and(has_table_privilege(to_regclass(t), p)), false) AS can_coordinate
FROM unnest(ARRAY[$1::text, $2::text]) AS t
CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p;

-- name: notify_many
-- Wake whoever listens for these instances (channel $1, one payload of $2 each).
SELECT count(pg_notify($1, p)) AS notified FROM unnest($2::text[]) AS p;
