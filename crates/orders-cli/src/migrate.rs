//! `orders migrate`: the schema migrations a deploy applies before the new
//! build serves (or, with `--check`, only lists).

use orders_service::server::{schema, wiring, Config};

/// Applies (or with `check` lists) the due migrations of both databases and
/// prints each owner's version; returns the exit code (1: `check` found
/// migrations due).
pub async fn run(config: &Config, check: bool) -> anyhow::Result<i32> {
    let dbs = wiring::connect_databases(config).await?;
    let code = if check {
        let due = schema::pending(&dbs).await?;
        for m in &due {
            println!("due: {m}");
        }
        i32::from(!due.is_empty())
    } else {
        for m in schema::bring_current(&dbs, true).await? {
            println!("applied: {m}");
        }
        0
    };
    let named = dbs.named();
    for (role, db) in &named {
        for (component, version) in cqrs_sql::migrate::versions(db).await? {
            println!("{role} db: {component} at version {version}");
        }
    }
    for (_, db) in named {
        db.close().await;
    }
    Ok(code)
}
