-- The dashboard's read queries (fsmflow ui). Each block starts with "-- name: <name>" and a
-- one-line description; fsmflow_transitions stands for the configured table. Every query
-- is index-backed and bounded: the pages paginate by keyset, never by OFFSET.

-- name: ui_workflow_names
-- The workflow filter's choices: the workflow names in order, at most $1 (a loose scan of
-- the primary key: one index probe per name, however many rows each has).
WITH RECURSIVE names(name, n) AS (
    SELECT (SELECT min(workflow_name) FROM fsmflow_transitions), 1
  UNION ALL
    SELECT (SELECT min(t.workflow_name) FROM fsmflow_transitions t
            WHERE t.workflow_name > s.name), s.n + 1
    FROM names s
    WHERE s.name IS NOT NULL AND s.n < $1::integer
)
SELECT name FROM names WHERE name IS NOT NULL ORDER BY name;

-- name: ui_status_counts
-- Counts by status among the newest $2 instances of workflow $1 (NULL: of every workflow):
-- the partial started index walks each workflow's newest instances and a primary-key probe
-- reads each one's last row, so the cost is bounded by $2 whatever the table holds.
WITH RECURSIVE names(name) AS (
    SELECT coalesce($1::text, (SELECT min(workflow_name) FROM fsmflow_transitions))
  UNION ALL
    SELECT (SELECT min(t.workflow_name) FROM fsmflow_transitions t
            WHERE t.workflow_name > n.name)
    FROM names n
    WHERE n.name IS NOT NULL AND $1::text IS NULL
), recent AS (
    SELECT i.* FROM names n
    CROSS JOIN LATERAL (
        SELECT s.workflow_name, s.instance_id, s.created_at
        FROM fsmflow_transitions s
        WHERE s.workflow_name = n.name AND s.seq = 0
        ORDER BY s.created_at DESC, s.instance_id
        LIMIT $2::integer
    ) i
    WHERE n.name IS NOT NULL
    ORDER BY i.created_at DESC, i.workflow_name, i.instance_id
    LIMIT $2::integer
)
SELECT l.status, count(*)::integer AS instances
FROM recent r
CROSS JOIN LATERAL (
    SELECT p.status FROM fsmflow_transitions p
    WHERE p.workflow_name = r.workflow_name AND p.instance_id = r.instance_id
    ORDER BY p.seq DESC
    LIMIT 1
) l
GROUP BY l.status;

-- name: ui_search
-- Instances whose id starts with $2, of workflow $1 (NULL: every workflow), whose last
-- row's status is in $3 (NULL: any), at most $4, by workflow then id, after the keyset
-- ($5 workflow_name, $6 instance_id) of the previous page's last one. Each workflow's
-- primary key is read from the prefix up to the prefix followed by the highest character
-- (starts_with keeps only real matches), and a primary-key probe finds the last row.
WITH RECURSIVE names(name) AS (
    SELECT coalesce($1::text, (SELECT min(workflow_name) FROM fsmflow_transitions
                               WHERE workflow_name >= coalesce($5::text, '')))
  UNION ALL
    SELECT (SELECT min(t.workflow_name) FROM fsmflow_transitions t
            WHERE t.workflow_name > n.name)
    FROM names n
    WHERE n.name IS NOT NULL AND $1::text IS NULL
)
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
      AND s.instance_id >= $2::text AND s.instance_id < $2::text || chr(1114111)
      AND starts_with(s.instance_id, $2::text)
      AND ($5::text IS NULL OR (s.workflow_name, s.instance_id) > ($5::text, $6::text))
      AND ($3::text[] IS NULL OR l.status = ANY ($3::text[]))
    ORDER BY s.instance_id
    LIMIT $4::integer
) i
WHERE n.name IS NOT NULL
ORDER BY i.workflow_name, i.instance_id
LIMIT $4::integer;
