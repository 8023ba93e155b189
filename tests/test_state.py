"""The account's JSON state document and plain value topics, as pure functions of the view."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cm_mqtt_bridge.core.model import Snapshot, Usage, UsageState, WindowUsage
from cm_mqtt_bridge.core.view import AccountView
from cm_mqtt_bridge.ha.entities import ENTITIES
from cm_mqtt_bridge.ha.render import plain_values, same_values
from cm_mqtt_bridge.ha.render import state_document as render_document

# Wednesday 7 January 2026 (ISO week starts Monday the 5th).
USAGE_AT = datetime(2026, 1, 7, 15, 30, 12, 345000, tzinfo=UTC)
# The balance was fetched later, after the UTC day rolled over: resets follow the usage time.
FETCHED_AT = datetime(2026, 1, 8, 0, 0, 5, tzinfo=UTC)

USAGE = Usage(
    daily=WindowUsage(10250, 9100, 2900, 12000, 41, 40),
    weekly=WindowUsage(670000, 401000, 128000, 529000, 529, 521),
    monthly=WindowUsage(5_370_000, 2_500_000, 700_000, 3_200_000, 3200, None),
)


def snapshot(balance: int = 8_059_489, holds: int = 125_000, at: datetime = FETCHED_AT) -> Snapshot:
    return Snapshot(
        account_id="main",
        fetched_at=at,
        currency="USD",
        balance_micro=balance,
        holds_micro=holds,
        usage=None,
        usage_state=UsageState.PENDING,
    )


def state_document(view: AccountView) -> dict[str, Any]:
    """The document of an account without alert rules."""
    return render_document(view, ENTITIES)


def full_view(**changes: Any) -> AccountView:
    base: dict[str, Any] = {
        "snapshot": snapshot(),
        "usage": USAGE,
        "usage_at": USAGE_AT,
        "usage_state": UsageState.OK,
        "api_status": "ok",
        "connected": True,
        "error": None,
    }
    base.update(changes)
    return AccountView(**base)


EXPECTED_FULL: dict[str, Any] = {
    "balance": "8.059489",
    "holds": "0.125",
    "available": "7.934489",
    "currency": "USD",
    "spend_today": "0.01025",
    "reset_today": "2026-01-07T00:00:00+00:00",
    "tokens_today": 12000,
    "prompt_tokens_today": 9100,
    "completion_tokens_today": 2900,
    "requests_today": 41,
    "success_rate_today": 97.6,
    "spend_week": "0.67",
    "reset_week": "2026-01-05T00:00:00+00:00",
    "tokens_week": 529000,
    "prompt_tokens_week": 401000,
    "completion_tokens_week": 128000,
    "requests_week": 529,
    "success_rate_week": 98.5,
    "spend_month": "5.37",
    "reset_month": "2026-01-01T00:00:00+00:00",
    # Lifetime spend is kept by the alert engine (in the state database); unknown without it.
    "total_spend": None,
    "tokens_month": 3200000,
    "prompt_tokens_month": 2500000,
    "completion_tokens_month": 700000,
    "requests_month": 3200,
    "success_rate_month": None,
    "api_status": "ok",
    "connected": True,
    "error": None,
    "usage_state": "ok",
    # The forecast comes from the alert engine; without it the fields are unknown.
    "burn_rate": None,
    "burn_rate_source": None,
    "runway_days": None,
    "last_update": "2026-01-08T00:00:05+00:00",
}


def test_state_document_exact_values_with_balance_and_usage():
    assert state_document(full_view()) == EXPECTED_FULL


def test_state_document_is_all_null_before_any_data():
    doc = state_document(AccountView())
    assert doc == {key: None for key in EXPECTED_FULL} | {"connected": False}


def test_state_document_with_balance_but_usage_still_pending():
    view = AccountView(snapshot=snapshot(), api_status="ok", connected=True)
    doc = state_document(view)
    assert {k: doc[k] for k in ("balance", "holds", "available", "currency")} == {
        "balance": "8.059489",
        "holds": "0.125",
        "available": "7.934489",
        "currency": "USD",
    }
    windowed = [k for k in EXPECTED_FULL if k.endswith(("_today", "_week", "_month"))]
    assert len(windowed) == 21
    assert all(doc[k] is None for k in windowed)
    assert doc["last_update"] == "2026-01-08T00:00:05+00:00"
    assert doc["usage_state"] is None


def test_money_is_an_exact_decimal_string_never_a_float():
    # Negative balance, holds above balance, values a float would round.
    view = full_view(snapshot=snapshot(balance=-1, holds=100_000_000_000_001))
    doc = state_document(view)
    assert doc["balance"] == "-0.000001"
    assert doc["holds"] == "100000000.000001"
    assert doc["available"] == "-100000000.000002"
    whole = state_document(full_view(snapshot=snapshot(balance=5_000_000, holds=0)))
    assert (whole["balance"], whole["holds"], whole["available"]) == ("5", "0", "5")


def test_last_reset_windows_follow_the_usage_time():
    # Sunday 1 March 2026, just before midnight: week started Monday 23 February.
    at = datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC)
    doc = state_document(full_view(usage_at=at))
    assert (doc["reset_today"], doc["reset_week"], doc["reset_month"]) == (
        "2026-03-01T00:00:00+00:00",
        "2026-02-23T00:00:00+00:00",
        "2026-03-01T00:00:00+00:00",
    )


def test_error_view_keeps_last_good_values():
    view = full_view(api_status="auth_failed", connected=False, error="/credits: HTTP 401")
    doc = state_document(view)
    assert doc == EXPECTED_FULL | {
        "api_status": "auth_failed",
        "connected": False,
        "error": "/credits: HTTP 401",
    }


def test_same_values_ignores_only_last_update():
    a = state_document(full_view())
    later = state_document(full_view(snapshot=snapshot(at=datetime(2026, 1, 9, tzinfo=UTC))))
    assert later["last_update"] != a["last_update"]
    assert same_values(a, later)
    assert not same_values(None, a)
    for key, other in (
        ("balance", "8.05949"),
        ("api_status", "unreachable"),
        ("connected", False),
        ("error", "x"),
        ("usage_state", "timed_out"),
        ("reset_today", "2026-01-08T00:00:00+00:00"),
        ("success_rate_today", 97.5),
        ("currency", "EUR"),
    ):
        assert not same_values(a, a | {key: other}), key
    assert not same_values(a, {k: v for k, v in a.items() if k != "error"})


def test_plain_values_exact():
    assert plain_values(state_document(full_view()), ENTITIES) == {
        "balance": "8.059489",
        "holds": "0.125",
        "available": "7.934489",
        "spend_today": "0.01025",
        "spend_week": "0.67",
        "spend_month": "5.37",
        "tokens_today": "12000",
        "tokens_week": "529000",
        "tokens_month": "3200000",
        "requests_today": "41",
        "requests_week": "529",
        "requests_month": "3200",
        "last_update": "2026-01-08T00:00:05+00:00",
        "api_status": "ok",
        "connected": "ON",
    }


def test_plain_values_leave_unknown_out_and_say_off():
    assert plain_values(state_document(AccountView()), ENTITIES) == {"connected": "OFF"}
    view = AccountView(snapshot=snapshot(), api_status="unreachable", connected=False)
    assert plain_values(state_document(view), ENTITIES) == {
        "balance": "8.059489",
        "holds": "0.125",
        "available": "7.934489",
        "last_update": "2026-01-08T00:00:05+00:00",
        "api_status": "unreachable",
        "connected": "OFF",
    }


def test_every_entity_value_and_attribute_is_in_the_document():
    doc = state_document(full_view())
    read: list[str] = []
    for entity in ENTITIES:
        values = [entity.value, entity.last_reset, *(value for _name, value in entity.attributes)]
        for value in values:
            assert value is None or value.key in doc, (entity.key, value)
            if value is not None:
                read.append(value.key)
    # Nothing is read twice, and only the currency is in the document without an entity.
    assert len(read) == len(set(read))
    assert set(doc) == set(read) | {"currency"} == set(EXPECTED_FULL)
