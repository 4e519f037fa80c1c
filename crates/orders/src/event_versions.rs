//! The schema version of each order event and how payloads stored by older
//! builds become today's. Stored events are never rewritten: every read
//! (the command handler's load, projectors on the log or on Kafka, replays)
//! upcasts them through here, one version at a time.
//!
//! | event | version | change |
//! |---|---|---|
//! | `OrderCreated` | 2 | each line carries `line_total_cents` (quantity x unit price, fixed when the order was placed) |
//! | `OrderCreated` | 3 | an optional `shipping`: the shipping details sealed under the customer's data key (older events have none) |
//! | every other | 1 | |

use serde_json::Value;

/// The version this build writes for `event_type`.
pub fn current_version(event_type: &str) -> i32 {
    match event_type {
        "OrderCreated" => 3,
        _ => 1,
    }
}

/// A payload of `event_type` at `version` in its shape at `version + 1`.
pub fn upcast(event_type: &str, version: i32, payload: Value) -> Result<Value, String> {
    match (event_type, version) {
        ("OrderCreated", 1) => order_created_v1_to_v2(payload),
        // Version 2 had no shipping details: absent is what it means.
        ("OrderCreated", 2) => Ok(payload),
        _ => Err(format!(
            "no upcaster for {event_type} from version {version}"
        )),
    }
}

/// v1 lines had no total of their own: it is what v1 charged for them.
fn order_created_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let lines = payload
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .ok_or("items: missing or not a list")?;
    for (i, line) in lines.iter_mut().enumerate() {
        let line = line
            .as_object_mut()
            .ok_or_else(|| format!("items[{i}]: not an object"))?;
        let number = |field: &str| {
            line.get(field)
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("items[{i}].{field}: missing or not an integer"))
        };
        let total = number("quantity")?
            .checked_mul(number("unit_price_cents")?)
            .ok_or_else(|| format!("items[{i}]: line total does not fit in 64-bit cents"))?;
        line.insert("line_total_cents".into(), total.into());
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use crate::{OrderEvent, OrderLine};
    use cqrs_core::{DecodeError, EventEnvelope, EventMetadata};
    use serde_json::json;

    fn stored(event_type: &str, schema_version: i32, payload: serde_json::Value) -> EventEnvelope {
        EventEnvelope {
            position: 1,
            event_id: "e".into(),
            aggregate_type: "order".into(),
            aggregate_id: "o".into(),
            version: 1,
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata: EventMetadata {
                command_id: "c".into(),
                occurred_at: chrono::Utc::now(),
                caller: None,
                traceparent: None,
            },
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_v1_order_created_reads_as_v2_with_its_line_totals() {
        let v1 = json!({ "customer_id": "alice", "total_cents": 3800, "items": [
            { "sku": "book", "quantity": 2, "unit_price_cents": 1500 },
            { "sku": "mug", "quantity": 1, "unit_price_cents": 800 } ] });
        let event: OrderEvent = stored("OrderCreated", 1, v1).decode().unwrap();
        let OrderEvent::OrderCreated {
            items, total_cents, ..
        } = event
        else {
            panic!("not a creation: {event:?}");
        };
        assert_eq!(total_cents, 3800);
        assert_eq!(
            items
                .iter()
                .map(|l: &OrderLine| l.line_total_cents)
                .collect::<Vec<_>>(),
            [3000, 800]
        );
    }

    #[test]
    fn a_v2_payload_decodes_as_it_is_and_other_events_stay_at_v1() {
        let v2 = json!({ "customer_id": "a", "total_cents": 5, "items": [
            { "sku": "s", "quantity": 1, "unit_price_cents": 5, "line_total_cents": 5 } ] });
        assert!(stored("OrderCreated", 2, v2).decode::<OrderEvent>().is_ok());
        let paid = json!({ "amount_cents": 5, "payment_ref": "p" });
        assert!(stored("OrderPaid", 1, paid).decode::<OrderEvent>().is_ok());
    }

    #[test]
    fn a_newer_or_broken_payload_is_refused_with_its_reason() {
        let newer = stored(
            "OrderPaid",
            2,
            json!({ "amount_cents": 5, "payment_ref": "p" }),
        );
        assert!(matches!(
            newer.decode::<OrderEvent>(),
            Err(DecodeError::Newer {
                version: 2,
                known: 1,
                ..
            })
        ));
        let broken = stored(
            "OrderCreated",
            1,
            json!({ "customer_id": "a", "total_cents": 5 }),
        );
        let err = broken.decode::<OrderEvent>().unwrap_err();
        assert!(err.to_string().contains("items: missing"), "{err}");
    }
}
