//! A released migration never changes: every database records the checksum
//! of the statements it ran, and refuses to start if this build's differ
//! (`MigrateError::Changed`). This pins the checksum of every migration of
//! every owner in the three databases, on both dialects, so that moving
//! statements around (into .sql files, behind a dialect) cannot change one
//! by a byte unnoticed. A new migration adds a line here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_sql::{Dialect, Postgres, Sqlite};

fn checksums(dialect: &'static dyn Dialect) -> Vec<String> {
    let mut components = cqrs_sql::store::write_components(dialect);
    components.push(cqrs_sql::shred::component());
    components.extend(orders_service::server::schema::read_components());
    components
        .iter()
        .flat_map(|c| {
            c.migrations
                .iter()
                .map(move |m| format!("{} {} {}", c.name, m.version, m.checksum()))
        })
        .collect()
}

#[test]
fn released_migrations_keep_their_checksums_on_both_dialects() {
    for (dialect, pinned) in [
        (&Postgres as &'static dyn Dialect, POSTGRES),
        (&Sqlite, SQLITE),
    ] {
        let ours = checksums(dialect);
        let pinned: Vec<String> = pinned.lines().map(str::to_owned).collect();
        assert_eq!(ours, pinned, "{dialect:?}:\n{}", ours.join("\n"));
    }
}

const POSTGRES: &str = "\
event_store 1 a7b7bd8db35fb773
event_store 2 af116e79addcd79b
event_store 3 d1a97248938eb3a2
event_store 4 cf9ab2ffd23fd14e
event_store 5 e4f71a5fb6727bdd
relay 1 91f47d335f09dd0d
data_keys 1 3ff2fae9099f9051
projector 1 26d40b1855f23803
projector 2 950573a3226e6de6
projector 3 449beacee1d1aace
projection order_details 1 518fb844d09d6494
projection order_details 2 e3f5a725da3bfbe3
projection order_details 3 6415eef49c25190e
projection customer_summary 1 50c268ef80cbb45c
projection order_stats 1 17d51ea8f23771f6
projection inventory_stock 1 08ce0f42154adeb3
projection order_saga 1 c41caacb2f8bdec4";
const SQLITE: &str = "\
event_store 1 60dfec04e09a55d4
event_store 2 af116e79addcd79b
event_store 3 d1a97248938eb3a2
event_store 4 cf9ab2ffd23fd14e
event_store 5 e4f71a5fb6727bdd
relay 1 91f47d335f09dd0d
data_keys 1 3ff2fae9099f9051
projector 1 26d40b1855f23803
projector 2 950573a3226e6de6
projector 3 449beacee1d1aace
projection order_details 1 518fb844d09d6494
projection order_details 2 e3f5a725da3bfbe3
projection order_details 3 6415eef49c25190e
projection customer_summary 1 50c268ef80cbb45c
projection order_stats 1 17d51ea8f23771f6
projection inventory_stock 1 08ce0f42154adeb3
projection order_saga 1 c41caacb2f8bdec4";
