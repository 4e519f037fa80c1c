-- Data keys for personal data (src/shred.rs): one per subject, wrapped by a
-- master key that never enters a database. The same on both databases.

-- Migration 1 of `data_keys`: never edit.
-- name: table
CREATE TABLE IF NOT EXISTS data_keys (
        key_id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        master_id TEXT NOT NULL,
        wrapped TEXT NOT NULL,
        created_at TEXT NOT NULL)

-- name: by_subject
CREATE UNIQUE INDEX IF NOT EXISTS data_keys_subject ON data_keys (subject)

-- name: of_subject
SELECT key_id, master_id, wrapped FROM data_keys WHERE subject = $1

-- name: one
SELECT key_id, master_id, wrapped FROM data_keys WHERE key_id = $1

-- A second process making the subject's key at once keeps the first.
-- name: insert
INSERT INTO data_keys (key_id, subject, master_id, wrapped, created_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (subject) DO NOTHING

-- name: erase
DELETE FROM data_keys WHERE subject = $1

-- name: not_under
SELECT key_id, master_id, wrapped FROM data_keys WHERE master_id <> $1

-- name: rewrap
UPDATE data_keys SET master_id = $2, wrapped = $3 WHERE key_id = $1

-- name: per_master
SELECT master_id, COUNT(*) FROM data_keys GROUP BY master_id
