//! Every filter combination of `GET /orders` is served by an index, with no
//! sort, on both databases (the plans are read from the databases).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_sql::Db;
use orders::read_model::{bind_list_filter, list_orders_sql, projections, OrderFilter};
use orders::Status;
use sqlx::Row;

fn filters() -> Vec<OrderFilter> {
    let mut out = Vec::new();
    for customer in [None, Some("c1".to_owned())] {
        for status in [None, Some(Status::Paid)] {
            for after in [None, Some("0190".to_owned())] {
                out.push(OrderFilter {
                    customer_id: customer.clone(),
                    status,
                    after: after.clone(),
                    limit: 20,
                });
            }
        }
    }
    out
}

async fn prepare(db: &Db) {
    cqrs_sql::read::runner::ensure_tables(db, &projections())
        .await
        .unwrap();
    // Enough rows that a scan would be a real choice.
    for i in 0..500 {
        sqlx::query(
            "INSERT INTO order_details (order_id, customer_id, status, items, total_cents, version, \
             created_at, updated_at) VALUES ($1, $2, $3, '[]', 1, 1, 't', 't')",
        )
        .bind(format!("0190-{i:05}"))
        .bind(format!("c{}", i % 50))
        .bind(["created", "paid", "shipped"][i % 3])
        .execute(&db.writer)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn every_list_filter_uses_an_index_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    prepare(&db).await;
    sqlx::query("ANALYZE").execute(&db.writer).await.unwrap();
    for f in filters() {
        let sql = format!("EXPLAIN QUERY PLAN {}", list_orders_sql(&f));
        let plan: Vec<String> = bind_list_filter(sqlx::query(&sql), &f)
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(3))
            .collect();
        // A filter is a SEARCH of an index; only the unfiltered first page
        // may walk the primary key in order (and stop at the limit).
        let filtered = f.customer_id.is_some() || f.status.is_some() || f.after.is_some();
        assert!(
            plan.iter().all(|p| if filtered {
                p.starts_with("SEARCH") && p.contains("USING")
            } else {
                p.contains("USING")
            }),
            "{f:?} scans: {plan:?}"
        );
        assert!(
            !plan.iter().any(|p| p.contains("TEMP B-TREE")),
            "{f:?} sorts: {plan:?}"
        );
    }
}

#[tokio::test]
async fn every_list_filter_uses_an_index_on_postgres() {
    let db = test_support::fresh_postgres().await;
    prepare(&db).await;
    let mut tx = db.pool.begin().await.unwrap();
    // Forbid what an index would spare, so the plan shows whether one can.
    for setting in [
        "SET LOCAL enable_seqscan = off",
        "SET LOCAL enable_sort = off",
    ] {
        sqlx::query(setting).execute(&mut *tx).await.unwrap();
    }
    for f in filters() {
        let sql = format!("EXPLAIN {}", list_orders_sql(&f));
        let plan: Vec<String> = bind_list_filter(sqlx::query(&sql), &f)
            .fetch_all(&mut *tx)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        let text = plan.join("\n");
        assert!(text.contains("Index"), "{f:?}: {text}");
        // Each filter is a condition of the index, not a filter of its rows.
        let conds: Vec<&String> = plan.iter().filter(|l| l.contains("Index Cond")).collect();
        for (present, column) in [
            (f.customer_id.is_some(), "customer_id"),
            (f.status.is_some(), "status"),
            (f.after.is_some(), "order_id"),
        ] {
            if present {
                assert!(
                    conds.iter().any(|c| c.contains(column)),
                    "{f:?}: {column} is not an index condition:\n{text}"
                );
            }
        }
        assert!(!text.contains("Seq Scan"), "{f:?}: {text}");
        assert!(!text.contains("Sort"), "{f:?}: {text}");
    }
}
