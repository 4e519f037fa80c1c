-- The ledger of applied migrations (src/migrate.rs): one row per owner of
-- tables and version, with the checksum of the statements it ran.

-- name: ledger
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version BIGINT NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (component, version))

-- name: versions
SELECT component, CAST(MAX(version) AS BIGINT) FROM schema_migrations GROUP BY component ORDER BY component

-- name: record
INSERT INTO schema_migrations (component, version, name, checksum, applied_at) VALUES ($1, $2, $3, $4, $5)

-- name: recorded
SELECT version, checksum FROM schema_migrations WHERE component = $1 ORDER BY version
