"""Lifetime spend: a total that only grows with the spend the bridge observes. Pure.

It starts at the month-to-date spend of the first full poll and then adds what the month-to-date
counter gains. The counter restarts with every UTC month; the first figure of a new month is new
spend and is added whole. Day and week rollovers do not touch it (only the month counter is
read). A lower month-to-date within a month (a refund or correction) takes nothing off: the
total keeps its highest figure, and grows again once the month-to-date passes it, so each
month contributes its highest month-to-date and a cached older answer is never counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .model import Window
from .rules import WINDOW_GRACE


@dataclass(frozen=True, slots=True)
class SpendTotal:
    total_micro: int
    month_start: datetime  # the UTC month `month_micro` belongs to
    month_micro: int  # the highest month-to-date seen in that month (counted in the total)


def advance(prev: SpendTotal | None, at: datetime, month_micro: int) -> SpendTotal | None:
    """The total after a month-to-date figure fetched at `at`; None when it does not change."""
    start = Window.MONTH.start(at)
    if at - start < WINDOW_GRACE:
        # The API caches for up to a minute: just after a month starts, a figure may still be
        # the old month's total. Neither month can claim it; the next poll decides.
        return None
    if prev is None:
        return SpendTotal(month_micro, start, month_micro)
    if start < prev.month_start:
        return None  # from before the month already counted (the wall clock stepped back)
    if start > prev.month_start:
        return SpendTotal(prev.total_micro + month_micro, start, month_micro)
    if month_micro <= prev.month_micro:
        return None
    return SpendTotal(prev.total_micro + month_micro - prev.month_micro, start, month_micro)
