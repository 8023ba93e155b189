"""Lifetime spend (the Total spend sensor): the pure counter, then through the AlertEngine with a
real SQLite store and a FakeClock (rollovers, restarts, a failed commit, an old database), then
end to end on real parts (the stand-in API, Mosquitto, SQLite on disk) with an injected clock."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cm_mqtt_bridge.core.lifetime import SpendTotal, advance
from cm_mqtt_bridge.core.view import AccountView
from cm_mqtt_bridge.ha.entities import entities_for
from cm_mqtt_bridge.ha.render import state_document
from cm_mqtt_bridge.service.bridge import Bridge
from cm_mqtt_bridge.store.db import DB_NAME, Store, StoreError
from tests import test_clock_steps as clock_steps
from tests.fakes import FakeClock, ManualClock
from tests.helpers import db_rows
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import make_config, recording
from tests.standin import CrossModelStandin
from tests.test_burn import make_config as engine_config
from tests.test_burn import observe, open_engine, view_at


def dt(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


MARCH = dt(2026, 3, 1)
APRIL = dt(2026, 4, 1)

# ---- the pure counter ------------------------------------------------------------------------


def test_it_starts_at_the_month_to_date_of_the_first_poll() -> None:
    assert advance(None, dt(2026, 3, 10, 12), 5_370_000) == SpendTotal(5_370_000, MARCH, 5_370_000)


def test_growth_of_the_month_to_date_is_added_exactly() -> None:
    start = SpendTotal(5_370_000, MARCH, 5_370_000)
    assert advance(start, dt(2026, 3, 10, 13), 6_620_000) == SpendTotal(6_620_000, MARCH, 6_620_000)
    assert advance(start, dt(2026, 3, 10, 13), 5_370_001) == SpendTotal(5_370_001, MARCH, 5_370_001)
    assert advance(start, dt(2026, 3, 10, 13), 5_370_000) is None  # nothing moved


def test_a_lower_month_to_date_takes_nothing_off_and_counts_again_above_the_old_high() -> None:
    # A refund or correction lowers the month-to-date from 10.00 to 8.00: the total stays. Spend
    # after it counts once the month-to-date passes 10.00 again, so the month adds its highest
    # figure, and a cached older answer (10.00 again) is never counted twice.
    peak = SpendTotal(40_000_000, MARCH, 10_000_000)
    assert advance(peak, dt(2026, 3, 20), 8_000_000) is None
    assert advance(peak, dt(2026, 3, 20, 1), 9_500_000) is None
    assert advance(peak, dt(2026, 3, 20, 2), 10_000_000) is None
    assert advance(peak, dt(2026, 3, 20, 3), 10_250_000) == SpendTotal(
        40_250_000, MARCH, 10_250_000
    )


def test_a_new_month_adds_its_month_to_date_whole() -> None:
    march = SpendTotal(40_000_000, MARCH, 30_400_000)
    # 2 minutes into April (past the cache grace): 0.25 spent in April so far.
    assert advance(march, dt(2026, 4, 1, 0, 2), 250_000) == SpendTotal(40_250_000, APRIL, 250_000)
    # Even a new month-to-date above the old month's (the bridge was off for weeks) is new spend.
    assert advance(march, dt(2026, 4, 20), 31_000_000) == SpendTotal(71_000_000, APRIL, 31_000_000)
    # And across a year.
    december = SpendTotal(7, dt(2026, 12, 1), 7)
    assert advance(december, dt(2027, 1, 3), 5) == SpendTotal(12, dt(2027, 1, 1), 5)


def test_just_after_a_month_starts_a_figure_is_not_trusted() -> None:
    # The API caches for up to a minute: at 00:00:30 the figure may be March's total.
    march = SpendTotal(40_000_000, MARCH, 30_400_000)
    assert advance(march, dt(2026, 4, 1, 0, 0, 30), 30_400_000) is None
    assert advance(march, dt(2026, 4, 1, 0, 1, 29), 100) is None
    assert advance(None, dt(2026, 4, 1, 0, 0, 30), 30_400_000) is None  # not even to start
    assert advance(march, dt(2026, 4, 1, 0, 1, 30), 100) == SpendTotal(40_000_100, APRIL, 100)


def test_day_and_week_rollovers_inside_a_month_change_nothing() -> None:
    # Sunday 8 March 23:59 -> Monday 9 March 00:03: a new day and ISO week, the same month.
    total = SpendTotal(1_000_000, MARCH, 1_000_000)
    assert advance(total, dt(2026, 3, 9, 0, 0, 30), 1_000_000) is None
    assert advance(total, dt(2026, 3, 9, 0, 0, 30), 1_200_000) == SpendTotal(
        1_200_000, MARCH, 1_200_000
    )


def test_a_figure_from_before_the_counted_month_is_ignored() -> None:
    # The wall clock stepped back into March after April was counted.
    april = SpendTotal(40_250_000, APRIL, 250_000)
    assert advance(april, dt(2026, 3, 31, 23), 30_500_000) is None


# ---- through the engine, with a real store and a fake clock ----------------------------------


def poll_view(at: datetime, month: int, *, day: int = 0, week: int = 0) -> AccountView:
    return view_at(at, balance=50_000_000 - month, holds=0, day=day, week=week, month=month)


async def poll(engine: Any, clock: FakeClock, at: datetime, month: int) -> int | None:
    clock.advance((at - clock.now()).total_seconds())
    status, _ = await observe(engine, poll_view(at, month), record=True)
    return status.spend_total_micro


async def test_engine_total_over_day_week_and_month_rollovers_and_restarts(
    tmp_path: Path,
) -> None:
    config = engine_config(tmp_path, {})  # no alert rule: the total is kept anyway
    clock = FakeClock(dt(2026, 3, 28, 12))  # a Saturday
    path = tmp_path / "a.db"
    engine, store = await open_engine(path, config, clock)
    assert engine.status("main").spend_total_micro is None  # no poll yet: unknown

    assert await poll(engine, clock, dt(2026, 3, 28, 12), 29_000_000) == 29_000_000
    assert await poll(engine, clock, dt(2026, 3, 28, 23, 59), 29_100_000) == 29_100_000
    # A new UTC day, then a new ISO week (Monday 30 March): the month counter runs on.
    assert await poll(engine, clock, dt(2026, 3, 29, 0, 5), 29_350_000) == 29_350_000
    assert await poll(engine, clock, dt(2026, 3, 30, 0, 5), 30_000_000) == 30_000_000
    store.close()

    # A restart: the total is read back, not started again.
    engine, store = await open_engine(path, config, clock)
    assert engine.status("main").spend_total_micro == 30_000_000
    assert await poll(engine, clock, dt(2026, 3, 31, 23, 58), 30_400_000) == 30_400_000
    # A new month: the cached March figure just after midnight is not counted; April's is added.
    assert await poll(engine, clock, dt(2026, 4, 1, 0, 0, 40), 30_400_000) == 30_400_000
    assert await poll(engine, clock, dt(2026, 4, 1, 0, 3), 250_000) == 30_650_000
    assert await poll(engine, clock, dt(2026, 4, 1, 6), 1_500_000) == 31_900_000
    store.close()

    # Another restart, in the new month: it keeps growing from the stored April figure.
    engine, store = await open_engine(path, config, clock)
    assert await poll(engine, clock, dt(2026, 4, 2), 2_750_000) == 33_150_000
    status = engine.status("main")
    doc = state_document(
        replace(poll_view(dt(2026, 4, 2), 2_750_000), alerts=status), entities_for(())
    )
    assert doc["total_spend"] == "33.15"
    assert "reset_total_spend" not in doc
    store.close()
    rows = sqlite3.connect(path).execute("SELECT * FROM spend_total").fetchall()
    assert rows == [("main", 33_150_000, APRIL.timestamp(), 2_750_000)]


async def test_a_refund_leaves_the_total_as_it_is(tmp_path: Path) -> None:
    config = engine_config(tmp_path, {})
    clock = FakeClock(dt(2026, 3, 10))
    engine, store = await open_engine(tmp_path / "a.db", config, clock)
    assert await poll(engine, clock, dt(2026, 3, 10), 10_000_000) == 10_000_000
    assert await poll(engine, clock, dt(2026, 3, 10, 1), 8_000_000) == 10_000_000
    assert await poll(engine, clock, dt(2026, 3, 10, 2), 10_500_000) == 10_500_000
    store.close()


async def test_a_failed_commit_counts_the_figure_once_on_the_retry(tmp_path: Path) -> None:
    config = engine_config(tmp_path, {})
    clock = FakeClock(dt(2026, 3, 10))
    path = tmp_path / "a.db"
    engine, store = await open_engine(path, config, clock)
    assert await poll(engine, clock, dt(2026, 3, 10), 1_000_000) == 1_000_000
    side = sqlite3.connect(path)
    side.execute(
        "CREATE TRIGGER full BEFORE UPDATE ON spend_total "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    side.execute(
        "CREATE TRIGGER full2 BEFORE INSERT ON spend_total "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    side.commit()
    clock.advance(60)
    at = dt(2026, 3, 10, 0, 1)
    with pytest.raises(StoreError, match="disk full"):
        await observe(engine, poll_view(at, 2_250_000), record=True)
    assert engine.status("main").spend_total_micro == 1_000_000
    side.execute("DROP TRIGGER full")
    side.execute("DROP TRIGGER full2")
    side.commit()
    side.close()
    status, _ = await observe(engine, poll_view(at, 2_250_000), record=True)
    assert status.spend_total_micro == 2_250_000
    status, _ = await observe(engine, poll_view(at, 2_250_000), record=True)
    assert status.spend_total_micro == 2_250_000
    store.close()


# The schema before lifetime spend (and before permanently failed outbox items).
OLD_SCHEMA = """
CREATE TABLE rule_state (
    account TEXT NOT NULL, rule TEXT NOT NULL, firing INTEGER NOT NULL, since REAL,
    last_notified REAL, window TEXT, seq INTEGER NOT NULL, PRIMARY KEY (account, rule));
CREATE TABLE overrides (
    account TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, config_value TEXT,
    PRIMARY KEY (account, key));
CREATE TABLE outbox (
    id TEXT NOT NULL, channel TEXT NOT NULL, account TEXT NOT NULL, payload TEXT NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL,
    delivered REAL, last_error TEXT, PRIMARY KEY (id, channel));
CREATE TABLE samples (
    account TEXT NOT NULL, at REAL NOT NULL, balance INTEGER NOT NULL, holds INTEGER NOT NULL,
    spend_day INTEGER, spend_week INTEGER, spend_month INTEGER, spent_total INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('install_id', 'abcdef0123');
INSERT INTO rule_state VALUES ('main', 'low_balance', 1, 1773100000, 1773100000, NULL, 4);
INSERT INTO samples VALUES ('main', 1773100000, 9000000, 0, 0, 0, 4000000, 123);
"""


async def test_a_database_from_before_lifetime_spend_gets_the_table_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.close()
    config = engine_config(tmp_path, {"low_balance": {"below": "5.00"}})
    clock = FakeClock(dt(2026, 3, 10, 12))
    engine, store = await open_engine(path, config, clock)
    assert store.store.install_id == "abcdef0123"
    status = engine.status("main")
    assert "low_balance" in status.active  # the old alert state is kept
    assert status.spend_total_micro is None  # starts at the next poll's month-to-date
    assert await poll(engine, clock, dt(2026, 3, 10, 12), 4_500_000) == 4_500_000
    store.close()
    rows = sqlite3.connect(path).execute("SELECT account, total FROM spend_total").fetchall()
    assert rows == [("main", 4_500_000)]


@pytest.mark.parametrize(
    "row",
    [
        ("main", "12 USD", 1772323200.0, 5),  # total as text
        ("main", 12, 1772323200.0, 50),  # month above the total
        ("main", 12, "March", 5),
        ("main", -3, 1772323200.0, -5),
    ],
)
def test_a_stored_total_that_is_not_as_written_starts_again_with_a_warning(
    tmp_path: Path, row: tuple[Any, ...], caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "a.db")
    store._db.execute("INSERT INTO spend_total VALUES (?, ?, ?, ?)", row)
    with caplog.at_level(logging.WARNING):
        assert store.spend_total("main") is None
    assert "main: the stored lifetime spend is not as the bridge wrote it" in caplog.text
    assert store.spend_total("main") is None
    store.close()


# ---- end to end: stand-in API, Mosquitto, SQLite on disk, injected clock ---------------------

BASE = "cm_mqtt_bridge/main"
DEVICE = "homeassistant/device/cm_main/config"


@contextlib.asynccontextmanager
async def running(
    standin: CrossModelStandin, mosquitto: Mosquitto, data: Path, clock: ManualClock
) -> AsyncIterator[Bridge]:
    cfg = make_config(standin.url, mosquitto.port, data_dir=str(data))
    async with clock_steps.running(cfg, clock) as bridge:
        yield bridge


def set_month(standin: CrossModelStandin, micro: int) -> None:
    standin.usage["monthly"]["cost_micro"] = micro


async def total_on_the_broker(rec: Any, expected: str) -> None:
    await rec.wait_for(
        lambda r: any(
            m.topic == f"{BASE}/state" and json.loads(m.payload).get("total_spend") == expected
            for m in r.messages
        ),
        10,
        f"total_spend {expected} in the state document",
    )
    await rec.wait_for(
        lambda r: any(m.payload == expected.encode() for m in r.on(f"{BASE}/total_spend")),
        10,
        f"{BASE}/total_spend = {expected}",
    )


async def test_total_spend_end_to_end_through_a_month_rollover_and_a_restart(
    standin: CrossModelStandin, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    clock = ManualClock(dt(2026, 3, 31, 22))
    set_month(standin, 5_370_000)
    async with recording(mosquitto.port) as rec, running(standin, mosquitto, data, clock) as bridge:
        acc = bridge.accounts["main"]
        await acc.poll_once()
        # Discovery announces it: monetary, total, no last_reset.
        device = await rec.wait_for(
            lambda r: next(
                (json.loads(m.payload) for m in r.on(DEVICE) if b"total_spend" in m.payload),
                None,
            ),
            10,
            "discovery with total_spend",
        )
        sensor = device["cmps"]["total_spend"]
        assert (sensor["p"], sensor["device_class"], sensor["state_class"]) == (
            "sensor",
            "monetary",
            "total",
        )
        assert sensor["unit_of_measurement"] == "USD"
        assert not any("last_reset" in key for key in sensor)
        await total_on_the_broker(rec, "5.37")  # starts at the first poll's month-to-date

        # Month spend +1.25: Total spend +1.25.
        set_month(standin, 6_620_000)
        clock.advance(60)
        await acc.poll_once()
        await total_on_the_broker(rec, "6.62")

        # The month rolls over; April's month-to-date is added whole.
        set_month(standin, 400_000)
        clock.advance((dt(2026, 4, 1, 0, 5) - clock.now()).total_seconds())
        await acc.poll_once()
        await total_on_the_broker(rec, "7.02")

    # A restart on the same data directory: the total carries on.
    async with recording(mosquitto.port) as rec, running(standin, mosquitto, data, clock) as bridge:
        acc = bridge.accounts["main"]
        set_month(standin, 1_650_000)
        clock.advance(3600)
        await acc.poll_once()
        await total_on_the_broker(rec, "8.27")
    assert db_rows(data, "SELECT account, total FROM spend_total") == [("main", 8_270_000)]
    assert (data / DB_NAME).exists()
