-- The relay's tables and statements, the same on both databases: its
-- checkpoint (one row: every event at or below it is on Kafka), and when
-- each published batch went out (for traces).

-- Migration 1 of `relay`: never edit (its checksum is in every database).
-- name: checkpoint_table
CREATE TABLE IF NOT EXISTS relay_checkpoint (
        relay TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        updated_at TEXT NOT NULL)

-- name: batches_table
CREATE TABLE IF NOT EXISTS relay_batches (
        last_position BIGINT PRIMARY KEY,
        first_position BIGINT NOT NULL,
        published_at TEXT NOT NULL)

-- name: batches_index
CREATE INDEX IF NOT EXISTS relay_batches_published ON relay_batches (published_at)

-- name: checkpoint
SELECT position FROM relay_checkpoint WHERE relay = $1

-- Never back.
-- name: advance
UPDATE relay_checkpoint SET position = $2, updated_at = $3 WHERE relay = $1 AND position < $2

-- Back on purpose (a topic lost or recreated).
-- name: rewind
UPDATE relay_checkpoint SET position = $2, updated_at = $3 WHERE relay = $1

-- name: init
INSERT INTO relay_checkpoint (relay, position, updated_at) VALUES ($1, $2, $3) ON CONFLICT (relay) DO NOTHING

-- Whether the write DB was made by a version that kept an `outbox` table.
-- name: legacy_outbox
SELECT 1 FROM outbox WHERE 1 = 0

-- Its first unpublished row, so nothing is skipped and little sent twice.
-- name: legacy_start
SELECT CAST(COALESCE((SELECT MIN(position) - 1 FROM outbox WHERE published_at IS NULL), (SELECT MAX(position) FROM outbox), 0) AS BIGINT)

-- name: record_batch
INSERT INTO relay_batches (last_position, first_position, published_at) VALUES ($1, $2, $3)
ON CONFLICT (last_position) DO UPDATE SET first_position = excluded.first_position, published_at = excluded.published_at

-- name: prune_batches
DELETE FROM relay_batches WHERE published_at < $1

-- name: published_at
SELECT published_at FROM relay_batches WHERE last_position >= $1 AND first_position <= $1 ORDER BY last_position LIMIT 1

-- name: pending
SELECT COUNT(*) FROM events WHERE position > (SELECT position FROM relay_checkpoint WHERE relay = $1)

-- name: oldest_pending
SELECT {recorded_at} FROM events WHERE position > (SELECT position FROM relay_checkpoint WHERE relay = $1) ORDER BY position LIMIT 1
