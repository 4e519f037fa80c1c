//! Given (events) / when (command) / then (events or error).

use super::*;

use cqrs_core::testing::{Given, GivenWhenThen, When};

fn given(events: impl IntoIterator<Item = OrderEvent>) -> Given<Order> {
    Order::given(events)
}

/// The Orders check the generic harness cannot make: refused as invalid,
/// naming the field.
trait ThenInvalid {
    fn then_invalid(self, field: &str);
}

impl ThenInvalid for When<Order> {
    #[track_caller]
    fn then_invalid(self, field: &str) {
        match self.outcome() {
            Err(OrderError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid {field}, got {other:?}"),
        }
    }
}

fn item(sku: &str, quantity: i64, unit_price_cents: i64) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

/// The line as the event records it.
fn line(sku: &str, quantity: i64, unit_price_cents: i64) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        quantity,
        unit_price_cents,
        line_total_cents: quantity * unit_price_cents,
    }
}

fn create(customer: &str, items: Vec<LineItem>) -> OrderCommand {
    OrderCommand::Create(CreateOrder {
        customer_id: customer.into(),
        items,
        tracked_skus: Default::default(),
        shipping: None,
        sealed_shipping: None,
    })
}

fn created(total: i64) -> OrderEvent {
    OrderEvent::OrderCreated {
        customer_id: "c1".into(),
        items: vec![line("sku", 1, total)],
        total_cents: total,
        shipping: None,
    }
}
fn paid(total: i64) -> OrderEvent {
    OrderEvent::OrderPaid {
        amount_cents: total,
        payment_ref: "p".into(),
    }
}
fn shipped() -> OrderEvent {
    OrderEvent::OrderShipped {
        carrier: "dhl".into(),
        tracking_number: "T1".into(),
    }
}
fn cancelled() -> OrderEvent {
    OrderEvent::OrderCancelled { reason: "r".into() }
}
fn pay(amount: i64) -> OrderCommand {
    OrderCommand::Pay(PayOrder {
        amount_cents: amount,
        payment_ref: "p".into(),
    })
}
fn ship() -> OrderCommand {
    OrderCommand::Ship(ShipOrder {
        carrier: "dhl".into(),
        tracking_number: "T1".into(),
    })
}
fn cancel() -> OrderCommand {
    OrderCommand::Cancel(CancelOrder { reason: "r".into() })
}

#[test]
fn creating_an_order_totals_its_items() {
    given([])
        .when(create(
            "c-1_A",
            vec![item("a", 2, 1_000), item("b", 1, 800)],
        ))
        .then(vec![OrderEvent::OrderCreated {
            customer_id: "c-1_A".into(),
            items: vec![line("a", 2, 1_000), line("b", 1, 800)],
            total_cents: 2_800,
            shipping: None,
        }]);
}

#[test]
fn an_order_needs_one_to_a_hundred_items() {
    given([]).when(create("c", vec![])).then_invalid("items");
    given([])
        .when(create("c", vec![item("a", 1, 1); 101]))
        .then_invalid("items");
    assert!(Order::decide(
        &OrderState::default(),
        &create("c", vec![item("a", 1, 1); 100])
    )
    .is_ok());
}

#[test]
fn quantities_are_one_to_ten_thousand() {
    given([])
        .when(create("c", vec![item("a", 1, 1), item("b", 0, 1)]))
        .then_invalid("items[1].quantity");
    given([])
        .when(create("c", vec![item("a", 10_001, 1)]))
        .then_invalid("items[0].quantity");
    given([])
        .when(create("c", vec![item("a", -3, 1)]))
        .then_invalid("items[0].quantity");
    assert!(Order::decide(
        &OrderState::default(),
        &create("c", vec![item("a", 10_000, 1)])
    )
    .is_ok());
}

#[test]
fn unit_prices_are_zero_to_a_million_in_cents() {
    given([])
        .when(create("c", vec![item("a", 1, -1)]))
        .then_invalid("items[0].unit_price_cents");
    given([])
        .when(create("c", vec![item("a", 1, 100_000_001)]))
        .then_invalid("items[0].unit_price_cents");
    assert!(Order::decide(&OrderState::default(), &create("c", vec![item("a", 1, 0)])).is_ok());
    assert!(Order::decide(
        &OrderState::default(),
        &create("c", vec![item("a", 1, 100_000_000)])
    )
    .is_ok());
}

#[test]
fn skus_are_short_printable_text() {
    given([])
        .when(create("c", vec![item("", 1, 1)]))
        .then_invalid("items[0].sku");
    given([])
        .when(create("c", vec![item(&"s".repeat(65), 1, 1)]))
        .then_invalid("items[0].sku");
}

#[test]
fn customer_ids_are_one_to_64_safe_characters() {
    for bad in ["", "a b", "é", "a/b", &"x".repeat(65)] {
        given([])
            .when(create(bad, vec![item("a", 1, 1)]))
            .then_invalid("customer_id");
    }
    assert!(Order::decide(
        &OrderState::default(),
        &create(&"x".repeat(64), vec![item("a", 1, 1)])
    )
    .is_ok());
}

#[test]
fn an_existing_order_cannot_be_created_again() {
    given([created(5)])
        .when(create("c", vec![item("a", 1, 1)]))
        .then_error(OrderError::AlreadyExists);
}

#[test]
fn commands_on_an_unknown_order_are_not_found() {
    for cmd in [pay(1), ship(), OrderCommand::Deliver, cancel()] {
        given([]).when(cmd).then_error(OrderError::NotFound);
    }
}

#[test]
fn a_created_order_is_paid_with_its_exact_total() {
    given([created(2_800)])
        .when(pay(2_800))
        .then(vec![paid(2_800)]);
}

#[test]
fn a_payment_that_differs_from_the_total_is_refused() {
    given([created(2_800)])
        .when(pay(2_799))
        .then_error(OrderError::AmountMismatch {
            expected: 2_800,
            got: 2_799,
        });
}

#[test]
fn an_order_is_paid_only_once() {
    given([created(5), paid(5)])
        .when(pay(5))
        .then_refused("invalid_transition");
}

#[test]
fn a_cancelled_order_cannot_be_paid() {
    given([created(5), cancelled()])
        .when(pay(5))
        .then_refused("order_closed");
}

#[test]
fn an_unpaid_order_cannot_ship() {
    given([created(5)]).when(ship()).then_refused("not_paid");
}

#[test]
fn a_paid_order_ships() {
    given([created(5), paid(5)])
        .when(ship())
        .then(vec![shipped()]);
}

#[test]
fn shipping_needs_a_carrier_and_tracking_number() {
    given([created(5), paid(5)])
        .when(OrderCommand::Ship(ShipOrder {
            carrier: "".into(),
            tracking_number: "T".into(),
        }))
        .then_invalid("carrier");
}

#[test]
fn only_a_shipped_order_is_delivered() {
    given([created(5), paid(5), shipped()])
        .when(OrderCommand::Deliver)
        .then(vec![OrderEvent::OrderDelivered {}]);
    given([created(5), paid(5)])
        .when(OrderCommand::Deliver)
        .then_refused("invalid_transition");
}

#[test]
fn an_order_can_be_cancelled_before_shipping() {
    given([created(5)]).when(cancel()).then(vec![cancelled()]);
    given([created(5), paid(5)])
        .when(cancel())
        .then(vec![cancelled()]);
}

#[test]
fn a_shipped_order_cannot_be_cancelled() {
    given([created(5), paid(5), shipped()])
        .when(cancel())
        .then_refused("already_shipped");
}

#[test]
fn nothing_happens_after_cancel_or_delivery() {
    let delivered = [
        created(5),
        paid(5),
        shipped(),
        OrderEvent::OrderDelivered {},
    ];
    for cmd in [pay(5), ship(), OrderCommand::Deliver, cancel()] {
        given([created(5), cancelled()])
            .when(cmd.clone())
            .then_refused("order_closed");
        given(delivered.clone())
            .when(cmd)
            .then_refused("order_closed");
    }
}

#[test]
fn events_round_trip_through_the_stored_envelope_shape() {
    for event in [
        created(5),
        paid(5),
        shipped(),
        OrderEvent::OrderDelivered {},
        cancelled(),
    ] {
        let stored = cqrs_core::NewEvent::encode("id".into(), &event).unwrap();
        let back: OrderEvent = serde_json::from_value(
            serde_json::json!({ stored.event_type.clone(): stored.payload }),
        )
        .unwrap();
        assert_eq!(back, event);
    }
}

#[test]
fn a_status_reads_as_it_serializes() {
    let all: Vec<Status> = Status::all().collect();
    assert_eq!(all.len(), 5);
    for s in all {
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::json!(s.as_str())
        );
        assert_eq!(Status::parse(s.as_str()), Some(s));
    }
    assert_eq!(Status::Created.as_str(), "created");
    assert_eq!(Status::parse("Created"), None, "names are exact");
}

#[test]
fn a_command_keeps_its_name_and_its_verb() {
    let commands = [
        (create("c", vec![item("A", 1, 1)]), "CreateOrder", "create"),
        (pay(1), "PayOrder", "pay"),
        (ship(), "ShipOrder", "ship"),
        (OrderCommand::Deliver, "DeliverOrder", "deliver"),
        (cancel(), "CancelOrder", "cancel"),
    ];
    for (command, name, verb) in commands {
        assert_eq!(command.name(), name);
        assert_eq!(command.kind().to_string(), verb);
    }
    let refused = OrderError::InvalidTransition {
        action: CommandKind::Ship,
        status: Status::Created,
    };
    assert_eq!(refused.to_string(), "cannot ship an order that is created");
}

#[test]
fn an_event_is_stored_under_its_serde_tag() {
    let events = [
        created(100),
        paid(100),
        shipped(),
        OrderEvent::OrderDelivered {},
        cancelled(),
    ];
    for e in events {
        let tagged = serde_json::to_value(&e).unwrap();
        let tag = tagged.as_object().and_then(|o| o.keys().next().cloned());
        assert_eq!(tag.as_deref(), Some(e.event_type()));
    }
}

fn tracked(customer: &str, items: Vec<LineItem>, skus: &[&str]) -> OrderCommand {
    OrderCommand::Create(CreateOrder {
        customer_id: customer.into(),
        items,
        tracked_skus: skus.iter().map(|s| s.to_string()).collect(),
        shipping: None,
        sealed_shipping: None,
    })
}

fn requested(lines: &[(&str, i64)]) -> OrderEvent {
    OrderEvent::StockReservationRequested {
        lines: lines
            .iter()
            .map(|(sku, quantity)| StockLine {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
    }
}

#[test]
fn an_order_with_tracked_lines_asks_for_their_stock_in_units_per_sku() {
    given([])
        .when(tracked(
            "c1",
            vec![
                item("book", 2, 100),
                item("mug", 1, 50),
                item("book", 1, 100),
            ],
            &["book"],
        ))
        .then(vec![
            OrderEvent::OrderCreated {
                customer_id: "c1".into(),
                items: vec![
                    line("book", 2, 100),
                    line("mug", 1, 50),
                    line("book", 1, 100),
                ],
                total_cents: 350,
                shipping: None,
            },
            requested(&[("book", 3)]),
        ]);
}

#[test]
fn a_tracked_order_ships_only_once_its_stock_is_reserved() {
    given([created(100), requested(&[("sku", 1)]), paid(100)])
        .when(ship())
        .then_refused("stock_not_reserved");
    given([
        created(100),
        requested(&[("sku", 1)]),
        OrderEvent::StockReserved {},
        paid(100),
    ])
    .when(ship())
    .then(vec![shipped()]);
    // Untracked orders never wait.
    given([created(100), paid(100)])
        .when(ship())
        .then(vec![shipped()]);
}

#[test]
fn confirming_stock_happens_once_and_never_on_a_cancelled_order() {
    given([created(100), requested(&[("sku", 1)])])
        .when(OrderCommand::ConfirmStock)
        .then(vec![OrderEvent::StockReserved {}]);
    given([
        created(100),
        requested(&[("sku", 1)]),
        OrderEvent::StockReserved {},
    ])
    .when(OrderCommand::ConfirmStock)
    .then(vec![]);
    given([created(100), requested(&[("sku", 1)]), cancelled()])
        .when(OrderCommand::ConfirmStock)
        .then_refused("order_closed");
}

fn sealed() -> cqrs_core::Sealed {
    cqrs_core::Sealed {
        key_id: "k1".into(),
        nonce: "bm9uY2U=".into(),
        ciphertext: "c2VhbGVk".into(),
    }
}

#[test]
fn an_order_with_shipping_details_records_them_sealed_only() {
    let details = crate::shipping::ShippingDetails {
        name: "Ada".into(),
        address: "1 Analytical Way".into(),
        email: "ada@example.org".into(),
    };
    let command = |sealed_shipping| {
        OrderCommand::Create(CreateOrder {
            customer_id: "c1".into(),
            items: vec![item("sku", 1, 500)],
            tracked_skus: Default::default(),
            shipping: Some(details.clone()),
            sealed_shipping,
        })
    };
    given([])
        .when(command(Some(sealed())))
        .then(vec![OrderEvent::OrderCreated {
            customer_id: "c1".into(),
            items: vec![line("sku", 1, 500)],
            total_cents: 500,
            shipping: Some(sealed()),
        }]);
    // Never the plain text: unsealed details are refused.
    let refused = Order::decide(&OrderState::default(), &command(None)).unwrap_err();
    assert!(refused.to_string().contains("shipping"), "{refused}");
}

#[test]
fn shipping_details_are_erased_once_in_any_status_and_not_at_all_without_them() {
    let with_shipping = OrderEvent::OrderCreated {
        customer_id: "c1".into(),
        items: vec![line("sku", 1, 500)],
        total_cents: 500,
        shipping: Some(sealed()),
    };
    given([with_shipping.clone(), paid(500), shipped()])
        .when(OrderCommand::EraseShipping)
        .then(vec![OrderEvent::ShippingErased {}]);
    given([with_shipping, OrderEvent::ShippingErased {}])
        .when(OrderCommand::EraseShipping)
        .then(vec![]);
    given([created(500)])
        .when(OrderCommand::EraseShipping)
        .then(vec![]);
}
