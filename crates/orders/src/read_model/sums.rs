//! The shape of a read model of running sums (per customer, per status): a
//! sums table, and a members table that keeps what each order counts for.
//! A batch folds into deltas that SQL adds to the stored sums (another
//! projector process may add its own to the same row meanwhile) and into
//! the new state of each order it touched.

use super::{decoded, ids, load_rows, overflow, upsert};
use crate::aggregate::OrderEvent;
use crate::money::{add_parts_sql, carry_sql, Cents};
use cqrs_core::EventEnvelope;
use cqrs_sql::batch::{Kind, Val};
use cqrs_sql::read::rebuild::{BulkFold, BulkRows};
use cqrs_sql::{AddedColumn, Migration, Projection, ProjectionError};
use futures::future::BoxFuture;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;

/// What one read model of sums says about itself; [`SumProjection`] does
/// the loading, folding and writing.
pub trait Sums: Send + Sync + 'static {
    /// The projection's name, and its sums table before any suffix.
    const NAME: &'static str;
    /// Its members table before any suffix.
    const MEMBERS: &'static str;
    /// The key of the sums table (`customer_id`, `status`).
    const KEY: &'static str;
    /// The money column, kept in two parts: `<MONEY>` below 10^18 and
    /// [`Sums::MONEY_E18`] for the whole 10^18s.
    const MONEY: &'static str;
    /// The column of the whole 10^18s of money (`<MONEY>_e18`).
    const MONEY_E18: &'static str;
    /// The sums table's columns after key, count and money, as a delta
    /// carries them (`last_order_id`, ...).
    const EXTRA_COLUMNS: &'static [(&'static str, Kind)];
    /// The members table's columns after `order_id`.
    const MEMBER_COLUMNS: &'static [(&'static str, Kind)];
    /// What the members table keeps of one order.
    type Member: Send + Sync;
    /// What one batch adds to one row of sums.
    type Delta: Delta + Send + Sync;

    /// A stored member: its order id and what it keeps.
    fn member_from_row(row: &AnyRow) -> Result<(String, Self::Member), ProjectionError>;
    /// A member as its columns after `order_id`, in [`Sums::MEMBER_COLUMNS`] order.
    fn member_values(member: &Self::Member) -> Vec<Val>;
    /// Folds one event into the deltas and the members; false when the
    /// event does not touch this read model.
    fn fold(
        e: &EventEnvelope,
        event: &OrderEvent,
        members: &mut HashMap<String, Self::Member>,
        deltas: &mut BTreeMap<String, Self::Delta>,
    ) -> Result<bool, ProjectionError>;
    /// The `SET` clauses that merge [`Sums::EXTRA_COLUMNS`] of a delta
    /// (`excluded`) into the stored row of `table`.
    fn merge_extra_sql(table: &str) -> String;
    /// Idempotent DDL for the sums table and the members table (migration
    /// 1: never edited once released).
    fn schema(sums: &str, members: &str) -> Vec<String>;
}

/// What one batch adds to one row of sums: a count, money, and the values
/// of the extra columns.
pub trait Delta: Default {
    /// Orders added (negative when they left).
    fn count(&self) -> i64;
    /// Money added.
    fn money(&self) -> Cents;
    /// The values of [`Sums::EXTRA_COLUMNS`].
    fn extra_values(self) -> Vec<Val>;
}

/// One batch folded: the deltas per key (in key order, one lock order for
/// every process), and the orders touched (sorted, once each).
pub type Folded<S> = (BTreeMap<String, <S as Sums>::Delta>, Vec<String>);

/// Folds a batch in order; an event about an order the members do not hold
/// is an error (the read model would miss it).
pub fn fold_batch<S: Sums>(
    events: &[(&EventEnvelope, OrderEvent)],
    members: &mut HashMap<String, S::Member>,
) -> Result<Folded<S>, ProjectionError> {
    let mut deltas = BTreeMap::new();
    let mut touched = Vec::new();
    for (e, event) in events {
        if S::fold(e, event, members, &mut deltas)? {
            touched.push(e.aggregate_id.clone());
        }
    }
    touched.sort_unstable();
    touched.dedup();
    Ok((deltas, touched))
}

/// A read model of sums over tables named with a suffix (replays build
/// fresh tables, then swap them in).
pub struct SumProjection<S> {
    sums: String,
    members: String,
    kind: PhantomData<S>,
}

impl<S: Sums> SumProjection<S> {
    /// Over `<NAME>{suffix}` and `<MEMBERS>{suffix}`.
    pub fn new(suffix: &str) -> Self {
        Self {
            sums: format!("{}{suffix}", S::NAME),
            members: format!("{}{suffix}", S::MEMBERS),
            kind: PhantomData,
        }
    }

    async fn apply_events(
        &self,
        tx: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let events = decoded(events)?;
        let columns = S::MEMBER_COLUMNS.iter().map(|c| c.0);
        let columns: Vec<&str> = std::iter::once("order_id").chain(columns).collect();
        let (columns, ids) = (columns.join(", "), ids(&events));
        let mut members = HashMap::new();
        for r in load_rows(tx, &columns, &self.members, "order_id", &ids).await? {
            let (order_id, member) = S::member_from_row(&r)?;
            members.insert(order_id, member);
        }
        let (deltas, touched) = fold_batch::<S>(&events, &mut members)?;
        self.write_members(tx, &touched, &members).await?;
        self.write_sums(tx, deltas).await
    }

    /// Each touched order's new state.
    async fn write_members(
        &self,
        tx: &mut AnyConnection,
        touched: &[String],
        members: &HashMap<String, S::Member>,
    ) -> Result<(), ProjectionError> {
        let rows = member_rows::<S>(touched.iter(), members);
        let update: Vec<String> = S::MEMBER_COLUMNS
            .iter()
            .map(|(c, _)| format!("{c} = excluded.{c}"))
            .collect();
        let columns = member_columns::<S>();
        upsert(
            tx,
            &self.members,
            &columns,
            "order_id",
            &update.join(", "),
            &rows,
        )
        .await?;
        Ok(())
    }

    /// Adds the deltas to the stored sums, in key order.
    async fn write_sums(
        &self,
        tx: &mut AnyConnection,
        deltas: BTreeMap<String, S::Delta>,
    ) -> Result<(), ProjectionError> {
        let rows = sum_rows::<S>(deltas)?;
        let (t, money) = (&self.sums, S::MONEY);
        let mut update = format!(
            "order_count = {t}.order_count + excluded.order_count, {}",
            add_parts_sql(t, money)
        );
        let extra = S::merge_extra_sql(t);
        if !extra.is_empty() {
            update = format!("{update}, {extra}");
        }
        upsert(tx, t, &sum_columns::<S>(), S::KEY, &update, &rows).await?;
        Ok(())
    }
}

/// The members table's columns as written.
fn member_columns<S: Sums>() -> Vec<(&'static str, Kind)> {
    [&[("order_id", Kind::Text)], S::MEMBER_COLUMNS].concat()
}

/// The members of `ids` as rows.
fn member_rows<'a, S: Sums>(
    ids: impl Iterator<Item = &'a String>,
    members: &HashMap<String, S::Member>,
) -> Vec<Vec<Val>> {
    ids.filter_map(|id| {
        let member = members.get(id)?;
        Some([vec![Val::Text(id.clone())], S::member_values(member)].concat())
    })
    .collect()
}

/// The sums table's columns as written.
fn sum_columns<S: Sums>() -> Vec<(&'static str, Kind)> {
    let head = [
        (S::KEY, Kind::Text),
        ("order_count", Kind::Int),
        (S::MONEY_E18, Kind::Int),
        (S::MONEY, Kind::Int),
    ];
    [&head[..], S::EXTRA_COLUMNS].concat()
}

/// Deltas as rows of the sums table.
fn sum_rows<S: Sums>(deltas: BTreeMap<String, S::Delta>) -> Result<Vec<Vec<Val>>, ProjectionError> {
    let mut rows: Vec<Vec<Val>> = Vec::with_capacity(deltas.len());
    for (key, d) in deltas {
        let (money_e18, money) = d.money().to_parts().map_err(overflow)?;
        let head = [
            Val::Text(key),
            Val::Int(d.count()),
            Val::Int(money_e18),
            Val::Int(money),
        ];
        rows.push([head.to_vec(), d.extra_values()].concat());
    }
    Ok(rows)
}

/// A rebuild's fold: every member and one delta per key, from empty
/// tables, so each delta is its row.
struct SumFold<S: Sums> {
    sums: String,
    members_table: String,
    members: HashMap<String, S::Member>,
    deltas: BTreeMap<String, S::Delta>,
}

impl<S: Sums> BulkFold for SumFold<S> {
    fn fold(&mut self, events: &[&EventEnvelope]) -> Result<(), ProjectionError> {
        for (e, event) in decoded(events)? {
            S::fold(e, &event, &mut self.members, &mut self.deltas)?;
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<Vec<BulkRows>, ProjectionError> {
        let members = member_rows::<S>(self.members.keys(), &self.members);
        Ok(vec![
            BulkRows {
                table: self.members_table,
                columns: member_columns::<S>(),
                rows: members,
            },
            BulkRows {
                table: self.sums,
                columns: sum_columns::<S>(),
                rows: sum_rows::<S>(self.deltas)?,
            },
        ])
    }
}

impl<S: Sums> Projection for SumProjection<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn tables(&self) -> Vec<String> {
        vec![self.sums.clone(), self.members.clone()]
    }
    fn migrations(&self, _index_tag: &str) -> Vec<Migration> {
        vec![Migration::new(1, "sums and members")
            .sql(S::schema(&self.sums, &self.members))
            // Read DBs from the version that kept each sum in one BIGINT.
            .add_column(AddedColumn {
                table: self.sums.clone(),
                column: S::MONEY_E18,
                definition: "BIGINT NOT NULL DEFAULT 0",
                backfill: Some(carry_sql(&self.sums, S::MONEY)),
            })]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_events(tx, events))
    }
    fn rebuilt_into(&self, suffix: &str) -> Option<Arc<dyn Projection>> {
        Some(Arc::new(SumProjection::<S>::new(suffix)))
    }
    fn bulk(&self) -> Option<Box<dyn BulkFold>> {
        Some(Box::new(SumFold::<S> {
            sums: self.sums.clone(),
            members_table: self.members.clone(),
            members: HashMap::new(),
            deltas: BTreeMap::new(),
        }))
    }
}
