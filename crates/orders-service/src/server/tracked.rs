//! Which SKUs the inventory tracks, as order creation asks it (through the
//! inventory link: its store in one process, the order side's copy of its
//! read model apart): a SKU with
//! stock records stays tracked for good, so a yes is kept; a no is kept for
//! a moment only, then asked again. An order created in that moment after a
//! SKU's first stock is like one created just before it: untracked, which
//! the design allows anyway (tracking is fixed when an order is created).

use crate::inventory_link::{InventoryLink, LinkError};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a "not tracked" answer is trusted.
const UNTRACKED_FOR: Duration = Duration::from_secs(1);
/// SKUs remembered as untracked, at most (the map is cleared past it).
const MAX_UNTRACKED: usize = 100_000;

/// The tracked SKUs seen so far, and recent answers that a SKU was not.
#[derive(Default)]
pub struct TrackedSkus {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    tracked: HashSet<String>,
    untracked: HashMap<String, Instant>,
}

impl TrackedSkus {
    /// Which of `skus` are tracked: from memory where it knows, else one
    /// question to the inventory for the rest.
    pub async fn of(
        &self,
        inventory: &dyn InventoryLink,
        skus: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, LinkError> {
        let now = Instant::now();
        let (mut known, unknown) = self.split(skus, now);
        if unknown.is_empty() {
            return Ok(known);
        }
        let found = inventory.tracked(&unknown).await?;
        self.remember(&unknown, &found, now);
        known.extend(found);
        Ok(known)
    }

    /// (the SKUs known tracked, those to ask about).
    fn split(&self, skus: &BTreeSet<String>, now: Instant) -> (BTreeSet<String>, Vec<String>) {
        let Ok(seen) = self.seen.lock() else {
            return (BTreeSet::new(), skus.iter().cloned().collect());
        };
        let mut known = BTreeSet::new();
        let mut unknown = Vec::new();
        for sku in skus {
            if seen.tracked.contains(sku) {
                known.insert(sku.clone());
            } else if seen
                .untracked
                .get(sku)
                .is_none_or(|at| now.duration_since(*at) >= UNTRACKED_FOR)
            {
                unknown.push(sku.clone());
            }
        }
        (known, unknown)
    }

    fn remember(&self, asked: &[String], found: &BTreeSet<String>, now: Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.untracked.len() > MAX_UNTRACKED {
            seen.untracked.clear();
        }
        for sku in asked {
            if found.contains(sku) {
                seen.untracked.remove(sku);
                seen.tracked.insert(sku.clone());
            } else {
                seen.untracked.insert(sku.clone(), now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(skus: &[&str]) -> BTreeSet<String> {
        skus.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_yes_is_kept_for_good_and_a_no_only_for_a_moment() {
        let t = TrackedSkus::default();
        let now = Instant::now();
        t.remember(&["a".into(), "b".into()], &set(&["a"]), now);
        let (known, unknown) = t.split(&set(&["a", "b", "c"]), now);
        assert_eq!((known, unknown), (set(&["a"]), vec!["c".to_owned()]));
        let later = now + UNTRACKED_FOR;
        let (known, unknown) = t.split(&set(&["a", "b"]), later);
        assert_eq!((known, unknown), (set(&["a"]), vec!["b".to_owned()]));
    }
}
