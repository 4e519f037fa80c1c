"""Checks of our own for the schemathesis run (see schemathesis.toml)."""

import uuid

import schemathesis

# Refusals of well-formed requests that depend on stored state.
STATEFUL_REFUSALS = {"amount_mismatch", "idempotency_key_reused", "token_not_issued"}


@schemathesis.check
def valid_data_is_refused_only_for_state(ctx, response, case):
    """A schema-valid request gets 422 only for a state-dependent reason."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    try:
        code = response.json().get("error")
    except Exception:  # noqa: BLE001 - a non-JSON 422 is itself the failure
        code = None
    if code not in STATEFUL_REFUSALS:
        raise AssertionError(
            f"a schema-valid request was refused with 422 {code!r}: "
            "the OpenAPI document and the server's validation disagree"
        )
    return None


# The live event stream never ends: every request to it would run into the
# request timeout. It is left out of the document the fuzzer loads (so the
# run says "Selected: N/N" for all the rest); its parameters and events are
# tested in crates/orders-cli/tests/observability.rs.
@schemathesis.hook
def before_load_schema(context, raw_schema):
    raw_schema.get("paths", {}).pop("/stream", None)


# What a schema-valid command needs that no schema can say, filled in for
# the valid cases only (invalid ones are sent as generated):
# - a key of its own: the fuzzer draws the same few `Idempotency-Key`
#   values again and again, and a key sent again with another body is
#   refused (422 idempotency_key_reused), rightly, as a reuse;
# - a payment of the order's total (`run` creates the order: 2 x 1500).
ORDER_TOTAL_CENTS = 3000


@schemathesis.hook
def before_call(context, case, kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or case.method.upper() != "POST":
        return
    headers = case.headers if case.headers is not None else {}
    for name in list(headers):
        if name.lower() == "idempotency-key":
            headers[name] = str(uuid.uuid4())
    if case.path.endswith("/pay") and isinstance(case.body, dict) and "amount_cents" in case.body:
        case.body["amount_cents"] = ORDER_TOTAL_CENTS
