"""The spend-spike rule: its figures from history, the rule as a pure function, then through the
AlertEngine with a real SQLite store and a FakeClock (silent before 24 h of history, once per
episode, across a restart, hysteresis), and end to end on real parts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cm_mqtt_bridge.core.rules import AlertsConfig, SpikeRule
from cm_mqtt_bridge.core.samples import Sample
from cm_mqtt_bridge.core.spike import SpikeFigures, spike_figures
from cm_mqtt_bridge.service.alerting import AlertEngine, ThresholdError
from tests.fakes import FakeClock
from tests.helpers import bare
from tests.test_burn import make_config, observe, open_engine, view_at
from tests.test_rules import Account

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday, well inside March
HOUR = timedelta(hours=1)
WEEK = 7 * 24 * 3600


def s(at: datetime, total: int) -> Sample:
    return Sample(at, 10_000_000, 0, 0, 0, 0, total)


# ---- the figures -----------------------------------------------------------------------------


def test_no_figures_until_the_history_reaches_24_h_before_the_window() -> None:
    now = T0 + timedelta(hours=25)
    start = now - HOUR
    latest = s(now, 900)
    at_start = s(start - timedelta(minutes=3), 700)
    young = s(T0 + timedelta(seconds=1), 100)  # 24 h minus a second before the window
    assert spike_figures(latest, at_start, young, start) is None
    assert spike_figures(None, at_start, young, start) is None
    assert spike_figures(latest, None, s(T0, 100), start) is None
    assert spike_figures(latest, at_start, None, start) is None
    assert spike_figures(latest, at_start, s(T0, 100), start) == SpikeFigures(200, 600, 86400)


def test_the_baseline_is_the_7_days_before_the_window_at_most() -> None:
    now = T0 + timedelta(days=20)
    start = now - HOUR
    # The last sample at or before start - 7 d is older still (nothing changed since): its
    # total held until then, so the baseline is exactly 7 days.
    anchor = s(start - timedelta(days=9), 1_000)
    figures = spike_figures(s(now, 9_000), s(start, 8_000), anchor, start)
    assert figures == SpikeFigures(1_000, 7_000, WEEK)


# ---- the rule, pure --------------------------------------------------------------------------

# 16.80 spent in the 7 days before the window: 0.10 per hour on average.
BASE = SpikeFigures(recent_micro=0, base_micro=16_800_000, base_seconds=WEEK)


def spike(recent: int, base: SpikeFigures = BASE) -> SpikeFigures:
    return SpikeFigures(recent, base.base_micro, base.base_seconds)


def test_spike_fires_once_above_factor_times_the_average_and_re_arms_below_80_percent() -> None:
    acc = Account({"spike": {"factor": 3, "over": "1h"}})
    assert acc.step(spike=spike(300_000)) == []  # exactly 3 × 0.10: not above it
    acc.clock.advance(60)
    (fired,) = acc.step(spike=spike(300_001))
    assert (fired.rule, fired.kind, fired.value, fired.threshold) == (
        "spike",
        "fired",
        "0.30 USD",
        "0.30 USD",
    )
    assert fired.message == (
        "CrossModel Main: spend in the last hour 0.30 USD is 3.0 × the average of 0.10 USD "
        "per hour over the previous 7 days (alert above 3 ×)"
    )
    for recent in (5_000_000, 300_001, 250_000, 240_001):  # still the same episode
        acc.clock.advance(60)
        assert acc.step(spike=spike(recent)) == []
    assert acc.states["spike"].firing
    acc.clock.advance(60)
    assert acc.step(spike=spike(240_000)) == []  # 80 % of the level: re-armed, silently
    assert not acc.states["spike"].firing
    acc.clock.advance(60)
    (again,) = acc.step(spike=spike(1_000_000))
    assert again.id == "main.spike.2"
    assert "is 10.0 × the average" in again.message


def test_no_figures_leave_the_state_alone() -> None:
    acc = Account({"spike": True})
    acc.step(spike=spike(1_000_000))
    assert acc.states["spike"].firing
    acc.clock.advance(60)
    assert acc.step(spike=None) == []
    assert acc.states["spike"].firing


def test_after_a_quiet_week_any_spend_is_a_spike_and_a_quiet_window_re_arms() -> None:
    quiet = SpikeFigures(0, 0, 30 * 3600)
    acc = Account({"spike": {"notify_recovered": True}})
    assert acc.step(spike=quiet) == []
    (fired,) = acc.step(spike=spike(10_000, quiet))
    assert fired.message == (
        "CrossModel Main: spend in the last hour 0.01 USD after no spend in the previous 30 h"
    )
    assert acc.step(spike=spike(1, quiet)) == []
    (recovered,) = acc.step(spike=quiet)
    assert recovered.kind == "recovered"
    assert recovered.message == (
        "CrossModel Main (recovered): spend in the last hour is back to 0.00 USD"
    )


def test_min_spend_keeps_small_amounts_quiet() -> None:
    acc = Account({"spike": {"min_spend": "1.00"}})
    assert acc.step(spike=spike(1_000_000)) == []  # 10 × the average, but not above 1.00
    (fired,) = acc.step(spike=spike(1_000_001))
    assert fired.threshold == "1.00 USD"
    assert acc.step(spike=spike(800_001)) == []  # not yet 80 % of 1.00: same episode
    assert acc.step(spike=spike(800_000)) == []
    assert not acc.states["spike"].firing


def test_a_window_of_30_minutes_compares_with_the_average_per_30_minutes() -> None:
    acc = Account({"spike": {"factor": 2, "over": "30m"}})
    assert acc.step(spike=spike(100_000)) == []  # 2 × 0.05
    (fired,) = acc.step(spike=spike(100_001))
    assert fired.message == (
        "CrossModel Main: spend in the last 30 min 0.10 USD is 2.0 × the average of 0.05 USD "
        "per 30 min over the previous 7 days (alert above 2 ×)"
    )


def test_the_factor_set_from_home_assistant_wins() -> None:
    acc = Account({"spike": {"factor": 3}})
    assert acc.step(spike=spike(400_000), thresholds={"spike_factor": Decimal("4.5")}) == []
    (fired,) = acc.step(spike=spike(450_001), thresholds={"spike_factor": Decimal("4.5")})
    assert fired.message.endswith("(alert above 4.5 ×)")


def test_spike_config() -> None:
    on = AlertsConfig.model_validate({"spike": True}).get(SpikeRule)
    assert on is not None
    assert (on.factor, on.over, on.min_spend) == (Decimal(3), 3600.0, 0)
    assert AlertsConfig.model_validate({"spike": {"factor": 2.2}}).get(SpikeRule) == SpikeRule(
        factor=Decimal("2.2")
    )
    with pytest.raises(ValidationError, match="must be between 5m and 1d"):
        AlertsConfig.model_validate({"spike": {"over": "1m"}})
    with pytest.raises(ValidationError, match="must be between 5m and 1d"):
        AlertsConfig.model_validate({"spike": {"over": "2d"}})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        AlertsConfig.model_validate({"spike": {"factor": 0.5}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        AlertsConfig.model_validate({"spike": {"factr": 3}})


# ---- through the engine: history in SQLite, a fake clock --------------------------------------

STEP = timedelta(minutes=10)


class Feed:
    """Polls every 10 minutes with the month-to-date growing by what the test says."""

    def __init__(self, engine: AlertEngine, clock: FakeClock) -> None:
        self.engine = engine
        self.clock = clock
        self.month = 0
        self.notices: list[Any] = []

    async def run(self, until: datetime, per_poll: int) -> list[str]:
        """Poll up to `until`; the ids of the notices these polls gave."""
        got: list[str] = []
        while self.clock.now() + STEP <= until:
            self.clock.advance(STEP.total_seconds())
            self.month += per_poll
            at = self.clock.now()
            view = view_at(
                at, balance=90_000_000 - self.month, holds=0, day=0, week=0, month=self.month
            )
            _status, notices = await observe(self.engine, view, record=True)
            got += [bare(n.id) for n in notices]
            self.notices += notices
        return got


async def test_spike_is_silent_before_24_h_then_fires_once_per_episode_across_a_restart(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, {"spike": {"factor": 3, "over": "1h"}})
    clock = FakeClock(T0)
    path = tmp_path / "a.db"
    engine, store = await open_engine(path, config, clock)
    feed = Feed(engine, clock)
    await observe(
        engine, view_at(T0, balance=90_000_000, holds=0, day=0, week=0, month=0), record=True
    )

    # 0.06 an hour for 20 h, then 3.00 in one hour: 50 × the average, but only 19 h of
    # history before that hour: silent.
    assert await feed.run(T0 + timedelta(hours=20), 10_000) == []
    assert await feed.run(T0 + timedelta(hours=21), 500_000) == []
    assert "spike" not in engine.status("main").active
    # Back to 0.06 an hour until 30 h: silent (no spike, and history enough from 25 h on).
    assert await feed.run(T0 + timedelta(hours=30), 10_000) == []

    # 0.60 in the next hour: above 3 × the average (4.68 over 29 h: 0.16 an hour): one notice.
    assert await feed.run(T0 + timedelta(hours=31), 100_000) == ["main.spike.1"]
    (fired,) = feed.notices
    assert fired.message.startswith("CrossModel Main: spend in the last hour 0.")
    assert "over the previous 29 h (alert above 3 ×)" in fired.message

    # A restart in the middle of the episode sends nothing more.
    store.close()
    engine, store = await open_engine(path, config, clock)
    feed.engine = engine
    assert "spike" in engine.status("main").active
    assert await feed.run(T0 + timedelta(hours=31, minutes=30), 100_000) == []

    # A quiet hour and more re-arms it; the next spike is a new episode.
    assert await feed.run(T0 + timedelta(hours=33), 10_000) == []
    assert "spike" not in engine.status("main").active
    assert await feed.run(T0 + timedelta(hours=34), 150_000) == ["main.spike.2"]
    store.close()


async def test_the_spike_factor_is_a_home_assistant_number(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"spike": {"factor": 3}})
    engine, store = await open_engine(tmp_path / "a.db", config, FakeClock(T0))
    assert engine.thresholds("main") == {"spike_factor": Decimal(3)}
    value = engine.parse_threshold("main", "spike_factor", b"4.5")
    assert value == Decimal("4.5")
    await engine.set_threshold("main", "spike_factor", value)
    assert engine.thresholds("main") == {"spike_factor": Decimal("4.5")}
    with pytest.raises(ThresholdError, match=r"outside 1\.\.100"):
        engine.parse_threshold("main", "spike_factor", b"0.5")
    store.close()
