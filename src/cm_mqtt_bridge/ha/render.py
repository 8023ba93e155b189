"""What is published for an account, as a pure function of its view.

`render` generates, from the entity table, the JSON state document, the plain value topics,
the availability and the list of active alerts. What Home Assistant sees is testable without a
broker.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..core.view import AccountView
from .entities import DOCUMENT_ONLY, POLL_TIME_KEYS, Entity, Value
from .topics import Topics


def dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


@functools.cache  # accounts with the same entity table share one
def document_values(entities: tuple[Entity, ...]) -> tuple[Value, ...]:
    """Every key of the state document with its reader (a runtime lists them once)."""
    return (*(value for entity in entities for value in entity.values()), *DOCUMENT_ONLY)


def state_document(
    view: AccountView, entities: Sequence[Entity], values: Sequence[Value] | None = None
) -> dict[str, Any]:
    """Every value of the account; entities read it with value templates. `values`:
    `document_values(entities)`, if already at hand.

    Money is a decimal string (exact, and HA parses it); a value not known yet is null, which
    HA shows as unknown."""
    return {value.key: value.read(view) for value in values or document_values(tuple(entities))}


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
    """An account's retained topics but its discovery: its state topics by topic, and the
    payloads of its availability and (with alert rules) `alerts/active` topics."""

    doc: dict[str, Any]  # the state document now published (kept for the next render)
    values: dict[str, str]  # {topic: payload} of the document and the plain topics (STATE)
    availability: str
    alerts: str | None


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
    """What the account's retained topics hold. `previous` is what was rendered last; while
    only the poll time differs, its document and values stay (nothing is resent).
    `values`: `document_values(entities)`, if already at hand."""
    published = previous.doc if previous is not None else None
    doc = state_document(view, entities, values)
    settle(published, doc, entities)
    if previous is not None and same_values(published, doc):
        shown = previous.values
        doc = previous.doc
    else:
        # Interned: the publisher keeps the first copy of each topic, and every later render
        # would otherwise hold a second one.
        shown = {sys.intern(topics.state(account_id)): dumps(doc)}
        for key, text in plain_values(doc, entities).items():
            shown[sys.intern(topics.value(account_id, key))] = text
    return Rendered(
        doc,
        shown,
        "online" if view.fresh else "offline",
        dumps(active_alerts(view)) if alerts else None,
    )
