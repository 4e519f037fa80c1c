-- The event store's statements, the same on both databases (src/store/).
-- Its first tables are sql/event_store_v1.sql. `{name}` marks a fragment
-- the dialect fills in: `{event_columns}` the columns of an envelope,
-- `{keys}` a list of keys as one JSON parameter, `{rows}` a batch of rows
-- as one JSON parameter, `{recorded_at}`/`{created_at}`/`{occurred_at}`
-- a time as the column stores it, `{payload}` the payload as stored.

-- name: event_columns
position, event_id, aggregate_type, aggregate_id, version, event_type, schema_version, {payload} AS payload, command_id, {occurred_at} AS occurred_at, {recorded_at} AS recorded_at, caller, traceparent

-- name: load
SELECT {event_columns} FROM events WHERE aggregate_id = $1 ORDER BY version

-- name: all_events
SELECT {event_columns} FROM events ORDER BY position

-- name: events_of_command
SELECT {event_columns} FROM events WHERE command_id = $1 ORDER BY position

-- name: read_log
SELECT {event_columns} FROM events WHERE position > $1 ORDER BY position LIMIT $2

-- name: read_log_below
SELECT {event_columns} FROM events WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3

-- name: head
SELECT CAST(COALESCE(MAX(position), 0) AS BIGINT) FROM events

-- name: count_after
SELECT COUNT(*) FROM events WHERE position > $1

-- name: mean_payload_bytes
SELECT CAST(COALESCE(AVG(length(CAST(payload AS TEXT))), 0) AS BIGINT) FROM events

-- name: position_of
SELECT position FROM events WHERE aggregate_id = $1 AND version = $2

-- Which of the keys have a first event.
-- name: existing
SELECT aggregate_id FROM events WHERE version = 1 AND aggregate_id IN ({keys})

-- name: idempotent_answer
SELECT request_hash, aggregate_id, command_id, version, position FROM idempotency WHERE key = $1

-- name: keyed_commands
SELECT key, command_id FROM idempotency WHERE key IN ({keys})

-- One row written and rolled back: whether the database takes writes.
-- name: probe_write
INSERT INTO idempotency (key, request_hash, aggregate_id, command_id, version, position, created_at)
VALUES ($1, '', '', '', 0, 0, {created_at})

-- A batch of appends in one statement; positions are handed out in row
-- order, so one aggregate's events get increasing positions. A taken
-- version is skipped (its append is refused alone).
-- name: insert_events
INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, payload, command_id, occurred_at, recorded_at, caller, traceparent)
SELECT v.event_id, v.aggregate_type, v.aggregate_id, v.version, v.event_type, v.schema_version, {payload}, v.command_id, {occurred_at}, {recorded_at}, v.caller, v.traceparent
FROM ({rows}) AS v WHERE true ORDER BY v.ord
ON CONFLICT (aggregate_id, version) DO NOTHING RETURNING event_id, position

-- name: insert_keys
INSERT INTO idempotency (key, request_hash, aggregate_id, command_id, version, position, created_at)
SELECT v.key, v.request_hash, v.aggregate_id, v.command_id, v.version, v.position, {created_at}
FROM ({rows}) AS v WHERE true ON CONFLICT (key) DO NOTHING RETURNING key

-- The events of appends refused after they were inserted.
-- name: take_back
DELETE FROM events WHERE event_id IN ({keys})

-- Migration 3 of `event_store`: a caller's key is stored as
-- `<length of its scope>:<scope>:<key>` (`IdempotencyRecord::for_caller`),
-- the scope being the caller its command recorded ('' when nobody was
-- checked). A process manager's own keys (`<its name>/...`, issued as
-- itself) keep their form. Never edit: a change is a new migration.
-- name: scope_idempotency_keys
UPDATE idempotency SET key = (
    SELECT CAST(length(COALESCE(MAX(e.caller), '')) AS TEXT) || ':' || COALESCE(MAX(e.caller), '') || ':' || idempotency.key
    FROM events e WHERE e.command_id = idempotency.command_id)
WHERE NOT EXISTS (
    SELECT 1 FROM events e
    WHERE e.command_id = idempotency.command_id AND e.caller IS NOT NULL
      AND idempotency.key LIKE e.caller || '/%')

-- Migration 4 of `event_store`: the store's identity, one row made at the
-- first open and never changed. The relay stamps every record with it, so
-- that a topic says which write database its records came from. Never edit.
-- name: identity_table
CREATE TABLE IF NOT EXISTS store_identity (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        store_id TEXT NOT NULL,
        created_at TEXT NOT NULL)

-- name: init_identity
INSERT INTO store_identity (singleton, store_id, created_at) VALUES (1, $1, $2)
ON CONFLICT (singleton) DO NOTHING

-- name: identity
SELECT store_id FROM store_identity WHERE singleton = 1
