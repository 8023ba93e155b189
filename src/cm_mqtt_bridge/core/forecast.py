"""Burn rate (currency per day) and runway (days left), from recorded history. Pure.

Every sample carries `spent_total_micro` (see history.py), so the spend between any two
samples is a difference of two rows, however the history has been thinned out since.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from .model import Window

if TYPE_CHECKING:
    from .samples import Sample

WINDOW = timedelta(days=7)
DAY_SECONDS = Decimal(86400)


@dataclass(frozen=True, slots=True)
class Burn:
    per_day_micro: Decimal  # exact: micro units per day
    source: str  # history_7d | week_to_date | month_to_date


def burn_rate(latest: Sample | None, anchor: Sample | None, now: datetime) -> Burn | None:
    """Spend per day over the trailing 7x24 h once that much is recorded (`anchor` is the last
    sample at or before now - 7 d); until then the longer of week-to-date and month-to-date
    spend per elapsed day. None without usable data."""
    if latest is None:
        return None
    if anchor is not None and anchor.at <= now - WINDOW and latest.at > anchor.at:
        span = Decimal(int((latest.at - anchor.at).total_seconds())) / DAY_SECONDS
        spent = latest.spent_total_micro - anchor.spent_total_micro
        return Burn(Decimal(spent) / span, "history_7d")
    options: list[tuple[timedelta, int | None, str]] = [
        (latest.at - Window.WEEK.start(latest.at), latest.spend_week_micro, "week_to_date"),
        (latest.at - Window.MONTH.start(latest.at), latest.spend_month_micro, "month_to_date"),
    ]
    elapsed, spent_or_none, source = max(options, key=lambda o: o[0])
    if spent_or_none is None or elapsed <= timedelta(0):
        return None
    days = Decimal(int(elapsed.total_seconds())) / DAY_SECONDS
    return Burn(Decimal(spent_or_none) / days, source)


def runway_days(available_micro: int, burn: Burn | None) -> Decimal | None:
    """Days until the available balance is spent; None when nothing is being spent."""
    if burn is None or burn.per_day_micro <= 0:
        return None
    if available_micro <= 0:
        return Decimal(0)
    return Decimal(available_micro) / burn.per_day_micro
