"""Every Home Assistant entity of an account, declared once.

Discovery payloads (discovery.py) and the state document (state.py) are both generated from
this table; nothing else names an entity. `value` is the key the entity reads in the account's
JSON state document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .api import API_STATUSES

Platform = Literal["sensor", "binary_sensor", "button", "number", "event"]
RULE_NAMES = {
    "low_balance": "Low balance",
    "runway": "Runway",
    "budget_daily": "Daily budget",
    "budget_weekly": "Weekly budget",
    "budget_monthly": "Monthly budget",
    "api_down": "API down",
    "auth_failed": "Key rejected",
    "topup": "Top-up",
}
# Which availability topics gate the entity: values need fresh data, diagnostics only the bridge.
Gate = Literal["values", "bridge"]
CURRENCY = "<currency>"  # the unit is the account's ISO 4217 code, known after the first poll
CURRENCY_PER_DAY = "<currency>/d"


@dataclass(frozen=True, slots=True)
class Entity:
    key: str  # component id, suffix of unique_id and default_entity_id
    name: str
    platform: Platform = "sensor"
    value: str | None = None  # state-document key; None for command-only entities
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    precision: int | None = None
    category: Literal["diagnostic", "config"] | None = None
    icon: str | None = None
    options: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()  # (attribute name, state-document key)
    last_reset: str | None = None  # state-document key holding the window start
    gate: Gate = "values"
    command: str | None = None  # topic suffix under <base>/<account>/
    event_types: tuple[str, ...] = ()
    number: tuple[float, float, float] | None = None  # min, max, step

    def unit_for(self, currency: str | None) -> str | None:
        if self.unit is None or "<currency>" not in self.unit:
            return self.unit
        return self.unit.replace("<currency>", currency) if currency else None

    @property
    def needs_currency(self) -> bool:
        return self.unit is not None and "<currency>" in self.unit


# (value suffix, label, snapshot window)
WINDOW_LABELS = (
    ("today", "today", "daily"),
    ("week", "this week", "weekly"),
    ("month", "this month", "monthly"),
)


def _money(key: str, name: str) -> Entity:
    return Entity(
        key=key,
        name=name,
        value=key,
        device_class="monetary",
        state_class="total",
        unit=CURRENCY,
        precision=2,
        icon="mdi:wallet",
    )


def _build() -> tuple[Entity, ...]:
    out: list[Entity] = [
        _money("balance", "Balance"),
        _money("holds", "Holds"),
        _money("available", "Available"),
    ]
    for suffix, label, _window in WINDOW_LABELS:
        out.append(
            Entity(
                key=f"spend_{suffix}",
                name=f"Spend {label}",
                value=f"spend_{suffix}",
                device_class="monetary",
                state_class="total",
                unit=CURRENCY,
                precision=2,
                icon="mdi:cash-minus",
                last_reset=f"reset_{suffix}",
            )
        )
    for suffix, label, _window in WINDOW_LABELS:
        out.append(
            Entity(
                key=f"tokens_{suffix}",
                name=f"Tokens {label}",
                value=f"tokens_{suffix}",
                state_class="total_increasing",
                unit="tokens",
                icon="mdi:counter",
                attributes=(
                    ("prompt_tokens", f"prompt_tokens_{suffix}"),
                    ("completion_tokens", f"completion_tokens_{suffix}"),
                ),
            )
        )
    for suffix, label, _window in WINDOW_LABELS:
        out.append(
            Entity(
                key=f"requests_{suffix}",
                name=f"Requests {label}",
                value=f"requests_{suffix}",
                state_class="total_increasing",
                unit="requests",
                icon="mdi:swap-horizontal",
                attributes=(("success_rate", f"success_rate_{suffix}"),),
            )
        )
    out += [
        Entity(
            key="last_update",
            name="Last update",
            value="last_update",
            device_class="timestamp",
            category="diagnostic",
        ),
        Entity(
            key="api_status",
            name="API status",
            value="api_status",
            device_class="enum",
            options=API_STATUSES,
            category="diagnostic",
            icon="mdi:api",
            attributes=(("error", "error"), ("usage", "usage_state")),
            gate="bridge",
        ),
        Entity(
            key="connected",
            name="Connected",
            platform="binary_sensor",
            value="connected",
            device_class="connectivity",
            category="diagnostic",
            gate="bridge",
        ),
        Entity(
            key="refresh",
            name="Refresh",
            platform="button",
            icon="mdi:refresh",
            command="refresh/set",
            gate="bridge",
        ),
    ]
    return tuple(out)


ENTITIES: tuple[Entity, ...] = _build()

# Always published (the forecast is useful without any rule): burn rate and runway.
FORECAST: tuple[Entity, ...] = (
    Entity(
        key="burn_rate",
        name="Burn rate",
        value="burn_rate",
        state_class="measurement",
        unit=CURRENCY_PER_DAY,
        precision=2,
        icon="mdi:fire",
        attributes=(("source", "burn_rate_source"),),
    ),
    Entity(
        key="runway",
        name="Runway",
        value="runway_days",
        device_class="duration",
        state_class="measurement",
        unit="d",
        precision=1,
        icon="mdi:timer-sand",
    ),
)


def alert_entities(rules: tuple[str, ...]) -> tuple[Entity, ...]:
    """A problem binary_sensor per enabled rule, one event entity, and the number entities
    for the thresholds HA may change."""
    if not rules:
        return ()
    out: list[Entity] = [
        Entity(
            key=f"alert_{rule}",
            name=f"{RULE_NAMES[rule]} alert",
            platform="binary_sensor",
            value=f"alert_{rule}",
            device_class="problem",
            gate="bridge",  # an alert (API down!) must stay visible while values are stale
        )
        for rule in rules
        if rule != "topup"  # a top-up is an event, never a lasting problem
    ]
    out.append(
        Entity(
            key="alert",
            name="Alert",
            platform="event",
            icon="mdi:bell-alert",
            command=None,
            event_types=rules,
            gate="bridge",
        )
    )
    if "low_balance" in rules:
        out.append(
            Entity(
                key="low_balance_below",
                name="Low balance threshold",
                platform="number",
                value="low_balance_below",
                unit=CURRENCY,
                category="config",
                icon="mdi:wallet-outline",
                command="low_balance_below/set",
                number=(0.0, 1_000_000.0, 0.01),
                gate="bridge",
            )
        )
    if "runway" in rules:
        out.append(
            Entity(
                key="runway_below_days",
                name="Runway threshold",
                platform="number",
                value="runway_below_days",
                unit="d",
                category="config",
                icon="mdi:timer-alert-outline",
                command="runway_below_days/set",
                number=(0.0, 365.0, 0.5),
                gate="bridge",
            )
        )
    return tuple(out)


def entities_for(rules: tuple[str, ...]) -> tuple[Entity, ...]:
    """Every entity of an account with these alert rules enabled."""
    return ENTITIES + FORECAST + alert_entities(rules)


# Values also published as plain retained topics for subscribers that do not parse JSON.
PLAIN_VALUES: tuple[str, ...] = tuple(
    e.value
    for e in ENTITIES + FORECAST
    if e.value is not None and e.platform in ("sensor", "binary_sensor")
)
