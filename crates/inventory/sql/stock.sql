-- The inventory's read model (src/read_model.rs): stock per tracked SKU.
-- The same on both databases.

-- Migration 1 of `projection inventory_stock`: never edit.
-- name: table
CREATE TABLE IF NOT EXISTS {t} (
                sku TEXT PRIMARY KEY,
                on_hand BIGINT NOT NULL,
                reserved BIGINT NOT NULL,
                version BIGINT NOT NULL,
                updated_at TEXT NOT NULL)

-- name: by_sku
SELECT {columns} FROM inventory_stock WHERE sku = $1

-- Tracked SKUs in SKU order, $2 of them after $1.
-- name: list
SELECT {columns} FROM inventory_stock WHERE sku > $1 ORDER BY sku LIMIT $2
