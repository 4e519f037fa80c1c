//! An order's stock, as the order knows it: which of its lines the inventory
//! tracks (decided when it is created, from the inventory's records), and
//! whether the order saga has reserved them. Untracked orders never wait.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where an order's stock stands.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StockStatus {
    /// Some lines are tracked and not reserved yet: the order cannot ship.
    Pending,
    /// Every tracked line is reserved.
    Reserved,
}

impl StockStatus {
    /// The name in JSON and in the read DB.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    /// Parses the JSON/DB name.
    pub fn parse(s: &str) -> Option<StockStatus> {
        match s {
            "pending" => Some(StockStatus::Pending),
            "reserved" => Some(StockStatus::Reserved),
            _ => None,
        }
    }
}

/// Units of one tracked SKU that an order needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    /// The SKU.
    pub sku: String,
    /// Units, summed over the order's lines of that SKU.
    pub quantity: i64,
}

/// The lines to reserve: units per tracked SKU, in SKU order.
pub fn lines_to_reserve<'a>(
    items: impl IntoIterator<Item = (&'a str, i64)>,
    tracked: &BTreeSet<String>,
) -> Vec<StockLine> {
    let mut units: BTreeMap<&str, i64> = BTreeMap::new();
    for (sku, quantity) in items {
        if tracked.contains(sku) {
            *units.entry(sku).or_default() += quantity;
        }
    }
    units
        .into_iter()
        .map(|(sku, quantity)| StockLine {
            sku: sku.to_owned(),
            quantity,
        })
        .collect()
}
