-- Records the projector gave up on (dead), and the later records of the
-- same aggregate parked behind them (src/read/dead_letters.rs). The same on
-- both databases.

-- Part of migration 1 of `projector`: never edit.
-- name: table
CREATE TABLE IF NOT EXISTS dead_letters (
        id TEXT PRIMARY KEY,
        projector TEXT NOT NULL,
        source_key TEXT NOT NULL,
        next_position BIGINT NOT NULL,
        published_as TEXT NOT NULL,
        aggregate_id TEXT,
        version BIGINT,
        event_type TEXT,
        reason TEXT NOT NULL,
        status TEXT NOT NULL,
        envelope TEXT,
        raw TEXT,
        created_at TEXT NOT NULL,
        resolved_at TEXT)

-- name: index
CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (projector, aggregate_id, status)

-- name: record
INSERT INTO dead_letters (id, projector, source_key, next_position, published_as, aggregate_id, version, event_type, reason, status, envelope, raw, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)

-- name: has_open
SELECT COUNT(*) FROM dead_letters WHERE projector = $1 AND aggregate_id = $2 AND status IN ('dead', 'parked')

-- In version order.
-- name: open_for
SELECT id, projector, published_as, aggregate_id, version, event_type, reason, status, created_at, envelope FROM dead_letters
WHERE projector = $1 AND aggregate_id = $2 AND status IN ('dead', 'parked') ORDER BY COALESCE(version, 0), id

-- name: resolve
UPDATE dead_letters SET status = $1, resolved_at = $2 WHERE id = $3

-- name: parked_aggregates
SELECT DISTINCT aggregate_id FROM dead_letters WHERE projector = $1 AND status IN ('dead', 'parked') AND aggregate_id IS NOT NULL

-- Newest first.
-- name: list_open
SELECT id, projector, published_as, aggregate_id, version, event_type, reason, status, created_at, envelope FROM dead_letters
WHERE projector = $1 AND status IN ('dead', 'parked') ORDER BY id DESC

-- name: list_all
SELECT id, projector, published_as, aggregate_id, version, event_type, reason, status, created_at, envelope FROM dead_letters
WHERE projector = $1 ORDER BY id DESC

-- One letter by id ($3), or every open letter of an aggregate ($3).
-- name: discard
UPDATE dead_letters SET status = 'discarded', resolved_at = $1 WHERE projector = $2
AND status IN ('dead', 'parked') AND (id = $3 OR aggregate_id = $3)

-- Letters newest first: open ones ($1 = 1) or all, of projector $3 (or of
-- every one: ''), at most $2.
-- name: list_every
SELECT id, projector, published_as, aggregate_id, version, event_type, reason, status, created_at, envelope, raw FROM dead_letters
WHERE ($1 = 0 OR status IN ('dead', 'parked')) AND ($3 = '' OR projector = $3) ORDER BY id DESC LIMIT $2

-- name: one
SELECT id, projector, published_as, aggregate_id, version, event_type, reason, status, created_at, envelope, raw FROM dead_letters
WHERE id = $1

-- Open letters per projector and status.
-- name: open_counts
SELECT projector, status, COUNT(*) FROM dead_letters WHERE status IN ('dead', 'parked') GROUP BY projector, status
