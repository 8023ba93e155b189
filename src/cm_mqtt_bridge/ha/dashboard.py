"""A ready Home Assistant (Lovelace) dashboard for the configured accounts, as YAML text.

Pure: config in, text out. Every entity id comes from the entity table (`entities_for`) and
discovery's naming (`default_entity_id`, and the same `object_id` for HA before 2025.10), so
the dashboard names exactly the entities the bridge creates for each account: alert cards only
appear for an account with alert rules.
Only cards that ship with Home Assistant 2024.11+ are used (no custom cards).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from ..config.settings import AccountConfig
from ..core.money import micro_to_decimal
from ..core.rules import LowBalanceRule
from .entities import Entity, entities_for
from .topics import default_entity_id

TITLE = "CrossModel"
OVERVIEW_PATH = "overview"
HISTORY_HOURS = 48
SPEND_DAYS = 30
LOGBOOK_HOURS = 30 * 24
# The gauge spans 0 .. GAUGE_SPAN × the low-balance threshold: red below the threshold (the
# alert fires), yellow up to twice it, green above.
GAUGE_SPAN = 4


class _NoAliases(yaml.SafeDumper):
    """Safe dumping without &anchors: a row list used by two cards is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _Account:
    """One account's entities, looked up by key in the bridge's own entity table."""

    def __init__(self, acc: AccountConfig) -> None:
        self.acc = acc
        self.rules = acc.alerts.rule_names()
        self.by_key: dict[str, Entity] = {e.key: e for e in entities_for(acc.alerts.rules())}

    def has(self, key: str) -> bool:
        return key in self.by_key

    def eid(self, key: str) -> str:
        entity = self.by_key[key]  # KeyError: the bridge creates no such entity
        return default_entity_id(entity.platform, self.acc.id, key)

    def row(self, key: str) -> dict[str, Any]:
        return {"entity": self.eid(key), "name": self.by_key[key].name}

    def rows(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        return [self.row(k) for k in keys if self.has(k)]


def _amount(micro: int) -> float | int:
    value = micro_to_decimal(micro)
    return int(value) if value == value.to_integral_value() else float(value)


def _gauge(a: _Account) -> dict[str, Any]:
    card: dict[str, Any] = {
        "type": "gauge",
        "entity": a.eid("available"),
        "name": a.by_key["available"].name,
        "min": 0,
    }
    low = a.acc.alerts.get(LowBalanceRule)
    if low is not None and low.below > 0:
        card["max"] = _amount(GAUGE_SPAN * low.below)
        # HA colours a value by the highest band start it reaches (all three must be given).
        card["severity"] = {
            "red": 0,
            "yellow": _amount(low.below),
            "green": _amount(2 * low.below),
        }
    else:
        # No low-balance rule: no threshold to colour by; HA's default 0-100 scale.
        card["max"] = 100
    return card


def account_view(acc: AccountConfig, path: str | None = None) -> dict[str, Any]:
    a = _Account(acc)
    cards: list[dict[str, Any]] = [
        {
            "type": "entities",
            "title": "Wallet",
            "entities": a.rows(
                # Ids HA before 2025.10 derives from the names too (not "spend_month", whose
                # name "Spend this month" gives sensor.crossmodel_<account>_spend_this_month).
                (
                    "balance",
                    "available",
                    "holds",
                    "spend_today",
                    "total_spend",
                    "runway",
                    "burn_rate",
                )
            ),
        },
        _gauge(a),
        {
            "type": "statistics-graph",
            "title": "Spend per day",
            # Total spend never resets: its daily change is the spend of the user's own day.
            "entities": [a.eid("total_spend")],
            "stat_types": ["change"],
            "period": "day",
            "days_to_show": SPEND_DAYS,
            "chart_type": "bar",
        },
        {
            "type": "history-graph",
            "title": "Balance",
            "hours_to_show": HISTORY_HOURS,
            "entities": a.rows(("balance", "available")),
        },
    ]
    if a.rules:
        problems = [
            a.row(e.key)
            for e in a.by_key.values()
            if e.platform == "binary_sensor" and e.key.startswith("alert_")
        ]
        alerts: list[dict[str, Any]] = [
            {"type": "entities", "title": "Alerts", "entities": problems}
        ]
        thresholds = a.rows(("low_balance_below", "runway_below_days", "spike_factor"))
        if thresholds:
            # A glance card: the number rows of an entities card cut the names short.
            alerts.append({"type": "glance", "title": "Thresholds", "entities": thresholds})
        cards.append({"type": "vertical-stack", "cards": alerts} if len(alerts) > 1 else alerts[0])
        cards.append(
            {
                "type": "logbook",
                "title": "Last alerts",
                "entities": [a.eid("alert")],
                "hours_to_show": LOGBOOK_HOURS,
            }
        )
    cards.append(
        {
            "type": "entities",
            "title": "Bridge",
            # The button entity's row has a Press button: it polls the account now.
            "entities": a.rows(("api_status", "connected", "last_update", "refresh")),
        }
    )
    return {"title": acc.name, "path": path or acc.id, "cards": cards}


def overview_view(accounts: Sequence[AccountConfig]) -> dict[str, Any]:
    rows = []
    for acc in accounts:
        a = _Account(acc)
        rows.append({"entity": a.eid("available"), "name": acc.name})
    return {
        "title": "Overview",
        "path": OVERVIEW_PATH,
        "cards": [
            {"type": "entities", "title": "Available balance", "entities": rows},
            {
                "type": "history-graph",
                "title": "Available balance",
                "hours_to_show": HISTORY_HOURS,
                "entities": rows,
            },
        ],
    }


def dashboard(accounts: Sequence[AccountConfig], *, overview: bool = False) -> dict[str, Any]:
    """The Lovelace config: with `overview`, a first view of every account's Available."""
    views: list[dict[str, Any]] = [overview_view(accounts)] if overview else []
    for acc in accounts:
        # An account whose id is the overview's path gets another path, so both stay reachable.
        path = f"account-{acc.id}" if overview and acc.id == OVERVIEW_PATH else None
        views.append(account_view(acc, path))
    return {"title": TITLE, "views": views}


def render_yaml(accounts: Sequence[AccountConfig], *, overview: bool = False) -> str:
    """YAML for the raw configuration editor of a new dashboard."""
    header = (
        "# cm-mqtt-bridge dashboard: paste into a new dashboard's raw configuration editor\n"
        "# (Settings > Dashboards > Add dashboard > open it > Edit > Raw configuration editor).\n"
    )
    body = yaml.dump(
        dashboard(accounts, overview=overview),
        Dumper=_NoAliases,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return header + body
