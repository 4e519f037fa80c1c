-- Process managers' instances (src/process.rs): each one's state and how
-- many times it was saved. The same on both databases.

-- Migration 1 of every process manager's projection: never edit.
-- name: table
CREATE TABLE IF NOT EXISTS process_instances (
            process TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            state TEXT NOT NULL,
            version BIGINT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (process, instance_id))

-- name: load
SELECT state, version FROM process_instances WHERE process = $1 AND instance_id = $2

-- name: save
INSERT INTO process_instances (process, instance_id, state, version, updated_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (process, instance_id) DO UPDATE SET state = excluded.state, version = excluded.version, updated_at = excluded.updated_at
