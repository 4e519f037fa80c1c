-- SQLite's text of every statement and fragment that differs from
-- PostgreSQL's (sql/postgres.sql has the same names; src/dialect/ reads
-- both). A statement runs from the line after its `-- name:` line to the
-- next blank line; an empty one means "nothing to run here". `{name}`
-- marks a fragment filled in by the code, `${param}` a bind parameter's
-- number.

-- AUTOINCREMENT: a position is never reused, even after the newest event
-- is gone. One writer, so positions are allocated in commit order.
-- name: position_column
INTEGER PRIMARY KEY AUTOINCREMENT

-- name: payload_type
TEXT

-- name: payload_out
payload

-- name: payload_in
v.payload

-- SQLite has no time type: RFC 3339 text in UTC, whose order is time order.
-- name: instant_in
{expr}

-- name: instant_out
{column}

-- name: rows_from
json_each(${param}) AS r

-- name: keys_from
SELECT r.value FROM json_each(${param}) AS r

-- name: key_in
{column} IN ({keys})

-- name: append_begin

-- The relay runs in the writing process, woken in process.
-- name: append_postamble

-- Appends are serial: every position read is final.
-- name: log_horizon

-- One chunk of made-up history: see postgres.sql.
-- name: insert_history
WITH RECURSIVE a(i) AS (SELECT $3 UNION ALL SELECT i + 1 FROM a WHERE i < $4)
INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, payload, command_id, occurred_at, recorded_at)
SELECT printf('%s-%04x-4000-9000-%012x', $6, l.key + 1, a.i), $1,
       printf('%s-0000-4000-8000-%012x', $6, a.i), l.key + 1, json_extract(l.value, '$[0]'), json_extract(l.value, '$[2]'),
       json(replace(json_extract(l.value, '$[1]'), '{n}', a.i)),
       printf('%s-%04x-4000-a000-%012x', $6, l.key + 1, a.i), $5, $5
FROM a CROSS JOIN json_each($2) AS l ORDER BY {order}

-- name: history_interleaved
l.key, a.i

-- name: history_by_aggregate
a.i, l.key

-- name: after_bulk_load

-- name: flush_after_bulk_load

-- IMMEDIATE: the write lock from the start (otherwise SQLITE_BUSY ignores
-- the busy timeout when a read turns into a write).
-- name: begin_write
BEGIN IMMEDIATE

-- name: derived_begin

-- Any read transaction in WAL mode sees one moment throughout.
-- name: snapshot_begin

-- The write transaction (BEGIN IMMEDIATE) is the lock.
-- name: migrate_lock

-- name: migrate_unlock

-- name: has_column
SELECT COUNT(*) FROM pragma_table_info($1) WHERE name = $2

-- name: has_table
SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1

-- name: versions
SELECT aggregate_id, version FROM projected_versions WHERE projector = $1
AND aggregate_id IN (SELECT r.value FROM json_each($2) AS r)

-- One writer: the transaction itself is the lock.
-- name: versions_locked
SELECT aggregate_id, version FROM projected_versions WHERE projector = $1
AND aggregate_id IN (SELECT r.value FROM json_each($2) AS r)

-- Followers in other processes poll.
-- name: notify_progress

-- Takes SQLite's write lock: every projector waits for the transaction.
-- name: lock_out_projectors
UPDATE projector_checkpoints SET updated_at = updated_at WHERE 1 = 0

-- One process writes a SQLite file, so it leads.
-- name: try_lead
