"""The SQLite store on a temporary file: atomic commit, reopen, outbox, compaction, overrides."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest

from cm_mqtt_bridge.config.settings import Config
from cm_mqtt_bridge.core.evaluate import RuleState
from cm_mqtt_bridge.core.forecast import WINDOW, Burn, burn_rate
from cm_mqtt_bridge.core.notice import Notice
from cm_mqtt_bridge.core.samples import Sample
from cm_mqtt_bridge.service.alerting import AlertAccount, AlertEngine, ThresholdError
from cm_mqtt_bridge.store.db import AsyncStore, OutboxItem, Store, StoreError
from tests.fakes import FakeClock

KEY = "cm-test-0123456789abcdefSECRET"
T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bridge.db"


@pytest.fixture
def store(path: Path) -> Any:
    s = Store(path)
    yield s
    s.close()


def notice(rule: str = "low_balance", seq: int = 1, at: datetime = T0, **kw: Any) -> Notice:
    fields: dict[str, Any] = {
        "id": f"main.{rule}.{seq}",
        "account_id": "main",
        "rule": rule,
        "kind": "fired",
        "title": "CrossModel Main",
        "message": f"CrossModel Main: {rule} {seq}",
        "value": "4.00 USD",
        "threshold": "5.00 USD",
        "at": at,
        "priority": "high",
        "tags": ("warning",),
    }
    fields.update(kw)
    return Notice(**fields)


def firing(seq: int = 1, at: datetime = T0) -> RuleState:
    return RuleState(firing=True, since=at, last_notified=at, window=None, seq=seq)


def raw(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file through a separate read-only connection (what another process sees)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


# ---- rule state + outbox ---------------------------------------------------------------------


def test_commit_writes_state_and_outbox_together(store: Store, path: Path) -> None:
    store.commit("main", {"low_balance": firing()}, [notice()], ["mqtt", "ntfy"], T0)
    assert store.rule_states("main") == {"low_balance": firing()}
    assert store.rule_states("other") == {}
    assert raw(path, "SELECT id, channel, account, attempts, delivered FROM outbox ORDER BY 2") == [
        ("main.low_balance.1", "mqtt", "main", 0, None),
        ("main.low_balance.1", "ntfy", "main", 0, None),
    ]
    (item,) = store.due("ntfy", T0)
    assert item == OutboxItem(
        id="main.low_balance.1", channel="ntfy", account="main", notice=notice(), attempts=0
    )
    # The stored form, which MQTT publishes (in this key order) and the webhook posts.
    (stored,) = raw(path, "SELECT payload FROM outbox WHERE channel = 'ntfy'")
    doc = json.loads(stored[0])
    assert doc == {**notice().to_json(), "at": "2026-03-04T12:00:00+00:00", "tags": ["warning"]}
    assert " ".join(doc) == (
        "id account event_type rule kind title message value threshold at priority tags"
    )


def test_commit_is_all_or_nothing(store: Store, path: Path) -> None:
    store.commit("main", {"auth_failed": firing()}, [notice("auth_failed")], ["mqtt"], T0)
    # A notice that cannot be serialised fails the commit after the state row was written
    # inside the transaction: neither the state nor any outbox row may survive.
    bad = notice(value=cast(Any, object()))
    with pytest.raises(TypeError):
        store.commit("main", {"low_balance": firing()}, [bad], ["mqtt"], T0)
    assert store.rule_states("main") == {"auth_failed": firing()}
    assert raw(path, "SELECT id FROM outbox") == [("main.auth_failed.1",)]
    assert raw(path, "SELECT rule FROM rule_state") == [("auth_failed",)]
    # The connection is usable afterwards (the transaction was rolled back, not left open).
    store.commit("main", {"low_balance": firing()}, [notice()], ["mqtt"], T0)
    assert set(store.rule_states("main")) == {"auth_failed", "low_balance"}


def test_committed_state_is_visible_to_another_connection_at_once(path: Path) -> None:
    # What a kill -9 right after commit leaves behind: no close(), no checkpoint.
    writer = Store(path)
    writer.commit("main", {"low_balance": firing(3)}, [notice(seq=3)], ["ntfy"], T0)
    other = Store(path)
    try:
        assert other.rule_states("main") == {"low_balance": firing(3)}
        assert [i.id for i in other.due("ntfy", T0)] == ["main.low_balance.3"]
    finally:
        other.close()
        writer.close()


def test_reopen_after_close_keeps_everything(path: Path) -> None:
    s = Store(path)
    s.commit("main", {"low_balance": firing(2, T0)}, [notice(seq=2)], ["mqtt", "ntfy"], T0)
    (item,) = s.due("mqtt", T0)
    s.delivered(item, T0 + timedelta(seconds=1))
    s.set_override("main", "low_balance_below", "3.5", "5")
    s.add_sample("main", Sample(T0, 1, 2, 3, 4, 5, 6))
    s.close()

    s = Store(path)
    try:
        assert s.rule_states("main") == {"low_balance": firing(2, T0)}
        assert s.due("mqtt", T0 + timedelta(days=1)) == []
        assert [i.id for i in s.due("ntfy", T0)] == ["main.low_balance.2"]
        assert s.overrides("main") == {"low_balance_below": ("3.5", "5")}
        assert s.latest_sample("main") == Sample(T0, 1, 2, 3, 4, 5, 6)
    finally:
        s.close()


def test_the_same_notice_is_never_queued_twice(store: Store) -> None:
    store.commit("main", {"low_balance": firing()}, [notice()], ["ntfy"], T0)
    (item,) = store.due("ntfy", T0)
    store.delivered(item, T0)
    store.commit("main", {"low_balance": firing()}, [notice()], ["ntfy"], T0 + timedelta(hours=1))
    assert store.due("ntfy", T0 + timedelta(hours=2)) == []
    assert store.pending() == 0


def test_nothing_to_commit_writes_nothing(store: Store, path: Path) -> None:
    store.commit("main", {}, [], ["mqtt"], T0)
    assert raw(path, "SELECT COUNT(*) FROM rule_state") == [(0,)]
    assert raw(path, "SELECT COUNT(*) FROM outbox") == [(0,)]


# ---- outbox delivery bookkeeping -------------------------------------------------------------


def test_due_delivered_failed_next_due(store: Store, path: Path) -> None:
    store.commit("main", {"low_balance": firing()}, [notice()], ["mqtt", "ntfy"], T0)
    later = T0 + timedelta(minutes=1)
    store.commit(
        "main",
        {"auth_failed": firing(1, later)},
        [notice("auth_failed", at=later)],
        ["mqtt", "ntfy"],
        later,
    )
    assert store.due("ntfy", T0 - timedelta(seconds=1)) == []
    assert [i.id for i in store.due("ntfy", T0)] == ["main.low_balance.1"]
    assert [i.id for i in store.due("ntfy", later)] == ["main.low_balance.1", "main.auth_failed.1"]
    assert [i.id for i in store.due("ntfy", later, limit=1)] == ["main.low_balance.1"]
    assert store.next_due("ntfy") == T0
    assert (store.pending(), store.pending("ntfy"), store.pending("webhook")) == (4, 2, 0)

    first, second = store.due("ntfy", later)
    store.delivered(second, later)
    retry_at = later + timedelta(seconds=5)
    store.failed(first, retry_at, "HTTP 503: " + "x" * 600)
    assert store.due("ntfy", later) == []
    assert store.next_due("ntfy") == retry_at
    (again,) = store.due("ntfy", retry_at)
    assert (again.id, again.attempts) == ("main.low_balance.1", 1)
    assert (store.pending("ntfy"), store.pending("mqtt")) == (1, 2)
    (row,) = raw(
        path,
        "SELECT attempts, delivered, last_error FROM outbox "
        "WHERE channel = 'ntfy' AND id = 'main.low_balance.1'",
    )
    assert row[:2] == (1, None)
    assert row[2] == ("HTTP 503: " + "x" * 600)[:500]

    store.delivered(again, retry_at)
    assert store.next_due("ntfy") is None
    assert store.due("ntfy", retry_at + timedelta(days=1)) == []
    (row,) = raw(
        path,
        "SELECT attempts, delivered, last_error FROM outbox "
        "WHERE channel = 'ntfy' AND id = 'main.low_balance.1'",
    )
    assert row == (2, retry_at.timestamp(), None)
    assert store.next_due("mqtt") == T0


# ---- history compaction ----------------------------------------------------------------------

NOW = datetime(2026, 3, 31, 0, 0, tzinfo=UTC)
STEP = timedelta(minutes=20)


def fill(store: Store, days: int = 40) -> dict[datetime, int]:
    """A sample every 20 minutes for `days` days up to NOW, spending 1000 micro per sample."""
    at = NOW - timedelta(days=days)
    totals: dict[datetime, int] = {}
    total = 0
    while at <= NOW:
        store.add_sample("main", Sample(at, 50_000_000 - total, 0, 0, 0, 0, total))
        totals[at] = total
        at += STEP
        total += 1000
    return totals


def test_compaction_thins_to_hourly_after_48h_and_daily_after_30d(store: Store) -> None:
    totals = fill(store)
    store.add_sample("other", Sample(NOW - timedelta(days=35, minutes=20), 1, 0, 0, 0, 0, 7))
    burn_before = burn_rate(
        store.latest_sample("main"), store.latest_sample("main", NOW - WINDOW), NOW
    )

    removed = store.compact(NOW)

    def keep(at: datetime) -> bool:
        if at >= NOW - timedelta(hours=48):
            return True
        if at >= NOW - timedelta(days=30):
            return at.minute == 0
        return at.minute == 0 and at.hour == 0

    expected = [at for at in sorted(totals) if keep(at)]
    kept = [s.at for _, s in store.samples("main")]
    assert kept == expected
    assert removed == len(totals) - len(expected)
    # 48 h of 20-minute samples, 28 days hourly, 10 days daily (40 d ago .. 31 d ago).
    assert len(expected) == (48 * 3 + 1) + 28 * 24 + 10
    # The one sample of the other account is the first of its day: kept.
    assert [s.spent_total_micro for _, s in store.samples("other")] == [7]
    # Every kept row still carries its cumulative spend, so spend between any two is exact.
    assert [s.spent_total_micro for _, s in store.samples("main")] == [totals[a] for a in kept]
    burn_after = burn_rate(
        store.latest_sample("main"), store.latest_sample("main", NOW - WINDOW), NOW
    )
    assert burn_after == burn_before
    assert burn_after == Burn(Decimal(72_000), "history_7d")


def test_compaction_keeps_the_first_sample_of_each_hour(store: Store) -> None:
    hour = NOW - timedelta(days=3)
    for minute, total in ((5, 1), (30, 2), (59, 3)):
        store.add_sample("main", Sample(hour + timedelta(minutes=minute), 0, 0, 0, 0, 0, total))
    store.add_sample("main", Sample(hour + timedelta(hours=1), 0, 0, 0, 0, 0, 4))
    assert store.compact(NOW) == 2
    assert [(s.at, s.spent_total_micro) for _, s in store.samples("main")] == [
        (hour + timedelta(minutes=5), 1),
        (hour + timedelta(hours=1), 4),
    ]


def test_compaction_drops_history_older_than_400_days_and_old_delivered_alerts(
    store: Store,
) -> None:
    store.add_sample("main", Sample(NOW - timedelta(days=401), 0, 0, 0, 0, 0, 0))
    store.add_sample("main", Sample(NOW - timedelta(days=399), 0, 0, 0, 0, 0, 5))
    old, recent, waiting = NOW - timedelta(days=8), NOW - timedelta(days=6), NOW - timedelta(days=9)
    store.commit("main", {}, [notice(seq=1, at=old)], ["ntfy"], old)
    store.commit("main", {}, [notice(seq=2, at=recent)], ["ntfy"], recent)
    store.commit("main", {}, [notice(seq=3, at=waiting)], ["mqtt"], waiting)
    items = {i.id: i for i in store.due("ntfy", NOW)}
    store.delivered(items["main.low_balance.1"], old)
    store.delivered(items["main.low_balance.2"], recent)
    assert store.compact(NOW) == 2
    assert [s.spent_total_micro for _, s in store.samples("main")] == [5]
    assert [i.id for i in store.due("mqtt", NOW)] == ["main.low_balance.3"]  # never delivered
    store.commit("main", {}, [notice(seq=2, at=recent)], ["ntfy"], NOW)
    assert store.due("ntfy", NOW) == []  # the recent delivered row is still there


# ---- thresholds set from Home Assistant ------------------------------------------------------


def config(tmp_path: Path, below: str = "5.00", days: Any = 3) -> Config:
    return Config.model_validate(
        {
            "accounts": [
                {"id": "main", "name": "Main", "api_key": KEY, "api_url": "http://127.0.0.1:9/v1"}
            ],
            "data_dir": str(tmp_path),
            "alerts": {"low_balance": {"below": below}, "runway": {"below_days": days}},
        }
    )


async def open_engine(path: Path, cfg: Config) -> tuple[AlertEngine, AsyncStore]:
    store = AsyncStore(Store(path))
    accounts = [AlertAccount(a.id, a.name, a.alerts) for a in cfg.accounts]
    engine = AlertEngine(store, accounts, FakeClock(T0), ["mqtt"])
    await engine.load()
    return engine, store


async def set_from_ha(engine: AlertEngine, account: str, key: str, raw: bytes) -> Decimal:
    """What a number entity's command does: parse the payload, then save it."""
    value = engine.parse_threshold(account, key, raw)
    await engine.set_threshold(account, key, value)
    return value


async def test_overrides_persist_across_a_reopen(tmp_path: Path, path: Path) -> None:
    engine, store = await open_engine(path, config(tmp_path))
    assert engine.thresholds("main")["low_balance_below"] == Decimal(5)
    assert await set_from_ha(engine, "main", "low_balance_below", b" 3.5\n") == Decimal("3.5")
    assert await set_from_ha(engine, "main", "runway_below_days", b"7.5") == Decimal("7.5")
    store.close()
    assert raw(path, "SELECT account, key, value, config_value FROM overrides ORDER BY key") == [
        ("main", "low_balance_below", "3.5", "5"),
        ("main", "runway_below_days", "7.5", "3"),
    ]

    engine, store = await open_engine(path, config(tmp_path, below="5.0"))
    assert engine.thresholds("main")["low_balance_below"] == Decimal("3.5")
    assert engine.thresholds("main")["runway_below_days"] == Decimal("7.5")
    store.close()


async def test_an_override_is_dropped_when_the_config_value_changed(
    tmp_path: Path, path: Path
) -> None:
    engine, store = await open_engine(path, config(tmp_path))
    await set_from_ha(engine, "main", "low_balance_below", b"3.5")
    await set_from_ha(engine, "main", "runway_below_days", b"10")
    store.close()

    engine, store = await open_engine(path, config(tmp_path, below="6"))
    assert engine.thresholds("main")["low_balance_below"] == Decimal(6)
    assert engine.thresholds("main")["runway_below_days"] == Decimal(10)  # unchanged in the file
    assert await store.call(Store.overrides, "main") == {"runway_below_days": ("10", "3")}
    store.close()


@pytest.mark.parametrize(
    "payload", [b"-1", b"2000000", b"abc", b"", b"NaN", b"Infinity", b"1.0000001", b"sNaN"]
)
async def test_bad_threshold_changes_nothing(tmp_path: Path, path: Path, payload: bytes) -> None:
    engine, store = await open_engine(path, config(tmp_path))
    await set_from_ha(engine, "main", "low_balance_below", b"4")
    with pytest.raises(ThresholdError):
        await set_from_ha(engine, "main", "low_balance_below", payload)
    assert engine.thresholds("main")["low_balance_below"] == Decimal(4)
    assert await store.call(Store.overrides, "main") == {"low_balance_below": ("4", "5")}
    store.close()


async def test_threshold_limits_are_inclusive(tmp_path: Path, path: Path) -> None:
    engine, store = await open_engine(path, config(tmp_path))
    assert await set_from_ha(engine, "main", "low_balance_below", b"1000000") == Decimal(1_000_000)
    assert await set_from_ha(engine, "main", "low_balance_below", b"0") == Decimal(0)
    assert await set_from_ha(engine, "main", "runway_below_days", b"365") == Decimal(365)
    with pytest.raises(ThresholdError):
        await set_from_ha(engine, "main", "runway_below_days", b"365.5")
    with pytest.raises(ThresholdError):
        await set_from_ha(engine, "main", "budget_daily", b"1")
    store.close()


def test_unused_sample_fields_round_trip(store: Store) -> None:
    s = Sample(T0, 8_059_489, 125_000, None, None, None, 0)
    store.add_sample("main", s)
    store.add_sample("main", replace(s, at=T0 + timedelta(hours=1), spend_day_micro=5))
    assert store.latest_sample("main") == replace(s, at=T0 + timedelta(hours=1), spend_day_micro=5)
    assert store.latest_sample("main", T0 + timedelta(minutes=59)) == s
    assert store.latest_sample("main", T0 - timedelta(seconds=1)) is None
    assert [a for a, _ in store.samples(since=T0 + timedelta(hours=1))] == ["main"]


def test_notices_of_one_commit_are_delivered_in_the_order_they_were_produced(
    store: Store,
) -> None:
    recovered = notice("budget_daily", 9, kind="recovered")
    fired = notice("budget_daily", 10)
    store.commit("main", {}, [recovered, fired], ["ntfy"], T0)
    assert [(i.id, i.notice.kind) for i in store.due("ntfy", T0)] == [
        ("main.budget_daily.9", "recovered"),
        ("main.budget_daily.10", "fired"),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        b"7" + b" " * 39 + b"junk",  # not a number at all: accepted as 7
        b"5." + b"0" * 38 + b"1",  # more than 6 decimal places: accepted as 5
    ],
    ids=["trailing-junk", "too-many-decimals"],
)
async def test_a_long_payload_is_judged_whole(tmp_path: Path, path: Path, payload: bytes) -> None:
    engine, store = await open_engine(path, config(tmp_path))
    try:
        with pytest.raises(ThresholdError):
            await set_from_ha(engine, "main", "low_balance_below", payload)
        assert await store.call(Store.overrides, "main") == {}
    finally:
        store.close()


def test_open_refuses_a_file_that_is_not_a_database(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="move the file aside") as info:
        Store.open(path, T0)
    assert str(path) in str(info.value)


def test_open_checks_that_the_file_can_be_written(path: Path) -> None:
    store = Store.open(path, T0)
    try:
        assert raw(path, "SELECT key, value FROM meta WHERE key = 'opened'") == [
            ("opened", T0.isoformat())
        ]
    finally:
        store.close()


def test_a_notice_reads_back_from_its_stored_form_as_it_was_written() -> None:
    for n in (notice(), notice(kind="recovered", value=None, priority=None, tags=())):
        assert Notice.from_json(n.dumps()) == n
    stored = json.loads(notice().dumps())
    for field, bad, problem in [
        ("kind", "exploded", "payload field 'kind' is not one of"),
        ("at", "yesterday", "payload field 'at' is not a date"),
        ("title", None, "payload field 'title' is missing or not text"),
    ]:
        got = Notice.from_json(json.dumps({**stored, field: bad}))
        assert isinstance(got, str)
        assert got.startswith(problem), got
