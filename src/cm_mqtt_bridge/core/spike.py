"""The figures of the spend-spike rule, from the bridge's own history samples. Pure.

The spike rule compares the spend of the last `over` window with the account's average spend
per `over` window in the 7 days before that window (the window itself is left out, so a spike
does not raise its own baseline). Both come from `spent_total_micro`, the cumulative spend every
sample carries, so they are differences of two samples however the history has been thinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .samples import Sample

BASELINE = timedelta(days=7)
# The rule stays silent until the history reaches this far back before the window: a baseline
# of a few minutes (the first polls after an install) would make any spend look like a spike.
MIN_BASELINE = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class SpikeFigures:
    recent_micro: int  # spend in the last `over` window
    base_micro: int  # spend in the baseline before the window
    base_seconds: int  # the baseline's length: at least MIN_BASELINE, at most BASELINE


def spike_figures(
    latest: Sample | None,
    at_start: Sample | None,
    base_anchor: Sample | None,
    start: datetime,
) -> SpikeFigures | None:
    """`at_start`: the last sample at or before the window's `start`; `base_anchor`: the last
    sample at or before `start - BASELINE`, or else the oldest sample. None (the rule stays
    silent) while the history does not reach MIN_BASELINE back before the window."""
    if latest is None or at_start is None or base_anchor is None:
        return None
    # A sample holds its figures until the next one: at `start - BASELINE` the anchor's total
    # is the total then. A younger anchor (the oldest sample) starts the baseline itself.
    base_from = max(base_anchor.at, start - BASELINE)
    base_seconds = int((start - base_from).total_seconds())
    if base_seconds < MIN_BASELINE.total_seconds():
        return None
    return SpikeFigures(
        recent_micro=max(0, latest.spent_total_micro - at_start.spent_total_micro),
        base_micro=max(0, at_start.spent_total_micro - base_anchor.spent_total_micro),
        base_seconds=base_seconds,
    )
