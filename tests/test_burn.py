"""Burn rate and runway: exact Decimal values from constructed samples, then through the
AlertEngine with a real SQLite store and a FakeClock (no sleeping)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cm_mqtt_bridge.config.settings import Config
from cm_mqtt_bridge.core.evaluate import AlertStatus
from cm_mqtt_bridge.core.forecast import Burn, burn_rate, runway_days
from cm_mqtt_bridge.core.model import Snapshot, Usage, UsageState, WindowUsage
from cm_mqtt_bridge.core.notice import Notice
from cm_mqtt_bridge.core.samples import Sample, spent_since
from cm_mqtt_bridge.core.view import AccountView
from cm_mqtt_bridge.ha.entities import entities_for
from cm_mqtt_bridge.ha.render import state_document
from cm_mqtt_bridge.service.alerting import AlertAccount, AlertEngine
from cm_mqtt_bridge.store.db import AsyncStore, Store, StoreError
from tests.fakes import FakeClock
from tests.helpers import bare

KEY = "cm-test-0123456789abcdefSECRET"


def sample(
    at: datetime,
    *,
    total: int = 0,
    week: int | None = 0,
    month: int | None = 0,
    balance: int = 10_000_000,
) -> Sample:
    return Sample(at, balance, 0, 0, week, month, total)


def dt(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# ---- burn_rate -------------------------------------------------------------------------------


def test_history_7d_once_a_sample_at_now_minus_7_days_exists() -> None:
    now = dt(2026, 3, 20, 12)
    anchor = sample(now - timedelta(days=7), total=2_000_000)
    latest = sample(now, total=9_000_000)
    assert burn_rate(latest, anchor, now) == Burn(Decimal(1_000_000), "history_7d")


def test_history_7d_spans_the_real_distance_to_an_older_anchor() -> None:
    # After compaction the last sample at or before now - 7 d may be hours older.
    now = dt(2026, 3, 20, 12)
    anchor = sample(now - timedelta(days=7, hours=6), total=500_000)
    latest = sample(now, total=500_000 + 7_250_000)
    assert burn_rate(latest, anchor, now) == Burn(Decimal(1_000_000), "history_7d")


def test_history_7d_value_is_an_exact_decimal_quotient() -> None:
    now = dt(2026, 3, 20, 12)
    anchor = sample(now - timedelta(days=7), total=0)
    latest = sample(now, total=1_000_000)
    burn = burn_rate(latest, anchor, now)
    assert burn is not None
    assert burn.source == "history_7d"
    assert burn.per_day_micro == Decimal(1_000_000) / Decimal(7)
    assert str(burn.per_day_micro) == "142857.1428571428571428571429"


def test_anchor_one_second_short_of_7_days_is_not_history() -> None:
    now = dt(2026, 3, 4, 12)  # Wednesday: month-to-date (3.5 d) is longer than the week (2.5 d)
    anchor = sample(now - timedelta(days=7) + timedelta(seconds=1), total=0)
    latest = sample(now, total=99_000_000, week=5_000_000, month=7_000_000)
    assert burn_rate(latest, anchor, now) == Burn(Decimal(2_000_000), "month_to_date")


def test_no_anchor_falls_back_to_month_to_date_when_the_month_is_longer() -> None:
    now = dt(2026, 3, 4, 12)
    latest = sample(now, week=5_000_000, month=7_000_000)
    assert burn_rate(latest, None, now) == Burn(Decimal(2_000_000), "month_to_date")


def test_week_to_date_is_chosen_when_the_week_started_before_the_month() -> None:
    now = dt(2026, 4, 2, 12)  # Thursday; the ISO week began Monday 30 March
    latest = sample(now, week=7_000_000, month=900_000)
    assert burn_rate(latest, None, now) == Burn(Decimal(2_000_000), "week_to_date")


def test_fallback_uses_the_latest_sample_time_not_now() -> None:
    latest = sample(dt(2026, 3, 4, 12), week=0, month=3_500_000)
    assert burn_rate(latest, None, dt(2026, 3, 4, 23)) == Burn(Decimal(1_000_000), "month_to_date")


def test_latest_at_the_anchor_is_not_a_span() -> None:
    now = dt(2026, 3, 20, 12)
    same = sample(now - timedelta(days=7), total=5, month=19_500_000)  # Fri 13 March 12:00
    burn = burn_rate(same, same, now)
    assert burn == Burn(Decimal(19_500_000) / Decimal("12.5"), "month_to_date")


@pytest.mark.parametrize(
    ("latest", "expected"),
    [
        (None, None),
        (sample(dt(2026, 3, 4, 12), month=None), None),  # month-to-date chosen but unknown
        (sample(dt(2026, 6, 1, 0), week=0, month=0), None),  # Monday the 1st, 00:00: no time
    ],
)
def test_no_burn_rate_without_usable_data(latest: Sample | None, expected: Burn | None) -> None:
    assert burn_rate(latest, None, dt(2026, 6, 1, 0)) == expected


def test_zero_spend_is_a_zero_rate() -> None:
    now = dt(2026, 3, 20, 12)
    burn = burn_rate(sample(now, total=5), sample(now - timedelta(days=8), total=5), now)
    assert burn == Burn(Decimal(0), "history_7d")
    assert runway_days(1_000_000, burn) is None


# ---- runway ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "per_day", "expected"),
    [
        (3_000_000, 1_500_000, Decimal(2)),
        (1_000_000, 3_000_000, Decimal(1) / Decimal(3)),
        (19_000_000, 1_500_000, Decimal(19_000_000) / Decimal(1_500_000)),
        (0, 1_000_000, Decimal(0)),
        (-250_000, 1_000_000, Decimal(0)),
        (5_000_000, 0, None),
    ],
)
def test_runway_days(available: int, per_day: int, expected: Decimal | None) -> None:
    assert runway_days(available, Burn(Decimal(per_day), "history_7d")) == expected


def test_no_runway_without_a_burn_rate() -> None:
    assert runway_days(5_000_000, None) is None


# ---- spent_since -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prev", "at", "month", "expected"),
    [
        (sample(dt(2026, 3, 10, 12), month=5_000_000), dt(2026, 3, 10, 13), 5_250_000, 250_000),
        # A correction that lowers the counter is not negative spend.
        (sample(dt(2026, 3, 10, 12), month=5_000_000), dt(2026, 3, 10, 13), 4_900_000, 0),
        # Month rollover: the counter restarted; its value is the spend since the 1st.
        (sample(dt(2026, 3, 31, 23), month=30_000_000), dt(2026, 4, 1, 1), 300_000, 300_000),
        (sample(dt(2026, 12, 31, 23), month=9_000_000), dt(2027, 1, 1, 0, 5), 10, 10),
        # Same month number a year later is still a rollover.
        (sample(dt(2026, 3, 5), month=9_000_000), dt(2027, 3, 6), 1_000_000, 1_000_000),
        (None, dt(2026, 3, 10), 5_000_000, 0),
        (sample(dt(2026, 3, 10, 12), month=None), dt(2026, 3, 10, 13), 5_000_000, 0),
        (sample(dt(2026, 3, 10, 12), month=1), dt(2026, 3, 10, 13), None, 0),
    ],
)
def test_spent_since(prev: Sample | None, at: datetime, month: int | None, expected: int) -> None:
    assert spent_since(prev, at, month) == expected


# ---- through the engine, with a real store and a fake clock ----------------------------------


def make_config(tmp_path: Path, alerts: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "accounts": [
                {"id": "main", "name": "Main", "api_key": KEY, "api_url": "http://127.0.0.1:9/v1"}
            ],
            "data_dir": str(tmp_path),
            "alerts": alerts,
        }
    )


async def open_engine(
    path: Path, config: Config, clock: FakeClock
) -> tuple[AlertEngine, AsyncStore]:
    store = AsyncStore(Store(path))
    accounts = [AlertAccount(a.id, a.name, a.alerts) for a in config.accounts]
    engine = AlertEngine(store, accounts, clock, ["mqtt"])
    await engine.load()
    return engine, store


async def observe(
    engine: AlertEngine, view: AccountView, *, record: bool
) -> tuple[AlertStatus, list[Notice]]:
    # A good poll just now.
    return await engine.observe("main", view, engine.clock.monotonic(), record=record)


async def samples(store: AsyncStore, account: str | None = None) -> list[Sample]:
    return await store.call(lambda s: [sample for _, sample in s.samples(account)])


def window(cost: int) -> WindowUsage:
    return WindowUsage(cost, 0, 0, 0, 0, None)


def view_at(
    at: datetime, *, balance: int, holds: int, day: int, week: int, month: int
) -> AccountView:
    usage = Usage(window(day), window(week), window(month))
    snap = Snapshot("main", at, "USD", balance, holds, usage, UsageState.OK)
    return AccountView(
        snapshot=snap,
        usage=usage,
        usage_at=at,
        usage_state=UsageState.OK,
        api_status="ok",
        connected=True,
    )


START = dt(2026, 3, 10, 12)  # Tuesday: 9.5 days into March, 1.5 days into the ISO week
PER_DAY = 1_500_000


def day_view(k: int) -> AccountView:
    """Day k of a steady 1.50/day spend, after a quiet start of the month (1.90 in 9.5 d)."""
    return view_at(
        START + timedelta(days=k),
        balance=30_000_000 - PER_DAY * k,
        holds=500_000,
        day=750_000,
        week=0,
        month=1_900_000 + PER_DAY * k,
    )


async def test_engine_burn_and_runway_over_simulated_days(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"runway": {"below_days": 14, "margin_days": 1}})
    clock = FakeClock(START)
    engine, store = await open_engine(tmp_path / "a.db", config, clock)

    async def day(k: int) -> tuple[AlertStatus, list[Notice]]:
        clock.advance((START + timedelta(days=k) - clock.now()).total_seconds())
        return await observe(engine, day_view(k), record=True)

    status, notices = await day(0)
    assert status.burn == Burn(Decimal(200_000), "month_to_date")  # 1.90 / 9.5 days
    assert status.runway_days == Decimal("147.5")  # 29.50 available
    assert notices == []

    status, _ = await day(1)
    rate = Decimal(3_400_000) / Decimal("10.5")
    assert status.burn == Burn(rate, "month_to_date")
    assert status.runway_days == Decimal(28_000_000) / rate

    for k in range(2, 7):
        status, notices = await day(k)
        assert status.burn is not None
        assert status.burn.source == "month_to_date", k
        assert notices == []
    assert status.burn == Burn(Decimal(10_900_000) / Decimal("15.5"), "month_to_date")

    # Seven days recorded: the trailing 7x24 h rate takes over, and the runway alert fires.
    status, notices = await day(7)
    assert status.burn == Burn(Decimal(PER_DAY), "history_7d")
    assert status.runway_days == Decimal(19_000_000) / Decimal(PER_DAY)
    assert status.active == {"runway": START + timedelta(days=7)}
    assert [(bare(n.id), n.value, n.threshold, n.message) for n in notices] == [
        (
            "main.runway.1",
            "12.7",
            "14.0",
            "CrossModel Main: about 12.7 days of credit left at 1.50 USD/day",
        )
    ]
    entities = entities_for(config.accounts[0].alerts.rules())
    doc = state_document(replace(day_view(7), alerts=status), entities)
    assert (doc["burn_rate"], doc["burn_rate_source"], doc["runway_days"]) == (
        "1.5",
        "history_7d",
        "13",
    )
    assert doc["alert_runway"] is True
    assert doc["runway_below_days"] == "14"

    totals = [s.spent_total_micro for s in await samples(store, "main")]
    assert totals == [PER_DAY * k for k in range(8)]
    store.close()


async def test_engine_continues_spent_total_across_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"runway": {"below_days": 1}})
    clock = FakeClock(START)
    path = tmp_path / "a.db"
    engine, store = await open_engine(path, config, clock)
    for k in range(4):
        clock.advance((START + timedelta(days=k) - clock.now()).total_seconds())
        await observe(engine, day_view(k), record=True)
    store.close()

    engine, store = await open_engine(path, config, clock)
    for k in range(4, 9):
        clock.advance((START + timedelta(days=k) - clock.now()).total_seconds())
        status, _ = await observe(engine, day_view(k), record=True)
    assert [s.spent_total_micro for s in await samples(store, "main")] == [
        PER_DAY * k for k in range(9)
    ]
    assert status.burn == Burn(Decimal(PER_DAY), "history_7d")
    store.close()


async def test_engine_month_rollover_keeps_the_cumulative_spend(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"runway": {"below_days": 1}})
    clock = FakeClock(dt(2026, 3, 31, 12))
    engine, store = await open_engine(tmp_path / "a.db", config, clock)
    points = [
        (dt(2026, 3, 31, 12), 30_000_000),
        (dt(2026, 3, 31, 18), 30_400_000),
        (dt(2026, 4, 1, 6), 250_000),  # new month: the counter restarted
        (dt(2026, 4, 1, 12), 600_000),
    ]
    for at, month in points:
        clock.advance((at - clock.now()).total_seconds())
        await observe(
            engine,
            view_at(at, balance=5_000_000, holds=0, day=0, week=0, month=month),
            record=True,
        )
    assert [s.spent_total_micro for s in await samples(store, "main")] == [
        0,
        400_000,
        650_000,
        1_000_000,
    ]
    store.close()


async def test_engine_records_only_full_polls_with_fresh_usage(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"runway": {"below_days": 1}})
    clock = FakeClock(START)
    engine, store = await open_engine(tmp_path / "a.db", config, clock)
    full = day_view(0)
    await observe(engine, full, record=False)
    assert await samples(store) == []
    # Usage from an earlier poll (this poll's /usage failed): no sample.
    assert full.snapshot is not None
    later = replace(
        full,
        snapshot=replace(full.snapshot, fetched_at=START + timedelta(minutes=5)),
        usage_state=UsageState.FAILED,
    )
    assert not later.usage_current
    await observe(engine, later, record=True)
    assert await samples(store) == []
    await observe(engine, full, record=True)
    assert [s.at for s in await samples(store)] == [START]
    store.close()


def test_a_cached_counter_across_the_month_boundary_counts_only_its_growth() -> None:
    # At 00:00:30 on 1 April /usage may still hold March's total: not 30.00 of new spend.
    march = Sample(datetime(2026, 3, 31, 23, 59, tzinfo=UTC), 10_000_000, 0, 0, 0, 30_000_000)
    cached = datetime(2026, 4, 1, 0, 0, 30, tzinfo=UTC)
    assert spent_since(march, cached, 30_000_000) == 0
    assert spent_since(march, cached, 30_100_000) == 100_000
    reset = datetime(2026, 4, 1, 0, 2, tzinfo=UTC)
    assert spent_since(march, reset, 40_000) == 40_000


async def test_a_failed_commit_loses_neither_the_sample_nor_the_top_up(tmp_path: Path) -> None:
    # The history sample is written in the same transaction as the rule state and outbox:
    # when that fails, the top-up it would have shown is found again on the next poll.
    config = make_config(tmp_path, {"topup": True})
    clock = FakeClock(START)
    path = tmp_path / "a.db"
    engine, store = await open_engine(path, config, clock)
    await observe(
        engine,
        view_at(START, balance=5_000_000, holds=0, day=0, week=0, month=0),
        record=True,
    )
    clock.advance(60)
    later = START + timedelta(seconds=60)
    topped = view_at(later, balance=25_000_000, holds=0, day=0, week=0, month=0)
    side = sqlite3.connect(path)
    side.execute(
        "CREATE TRIGGER full BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    side.commit()
    # The store's thread turns the sqlite3.IntegrityError into a StoreError.
    with pytest.raises(StoreError, match="disk full"):
        await observe(engine, topped, record=True)
    assert side.execute("SELECT COUNT(*) FROM samples").fetchone() == (1,)
    side.execute("DROP TRIGGER full")
    side.commit()
    side.close()
    _status, notices = await observe(engine, topped, record=True)
    assert [(n.rule, n.value) for n in notices] == [("topup", "20.00 USD")]
    store.close()
