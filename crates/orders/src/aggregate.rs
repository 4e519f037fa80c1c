//! The order aggregate as a pure decider.

use crate::stock::{lines_to_reserve, next_stock, StockLine, StockStatus};
use cqrs_core::{Aggregate, DomainError, DomainEvent, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// Limits of the domain, in one place so that errors can quote them.
pub mod limits {
    /// Most line items in one order.
    pub const MAX_ITEMS: usize = 100;
    /// Largest quantity of one line.
    pub const MAX_QUANTITY: i64 = 10_000;
    /// Largest unit price, in cents.
    pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000;
    /// Longest customer id.
    pub const MAX_CUSTOMER_ID: usize = 64;
    /// Longest SKU.
    pub const MAX_SKU: usize = 64;
    /// Longest free-text field (payment reference, carrier, tracking number, reason).
    pub const MAX_TEXT: usize = 500;
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    /// Stock keeping unit.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub sku: String,
    /// How many, 1..=10_000.
    #[schema(minimum = 1, maximum = 10000)]
    pub quantity: i64,
    /// Price of one unit in cents, 0..=100_000_000.
    #[schema(minimum = 0, maximum = 100000000)]
    pub unit_price_cents: i64,
}

/// One line of an order as the event records it: the line as ordered and
/// what it came to, fixed when the order was placed (since event version 2
/// of `OrderCreated`; older events are upcast, see `event_versions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: i64,
    /// Price of one unit in cents.
    pub unit_price_cents: i64,
    /// quantity x unit price.
    pub line_total_cents: i64,
}

impl From<&OrderLine> for LineItem {
    fn from(l: &OrderLine) -> Self {
        LineItem {
            sku: l.sku.clone(),
            quantity: l.quantity,
            unit_price_cents: l.unit_price_cents,
        }
    }
}

/// Where an order is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Status {
    /// Created, not paid.
    Created,
    /// Paid the exact total.
    Paid,
    /// Handed to a carrier.
    Shipped,
    /// Arrived; final.
    Delivered,
    /// Cancelled before shipping; final.
    Cancelled,
}

impl Status {
    /// Every status, in life order.
    pub fn all() -> impl Iterator<Item = Status> {
        <Status as strum::IntoEnumIterator>::iter()
    }
    /// The name used in JSON and in the read DB (serde's and strum's
    /// renames agree: `a_status_reads_as_it_serializes`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    /// Parses the JSON/DB name.
    pub fn parse(s: &str) -> Option<Status> {
        s.parse().ok()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of `POST /orders`: who orders what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// Who orders: 1..=64 of A-Z, a-z, 0-9, '_' and '-'.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]*$")]
    pub customer_id: String,
    /// What: 1..=100 lines.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<LineItem>,
    /// Where it goes and whom to tell (personal data: stored only sealed
    /// under the customer's data key; erased with
    /// `DELETE /customers/{id}/personal-data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping: Option<crate::shipping::ShippingDetails>,
    /// Which of the lines' SKUs the inventory tracks: filled in by the
    /// command handler from the inventory's records, never by a client.
    #[serde(skip)]
    pub tracked_skus: BTreeSet<String>,
    /// `shipping`, sealed by the command handler: what the event carries.
    #[serde(skip)]
    pub sealed_shipping: Option<cqrs_core::Sealed>,
}

/// The body of `POST /orders/{id}/pay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayOrder {
    /// Must equal the order total.
    pub amount_cents: i64,
    /// The payment provider's reference.
    pub payment_ref: String,
}

/// The body of `POST /orders/{id}/ship`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShipOrder {
    /// Who carries it.
    pub carrier: String,
    /// The carrier's tracking number.
    pub tracking_number: String,
}

/// The body of `POST /orders/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelOrder {
    /// Why it is cancelled (shown on the order).
    pub reason: String,
}

/// Everything a client can ask of an order. Its name (as in traces and
/// metrics) is the variant's `serialize` name; its verb (as in refusals) is
/// its [`CommandKind`], the variant's name in lower case.
#[derive(Debug, Clone, PartialEq, strum::IntoStaticStr, strum::EnumDiscriminants)]
#[strum_discriminants(
    name(CommandKind),
    derive(strum::Display, strum::IntoStaticStr),
    strum(serialize_all = "lowercase"),
    doc = "Which command an [`OrderCommand`] is, without its fields: its verb in refusals."
)]
pub enum OrderCommand {
    /// Create a new order.
    #[strum(serialize = "CreateOrder")]
    Create(CreateOrder),
    /// Pay it.
    #[strum(serialize = "PayOrder")]
    Pay(PayOrder),
    /// Ship it.
    #[strum(serialize = "ShipOrder")]
    Ship(ShipOrder),
    /// Mark it delivered.
    #[strum(serialize = "DeliverOrder")]
    Deliver,
    /// Cancel it.
    #[strum(serialize = "CancelOrder")]
    Cancel(CancelOrder),
    /// Record that its tracked lines are reserved (the order saga's).
    #[strum(serialize = "ConfirmStock")]
    ConfirmStock,
    /// Record that its shipping details were erased (their key deleted).
    #[strum(serialize = "EraseShipping")]
    EraseShipping,
}

impl OrderCommand {
    /// The command's name, as in traces and metrics.
    pub fn name(&self) -> &'static str {
        self.into()
    }

    /// What the command does to an order.
    pub fn kind(&self) -> CommandKind {
        self.into()
    }
}

/// What happened to an order. Serialized externally tagged; the tag is the
/// stored event type (the variant's name, for serde and strum alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum OrderEvent {
    /// An order was placed.
    OrderCreated {
        /// Who ordered.
        customer_id: String,
        /// The lines ordered, each with its total.
        items: Vec<OrderLine>,
        /// Sum of quantity x unit price.
        total_cents: i64,
        /// The shipping details, sealed under the customer's data key
        /// (since version 3; absent when none were given).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shipping: Option<cqrs_core::Sealed>,
    },
    /// The exact total was paid.
    OrderPaid {
        /// Amount paid.
        amount_cents: i64,
        /// Provider reference.
        payment_ref: String,
    },
    /// Handed to a carrier.
    OrderShipped {
        /// Who carries it.
        carrier: String,
        /// Tracking number.
        tracking_number: String,
    },
    /// The carrier reported it delivered.
    OrderDelivered {},
    /// Cancelled before shipping.
    OrderCancelled {
        /// Why it was cancelled.
        reason: String,
    },
    /// Created with lines the inventory tracks: they must be reserved
    /// before it ships.
    StockReservationRequested {
        /// Units per tracked SKU.
        lines: Vec<StockLine>,
    },
    /// Its tracked lines are reserved.
    StockReserved {},
    /// Its shipping details were erased at the customer's request: their
    /// key is deleted, and read models drop what they kept.
    ShippingErased {},
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        self.into()
    }
    fn current_version(event_type: &str) -> i32 {
        crate::event_versions::current_version(event_type)
    }
    fn upcast(
        event_type: &str,
        version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        crate::event_versions::upcast(event_type, version, payload)
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// No such order.
    #[error("order not found")]
    NotFound,
    /// Create on an id that exists.
    #[error("order already exists")]
    AlreadyExists,
    /// A field breaks a rule.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as named in the request (`items[2].quantity`).
        field: String,
        /// What rule it breaks.
        reason: String,
    },
    /// Payment must be the exact total.
    #[error(
        "amount_cents: payment of {got} cents does not match the order total of {expected} cents"
    )]
    AmountMismatch {
        /// The order total.
        expected: i64,
        /// What was offered.
        got: i64,
    },
    /// Its tracked lines are not reserved yet.
    #[error("cannot ship: its stock is not reserved yet")]
    StockNotReserved,
    /// The command is not allowed in the order's status.
    #[error("cannot {action} an order that is {status}")]
    InvalidTransition {
        /// The refused command.
        action: CommandKind,
        /// The order's status.
        status: Status,
    },
}

impl DomainError for OrderError {
    fn kind(&self) -> ErrorKind {
        match self {
            OrderError::NotFound => ErrorKind::NotFound,
            OrderError::Invalid { field, .. } => ErrorKind::Invalid {
                field: field.clone(),
            },
            OrderError::AmountMismatch { .. } => ErrorKind::Invalid {
                field: "amount_cents".into(),
            },
            OrderError::AlreadyExists
            | OrderError::InvalidTransition { .. }
            | OrderError::StockNotReserved => ErrorKind::Conflict,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            OrderError::NotFound => "order_not_found",
            OrderError::AlreadyExists => "order_exists",
            OrderError::Invalid { .. } => "invalid_field",
            OrderError::AmountMismatch { .. } => "amount_mismatch",
            OrderError::StockNotReserved => "stock_not_reserved",
            OrderError::InvalidTransition { status, action } => match (status, action) {
                (Status::Delivered | Status::Cancelled, _) => "order_closed",
                (Status::Created, CommandKind::Ship) => "not_paid",
                (Status::Shipped, CommandKind::Cancel) => "already_shipped",
                _ => "invalid_transition",
            },
        }
    }
}

/// What the decider needs to know about an existing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    /// Current status.
    pub status: Status,
    /// What must be paid.
    pub total_cents: i64,
    /// Its stock (None: no line is tracked).
    pub stock: Option<StockStatus>,
    /// Whether it holds shipping details not yet erased.
    pub shipping: bool,
}

/// State of one order: `None` until it is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderState(pub Option<OrderFacts>);

/// The order aggregate.
pub struct Order;

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OrderError {
    OrderError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), OrderError> {
    let len = value.chars().count();
    if len == 0 || len > max {
        return Err(invalid(
            field,
            format!("must be 1..={max} characters, got {len}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Whether `id` is a customer id: 1..=64 of A-Z, a-z, 0-9, '_' and '-'.
pub fn is_customer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::MAX_CUSTOMER_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The order's lines with their totals, and the order total.
fn validate_create(c: &CreateOrder) -> Result<(Vec<OrderLine>, i64), OrderError> {
    if !is_customer_id(&c.customer_id) {
        return Err(invalid(
            "customer_id",
            "must be 1..=64 characters of A-Z, a-z, 0-9, '_' or '-'",
        ));
    }
    if c.items.is_empty() || c.items.len() > limits::MAX_ITEMS {
        return Err(invalid(
            "items",
            format!(
                "must hold 1..={} items, got {}",
                limits::MAX_ITEMS,
                c.items.len()
            ),
        ));
    }
    if let Some(s) = &c.shipping {
        s.validate()?;
        if c.sealed_shipping.is_none() {
            return Err(invalid("shipping", "was not sealed by the command handler"));
        }
    }
    let mut total: i64 = 0;
    let mut lines = Vec::with_capacity(c.items.len());
    for (i, item) in c.items.iter().enumerate() {
        check_text(&format!("items[{i}].sku"), &item.sku, limits::MAX_SKU)?;
        if !(1..=limits::MAX_QUANTITY).contains(&item.quantity) {
            return Err(invalid(
                format!("items[{i}].quantity"),
                format!(
                    "must be 1..={}, got {}",
                    limits::MAX_QUANTITY,
                    item.quantity
                ),
            ));
        }
        if !(0..=limits::MAX_UNIT_PRICE_CENTS).contains(&item.unit_price_cents) {
            return Err(invalid(
                format!("items[{i}].unit_price_cents"),
                format!(
                    "must be 0..={}, got {}",
                    limits::MAX_UNIT_PRICE_CENTS,
                    item.unit_price_cents
                ),
            ));
        }
        // The limits above bound the total by 100 x 10^4 x 10^8 = 10^14;
        // checked all the same, so a changed limit cannot make it wrap.
        let too_big = || invalid("items", "the order total does not fit in 64-bit cents");
        let line_total_cents = item
            .quantity
            .checked_mul(item.unit_price_cents)
            .ok_or_else(too_big)?;
        total = total.checked_add(line_total_cents).ok_or_else(too_big)?;
        lines.push(OrderLine {
            sku: item.sku.clone(),
            quantity: item.quantity,
            unit_price_cents: item.unit_price_cents,
            line_total_cents,
        });
    }
    Ok((lines, total))
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(state: &OrderState, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        let facts = match (&state.0, command) {
            (None, OrderCommand::Create(c)) => {
                let (items, total_cents) = validate_create(c)?;
                let lines = lines_to_reserve(
                    c.items.iter().map(|i| (i.sku.as_str(), i.quantity)),
                    &c.tracked_skus,
                );
                let mut events = vec![OrderEvent::OrderCreated {
                    customer_id: c.customer_id.clone(),
                    items,
                    total_cents,
                    shipping: c.sealed_shipping.clone(),
                }];
                if !lines.is_empty() {
                    events.push(OrderEvent::StockReservationRequested { lines });
                }
                return Ok(events);
            }
            (Some(_), OrderCommand::Create(_)) => return Err(OrderError::AlreadyExists),
            (None, _) => return Err(OrderError::NotFound),
            (Some(facts), _) => facts,
        };
        let refuse = || OrderError::InvalidTransition {
            action: command.kind(),
            status: facts.status,
        };
        match command {
            OrderCommand::Create(_) => Err(OrderError::AlreadyExists),
            OrderCommand::Pay(p) => {
                if facts.status != Status::Created {
                    return Err(refuse());
                }
                if p.amount_cents != facts.total_cents {
                    return Err(OrderError::AmountMismatch {
                        expected: facts.total_cents,
                        got: p.amount_cents,
                    });
                }
                check_text("payment_ref", &p.payment_ref, limits::MAX_TEXT)?;
                Ok(vec![OrderEvent::OrderPaid {
                    amount_cents: p.amount_cents,
                    payment_ref: p.payment_ref.clone(),
                }])
            }
            OrderCommand::Ship(s) => {
                if facts.status != Status::Paid {
                    return Err(refuse());
                }
                if facts.stock == Some(StockStatus::Pending) {
                    return Err(OrderError::StockNotReserved);
                }
                check_text("carrier", &s.carrier, limits::MAX_TEXT)?;
                check_text("tracking_number", &s.tracking_number, limits::MAX_TEXT)?;
                Ok(vec![OrderEvent::OrderShipped {
                    carrier: s.carrier.clone(),
                    tracking_number: s.tracking_number.clone(),
                }])
            }
            OrderCommand::Deliver => {
                if facts.status != Status::Shipped {
                    return Err(refuse());
                }
                Ok(vec![OrderEvent::OrderDelivered {}])
            }
            OrderCommand::Cancel(c) => {
                if !matches!(facts.status, Status::Created | Status::Paid) {
                    return Err(refuse());
                }
                check_text("reason", &c.reason, limits::MAX_TEXT)?;
                Ok(vec![OrderEvent::OrderCancelled {
                    reason: c.reason.clone(),
                }])
            }
            OrderCommand::ConfirmStock => {
                if !matches!(facts.status, Status::Created | Status::Paid) {
                    return Err(refuse());
                }
                Ok(match facts.stock {
                    Some(StockStatus::Pending) => vec![OrderEvent::StockReserved {}],
                    // Reserved already, or nothing to reserve: nothing new.
                    _ => Vec::new(),
                })
            }
            // In any status; erased already, or never given: nothing new.
            OrderCommand::EraseShipping => Ok(match facts.shipping {
                true => vec![OrderEvent::ShippingErased {}],
                false => Vec::new(),
            }),
        }
    }

    fn evolve(state: OrderState, event: &OrderEvent) -> OrderState {
        if let OrderEvent::OrderCreated {
            total_cents,
            shipping,
            ..
        } = event
        {
            return OrderState(Some(OrderFacts {
                status: Status::Created,
                total_cents: *total_cents,
                stock: None,
                shipping: shipping.is_some(),
            }));
        }
        let Some(facts) = state.0 else {
            return OrderState(None);
        };
        let status = match event {
            OrderEvent::OrderCreated { .. } => Status::Created,
            OrderEvent::OrderPaid { .. } => Status::Paid,
            OrderEvent::OrderShipped { .. } => Status::Shipped,
            OrderEvent::OrderDelivered {} => Status::Delivered,
            OrderEvent::OrderCancelled { .. } => Status::Cancelled,
            OrderEvent::StockReservationRequested { .. }
            | OrderEvent::StockReserved {}
            | OrderEvent::ShippingErased {} => facts.status,
        };
        OrderState(Some(OrderFacts {
            status,
            stock: next_stock(facts.stock, event),
            shipping: facts.shipping && !matches!(event, OrderEvent::ShippingErased {}),
            ..facts
        }))
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
