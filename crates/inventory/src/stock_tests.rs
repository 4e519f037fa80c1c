use super::*;
use cqrs_core::testing::GivenWhenThen;

fn added(quantity: i64) -> StockEvent {
    StockEvent::StockAdded { quantity }
}
fn reserved(order: &str, quantity: i64) -> StockEvent {
    StockEvent::StockReserved {
        order_id: order.into(),
        quantity,
    }
}
fn released(order: &str, quantity: i64) -> StockEvent {
    StockEvent::ReservationReleased {
        order_id: order.into(),
        quantity,
    }
}
fn reserve(order: &str, quantity: i64) -> StockCommand {
    StockCommand::Reserve {
        order_id: order.into(),
        quantity,
    }
}
fn release(order: &str) -> StockCommand {
    StockCommand::Release {
        order_id: order.into(),
    }
}

#[test]
fn adding_stock_tracks_the_sku_and_needs_a_sane_quantity() {
    Stock::given([])
        .when(StockCommand::Add { quantity: 5 })
        .then([added(5)]);
    Stock::given([added(5)])
        .when(StockCommand::Add { quantity: 0 })
        .then_refused("invalid_field");
    Stock::given([])
        .when(StockCommand::Add {
            quantity: MAX_ADD + 1,
        })
        .then_refused("invalid_field");
}

#[test]
fn a_reservation_takes_what_is_available_and_never_more() {
    Stock::given([added(5)])
        .when(reserve("o1", 5))
        .then([reserved("o1", 5)]);
    Stock::given([added(5), reserved("o1", 3)])
        .when(reserve("o2", 3))
        .then([StockEvent::ReservationRejected {
            order_id: "o2".into(),
            requested: 3,
            available: 2,
        }]);
    Stock::given([added(5), reserved("o1", 3), released("o1", 3)])
        .when(reserve("o2", 5))
        .then([reserved("o2", 5)]);
}

#[test]
fn reserving_twice_for_one_order_holds_once() {
    Stock::given([added(5), reserved("o1", 2)])
        .when(reserve("o1", 2))
        .then([]);
    Stock::given([added(5), reserved("o1", 2)])
        .when(reserve("o1", 3))
        .then_refused("reservation_mismatch");
}

#[test]
fn an_untracked_sku_is_not_reserved() {
    Stock::given([])
        .when(reserve("o1", 1))
        .then_refused("stock_not_tracked");
    Stock::given([added(1)])
        .when(reserve("o1", 0))
        .then_refused("invalid_field");
}

#[test]
fn a_release_gives_back_what_the_order_holds_once() {
    Stock::given([added(5), reserved("o1", 2)])
        .when(release("o1"))
        .then([released("o1", 2)]);
    Stock::given([added(5), reserved("o1", 2), released("o1", 2)])
        .when(release("o1"))
        .then([]);
    Stock::given([added(5)]).when(release("never")).then([]);
}

#[test]
fn available_is_on_hand_less_reserved() {
    let s = Stock::fold(&[
        added(10),
        reserved("a", 3),
        reserved("b", 4),
        released("a", 3),
    ]);
    assert_eq!((s.on_hand, s.reserved(), s.available()), (10, 4, 6));
    assert_eq!(Stock::sku_of(&Stock::id("book")), Some("book"));
}

#[test]
fn a_shipped_order_takes_its_units_off_the_shelf_once() {
    let dispatch = StockCommand::Dispatch {
        order_id: "o1".into(),
    };
    let dispatched = StockEvent::StockDispatched {
        order_id: "o1".into(),
        quantity: 2,
    };
    Stock::given([added(5), reserved("o1", 2)])
        .when(dispatch.clone())
        .then([dispatched.clone()]);
    Stock::given([added(5), reserved("o1", 2), dispatched.clone()])
        .when(dispatch)
        .then([]);
    let s = Stock::fold(&[added(5), reserved("o1", 2), dispatched]);
    assert_eq!((s.on_hand, s.reserved(), s.available()), (3, 0, 3));
}

#[test]
fn the_codes_list_every_refusal_code() {
    let every = [
        StockError::Invalid {
            field: "quantity",
            reason: String::new(),
        },
        StockError::NotTracked,
        StockError::ReservationMismatch {
            held: 1,
            requested: 2,
        },
    ];
    let codes: Vec<&str> = every.iter().map(|e| e.code()).collect();
    assert_eq!(codes, StockError::CODES);
}
