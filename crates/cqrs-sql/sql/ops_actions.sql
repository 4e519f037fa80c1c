-- What operators did to the read side (src/read/audit.rs): who, what, on
-- what, when, and how it ended. The same on both databases.

-- Migration 3 of `projector`: never edit.
-- name: table
CREATE TABLE IF NOT EXISTS ops_actions (
        id TEXT PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL)

-- name: index
CREATE INDEX IF NOT EXISTS ops_actions_target ON ops_actions (target, id)

-- name: record
INSERT INTO ops_actions (id, at, actor, action, target, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)

-- Newest first.
-- name: recent
SELECT id, at, actor, action, target, outcome, detail FROM ops_actions ORDER BY id DESC LIMIT $1

-- The newest action on $1 whose name starts with $2.
-- name: last_on
SELECT id, at, actor, action, target, outcome, detail FROM ops_actions
WHERE target = $1 AND action LIKE $2 ORDER BY id DESC LIMIT 1
