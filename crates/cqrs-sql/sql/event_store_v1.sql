-- The write side's tables, for both databases. The dialects differ only in
-- what stands for {position} (how positions are allocated) and {payload}
-- (the payload's column type); `store::sql::write_schema` fills them in.
-- Statements are separated by semicolons; every one is idempotent (stores
-- made before migrations were versioned have these tables already).
-- This is migration 1 of `event_store` (`store::sql::write_components`):
-- never edit a statement here (its checksum is recorded in every database);
-- a change is a new migration there.

CREATE TABLE IF NOT EXISTS events (
    position {position},
    event_id TEXT NOT NULL UNIQUE,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version BIGINT NOT NULL,
    payload {payload} NOT NULL,
    command_id TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    caller TEXT,
    CONSTRAINT events_aggregate_version UNIQUE (aggregate_id, version));

CREATE INDEX IF NOT EXISTS events_command ON events (command_id);

CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    position BIGINT NOT NULL,
    created_at TEXT NOT NULL);
