-- PostgreSQL's text of every statement and fragment that differs from
-- SQLite's (sql/sqlite.sql has the same names; src/dialect/ reads both).
-- A statement runs from the line after its `-- name:` line to the next
-- blank line; an empty one means "nothing to run here". `{name}` marks a
-- fragment filled in by the code, `${param}` a bind parameter's number.

-- Positions are allocated by an identity: in start order, not commit
-- order (see log_horizon).
-- name: position_column
BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY

-- name: payload_type
JSONB

-- name: payload_out
payload::text

-- name: payload_in
CAST(v.payload AS JSONB)

-- name: instant_in
CAST({expr} AS TIMESTAMPTZ)

-- name: instant_out
to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')

-- name: rows_from
jsonb_array_elements(CAST(${param} AS jsonb)) AS r(value)

-- name: keys_from
SELECT r.value FROM jsonb_array_elements_text(CAST(${param} AS jsonb)) AS r(value)

-- `= ANY(ARRAY(...))`: PostgreSQL keeps the key's index scan whatever it
-- guesses of the list's length.
-- name: key_in
{column} = ANY(ARRAY({keys}))

-- Many writers (advisory key 1869767794 = "ordr" guards the log): appends
-- hold a shared advisory lock from before their position is allocated
-- until commit. Sent with the BEGIN as one simple query: one round trip.
-- name: append_begin
BEGIN; SELECT pg_advisory_xact_lock_shared(1869767794)

-- Delivered at commit: wakes the relay without polling.
-- name: append_postamble
SELECT 1 FROM (SELECT pg_notify('cqrs_events', '')) AS n

-- One statement, one round trip: the exclusive lock is granted only once
-- every append that took the shared lock before it has committed, and
-- appends that come after allocate above anything this statement's
-- snapshot holds. So every position up to the MAX it returns is final,
-- whichever of the two it evaluates first. The events themselves must be
-- read by a later statement (a snapshot taken after the wait).
-- name: log_horizon
SELECT (SELECT CAST(COALESCE(MAX(position), 0) AS BIGINT) FROM events) FROM (SELECT pg_advisory_xact_lock(1869767794)) AS l

-- One chunk of made-up history. $1 type, $2 the life as a JSON array of
-- [event_type, payload, schema_version], $3..=$4 the aggregate numbers,
-- $5 now, $6 the salt as 8 hex digits; `{n}` in a payload becomes the
-- aggregate's number.
-- name: insert_history
INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, payload, command_id, occurred_at, recorded_at)
SELECT $6 || '-' || lpad(to_hex(l.ord), 4, '0') || '-4000-9000-' || lpad(to_hex(a.i), 12, '0'),
       $1, $6 || '-0000-4000-8000-' || lpad(to_hex(a.i), 12, '0'), l.ord, l.value->>0, CAST(l.value->>2 AS BIGINT),
       CAST(replace(CAST(l.value->1 AS TEXT), '{n}', CAST(a.i AS TEXT)) AS jsonb),
       $6 || '-' || lpad(to_hex(l.ord), 4, '0') || '-4000-a000-' || lpad(to_hex(a.i), 12, '0'),
       CAST($5 AS TIMESTAMPTZ), CAST($5 AS TIMESTAMPTZ)
FROM generate_series(CAST($3 AS BIGINT), CAST($4 AS BIGINT)) AS a(i)
CROSS JOIN jsonb_array_elements(CAST($2 AS jsonb)) WITH ORDINALITY AS l(value, ord)
ORDER BY {order}

-- name: history_interleaved
l.ord, a.i

-- name: history_by_aggregate
a.i, l.ord

-- As after any bulk load: fresh statistics (the planner would plan for the
-- table as it was) and the visibility map set (or autovacuum does it later,
-- in the middle of whatever runs then).
-- name: after_bulk_load
VACUUM (ANALYZE) events

-- name: flush_after_bulk_load
CHECKPOINT

-- name: begin_write
BEGIN

-- Derived data (read models, the relay's checkpoint): a server crash may
-- lose the last milliseconds of commits, which are derived again.
-- (With the BEGIN, one round trip.)
-- name: derived_begin
BEGIN; SET LOCAL synchronous_commit TO OFF

-- name: snapshot_begin
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- Migrating processes take turns (session advisory lock 7233083).
-- name: migrate_lock
SELECT 1 FROM (SELECT pg_advisory_lock(7233083)) AS l

-- name: migrate_unlock
SELECT pg_advisory_unlock(7233083)

-- Asked of the catalogue: a failed probe would abort the transaction.
-- name: has_column
SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2

-- name: has_table
SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1

-- name: versions
SELECT aggregate_id, version FROM projected_versions WHERE projector = $1
AND aggregate_id = ANY(ARRAY(SELECT r.value FROM jsonb_array_elements_text(CAST($2 AS jsonb)) AS r(value))) ORDER BY aggregate_id

-- In key order, so two writers never wait on each other's rows.
-- name: versions_locked
SELECT aggregate_id, version FROM projected_versions WHERE projector = $1
AND aggregate_id = ANY(ARRAY(SELECT r.value FROM jsonb_array_elements_text(CAST($2 AS jsonb)) AS r(value))) ORDER BY aggregate_id FOR UPDATE

-- $1: the channel. Delivered at commit.
-- name: notify_progress
SELECT 1 FROM (SELECT pg_notify($1, '')) AS n

-- A runner's first statement locks rows of projected_versions, so it waits
-- here before touching any table.
-- name: lock_out_projectors
LOCK TABLE projected_versions IN EXCLUSIVE MODE

-- $1: the lock's key. Held by the leading relay's own connection.
-- name: try_lead
SELECT pg_try_advisory_lock($1)

-- PostgreSQL-only steps of migrations (named `only_…`; SQLite has none).
-- Released: never edit (their checksums are in every database).

-- Migration 2 of `event_store`: version 1 kept RFC 3339 text, which casts
-- exactly.
-- name: only_native_timestamps_events
ALTER TABLE events ALTER COLUMN occurred_at TYPE TIMESTAMPTZ USING CAST(occurred_at AS TIMESTAMPTZ), ALTER COLUMN recorded_at TYPE TIMESTAMPTZ USING CAST(recorded_at AS TIMESTAMPTZ)

-- name: only_native_timestamps_idempotency
ALTER TABLE idempotency ALTER COLUMN created_at TYPE TIMESTAMPTZ USING CAST(created_at AS TIMESTAMPTZ)
