"""The runtime skips rendering a view whose render key is unchanged: the key must change
whenever anything the entity table reads changes (but the poll time)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal
from typing import Any

from cm_mqtt_bridge.core.evaluate import AlertStatus
from cm_mqtt_bridge.core.forecast import Burn
from cm_mqtt_bridge.core.model import UsageState, WindowUsage
from cm_mqtt_bridge.core.rules import RULES
from cm_mqtt_bridge.core.view import AccountView
from cm_mqtt_bridge.ha.entities import entities_for
from cm_mqtt_bridge.ha.render import same_values, state_document
from cm_mqtt_bridge.service.runtime import _render_key
from tests.test_state import USAGE, full_view, snapshot

ENTITIES = entities_for(RULES)
ALERTS = AlertStatus(
    rules=tuple(r.name for r in RULES),
    burn=Burn(Decimal("215736.5"), "month_to_date"),
    runway_days=Decimal("36.78"),
    thresholds={"low_balance_below": Decimal(5), "runway_below_days": Decimal(7)},
)
BASE = dataclasses.replace(full_view(alerts=ALERTS), fresh=True)
AT = BASE.snapshot.fetched_at  # type: ignore[union-attr]

# One other value per field of the view (a new field needs one here: the test checks it).
VARIANTS: dict[str, list[Any]] = {
    "snapshot": [
        snapshot(balance=1),
        snapshot(holds=1),
        dataclasses.replace(snapshot(), currency="EUR"),
    ],
    "usage": [dataclasses.replace(USAGE, daily=WindowUsage(1, 1, 1, 2, 1, 1))],
    "usage_at": [BASE.usage_at + timedelta(days=40)],  # type: ignore[operator]
    "usage_state": [UsageState.FAILED],
    "api_status": ["rate_limited"],
    "connected": [False],
    "error": ["boom"],
    "alerts": [
        dataclasses.replace(ALERTS, active={"low_balance": AT}),
        dataclasses.replace(ALERTS, runway_days=Decimal(2)),
        dataclasses.replace(ALERTS, burn=Burn(Decimal(1_000_000), "history_7d")),
        dataclasses.replace(ALERTS, thresholds={"low_balance_below": Decimal(9)}),
    ],
    "fresh": [False],
    "last_success_at": [AT + timedelta(hours=1)],
}


def rendered(view: AccountView) -> dict[str, Any]:
    return state_document(view, ENTITIES)


def test_every_field_of_the_view_has_variants() -> None:
    assert set(VARIANTS) == {f.name for f in dataclasses.fields(AccountView)}


def test_a_change_anything_reads_changes_the_render_key() -> None:
    for name, values in VARIANTS.items():
        for value in values:
            other = dataclasses.replace(BASE, **{name: value})
            if not same_values(rendered(BASE), rendered(other)):
                assert _render_key(other) != _render_key(BASE), (name, value)


def test_only_the_poll_time_leaves_the_key_alone() -> None:
    later = AT + timedelta(minutes=5)
    assert BASE.usage_at is not None
    usage_later = BASE.usage_at + timedelta(minutes=5)
    polled_again = dataclasses.replace(
        BASE, snapshot=snapshot(at=later), last_success_at=later, usage_at=usage_later
    )
    assert same_values(rendered(BASE), rendered(polled_again))
    assert _render_key(polled_again) == _render_key(BASE)
