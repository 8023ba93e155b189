"""What is published for an account: its JSON state document and its plain value topics.

Pure functions of an `AccountView` (the last good snapshot plus the API status), so what
Home Assistant sees is testable without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from .alerts.rules import AlertStatus
from .api import ApiStatus
from .entities import PLAIN_VALUES, WINDOW_LABELS
from .money import format_plain
from .snapshot import Snapshot, Usage, UsageState, window_start

CENT = 10_000  # micro units


@dataclass(frozen=True, slots=True)
class AccountView:
    """The account as the bridge currently knows it. Last good values stay after a failure."""

    snapshot: Snapshot | None = None  # last good /credits answer
    usage: Usage | None = None  # last good /usage answer
    usage_at: datetime | None = None
    usage_state: UsageState | None = None
    api_status: ApiStatus | None = None
    connected: bool = False
    error: str | None = None
    alerts: AlertStatus | None = None


def state_document(view: AccountView) -> dict[str, Any]:
    """Every value of the account; entities read it with value templates.

    Money is a decimal string (exact, and HA parses it); a value not known yet is null, which
    HA shows as unknown.
    """
    snap = view.snapshot
    doc: dict[str, Any] = {
        "balance": format_plain(snap.balance_micro) if snap else None,
        "holds": format_plain(snap.holds_micro) if snap else None,
        "available": format_plain(snap.available_micro) if snap else None,
        "currency": snap.currency if snap else None,
    }
    for suffix, _label, window in WINDOW_LABELS:
        w = getattr(view.usage, window) if view.usage is not None else None
        start = window_start(window, view.usage_at) if view.usage_at else None
        doc[f"spend_{suffix}"] = format_plain(w.cost_micro) if w else None
        doc[f"reset_{suffix}"] = start.isoformat() if w and start else None
        doc[f"tokens_{suffix}"] = w.total_tokens if w else None
        doc[f"prompt_tokens_{suffix}"] = w.prompt_tokens if w else None
        doc[f"completion_tokens_{suffix}"] = w.completion_tokens if w else None
        doc[f"requests_{suffix}"] = w.request_count if w else None
        doc[f"success_rate_{suffix}"] = w.success_rate if w else None
    doc["api_status"] = view.api_status
    doc["connected"] = view.connected
    doc["error"] = view.error
    doc["usage_state"] = view.usage_state.value if view.usage_state else None
    alerts = view.alerts or AlertStatus()
    burn = alerts.burn
    # The forecast drifts a little with every poll even when nothing is spent (the same spend
    # over more elapsed time). Published to a cent per day, and the runway to two significant
    # digits (20 d, 2.5 d, 0.63 d), an idle wallet stays quiet for hours; the rules still use
    # the exact values.
    if burn is not None:
        cents = (burn.per_day_micro / CENT).quantize(Decimal(1), ROUND_HALF_EVEN)
        doc["burn_rate"] = format_plain(int(cents) * CENT)
    else:
        doc["burn_rate"] = None
    doc["burn_rate_source"] = burn.source if burn else None
    doc["runway_days"] = _two_digits(alerts.runway_days)
    for rule in alerts.rules:
        doc[f"alert_{rule}"] = rule in alerts.active
    if alerts.low_balance_below is not None:
        doc["low_balance_below"] = format_plain(alerts.low_balance_below)
    if alerts.runway_below_days is not None:
        doc["runway_below_days"] = str(alerts.runway_below_days)
    doc["last_update"] = snap.fetched_at.isoformat() if snap else None
    return doc


def active_alerts(view: AccountView) -> list[dict[str, str]]:
    """The retained `alerts/active` list."""
    if view.alerts is None:
        return []
    return [
        {"rule": rule, "since": since.isoformat()}
        for rule, since in sorted(view.alerts.active.items())
    ]


def _two_digits(value: Decimal | None) -> str | None:
    if value is None:
        return None
    if value <= 0:
        return "0"
    step = Decimal(1).scaleb(value.adjusted() - 1)
    return format(value.quantize(step, ROUND_HALF_EVEN), "f")


FORECAST_KEYS = ("burn_rate", "runway_days")
FORECAST_BAND = Decimal("0.02")


def settle_forecast(prev: dict[str, Any] | None, doc: dict[str, Any]) -> dict[str, Any]:
    """Keep the published forecast while the new one is within 2 % of it.

    Spend per elapsed time drifts slowly even when nothing is spent; without this band an idle
    wallet would republish its state every time a rounded figure ticks over."""
    if prev is None:
        return doc
    out = dict(doc)
    for key in FORECAST_KEYS:
        old, new = prev.get(key), doc.get(key)
        if old is None or new is None or old == new:
            continue
        before, after = Decimal(old), Decimal(new)
        if before != 0 and abs(after - before) <= abs(before) * FORECAST_BAND:
            out[key] = old
    return out


def same_values(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Equal but for the poll time: an unchanged poll publishes nothing."""
    if a is None:
        return False
    return {k: v for k, v in a.items() if k != "last_update"} == {
        k: v for k, v in b.items() if k != "last_update"
    }


def plain_values(doc: dict[str, Any]) -> dict[str, str]:
    """Plain retained topics (`balance` -> '8.059489'); unknown values are left out."""
    out: dict[str, str] = {}
    for key in PLAIN_VALUES:
        value = doc.get(key)
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "ON" if value else "OFF"
        else:
            out[key] = str(value)
    return out
