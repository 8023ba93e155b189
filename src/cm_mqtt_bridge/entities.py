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
# Which availability topics gate the entity: values need fresh data, diagnostics only the bridge.
Gate = Literal["values", "bridge"]
CURRENCY = "<currency>"  # the unit is the account's ISO 4217 code, known after the first poll


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

    @property
    def needs_currency(self) -> bool:
        return self.unit == CURRENCY


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

# Values also published as plain retained topics for subscribers that do not parse JSON.
PLAIN_VALUES: tuple[str, ...] = tuple(
    e.value for e in ENTITIES if e.value is not None and e.platform in ("sensor", "binary_sensor")
)
