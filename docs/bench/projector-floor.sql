-- The projector's floor on one PostgreSQL backend: one batch of 5,000 order_details
-- upserts (the read model's widest table, 4 indexes, 250,000 rows), sent as the
-- projector sends it (one JSON parameter) and as native arrays (UNNEST), and the
-- cost of parsing the JSON alone. Every write is rolled back.
-- psql postgres://postgres:postgres@127.0.0.1:5432/postgres -f docs/bench/projector-floor.sql
\timing off
DROP TABLE IF EXISTS od;
CREATE TABLE od (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL, items TEXT NOT NULL, total_cents BIGINT NOT NULL, version BIGINT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, payment_ref TEXT, carrier TEXT, tracking_number TEXT, cancel_reason TEXT);
CREATE INDEX od_c ON od (customer_id, order_id); CREATE INDEX od_s ON od (status, order_id); CREATE INDEX od_cs ON od (customer_id, status, order_id);
INSERT INTO od SELECT 'bench-' || lpad(i::text, 9, '0'), 'c' || (i % 5000), 'created', '[{"sku":"sku-1","quantity":1,"unit_price_cents":1999}]', 1999, 1, '2026-11-27T22:00:00.000000Z', '2026-11-27T22:00:00.000000Z', NULL, NULL, NULL, NULL FROM generate_series(1,250000) i;
VACUUM ANALYZE od;
-- the JSON parameter, as the projector sends it
SELECT jsonb_agg(jsonb_build_array('bench-' || lpad(i::text, 9, '0'), 'c' || (i % 5000), 'paid', '[{"sku":"sku-1","quantity":1,"unit_price_cents":1999}]', 1999, 2, '2026-11-27T22:00:00.000000Z', '2026-11-27T22:01:00.000000Z', 'psp-' || i, NULL, NULL, NULL))::text AS j FROM generate_series(1, 5000) i \gset
\timing on
\echo '1. upsert of 5,000 rows from one JSON parameter (as the projector does):'
BEGIN;
INSERT INTO od SELECT v.* FROM (SELECT r.value->>0, r.value->>1, r.value->>2, r.value->>3, CAST(r.value->>4 AS BIGINT), CAST(r.value->>5 AS BIGINT), r.value->>6, r.value->>7, r.value->>8, r.value->>9, r.value->>10, r.value->>11 FROM jsonb_array_elements(CAST(:'j' AS jsonb)) AS r(value)) AS v WHERE true
ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, status = excluded.status, items = excluded.items, total_cents = excluded.total_cents, version = excluded.version, created_at = excluded.created_at, updated_at = excluded.updated_at, payment_ref = excluded.payment_ref, carrier = excluded.carrier, tracking_number = excluded.tracking_number, cancel_reason = excluded.cancel_reason;
ROLLBACK;
\echo '2. parsing that JSON parameter alone:'
BEGIN;
SELECT count(*) FROM jsonb_array_elements(CAST(:'j' AS jsonb)) AS r(value);
ROLLBACK;
\timing off
SELECT array_agg('bench-' || lpad(i::text, 9, '0'))::text a1, array_agg('c' || (i % 5000))::text a2,
  array_agg('paid'::text)::text a3, array_agg('[{"sku":"sku-1","quantity":1,"unit_price_cents":1999}]'::text)::text a4,
  array_agg(1999::bigint)::text a5, array_agg(2::bigint)::text a6, array_agg('2026-11-27T22:00:00.000000Z'::text)::text a7,
  array_agg('2026-11-27T22:01:00.000000Z'::text)::text a8, array_agg('psp-' || i)::text a9, array_agg(NULL::text)::text a10,
  array_agg(NULL::text)::text a11, array_agg(NULL::text)::text a12 FROM generate_series(5001, 10000) i \gset
\timing on
\echo '3. the same upsert from native arrays (UNNEST):'
BEGIN;
INSERT INTO od SELECT * FROM unnest(CAST(:'a1' AS text[]), CAST(:'a2' AS text[]), CAST(:'a3' AS text[]),
  CAST(:'a4' AS text[]), CAST(:'a5' AS bigint[]), CAST(:'a6' AS bigint[]), CAST(:'a7' AS text[]), CAST(:'a8' AS text[]),
  CAST(:'a9' AS text[]), CAST(:'a10' AS text[]), CAST(:'a11' AS text[]), CAST(:'a12' AS text[]))
ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, status = excluded.status, items = excluded.items, total_cents = excluded.total_cents, version = excluded.version, created_at = excluded.created_at, updated_at = excluded.updated_at, payment_ref = excluded.payment_ref, carrier = excluded.carrier, tracking_number = excluded.tracking_number, cancel_reason = excluded.cancel_reason;
ROLLBACK;
\echo '4. a plain UPDATE of 5,000 rows from arrays:'
BEGIN;
UPDATE od SET status = 'paid', version = 2, payment_ref = u.p, updated_at = '2026-11-27T22:01:00.000000Z' FROM unnest(CAST(:'a1' AS text[]), CAST(:'a9' AS text[])) AS u(id, p) WHERE od.order_id = u.id;
ROLLBACK;
DROP TABLE od;
