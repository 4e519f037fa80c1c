//! `order_stats`: count and value of the orders in each status (with
//! `order_stats_members`, each order's status and total).

use super::sums::{Delta, SumProjection, Sums};
use super::{missing, overflow};
use crate::aggregate::{OrderEvent, Status};
use crate::money::Cents;
use crate::views::target_status;
use cqrs_core::EventEnvelope;
use cqrs_sql::batch::{Kind, Val};
use cqrs_sql::dialect::{fill, section};
use cqrs_sql::ProjectionError;
use sqlx::any::AnyRow;
use sqlx::FromRow;
use std::collections::{BTreeMap, HashMap};

/// The `order_stats` projection.
pub type OrderStats = SumProjection<StatusSums>;

/// Sums per status.
pub struct StatusSums;

/// What `order_stats_members` keeps of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The status it is counted in.
    pub status: Status,
    /// Its total, counted in that status's value.
    pub total_cents: i64,
}

/// What one batch changes in one status's count and value.
#[derive(Debug, Default)]
pub struct StatusDelta {
    /// Orders that joined (negative: left).
    pub orders: i64,
    /// Their value.
    pub revenue: Cents,
}

impl StatusDelta {
    fn add(&mut self, orders: i64, cents: i64) -> Result<(), ProjectionError> {
        self.orders += orders;
        self.revenue = self
            .revenue
            .checked_add(Cents::from(cents))
            .map_err(overflow)?;
        Ok(())
    }
}

impl Delta for StatusDelta {
    fn count(&self) -> i64 {
        self.orders
    }
    fn money(&self) -> Cents {
        self.revenue
    }
    fn extra_values(self) -> Vec<Val> {
        Vec::new()
    }
}

impl Sums for StatusSums {
    const NAME: &'static str = "order_stats";
    const MEMBERS: &'static str = "order_stats_members";
    const KEY: &'static str = "status";
    const MONEY: &'static str = "revenue_cents";
    const MONEY_E18: &'static str = "revenue_cents_e18";
    const EXTRA_COLUMNS: &'static [(&'static str, Kind)] = &[];
    const MEMBER_COLUMNS: &'static [(&'static str, Kind)] =
        &[("status", Kind::Text), ("total_cents", Kind::Int)];
    type Member = Member;
    type Delta = StatusDelta;

    fn member_from_row(row: &AnyRow) -> Result<(String, Member), ProjectionError> {
        let (order_id, status, total_cents): (String, String, i64) = FromRow::from_row(row)?;
        let status = Status::parse(&status)
            .ok_or_else(|| ProjectionError::Inconsistent(format!("bad status {status}")))?;
        Ok((
            order_id,
            Member {
                status,
                total_cents,
            },
        ))
    }

    fn member_values(m: &Member) -> Vec<Val> {
        vec![
            Val::Text(m.status.as_str().to_owned()),
            Val::Int(m.total_cents),
        ]
    }

    /// The order leaves its old status and joins its new one.
    fn fold(
        e: &EventEnvelope,
        event: &OrderEvent,
        members: &mut HashMap<String, Member>,
        deltas: &mut BTreeMap<String, StatusDelta>,
    ) -> Result<bool, ProjectionError> {
        let Some(to) = target_status(event) else {
            return Ok(false);
        };
        let mut add = |s: Status, orders: i64, cents: i64| {
            let d: &mut StatusDelta = deltas.entry(s.as_str().to_owned()).or_default();
            d.add(orders, cents)
        };
        if let OrderEvent::OrderCreated { total_cents, .. } = event {
            let member = Member {
                status: to,
                total_cents: *total_cents,
            };
            members.insert(e.aggregate_id.clone(), member);
            add(to, 1, *total_cents)?;
            return Ok(true);
        }
        let m = members.get_mut(&e.aggregate_id).ok_or_else(|| missing(e))?;
        add(m.status, -1, -m.total_cents)?;
        add(to, 1, m.total_cents)?;
        m.status = to;
        Ok(true)
    }

    fn merge_extra_sql(_table: &str) -> String {
        String::new()
    }

    fn schema(stats: &str, members: &str) -> Vec<String> {
        vec![
            fill(
                section(super::SQL, "order_stats_table"),
                &[("stats", stats)],
            ),
            fill(
                section(super::SQL, "order_stats_members_table"),
                &[("members", members)],
            ),
        ]
    }
}
