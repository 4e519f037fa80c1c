-- The projector runner's tables and statements, the same on both databases
-- (src/read/): checkpoints per source, the version applied per aggregate
-- with its commit-ordered stamp, event traces and query traces. `{rows}` is
-- a batch of rows as one JSON parameter (the dialect's row source).

-- Migration 1 of `projector` (with sql/dead_letters.sql): never edit (its
-- checksum is in every database); a change is a new migration.
-- name: checkpoints_table
CREATE TABLE IF NOT EXISTS projector_checkpoints (
        projector TEXT NOT NULL,
        source_key TEXT NOT NULL,
        next_position BIGINT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (projector, source_key))

-- name: versions_table
CREATE TABLE IF NOT EXISTS projected_versions (
        projector TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        position BIGINT NOT NULL,
        published_as TEXT NOT NULL,
        consumed_at TEXT NOT NULL,
        applied_at TEXT NOT NULL,
        seq BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (projector, aggregate_id))

-- name: progress_table
CREATE TABLE IF NOT EXISTS projector_progress (
        projector TEXT PRIMARY KEY,
        seq BIGINT NOT NULL)

-- name: event_traces_table
CREATE TABLE IF NOT EXISTS event_traces (
        projector TEXT NOT NULL,
        event_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        published_as TEXT NOT NULL,
        consumed_at TEXT NOT NULL,
        applied_at TEXT NOT NULL,
        PRIMARY KEY (projector, event_id))

-- name: event_traces_index
CREATE INDEX IF NOT EXISTS event_traces_applied ON event_traces (projector, applied_at)

-- name: query_traces_table
CREATE TABLE IF NOT EXISTS query_traces (
        aggregate_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        queried_at TEXT NOT NULL,
        PRIMARY KEY (aggregate_id, version))

-- Indexes over columns that databases made before versioned migrations gain.
-- name: drop_old_versions_index
DROP INDEX IF EXISTS projected_versions_applied

-- name: versions_seq_index
CREATE INDEX IF NOT EXISTS projected_versions_seq ON projected_versions (projector, seq, aggregate_id)

-- One row written and rolled back: whether the read DB takes writes.
-- name: probe_write
INSERT INTO projector_checkpoints (projector, source_key, next_position, updated_at) VALUES ($1, 'probe', 0, '')

-- The next commit-ordered stamp of projector $1. The counter row stays
-- locked until the transaction ends, so stamps commit in the order they
-- are taken.
-- name: next_seq
INSERT INTO projector_progress (projector, seq) VALUES ($1, 1)
ON CONFLICT (projector) DO UPDATE SET seq = projector_progress.seq + 1 RETURNING seq

-- $1 projector, $2 now, $3 the rows (source_key, next_position): never back.
-- name: write_checkpoints
INSERT INTO projector_checkpoints (projector, source_key, next_position, updated_at)
SELECT $1, v.source_key, v.next_position, $2 FROM ({rows}) AS v WHERE true
ON CONFLICT (projector, source_key) DO UPDATE SET
next_position = CASE WHEN excluded.next_position > projector_checkpoints.next_position THEN excluded.next_position ELSE projector_checkpoints.next_position END,
updated_at = excluded.updated_at

-- name: checkpoints
SELECT source_key, next_position, updated_at FROM projector_checkpoints WHERE projector = $1

-- $1 applied at, $2 projector, $3 the rows (event_id, command_id,
-- published_as, consumed_at).
-- name: write_event_traces
INSERT INTO event_traces (event_id, command_id, published_as, consumed_at, applied_at, projector)
SELECT v.event_id, v.command_id, v.published_as, v.consumed_at, $1, $2 FROM ({rows}) AS v
WHERE true ON CONFLICT (projector, event_id) DO NOTHING

-- Rows stored before get their new version: $1 applied at, $2 projector,
-- $3 seq, $4 the rows (aggregate_id, version, position, published_as,
-- consumed_at).
-- name: versions_update
UPDATE projected_versions SET version = v.version, position = v.position, published_as = v.published_as,
consumed_at = v.consumed_at, applied_at = $1, seq = $3 FROM ({rows}) AS v
WHERE projected_versions.projector = $2 AND projected_versions.aggregate_id = v.aggregate_id

-- New rows (parameters as versions_update): a concurrent writer of the same
-- new aggregate fails on the key.
-- name: versions_insert
INSERT INTO projected_versions (aggregate_id, version, position, published_as, consumed_at, applied_at, projector, seq)
SELECT v.aggregate_id, v.version, v.position, v.published_as, v.consumed_at, $1, $2, $3
FROM ({rows}) AS v

-- Either (parameters as versions_update), where one writer makes it safe.
-- name: versions_upsert
INSERT INTO projected_versions (aggregate_id, version, position, published_as, consumed_at, applied_at, projector, seq)
SELECT v.aggregate_id, v.version, v.position, v.published_as, v.consumed_at, $1, $2, $3
FROM ({rows}) AS v WHERE true ON CONFLICT (projector, aggregate_id) DO UPDATE SET
version = excluded.version, position = excluded.position, published_as = excluded.published_as,
consumed_at = excluded.consumed_at, applied_at = excluded.applied_at, seq = excluded.seq

-- One aggregate's version after a retried dead letter: $1 projector,
-- $2 aggregate, $3 version, $4 position, $5 published as, $6 now, $7 seq.
-- name: version_update_one
UPDATE projected_versions SET version = $3, position = $4, published_as = $5, consumed_at = $6,
applied_at = $6, seq = $7 WHERE projector = $1 AND aggregate_id = $2

-- name: version_insert_one
INSERT INTO projected_versions (projector, aggregate_id, version, position, published_as, consumed_at, applied_at, seq)
VALUES ($1, $2, $3, $4, $5, $6, $6, $7)

-- name: version_of
SELECT version FROM projected_versions WHERE projector = $1 AND aggregate_id = $2

-- name: all_versions
SELECT aggregate_id, version FROM projected_versions WHERE projector = $1 AND aggregate_id <> '#cutover'

-- name: last_stamp
SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM projected_versions WHERE projector = $1

-- The versions stamped after $2, a page of $3.
-- name: stamped_after
SELECT aggregate_id, version, seq FROM projected_versions
WHERE projector = $1 AND seq > $2 ORDER BY seq, aggregate_id LIMIT $3

-- The rest of stamp $2 after aggregate $3, then what follows, a page of $4.
-- A row-value comparison, which both databases turn into a range of the
-- (projector, seq, aggregate_id) index. Written as `seq > $2 OR (seq = $2
-- AND ...)`, PostgreSQL 15 filtered every one of the projector's rows from
-- the index's start (20 ms at 100,000 rows, on every wake-up).
-- name: stamped_after_id
SELECT aggregate_id, version, seq FROM projected_versions
WHERE projector = $1 AND (seq, aggregate_id) > ($2, $3)
ORDER BY seq, aggregate_id LIMIT $4

-- Every event applied, as the sum of every aggregate's version (each
-- aggregate's events are applied in order, without gaps).
-- name: applied_events
SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM projected_versions WHERE projector = $1

-- name: event_trace
SELECT published_as, consumed_at, applied_at FROM event_traces WHERE projector = $1 AND event_id = $2

-- name: last_applied
SELECT published_as, consumed_at, applied_at FROM projected_versions WHERE projector = $1 AND aggregate_id = $2

-- The first time wins: $1 the rows (aggregate_id, version, queried_at).
-- name: write_query_traces
INSERT INTO query_traces (aggregate_id, version, queried_at)
SELECT v.aggregate_id, v.version, MIN(v.queried_at) FROM ({rows}) AS v WHERE true
GROUP BY v.aggregate_id, v.version
ON CONFLICT (aggregate_id, version) DO NOTHING

-- name: first_queried
SELECT MIN(queried_at) FROM query_traces WHERE aggregate_id = $1 AND version >= $2

-- name: prune_event_traces
DELETE FROM event_traces WHERE projector = $1 AND applied_at < $2

-- name: prune_query_traces
DELETE FROM query_traces WHERE queried_at < $1

-- Migration 2 of `projector`: the version of each read model, and the
-- build of a new one beside it (one per projector; its owner's heartbeat
-- says whether it still runs).
-- name: read_model_versions_table
CREATE TABLE IF NOT EXISTS read_model_versions (
        projector TEXT NOT NULL,
        projection TEXT NOT NULL,
        live_version BIGINT NOT NULL,
        retired_version BIGINT,
        retired_at_ms BIGINT,
        PRIMARY KEY (projector, projection))

-- name: read_model_builds_table
CREATE TABLE IF NOT EXISTS read_model_builds (
        projector TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        versions TEXT NOT NULL,
        tables TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        heartbeat_ms BIGINT NOT NULL,
        done BIGINT NOT NULL,
        total BIGINT NOT NULL,
        phase TEXT NOT NULL)

-- $1 projector, $2 projection, $3 the version its tables hold now.
-- name: register_version
INSERT INTO read_model_versions (projector, projection, live_version) VALUES ($1, $2, $3)
ON CONFLICT (projector, projection) DO NOTHING

-- name: live_versions
SELECT projection, live_version, retired_version, retired_at_ms FROM read_model_versions WHERE projector = $1

-- A projection that cannot be rebuilt takes its new version as it is.
-- name: set_live_version
UPDATE read_model_versions SET live_version = $3 WHERE projector = $1 AND projection = $2

-- The cutover: $3 the new version, $4 now (ms).
-- name: cut_over_version
UPDATE read_model_versions SET retired_version = live_version, retired_at_ms = $4, live_version = $3
WHERE projector = $1 AND projection = $2

-- name: clear_retired
UPDATE read_model_versions SET retired_version = NULL, retired_at_ms = NULL WHERE projector = $1 AND projection = $2

-- name: build_of
SELECT owner, versions, tables, started_ms, heartbeat_ms, done, total, phase FROM read_model_builds WHERE projector = $1

-- name: builds
SELECT projector, owner, versions, tables, started_ms, heartbeat_ms, done, total, phase FROM read_model_builds ORDER BY projector

-- Claims the build of projector $1 for owner $2 where no build is, or where
-- the one there still has heartbeat $9 (read just before: compare and set).
-- name: claim_build
INSERT INTO read_model_builds (projector, owner, versions, tables, started_ms, heartbeat_ms, done, total, phase)
VALUES ($1, $2, $3, $4, $5, $5, 0, 0, 'starting')
ON CONFLICT (projector) DO UPDATE SET owner = excluded.owner, versions = excluded.versions,
tables = excluded.tables, started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms,
done = 0, total = 0, phase = 'starting' WHERE read_model_builds.heartbeat_ms = $6

-- name: build_heartbeat
UPDATE read_model_builds SET heartbeat_ms = $3, done = $4, total = $5, phase = $6 WHERE projector = $1 AND owner = $2

-- name: end_build
DELETE FROM read_model_builds WHERE projector = $1 AND owner = $2

-- A stamp that tells every follower the read model's rows changed under
-- their versions (a cutover): $1 projector, $2 now, $3 seq.
-- name: mark_cutover
INSERT INTO projected_versions (projector, aggregate_id, version, position, published_as, consumed_at, applied_at, seq)
VALUES ($1, '#cutover', 0, 0, '', $2, $2, $3)
ON CONFLICT (projector, aggregate_id) DO UPDATE SET seq = excluded.seq, applied_at = excluded.applied_at

-- A catch-up to the head swaps in every aggregate's version its build
-- applied, staged in {build}: $1 projector, $2 published as, $3 now,
-- $4 seq. Under the cutover's lock the build is at or past every live
-- version, so each row only moves forward. In key order: the indexes fill
-- page by page (a quarter faster than in the staging's order).
-- name: versions_from_build
INSERT INTO projected_versions (projector, aggregate_id, version, position, published_as, consumed_at, applied_at, seq)
SELECT $1, b.aggregate_id, b.version, 0, $2, $3, $3, $4 FROM {build} AS b WHERE true ORDER BY b.aggregate_id
ON CONFLICT (projector, aggregate_id) DO UPDATE SET version = excluded.version, position = excluded.position,
published_as = excluded.published_as, consumed_at = excluded.consumed_at, applied_at = excluded.applied_at,
seq = excluded.seq

-- The same where the projector has no version yet (a new read DB): a plain
-- insert, without a conflict check per row (half the time of the upsert).
-- name: versions_from_build_fresh
INSERT INTO projected_versions (projector, aggregate_id, version, position, published_as, consumed_at, applied_at, seq)
SELECT $1, b.aggregate_id, b.version, 0, $2, $3, $3, $4 FROM {build} AS b ORDER BY b.aggregate_id

-- Whether projector $1 has applied anything (1) or not (0).
-- name: has_versions
SELECT CAST(COUNT(*) AS BIGINT) FROM (SELECT 1 FROM projected_versions
WHERE projector = $1 AND aggregate_id <> '#cutover' LIMIT 1) AS x

-- An operator cancels a build: its owner's next heartbeat finds no row and
-- stops it (its tables are dropped).
-- name: withdraw_build
DELETE FROM read_model_builds WHERE projector = $1
