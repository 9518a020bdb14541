-- fsmflow's ownership queries, run on the dedicated owner connections. Each block starts
-- with "-- name: <name>" and a one-line description. They name no table.

-- name: lock
-- Try to take the session advisory lock of one instance (64-bit key $1); true if taken.
SELECT pg_try_advisory_lock($1::int8)

-- name: unlock
-- Give back the session advisory lock $1 that this session holds.
SELECT pg_advisory_unlock($1::int8)

-- name: heartbeat
-- Proves the session still answers (and so still holds its locks).
SELECT 1

-- name: lock_holder
-- The session holding advisory lock $1 in this database, if any: its pid and
-- application_name (pg_locks shows a one-bigint key as two unsigned oids).
SELECT l.pid, coalesce(a.application_name, '') AS application_name
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::int8
LIMIT 1

-- name: end_session
-- Terminate session $1 (allowed for a session of the same role) and wait up to $2 ms
-- for it to end; false if it is still there (a stalled backend ends when it resumes).
SELECT pg_terminate_backend($1::int4, $2::int8)

-- name: unlock_if_held
-- After a failed open statement: give back lock $1 if this session holds it (the lock is
-- taken first in that statement, and a session lock outlives the statement's failure).
SELECT pg_advisory_unlock($1::int8)
FROM pg_locks
WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND objsubid = 1 AND granted
  AND ((classid::bigint << 32) | objid::bigint) = $1::int8
