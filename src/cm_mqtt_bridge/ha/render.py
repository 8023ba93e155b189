"""What is published for an account, as a pure function of its view.

`render` generates, from the entity table, the JSON state document, the plain value topics,
the availability and the list of active alerts: {topic: (payload, kind)}. What Home Assistant
sees is testable without a broker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..core.view import AccountView
from .entities import DOCUMENT_ONLY, POLL_TIME_KEYS, Entity, Value
from .topics import Kind, Topics

Messages = dict[str, tuple[str, Kind]]


def dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def document_values(entities: Sequence[Entity]) -> tuple[Value, ...]:
    """Every key of the state document with its reader (a runtime lists them once)."""
    return (*(value for entity in entities for value in entity.values()), *DOCUMENT_ONLY)


def state_document(
    view: AccountView, entities: Sequence[Entity], values: Sequence[Value] | None = None
) -> dict[str, Any]:
    """Every value of the account; entities read it with value templates. `values`:
    `document_values(entities)`, if already at hand.

    Money is a decimal string (exact, and HA parses it); a value not known yet is null, which
    HA shows as unknown."""
    return {value.key: value.read(view) for value in values or document_values(entities)}


def settle(prev: dict[str, Any] | None, doc: dict[str, Any], entities: Sequence[Entity]) -> None:
    """Keep a published figure while the new one is within the entity's band of it.

    Spend per elapsed time drifts slowly even when nothing is spent; without this band an idle
    wallet would republish its state every time a rounded figure ticks over."""
    if prev is None:
        return
    for entity in entities:
        if entity.band is None or entity.value is None:
            continue
        key = entity.value.key
        old, new = prev.get(key), doc.get(key)
        if old is None or new is None or old == new:
            continue
        before, after = Decimal(old), Decimal(new)
        if before != 0 and abs(after - before) <= abs(before) * entity.band:
            doc[key] = old


def same_values(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Equal but for the poll time: an unchanged poll publishes nothing."""
    if a is None:
        return False
    if a.keys() != b.keys():
        return {k: v for k, v in a.items() if k not in POLL_TIME_KEYS} == {
            k: v for k, v in b.items() if k not in POLL_TIME_KEYS
        }
    # The same keys (the same entity table): compare in place, the equal ones first.
    return all(a[k] == v or k in POLL_TIME_KEYS for k, v in b.items())


def plain_values(doc: dict[str, Any], entities: Sequence[Entity]) -> dict[str, str]:
    """Plain retained topics (`balance` -> '8.059489'); unknown values are left out."""
    out: dict[str, str] = {}
    for entity in entities:
        if not entity.plain or entity.value is None:
            continue
        value = doc.get(entity.value.key)
        if value is None:
            continue
        out[entity.value.key] = (
            ("ON" if value else "OFF") if isinstance(value, bool) else str(value)
        )
    return out


def active_alerts(view: AccountView) -> list[dict[str, str]]:
    """The retained `alerts/active` list."""
    if view.alerts is None:
        return []
    return [
        {"rule": rule, "since": since.isoformat()}
        for rule, since in sorted(view.alerts.active.items())
    ]


@dataclass(frozen=True, slots=True)
class Rendered:
    doc: dict[str, Any]  # the state document now published (kept for the next render)
    messages: Messages
    values: Messages  # the state document and plain topics (reused while `doc` stays)
    status: Messages  # the rest: availability and active alerts


def render(
    account_id: str,
    view: AccountView,
    entities: Sequence[Entity],
    topics: Topics,
    *,
    previous: Rendered | None,
    alerts: bool,
    values: Sequence[Value] | None = None,
) -> Rendered:
    """Every retained topic of the account but its discovery. `previous` is what was rendered
    last; while only the poll time differs, its document stays (nothing is resent).
    `values`: `document_values(entities)`, if already at hand."""
    published = previous.doc if previous is not None else None
    doc = state_document(view, entities, values)
    settle(published, doc, entities)
    if previous is not None and same_values(published, doc):
        shown = previous.values
        doc = previous.doc
    else:
        shown = {topics.state(account_id): (dumps(doc), Kind.STATE)}
        for key, text in plain_values(doc, entities).items():
            shown[topics.value(account_id, key)] = (text, Kind.STATE)
    availability = topics.availability(account_id)
    online = ("online" if view.fresh else "offline", Kind.AVAILABILITY)
    messages: Messages = {availability: online, **shown}
    status: Messages = {availability: online}
    if alerts:
        topic = topics.alerts_active(account_id)
        messages[topic] = status[topic] = (dumps(active_alerts(view)), Kind.STATE)
    return Rendered(doc, messages, shown, status)
