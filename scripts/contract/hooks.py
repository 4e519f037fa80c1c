"""Checks of our own for the schemathesis run (see schemathesis.toml)."""

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
