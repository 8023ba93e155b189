"""Every Home Assistant entity of an account, declared once, with the readers of its values.

This table is the one source for the discovery payload (discovery.py), the JSON state document
and the plain value topics (render.py): each entry says how HA shows the entity and how its
value, attributes and `last_reset` are read from the account's view. Adding an entity touches
this table only; alert entities are derived from the rule registry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from ..core.model import API_STATUSES, Window, WindowUsage
from ..core.money import CURRENCY, format_plain, parse_amount
from ..core.rules import RuleSpec
from ..core.view import AccountView
from .topics import REFRESH

Platform = Literal["sensor", "binary_sensor", "button", "number", "event"]
# Which availability topics gate the entity: values need fresh data, diagnostics only the bridge.
Gate = Literal["values", "bridge"]
CENT = 10_000  # micro units
Reader = Callable[[AccountView], Any]


@dataclass(frozen=True, slots=True)
class Value:
    """One key of the state document and how to read it from the view (None: unknown)."""

    key: str
    read: Reader


@dataclass(frozen=True, slots=True)
class Entity:
    key: str  # component id, suffix of unique_id and default_entity_id
    name: str
    platform: Platform = "sensor"
    value: Value | None = None  # None for command-only entities
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    precision: int | None = None
    category: Literal["diagnostic", "config"] | None = None
    icon: str | None = None
    options: tuple[str, ...] = ()
    attributes: tuple[tuple[str, Value], ...] = ()  # (attribute name, value)
    last_reset: Value | None = None
    gate: Gate = "values"
    command: str | None = None  # command name: <base>/<account>/<command>/set
    event_types: tuple[str, ...] = ()
    number: tuple[float, float, float] | None = None  # min, max, step
    plain: bool = True  # also published as a plain retained topic
    # Publish hysteresis: keep the published value while a new one is within this fraction.
    band: Decimal | None = None
    # The poll time: it changes with every poll, so alone it never makes a publish.
    poll_time: bool = False

    def unit_for(self, currency: str | None) -> str | None:
        if self.unit is None or CURRENCY not in self.unit:
            return self.unit
        return self.unit.replace(CURRENCY, currency) if currency else None

    @property
    def needs_currency(self) -> bool:
        return self.unit is not None and CURRENCY in self.unit

    def values(self) -> Iterator[Value]:
        """Every state-document key this entity reads."""
        if self.value is not None:
            yield self.value
        yield from (v for _name, v in self.attributes)
        if self.last_reset is not None:
            yield self.last_reset


# ---- readers ---------------------------------------------------------------------------------


def _money(field: str) -> Reader:
    def read(v: AccountView) -> str | None:
        snap = v.snapshot
        return None if snap is None else format_plain(getattr(snap, field))

    return read


def _window(window: Window, read: Callable[[WindowUsage], Any]) -> Reader:
    def reader(v: AccountView) -> Any:
        return None if v.usage is None else read(v.usage.get(window))

    return reader


def _reset(window: Window) -> Reader:
    def read(v: AccountView) -> str | None:
        if v.usage is None or v.usage_at is None:
            return None
        return window.start(v.usage_at).isoformat()

    return read


def _burn_rate(v: AccountView) -> str | None:
    burn = v.alerts.burn if v.alerts else None
    if burn is None:
        return None
    # Published to a cent per day (the rules use the exact value): an idle wallet stays quiet.
    cents = (burn.per_day_micro / CENT).quantize(Decimal(1), ROUND_HALF_EVEN)
    return format_plain(int(cents) * CENT)


def _runway(v: AccountView) -> str | None:
    days = v.alerts.runway_days if v.alerts else None
    if days is None:
        return None
    if days <= 0:
        return "0"
    # Two significant digits (20 d, 2.5 d, 0.63 d).
    step = Decimal(1).scaleb(days.adjusted() - 1)
    return format(days.quantize(step, ROUND_HALF_EVEN), "f")


def _firing(rule: str) -> Reader:
    return lambda v: v.alerts is not None and rule in v.alerts.active


def _threshold(key: str, money: bool) -> Reader:
    def read(v: AccountView) -> str | None:
        value = v.alerts.thresholds.get(key) if v.alerts else None
        if value is None:
            return None
        return format_plain(parse_amount(value)) if money else str(value)

    return read


# ---- the table -------------------------------------------------------------------------------


def _money_entity(key: str, name: str) -> Entity:
    return Entity(
        key=key,
        name=name,
        value=Value(key, _money(f"{key}_micro")),
        device_class="monetary",
        state_class="total",
        unit=CURRENCY,
        precision=2,
        icon="mdi:wallet",
    )


@dataclass(frozen=True, slots=True)
class _Count:
    """A window's count (tokens, requests) and the attributes shown with it."""

    key: str
    name: str
    unit: str
    icon: str
    read: Callable[[WindowUsage], Any]
    attributes: tuple[tuple[str, Callable[[WindowUsage], Any]], ...]

    def entity(self, w: Window) -> Entity:
        return Entity(
            key=f"{self.key}_{w.suffix}",
            name=f"{self.name} {w.label}",
            value=Value(f"{self.key}_{w.suffix}", _window(w, self.read)),
            state_class="total_increasing",
            unit=self.unit,
            icon=self.icon,
            attributes=tuple(
                (attr, Value(f"{attr}_{w.suffix}", _window(w, r))) for attr, r in self.attributes
            ),
        )


_COUNTS = (
    _Count(
        "tokens",
        "Tokens",
        "tokens",
        "mdi:counter",
        lambda u: u.total_tokens,
        (
            ("prompt_tokens", lambda u: u.prompt_tokens),
            ("completion_tokens", lambda u: u.completion_tokens),
        ),
    ),
    _Count(
        "requests",
        "Requests",
        "requests",
        "mdi:swap-horizontal",
        lambda u: u.request_count,
        (("success_rate", lambda u: u.success_rate),),
    ),
)


def _build() -> tuple[Entity, ...]:
    out: list[Entity] = [
        _money_entity("balance", "Balance"),
        _money_entity("holds", "Holds"),
        _money_entity("available", "Available"),
    ]
    for w in Window:
        out.append(
            Entity(
                key=f"spend_{w.suffix}",
                name=f"Spend {w.label}",
                value=Value(f"spend_{w.suffix}", _window(w, lambda u: format_plain(u.cost_micro))),
                device_class="monetary",
                state_class="total",
                unit=CURRENCY,
                precision=2,
                icon="mdi:cash-minus",
                last_reset=Value(f"reset_{w.suffix}", _reset(w)),
            )
        )
    out.append(_total_spend())
    for count in _COUNTS:
        out += [count.entity(w) for w in Window]
    out += [
        Entity(
            key="last_update",
            name="Last update",
            value=Value(
                "last_update", lambda v: v.snapshot.fetched_at.isoformat() if v.snapshot else None
            ),
            device_class="timestamp",
            category="diagnostic",
            poll_time=True,
        ),
        Entity(
            key="api_status",
            name="API status",
            value=Value("api_status", lambda v: v.api_status),
            device_class="enum",
            options=API_STATUSES,
            category="diagnostic",
            icon="mdi:api",
            attributes=(
                ("error", Value("error", lambda v: v.error)),
                ("usage", Value("usage_state", lambda v: v.usage_state)),
            ),
            gate="bridge",
        ),
        Entity(
            key="connected",
            name="Connected",
            platform="binary_sensor",
            value=Value("connected", lambda v: v.connected),
            device_class="connectivity",
            category="diagnostic",
            gate="bridge",
        ),
        Entity(
            key=REFRESH,
            name="Refresh",
            platform="button",
            icon="mdi:refresh",
            command=REFRESH,
            gate="bridge",
        ),
        # The forecast is useful without any rule: always published.
        Entity(
            key="burn_rate",
            name="Burn rate",
            value=Value("burn_rate", _burn_rate),
            state_class="measurement",
            unit=f"{CURRENCY}/d",
            precision=2,
            icon="mdi:fire",
            attributes=(("source", Value("burn_rate_source", _burn_source)),),
            band=Decimal("0.02"),
        ),
        Entity(
            key="runway",
            name="Runway",
            value=Value("runway_days", _runway),
            device_class="duration",
            state_class="measurement",
            unit="d",
            precision=1,
            icon="mdi:timer-sand",
            band=Decimal("0.02"),
        ),
    ]
    return tuple(out)


def _total_spend() -> Entity:
    # No last_reset: it never resets, so HA's long-term statistics give spend per hour, day,
    # week and month in the user's own time zone (the windows above follow UTC).
    return Entity(
        key="total_spend",
        name="Total spend",
        value=Value("total_spend", _spend_total),
        device_class="monetary",
        state_class="total",
        unit=CURRENCY,
        precision=2,
        icon="mdi:cash-multiple",
    )


def _spend_total(v: AccountView) -> str | None:
    total = v.alerts.spend_total_micro if v.alerts else None
    return None if total is None else format_plain(total)


def _burn_source(v: AccountView) -> str | None:
    burn = v.alerts.burn if v.alerts else None
    return burn.source if burn else None


ENTITIES: tuple[Entity, ...] = _build()
# The entity whose unit tells, in a retained discovery payload, which currency it announced.
CURRENCY_PROBE = next(e.key for e in ENTITIES if e.needs_currency)
POLL_TIME_KEYS = frozenset(e.value.key for e in ENTITIES if e.poll_time and e.value is not None)
# Not an entity: the currency code rides in the state document for other subscribers.
DOCUMENT_ONLY: tuple[Value, ...] = (
    Value("currency", lambda v: v.snapshot.currency if v.snapshot else None),
)


# The event type of `cm-mqtt-bridge test-alert`'s notice, next to the rules' own.
TEST_EVENT = "test"


def _resets_at(window: Window) -> Reader:
    def read(v: AccountView) -> str | None:
        return None if v.snapshot is None else window.end(v.snapshot.fetched_at).isoformat()

    return read


def _warn_step(rule: str) -> Reader:
    return lambda v: None if v.alerts is None else v.alerts.steps.get(rule)


def _budget_attributes(
    rule: RuleSpec, rules: tuple[RuleSpec, ...]
) -> tuple[tuple[str, Value], ...]:
    """A budget's binary sensor: when its UTC window ends (as of the last poll) and, with
    `warn_at`, the highest warning step passed in the window (null: none yet)."""
    if rule.window is None:
        return ()
    out: tuple[tuple[str, Value], ...] = (
        ("resets_at", Value(f"resets_at_{rule.name}", _resets_at(rule.window))),
    )
    if any(r.name == f"{rule.name}_warn" for r in rules):
        out += (("warn_step", Value(f"warn_step_{rule.name}", _warn_step(rule.name))),)
    return out


def alert_entities(rules: tuple[RuleSpec, ...]) -> tuple[Entity, ...]:
    """A problem binary_sensor per enabled rule, one event entity, and the number entities
    for the thresholds HA may change."""
    if not rules:
        return ()
    out: list[Entity] = [
        Entity(
            key=f"alert_{rule.name}",
            name=f"{rule.label} alert",
            platform="binary_sensor",
            value=Value(f"alert_{rule.name}", _firing(rule.name)),
            device_class="problem",
            gate="bridge",  # an alert (API down!) must stay visible while values are stale
            plain=False,
            attributes=_budget_attributes(rule, rules),
        )
        for rule in rules
        if not rule.event
    ]
    out.append(
        Entity(
            key="alert",
            name="Alert",
            platform="event",
            icon="mdi:bell-alert",
            event_types=(*(r.name for r in rules), TEST_EVENT),
            gate="bridge",
            plain=False,
        )
    )
    for rule in rules:
        t = rule.threshold
        if t is None:
            continue
        out.append(
            Entity(
                key=t.key,
                name=t.name,
                platform="number",
                value=Value(t.key, _threshold(t.key, t.money)),
                unit=t.unit,
                category="config",
                icon=t.icon,
                command=t.key,
                number=(float(t.low), float(t.high), float(t.step)),
                gate="bridge",
                plain=False,
            )
        )
    return tuple(out)


@functools.cache  # accounts with the same rules share one table
def entities_for(rules: tuple[RuleSpec, ...]) -> tuple[Entity, ...]:
    """Every entity of an account with these alert rules enabled."""
    return ENTITIES + alert_entities(rules)
