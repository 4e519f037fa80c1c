-- The orders' read models (src/read_model/): their tables and the queries
-- of the API. The same on both databases. `{t}`, `{summary}`, `{stats}`, …
-- name the table (a rebuild makes fresh ones beside the live tables),
-- `{tag}` tells a fresh table's indexes from the live ones.

-- Migration 1 of `projection order_details`: never edit.
-- name: order_details_table
CREATE TABLE IF NOT EXISTS {t} (
                order_id TEXT PRIMARY KEY,
                customer_id TEXT NOT NULL,
                status TEXT NOT NULL,
                items TEXT NOT NULL,
                total_cents BIGINT NOT NULL,
                version BIGINT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                payment_ref TEXT,
                carrier TEXT,
                tracking_number TEXT,
                cancel_reason TEXT)

-- name: order_details_by_customer
CREATE INDEX IF NOT EXISTS order_details_customer{tag} ON {t} (customer_id, order_id)

-- name: order_details_by_status
CREATE INDEX IF NOT EXISTS order_details_status{tag} ON {t} (status, order_id)

-- name: order_details_by_customer_status
CREATE INDEX IF NOT EXISTS order_details_customer_status{tag} ON {t} (customer_id, status, order_id)

-- Migration 1 of `projection customer_summary`: never edit.
-- name: customer_summary_table
CREATE TABLE IF NOT EXISTS {summary} (
                customer_id TEXT PRIMARY KEY,
                order_count BIGINT NOT NULL,
                total_spent_cents BIGINT NOT NULL,
                total_spent_cents_e18 BIGINT NOT NULL DEFAULT 0,
                last_order_id TEXT NOT NULL,
                last_order_at TEXT NOT NULL)

-- The orders a customer's summary counts (what each paid).
-- name: customer_orders_table
CREATE TABLE IF NOT EXISTS {orders} (
                order_id TEXT PRIMARY KEY,
                customer_id TEXT NOT NULL,
                paid_cents BIGINT NOT NULL)

-- Migration 1 of `projection order_stats`: never edit.
-- name: order_stats_table
CREATE TABLE IF NOT EXISTS {stats} (
                status TEXT PRIMARY KEY,
                order_count BIGINT NOT NULL,
                revenue_cents BIGINT NOT NULL,
                revenue_cents_e18 BIGINT NOT NULL DEFAULT 0)

-- The orders each status counts.
-- name: order_stats_members_table
CREATE TABLE IF NOT EXISTS {members} (
                order_id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                total_cents BIGINT NOT NULL)

-- name: order_by_id
SELECT {order_columns} FROM order_details WHERE order_id = $1

-- name: customer_by_id
SELECT {customer_columns} FROM customer_summary WHERE customer_id = $1

-- name: stats
SELECT status, order_count, revenue_cents, revenue_cents_e18 FROM order_stats

-- name: all_orders
SELECT {order_columns} FROM order_details

-- name: all_customers
SELECT {customer_columns} FROM customer_summary

-- A customer's orders whose shipping details are not erased yet.
-- name: orders_with_shipping
SELECT order_id FROM order_details WHERE customer_id = $1 AND shipping IS NOT NULL AND shipping <> '"erased"'
