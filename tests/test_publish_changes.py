"""What an account publishes follows from `render` alone: no second list of the view fields
render reads decides whether to render (a field read by a new entity and left out of such a
list would never be republished)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal
from typing import Any

from cm_mqtt_bridge.config.settings import AccountConfig
from cm_mqtt_bridge.core.evaluate import AlertStatus
from cm_mqtt_bridge.core.forecast import Burn
from cm_mqtt_bridge.core.model import UsageState, WindowUsage
from cm_mqtt_bridge.core.rules import RULES
from cm_mqtt_bridge.core.view import AccountView
from cm_mqtt_bridge.ha.entities import Entity, Value, entities_for
from cm_mqtt_bridge.ha.topics import Kind, Topics
from cm_mqtt_bridge.service.runtime import AccountOutput
from tests.test_state import USAGE, full_view, snapshot

TOPICS = Topics(base="cm", prefix="homeassistant")
ALERTS = AlertStatus(
    rules=tuple(r.name for r in RULES),
    burn=Burn(Decimal("215736.5"), "month_to_date"),
    runway_days=Decimal("36.78"),
    thresholds={"low_balance_below": Decimal(5), "runway_below_days": Decimal(7)},
)
BASE = dataclasses.replace(full_view(alerts=ALERTS), fresh=True)
AT = BASE.snapshot.fetched_at  # type: ignore[union-attr]
# A sensor a later change might add: it reads a Snapshot field no entity shows today.
RETRY_AFTER = Entity(
    "usage_retry_after",
    "Usage retry after",
    value=Value(
        "usage_retry_after",
        lambda v: None if v.snapshot is None else v.snapshot.usage_retry_after,
    ),
)

# One other value per field of the view (a new field needs one here: the test checks it).
VARIANTS: dict[str, list[Any]] = {
    "snapshot": [
        snapshot(balance=1),
        snapshot(holds=1),
        dataclasses.replace(snapshot(), currency="EUR"),
        dataclasses.replace(snapshot(), usage_retry_after=30.0),
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


class Broker:
    """The retained topics as the publisher would hold them."""

    def __init__(self) -> None:
        self.topics: dict[str, bytes] = {}

    def set(self, topic: str, payload: str | bytes, kind: Kind, **_: Any) -> None:
        self.topics[topic] = payload.encode() if isinstance(payload, str) else payload


def output(entities: tuple[Entity, ...]) -> tuple[AccountOutput, Broker]:
    cfg = AccountConfig.model_validate({"id": "main", "api_key": "cm-" + "k" * 40})
    broker = Broker()
    out = AccountOutput(cfg, entities, topics=TOPICS, publisher=broker, qos=1, alerts=True)
    return out, broker


def shown(view: AccountView, entities: tuple[Entity, ...], before: AccountView) -> dict[str, bytes]:
    out, broker = output(entities)
    out.publish(before)
    out.publish(view)
    return dict(broker.topics)


def test_a_field_only_a_new_entity_reads_is_republished() -> None:
    # The old runtime kept a hand-written key of the view fields render reads: this change
    # (a Snapshot field outside that key) was never republished.
    entities = (*entities_for(RULES), RETRY_AFTER)
    changed = dataclasses.replace(
        BASE, snapshot=dataclasses.replace(snapshot(), usage_retry_after=30.0)
    )
    out, broker = output(entities)
    out.publish(BASE)
    assert TOPICS.value("main", "usage_retry_after") not in broker.topics
    out.publish(changed)
    assert broker.topics[TOPICS.value("main", "usage_retry_after")] == b"30.0"
    assert b'"usage_retry_after":30.0' in broker.topics[TOPICS.state("main")]


def test_every_field_of_the_view_has_variants() -> None:
    assert set(VARIANTS) == {f.name for f in dataclasses.fields(AccountView)}


def test_a_change_of_anything_shown_is_republished() -> None:
    entities = (*entities_for(RULES), RETRY_AFTER)
    unchanged = shown(BASE, entities, BASE)
    for name, values in VARIANTS.items():
        for value in values:
            other = dataclasses.replace(BASE, **{name: value})
            if name == "last_success_at":
                continue  # the poll time alone: see below
            assert shown(other, entities, BASE) != unchanged, (name, value)


def test_only_the_poll_time_changes_nothing() -> None:
    later = AT + timedelta(minutes=5)
    assert BASE.usage_at is not None
    polled_again = dataclasses.replace(
        BASE,
        snapshot=snapshot(at=later),
        last_success_at=later,
        usage_at=BASE.usage_at + timedelta(minutes=5),
    )
    entities = entities_for(RULES)
    assert shown(polled_again, entities, BASE) == shown(BASE, entities, BASE)
