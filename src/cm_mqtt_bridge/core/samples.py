"""History samples: one row per poll that changed something. Pure.

Every sample carries `spent_total_micro`: the account's cumulative spend since recording began,
built from the month-to-date counter, so burn rates survive history thinning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .model import Snapshot, Usage


@dataclass(frozen=True, slots=True)
class Sample:
    at: datetime
    balance_micro: int
    holds_micro: int
    spend_day_micro: int | None
    spend_week_micro: int | None
    spend_month_micro: int | None
    spent_total_micro: int = 0

    def figures(self) -> tuple[int | None, ...]:
        return (
            self.balance_micro,
            self.holds_micro,
            self.spend_day_micro,
            self.spend_week_micro,
            self.spend_month_micro,
        )


def spent_since(prev: Sample | None, at: datetime, spend_month_micro: int | None) -> int:
    """Spend between `prev` and a new sample at `at`, from the month-to-date counter.

    Within a month the counter only grows; across a month boundary it restarts, and the new
    value is what was spent since the month began. A counter that did not drop across the
    boundary is still last month's (the API caches for up to a minute): only its growth counts.
    """
    if prev is None or prev.spend_month_micro is None or spend_month_micro is None:
        return 0
    same_month = (prev.at.year, prev.at.month) == (at.year, at.month)
    if same_month or spend_month_micro >= prev.spend_month_micro:
        return max(0, spend_month_micro - prev.spend_month_micro)
    return spend_month_micro


def next_sample(prev: Sample | None, snap: Snapshot, usage: Usage) -> Sample | None:
    """The sample a full poll adds after `prev`; None when no figure moved."""
    month = usage.monthly.cost_micro
    total = (prev.spent_total_micro if prev else 0) + spent_since(prev, snap.fetched_at, month)
    sample = Sample(
        snap.fetched_at,
        snap.balance_micro,
        snap.holds_micro,
        usage.daily.cost_micro,
        usage.weekly.cost_micro,
        month,
        total,
    )
    if prev is not None and prev.figures() == sample.figures():
        return None
    return sample
