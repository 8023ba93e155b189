"""Fault runs on the state database, on real parts (SQLite on disk, Mosquitto, the stand-in API,
a push receiver): a disk that stops answering, the database deleted or locked at start, a
second copy on the same data directory, rows that are not as we wrote them, and notice ids
that stay unique across installs (issue 15, items 1, 3-7)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cm_mqtt_bridge.core.notice import Notice
from cm_mqtt_bridge.core.rules import AlertsConfig
from cm_mqtt_bridge.core.samples import Sample
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service import bridge as service
from cm_mqtt_bridge.service.alerting import AlertAccount, AlertEngine
from cm_mqtt_bridge.service.bridge import Bridge
from cm_mqtt_bridge.store.db import DB_NAME, AsyncStore, Store, StoreError
from tests.conftest import KEY
from tests.fakes import FakeClock
from tests.helpers import bare, clean_env, db_rows, outbox, run_cli, run_main, until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import publish, recording
from tests.receivers import Receivers
from tests.standin import CrossModelStandin
from tests.test_clock_steps import T0, down, rules_of
from tests.test_faults import (
    HOLDS,
    REFRESH,
    TOPIC,
    alert_config,
    balance_doc,
    exclusive_lock,
    running,
)

HEALTH = {"health": {"enabled": True, "port": 0}}


async def healthz(bridge: Bridge) -> tuple[int, dict[str, Any]]:
    assert bridge.health is not None
    url = f"http://127.0.0.1:{bridge.health.port}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


@contextlib.asynccontextmanager
async def stalled(bridge: Bridge) -> AsyncIterator[threading.Event]:
    """The database stops answering, as on an SD card or NFS share that stalls (`fsfreeze`):
    every statement blocks inside SQLite until the returned event is set. The handler is
    set and removed on the store's own thread (from another one it could deadlock)."""
    assert bridge.store is not None
    db = bridge.store.store._db
    worker = bridge.store._worker
    thaw = threading.Event()

    def hang() -> int:
        thaw.wait(30)  # bounded: a failing test must not hang the suite
        return 0

    await asyncio.wrap_future(worker.submit(lambda: db.set_progress_handler(hang, 1)))
    try:
        yield thaw
    finally:
        thaw.set()
        await asyncio.wrap_future(worker.submit(lambda: db.set_progress_handler(None, 1)))


async def test_a_stalled_disk_keeps_values_publishing_and_the_alert_goes_out_once_after(
    standin: CrossModelStandin, mosquitto: Mosquitto, ntfy: Receivers, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, data, **HEALTH)
    async with recording(mosquitto.port) as rec, running(config, store_deadline=0.5) as bridge:
        await rec.wait_for(lambda r: balance_doc(r, "8.059489"), what="first balance")
        async with stalled(bridge) as thaw:
            standin.credits["balance_micro"] = 4_000_000 + HOLDS
            await publish(mosquitto.port, REFRESH, "PRESS")
            await rec.wait_for(lambda r: balance_doc(r, "4.125"), timeout=3, what="balance 1")
            # /healthz names the stuck store once a call is past its deadline.
            store = bridge.store
            assert store is not None
            await until(lambda: "has not answered" in (store.problem or ""), 5, "stuck store")
            status, report = await healthz(bridge)
            assert status == 503
            assert "has not answered" in report["alert_store"]
            assert str(data / DB_NAME) in report["alert_store"]
            # Refreshes still poll and publish while the store is stuck.
            for balance, shown in ((3_500_000, "3.625"), (3_000_000, "3.125")):
                index = len(rec.messages)
                standin.credits["balance_micro"] = balance + HOLDS
                await publish(mosquitto.port, REFRESH, "PRESS")
                await rec.wait_for(
                    functools.partial(balance_doc, balance=shown, after=index),
                    timeout=3,
                    what=shown,
                )
            assert ntfy.ntfy(TOPIC) == []
            thaw.set()
        # After the thaw the owed evaluation is retried: one push, recorded once.
        (push,) = await ntfy.wait_for(lambda r: r.ntfy(TOPIC), timeout=10, what="ntfy POST")
        assert bare(push.header("X-Message-Id")) == "main.low_balance.1"
        await until(lambda: outbox(data) and all(row[3] for row in outbox(data)), 5, "recorded")
        await until(lambda: bridge.health_report()["alert_store"] == "ok", 5, "store ok")
        # A last refresh after the recovery: still one push.
        await publish(mosquitto.port, REFRESH, "PRESS")
        await until(lambda: bridge.accounts["main"].polls >= 5, 5, "a later poll")
        bridge.dispatcher.wake()  # type: ignore[union-attr]
        await until(lambda: not any(bridge.dispatcher.pending.values()), 5, "nothing owed")  # type: ignore[union-attr]
    assert len(ntfy.ntfy(TOPIC)) == 1
    assert [row[0] for row in outbox(data)] == ["main.low_balance.1"] * 2


@pytest.mark.parametrize("victim", [DB_NAME, f"{DB_NAME}-wal"])
async def test_the_database_deleted_while_running_is_reported(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    victim: str,
) -> None:
    monkeypatch.setattr(service, "FILES_CHECK", 0.05)
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, data, **HEALTH)
    async with running(config) as bridge:
        await until(lambda: bridge.accounts["main"].polls >= 1, 5, "first poll")
        assert (await healthz(bridge))[0] == 200
        (data / victim).unlink()  # a cleanup script, or "move the file aside" while running
        await until(lambda: bridge.health_report()["alert_store"] != "ok", 5, "noticed")
        status, report = await healthz(bridge)
    assert status == 503
    assert report["alert_store"] == f"failing: {data / victim} was deleted while the bridge runs"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert f"{data / victim} was deleted" in errors[0]
    assert "restart the bridge" in errors[0]


async def test_a_database_locked_at_start_starts_anyway_and_catches_up(
    standin: CrossModelStandin, mosquitto: Mosquitto, ntfy: Receivers, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    Store(data / DB_NAME).close()  # an earlier run's database, now held by a backup
    standin.credits["balance_micro"] = 4_000_000 + HOLDS
    config = alert_config(standin, mosquitto, ntfy, data, **HEALTH)
    backup = contextlib.ExitStack()
    backup.enter_context(exclusive_lock(data))
    with backup:
        async with recording(mosquitto.port) as rec, running(config, lock_wait=0.2) as bridge:
            await rec.wait_for(lambda r: balance_doc(r, "4.125"), what="balance")
            await until(lambda: bridge.health_report()["alert_store"] != "ok", 5, "failing")
            status, report = await healthz(bridge)
            assert status == 503
            assert "locked" in report["alert_store"]
            assert ntfy.ntfy(TOPIC) == []
            backup.close()  # the backup ends: the bookkeeping catches up, one push
            (push,) = await ntfy.wait_for(lambda r: r.ntfy(TOPIC), timeout=10, what="push")
            assert bare(push.header("X-Message-Id")) == "main.low_balance.1"
            await until(lambda: bridge.health_report()["alert_store"] == "ok", 5, "store ok")
    assert len(ntfy.ntfy(TOPIC)) == 1


async def test_a_second_run_on_the_same_data_directory_exits_naming_it_and_the_process(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, data)
    env = clean_env(
        tmp_path,
        CROSSMODEL_API_KEY=KEY,
        CROSSMODEL_API_URL=standin.url,
        MQTT_HOST="127.0.0.1",
        MQTT_PORT=str(mosquitto.port),
    )
    async with running(config) as bridge:
        second = await run_cli("run", "--data-dir", str(data), env=env, secrets=[KEY])
        assert bridge.publisher.connected.is_set()
    assert second.code == 2
    (line,) = second.err.splitlines()
    assert f"with the data directory {data};" in line
    assert f"(process {os.getpid()} on {socket.gethostname()})" in line
    assert (data / "cm_mqtt_bridge.lock").exists()
    # Once the first has stopped, the next start runs (the lock went with it).
    async with running(config) as again:
        assert again.publisher.connected.is_set()


def _bad_outbox_row(data: Path, channel: str, payload: str) -> None:
    """A row in the outbox that is not the notice we wrote, ahead of everything else."""
    db = sqlite3.connect(str(data / DB_NAME))
    with db:
        db.execute(
            "INSERT INTO outbox (id, channel, account, payload, created, next_attempt) "
            "VALUES ('main.low_balance.9.0000000000', ?, 'main', ?, 0, 0)",
            (channel, payload),
        )
    db.close()


@pytest.mark.parametrize(
    "payload", ['{"id": "main.low_balance.9", "tit', '{"id": 5, "title": []}', "[]"]
)
async def test_an_unreadable_outbox_row_is_failed_once_and_the_channel_goes_on(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    payload: str,
) -> None:
    data = tmp_path / "data"
    Store(data / DB_NAME).close()
    for channel in ("ntfy", "webhook"):
        _bad_outbox_row(data, channel, payload)
    standin.credits["balance_micro"] = 4_000_000 + HOLDS
    config = alert_config(
        standin,
        mosquitto,
        ntfy,
        data,
        notify={
            "ntfy": {"url": ntfy.url, "topic": TOPIC},
            "webhook": {"url": f"{ntfy.url}/hook"},
        },
    )
    async with running(config) as bridge:
        (push,) = await ntfy.wait_for(lambda r: r.ntfy(TOPIC), timeout=10, what="the push")
        (post,) = await ntfy.wait_for(lambda r: r.webhook(), timeout=10, what="the webhook")
        assert bare(push.header("X-Message-Id")) == "main.low_balance.1"
        assert bare(post.header("X-CM-Bridge-Id")) == "main.low_balance.1"
        assert bridge.supervisor.problems() == {}
    failed = db_rows(data, "SELECT channel, last_error FROM outbox WHERE failed IS NOT NULL")
    assert sorted(c for c, _ in failed) == ["ntfy", "webhook"]
    assert all(error.startswith("unreadable: ") for _, error in failed)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert all("main.low_balance.9.0000000000" in e and "marked failed" in e for e in errors)


def test_a_history_row_with_a_wrong_type_is_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    store = Store(data / DB_NAME)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    store.add_sample("default", Sample(at, 8_000_000, 0, 1, 2, 3, 4))
    store.close()
    db = sqlite3.connect(str(data / DB_NAME))
    with db:  # a text in a number column, as a hand edit leaves it
        db.execute(
            "INSERT INTO samples VALUES ('default', ?, 'lots', 0, NULL, NULL, NULL, 0)",
            (at.timestamp() + 60,),
        )
    db.close()
    env = clean_env(tmp_path, CROSSMODEL_API_KEY=KEY)
    result = run_main(capsys, "history", "--csv", "--data-dir", str(data), env=env, secrets=[KEY])
    assert result.code == 0
    assert result.out.splitlines()[1:] == [
        "default,2026-03-01T12:00:00+00:00,8,0,8,0.000001,0.000002,0.000003,0.000004"
    ]
    assert "skipped 1 history row(s)" in result.err
    # The bridge's own read of the last sample skips it too.
    reopened = Store(data / DB_NAME)
    try:
        last = reopened.latest_sample("default")
    finally:
        reopened.close()
    assert last is not None
    assert last.balance_micro == 8_000_000


def test_notice_ids_are_unique_across_installs_and_resets(tmp_path: Path) -> None:
    ids = []
    for name in ("one", "two", "one"):
        path = tmp_path / name / DB_NAME
        if name == "one" and path.exists():
            path.unlink()  # a reset: a fresh database in the same place
            for extra in ("-wal", "-shm"):
                Path(f"{path}{extra}").unlink(missing_ok=True)
        store = Store(path)
        ids.append(store.install_id)
        again = Store(path)  # the same database keeps its id
        assert again.install_id == store.install_id
        again.close()
        store.close()
    assert len(set(ids)) == 3
    assert all(len(i) == 10 for i in ids)


def test_history_names_the_real_cause_when_a_running_bridges_wal_was_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    running_store = Store(data / DB_NAME)  # the bridge's connection, still open
    try:
        running_store.check_writable(datetime(2026, 3, 1, tzinfo=UTC))
        Path(f"{data / DB_NAME}-wal").unlink()  # a cleanup script
        env = clean_env(tmp_path, CROSSMODEL_API_KEY=KEY)
        result = run_main(capsys, "history", "--csv", "--data-dir", str(data), env=env)
    finally:
        running_store.close()
    assert result.code == 2
    assert "disk I/O error" in result.err
    assert "-wal or -shm file next to it was deleted while a bridge ran" in result.err
    assert "move the file aside" not in result.err


def test_a_row_with_a_non_text_id_is_failed_not_resent(tmp_path: Path) -> None:
    store = Store(tmp_path / DB_NAME)
    payload = (
        '{"id": "x", "account": "main", "rule": "low_balance", "kind": "fired", '
        '"title": "t", "message": "m", "at": "2026-01-01T00:00:00+00:00"}'
    )
    try:
        store._db.execute(
            "INSERT INTO outbox (id, channel, account, payload, created, next_attempt) "
            "VALUES (?, 'ntfy', 'main', ?, 0, 0)",
            (b"main.low_balance.1", payload),
        )
        now = datetime(2026, 1, 1, tzinfo=UTC)
        assert store.due("ntfy", now) == []
        assert store.pending("ntfy") == 0
    finally:
        store.close()


async def test_a_rule_state_row_with_a_wrong_type_is_a_store_error_not_a_crash(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / DB_NAME)
    store._db.execute(
        "INSERT INTO rule_state VALUES ('main', 'low_balance', 1, 'yesterday', NULL, NULL, 1, NULL)"
    )
    async_store = AsyncStore(store, deadline=5)
    try:
        with pytest.raises(StoreError, match="unreadable data"):
            await async_store.call(Store.rule_states, "main")
        assert async_store.problem is not None
    finally:
        async_store.close()


async def test_a_threshold_save_that_timed_out_is_read_back_and_reminders_stay_monotonic(
    tmp_path: Path,
) -> None:
    """A save that failed may land once the disk answers again: the account is read back
    before its next evaluation. The read-back keeps the reminder on the monotonic clock (a
    wall-clock step in between sends no early reminder)."""
    data = tmp_path
    clock = FakeClock(T0)
    store = AsyncStore(Store(data / DB_NAME, busy_ms=50), deadline=5)
    alerts = {"low_balance": {"below": 5}, "auth_failed": {"repeat_every": "12h"}}
    cfg = AlertsConfig.model_validate(alerts)
    engine = AlertEngine(store, [AlertAccount("main", "Main", cfg)], clock, ["mqtt"])
    try:
        assert await engine.load()
        rejected = down("auth_failed", None)
        assert await rules_of(engine, rejected) == ["auth_failed.fired"]
        configured = str(engine.thresholds("main")["low_balance_below"])
        with exclusive_lock(data), pytest.raises(StoreError):
            await engine.set_threshold("main", "low_balance_below", Decimal(4))
        assert engine.thresholds("main")["low_balance_below"] == Decimal(configured)
        # The stuck write lands after all (as it would after a thaw).
        late = Store(data / DB_NAME)
        late.set_override("main", "low_balance_below", "4", configured)
        late.close()
        clock.step_wall(13 * 3600.0)  # NTP steps the wall clock; no time has passed
        assert await rules_of(engine, rejected) == []
        assert engine.thresholds("main")["low_balance_below"] == Decimal(4)
        clock.advance(12 * 3600.0)
        assert await rules_of(engine, rejected) == ["auth_failed.reminder"]
    finally:
        store.close()


def test_an_unreadable_row_under_a_lock_does_not_hold_the_good_notices_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Store(tmp_path / DB_NAME).close()
    _bad_outbox_row(tmp_path, "ntfy", "{not json")
    store = Store(tmp_path / DB_NAME, busy_ms=50)
    notice = Notice(
        id="main.low_balance.1.abc",
        account_id="main",
        rule="low_balance",
        kind="fired",
        title="t",
        message="m",
        value=None,
        threshold=None,
        at=T0,
    )
    store.commit("main", {}, [notice], ["ntfy"], T0)
    try:
        with exclusive_lock(tmp_path):
            due = store.due("ntfy", T0 + timedelta(days=1))
        assert [item.id for item in due] == ["main.low_balance.1.abc"]
        assert "could not be marked failed yet" in caplog.text
        assert store.pending("ntfy") == 2  # the bad row is marked on a later round
        store.due("ntfy", T0 + timedelta(days=1))
        assert store.pending("ntfy") == 1
    finally:
        store.close()


async def test_a_database_that_hangs_at_start_is_a_clear_error_within_the_deadline(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The data directory on a disk that does not answer when `run` starts (SQLite refuses a
    FIFO, so the open itself is made to block, as a read on a frozen disk does): `run` stops
    with an error naming the file, instead of hanging forever."""
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, data)
    thaw = threading.Event()
    real_open = Store.open

    def frozen_open(*args: Any, **kwargs: Any) -> Store:
        thaw.wait(30)  # bounded: a failing test must not hang the suite
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Store, "open", frozen_open)
    bridge = Bridge(config, timings=Timings(lock_wait=0.2, store_deadline=0.3))
    try:
        with pytest.raises(service.StartupError) as err:
            await asyncio.wait_for(bridge.run(asyncio.Event()), 10)
    finally:
        thaw.set()
    assert str(err.value) == (
        f"data_dir: the state database {data / DB_NAME} did not answer within 0.5 s; "
        "the disk or network share it is on may hang"
    )
