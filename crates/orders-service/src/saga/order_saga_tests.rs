//! The saga's decisions as given (its state) / when (an event or an answer)
//! / then (its next state and commands).

use super::*;
use cqrs_core::{EventEnvelope, EventMetadata};

fn line(sku: &str, quantity: i64) -> StockLine {
    StockLine {
        sku: sku.into(),
        quantity,
    }
}

fn event(e: OrderEvent) -> EventEnvelope {
    let encoded = cqrs_core::NewEvent::encode("e".into(), &e).unwrap();
    EventEnvelope {
        position: 1,
        event_id: "e".into(),
        aggregate_type: "order".into(),
        aggregate_id: "o1".into(),
        version: 2,
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        metadata: EventMetadata {
            command_id: "c".into(),
            occurred_at: chrono::Utc::now(),
            caller: None,
            traceparent: None,
        },
        recorded_at: chrono::Utc::now(),
    }
}

fn reserve(sku: &str, quantity: i64) -> SagaCommand {
    SagaCommand::Reserve {
        order_id: "o1".into(),
        sku: sku.into(),
        quantity,
    }
}
fn release(sku: &str) -> SagaCommand {
    SagaCommand::Release {
        order_id: "o1".into(),
        sku: sku.into(),
    }
}
fn confirm() -> SagaCommand {
    SagaCommand::Confirm {
        order_id: "o1".into(),
    }
}

fn requested() -> (SagaState, Vec<SagaCommand>) {
    let e = event(OrderEvent::StockReservationRequested {
        lines: vec![line("a", 2), line("b", 1)],
    });
    OrderSaga::on_event(&SagaState::default(), &e).unwrap()
}

#[test]
fn a_requested_reservation_reserves_line_by_line_then_confirms() {
    let (s, commands) = requested();
    assert_eq!(
        (s.phase, commands),
        (Phase::Reserving, vec![reserve("a", 2)])
    );
    let (s, commands) = OrderSaga::on_answer(&s, &reserve("a", 2), &SagaAnswer::Done);
    assert_eq!(commands, [reserve("b", 1)]);
    let (s, commands) = OrderSaga::on_answer(&s, &reserve("b", 1), &SagaAnswer::Done);
    assert_eq!(commands, [confirm()]);
    let (s, commands) = OrderSaga::on_answer(&s, &confirm(), &SagaAnswer::Done);
    assert_eq!(
        (s.phase, commands.len(), s.reserved.len()),
        (Phase::Reserved, 0, 2)
    );
}

#[test]
fn a_rejected_line_releases_what_was_reserved_and_cancels_the_order() {
    let (s, _) = requested();
    let (s, _) = OrderSaga::on_answer(&s, &reserve("a", 2), &SagaAnswer::Done);
    let (s, commands) = OrderSaga::on_answer(&s, &reserve("b", 1), &SagaAnswer::Rejected);
    assert_eq!(
        commands,
        [
            release("a"),
            SagaCommand::CancelOutOfStock {
                order_id: "o1".into()
            }
        ]
    );
    assert_eq!((s.phase, s.reserved.len()), (Phase::OutOfStock, 0));
    // Its own cancel comes back as an event: nothing left to release.
    let e = event(OrderEvent::OrderCancelled {
        reason: "out_of_stock".into(),
    });
    let (_, commands) = OrderSaga::on_event(&s, &e).unwrap();
    assert!(commands.is_empty());
}

#[test]
fn an_order_cancelled_meanwhile_gets_its_stock_back() {
    let (s, _) = requested();
    let (s, _) = OrderSaga::on_answer(&s, &reserve("a", 2), &SagaAnswer::Done);
    let (s, _) = OrderSaga::on_answer(&s, &reserve("b", 1), &SagaAnswer::Done);
    let (s, commands) =
        OrderSaga::on_answer(&s, &confirm(), &SagaAnswer::Refused("order_closed".into()));
    assert_eq!(
        (s.phase, commands),
        (Phase::Released, vec![release("a"), release("b")])
    );
}

#[test]
fn a_reserved_order_cancelled_later_releases_everything_once() {
    let (s, _) = requested();
    let (s, _) = OrderSaga::on_answer(&s, &reserve("a", 2), &SagaAnswer::Done);
    let (s, _) = OrderSaga::on_answer(&s, &reserve("b", 1), &SagaAnswer::Done);
    let (s, _) = OrderSaga::on_answer(&s, &confirm(), &SagaAnswer::Done);
    let cancelled = event(OrderEvent::OrderCancelled { reason: "r".into() });
    let (s, commands) = OrderSaga::on_event(&s, &cancelled).unwrap();
    assert_eq!(commands, [release("a"), release("b")]);
    let (_, again) = OrderSaga::on_event(&s, &cancelled).unwrap();
    assert!(again.is_empty(), "nothing held any more");
}

#[test]
fn only_the_events_it_reacts_to_start_an_instance() {
    assert!(OrderSaga::instance_of(&event(OrderEvent::OrderDelivered {})).is_none());
    assert_eq!(
        OrderSaga::instance_of(&event(OrderEvent::OrderCancelled { reason: "r".into() }))
            .as_deref(),
        Some("o1")
    );
}

#[test]
fn a_shipped_order_dispatches_what_it_holds() {
    let (s, _) = requested();
    let (s, _) = OrderSaga::on_answer(&s, &reserve("a", 2), &SagaAnswer::Done);
    let (s, _) = OrderSaga::on_answer(&s, &reserve("b", 1), &SagaAnswer::Done);
    let (s, _) = OrderSaga::on_answer(&s, &confirm(), &SagaAnswer::Done);
    let shipped = event(OrderEvent::OrderShipped {
        carrier: "c".into(),
        tracking_number: "t".into(),
    });
    let (s, commands) = OrderSaga::on_event(&s, &shipped).unwrap();
    let dispatch = |sku: &str| SagaCommand::Dispatch {
        order_id: "o1".into(),
        sku: sku.into(),
    };
    assert_eq!(
        (s.phase, commands),
        (Phase::Dispatched, vec![dispatch("a"), dispatch("b")])
    );
}
