"""Fault runs on real parts: a locked or read-only state database, a failing task, a hanging
API, a storm of Home Assistant births, Retry-After. Each reproduces a defect of the old core."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cm_mqtt_bridge.config.settings import Config
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from cm_mqtt_bridge.service.runtime import AccountRuntime
from cm_mqtt_bridge.store.db import DB_NAME, Store
from tests.helpers import bare, outbox, until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import make_config, publish, recording
from tests.receivers import Receivers
from tests.standin import CrossModelStandin, Reply

BASE = "cm_mqtt_bridge/main"
STATE = f"{BASE}/state"
REFRESH = f"{BASE}/refresh/set"
DEVICE = "homeassistant/device/cm_main/config"
TOPIC = "wallet"
HOLDS = 125_000  # the stand-in's uncollected_micro


def alert_config(
    standin: CrossModelStandin, mosquitto: Mosquitto, ntfy: Receivers, data: Path, **extra: Any
) -> Config:
    return make_config(
        standin.url,
        mosquitto.port,
        data_dir=str(data),
        extra={
            "alerts": {"low_balance": {"below": "5.00", "margin": "0.50"}},
            "notify": {"ntfy": {"url": ntfy.url, "topic": TOPIC}},
            **extra,
        },
    )


@contextlib.asynccontextmanager
async def running(config: Config, **timings: Any) -> AsyncIterator[Bridge]:
    bridge = Bridge(config, timings=Timings.fast(**timings))
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await until(bridge.publisher.connected.is_set, 10, "connected")
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@contextlib.contextmanager
def exclusive_lock(data: Path) -> Iterator[None]:
    """Another process's write lock on the state database, as a stray `sqlite3` shell holds."""
    db = sqlite3.connect(str(data / DB_NAME), isolation_level=None, timeout=5)
    db.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def balance_doc(rec: Any, balance: str, after: int = 0) -> Any:
    for m in rec.messages[after:]:
        if m.topic == STATE and json.loads(m.payload).get("balance") == balance:
            return m
    return None


async def test_a_locked_database_delays_only_the_alert_bookkeeping(
    standin: CrossModelStandin, mosquitto: Mosquitto, ntfy: Receivers, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, data)
    async with recording(mosquitto.port) as rec, running(config) as bridge:
        await rec.wait_for(lambda r: balance_doc(r, "8.059489"), what="first balance")
        assert bridge.store is not None
        with exclusive_lock(data):
            standin.credits["balance_micro"] = 4_000_000 + HOLDS
            await publish(mosquitto.port, REFRESH, "PRESS")
            # The new balance goes out while the alert commit waits for the lock (1 s): before
            # that commit has failed.
            await rec.wait_for(lambda r: balance_doc(r, "4.125"), what="new balance")
            assert bridge.store.problem is None
            await until(lambda: bridge.store and bridge.store.problem, 10, "a failed commit")
            assert ntfy.ntfy(TOPIC) == []
            report = bridge.health_report()
            assert report["healthy"] is False
            assert report["alert_store"].startswith("failing: database is locked")
        # No restart: the owed commit is retried, and the push goes out once.
        (push,) = await ntfy.wait_for(lambda r: r.ntfy(TOPIC), timeout=10, what="ntfy POST")
        assert bare(push.header("X-Message-Id")) == "main.low_balance.1"
        await until(lambda: outbox(data) and all(row[3] for row in outbox(data)), 5, "recorded")
        assert bridge.health_report()["alert_store"] == "ok"
    assert len(ntfy.ntfy(TOPIC)) == 1


async def test_a_send_recorded_under_a_lock_is_never_sent_twice(
    standin: CrossModelStandin, mosquitto: Mosquitto, ntfy: Receivers, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, data)
    ntfy.fail(503)
    async with recording(mosquitto.port) as rec, running(config) as bridge:
        await rec.wait_for(lambda r: balance_doc(r, "8.059489"), what="first balance")
        standin.credits["balance_micro"] = 4_000_000 + HOLDS
        await publish(mosquitto.port, REFRESH, "PRESS")
        # ntfy refuses: the notice waits in the outbox for its retry.
        await ntfy.wait_for(lambda r: len(r.ntfy(TOPIC)) >= 3, timeout=10, what="3 attempts")
        await until(
            lambda: any(r[1] == "ntfy" and r[2] >= 1 and not r[3] for r in outbox(data)),
            5,
            "a recorded failure",
        )
        with exclusive_lock(data):
            ntfy.recover()
            # The retry reaches ntfy, but recording the success fails on the lock.
            await ntfy.wait_for(lambda r: r.ntfy(TOPIC, ok_only=True), timeout=10, what="sent")
            await until(lambda: bridge.store and bridge.store.problem, 10, "a failed record")
        await until(
            lambda: all(r[3] for r in outbox(data) if r[1] == "ntfy"), 10, "delivery recorded"
        )
        # Another round of the channel after the record: nothing is resent.
        bridge.dispatcher.wake()  # type: ignore[union-attr]
        await until(lambda: bridge.health_report()["alert_store"] == "ok", 5, "store ok")
    assert len(ntfy.ntfy(TOPIC, ok_only=True)) == 1


async def test_metrics_follow_the_connection_before_any_healthz(
    standin: CrossModelStandin, mosquitto: Mosquitto
) -> None:
    config = make_config(
        standin.url, mosquitto.port, extra={"health": {"enabled": True, "port": 0}}
    )
    async with running(config) as bridge, aiohttp.ClientSession() as session:
        assert bridge.health is not None
        url = f"http://127.0.0.1:{bridge.health.port}/metrics"
        async with session.get(url) as resp:
            text = await resp.text()
    assert "cm_bridge_mqtt_connected 1.0" in text


async def test_a_task_that_fails_is_restarted_and_reported(
    standin: CrossModelStandin, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_watch = AccountRuntime.watch
    calls = 0

    async def failing_once(self: AccountRuntime) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        await real_watch(self)

    monkeypatch.setattr(AccountRuntime, "watch", failing_once)
    config = make_config(
        standin.url, mosquitto.port, extra={"health": {"enabled": True, "port": 0}}
    )
    async with running(config) as bridge, aiohttp.ClientSession() as session:
        assert bridge.health is not None
        await until(lambda: calls >= 2, 5, "the restart")
        base = f"http://127.0.0.1:{bridge.health.port}"
        async with session.get(f"{base}/healthz") as resp:
            status, report = resp.status, await resp.json()
        async with session.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
    assert status == 503
    assert report["tasks"] == {"watch:main": "restarted after: RuntimeError: boom"}
    assert 'cm_bridge_task_restarts_total{task="watch:main"} 1.0' in metrics


async def test_values_turn_stale_while_a_poll_hangs(
    standin: CrossModelStandin, mosquitto: Mosquitto
) -> None:
    config = make_config(
        standin.url, mosquitto.port, poll={"stale_after": 0.5, "credits_timeout": 30.0}
    )
    availability = f"{BASE}/availability"
    async with recording(mosquitto.port) as rec, running(config):
        await rec.wait_topic(availability, "online")
        standin.queue("credits", Reply(json=standin.credits, delay=20))
        await publish(mosquitto.port, REFRESH, "PRESS")
        # The poll hangs for 20 s; the values are stale after 0.5 s of it, not after the poll.
        await rec.wait_topic(availability, "offline", timeout=5)


async def test_a_storm_of_home_assistant_births_is_one_republish(
    standin: CrossModelStandin, mosquitto: Mosquitto
) -> None:
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config, birth_delay=(0.5, 0.5)) as b:
        await rec.wait_for(lambda r: r.on(STATE), what="first state")
        before = len(rec.on(DEVICE))
        async with aiomqtt_client(mosquitto.port) as client:
            for _ in range(100):
                await client.publish("homeassistant/status", "online", qos=1)
        await until(lambda: b.metrics.total("ha_resends") >= 1, 10, "the republish")
        await rec.wait_for(lambda r: len(r.on(DEVICE)) > before, what="discovery again")
        # A marker after the resend: everything the bridge published before it has arrived.
        await publish(mosquitto.port, "test/marker", "x")
        await rec.wait_topic("test/marker")
        assert b.metrics.total("ha_resends") == 1
        assert len(rec.on(DEVICE)) == before + 1


def threshold_in(message: Any) -> str | None:
    return None if message is None else json.loads(message.payload).get("low_balance_below")


def aiomqtt_client(port: int) -> Any:
    import aiomqtt

    return aiomqtt.Client("127.0.0.1", port, identifier="birth-storm")


async def test_a_refresh_inside_retry_after_waits_for_its_end(
    standin: CrossModelStandin, mosquitto: Mosquitto
) -> None:
    config = make_config(standin.url, mosquitto.port)
    standin.queue("credits", Reply(status=429, headers={"Retry-After": "1"}))
    async with recording(mosquitto.port) as rec, running(config):
        await rec.wait_for(lambda r: r.on(STATE), what="state after the 429")
        limited_at = time.monotonic()
        assert standin.count("credits") == 1
        await publish(mosquitto.port, REFRESH, "PRESS")
        await publish(mosquitto.port, REFRESH, "PRESS")
        await until(lambda: standin.count("credits") == 2, 10, "the deferred poll")
        # Load can only make it later; the old core polled at once.
        assert time.monotonic() - limited_at >= 0.75
        assert standin.count("credits") == 2


@pytest.mark.skipif(shutil.which("chattr") is None, reason="chattr (e2fsprogs) not installed")
def test_a_read_only_database_is_a_clear_startup_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store(data / DB_NAME).close()
    db = data / DB_NAME
    # Root ignores file modes: an immutable file is read-only even for root.
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("the filesystem does not support chattr +i")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cm_mqtt_bridge.cli.main", "run", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=30,
            env={
                "CROSSMODEL_API_KEY": "cm-test-0123456789abcdefSECRET",
                "CROSSMODEL_API_URL": "http://127.0.0.1:9/v1",
                "MQTT_HOST": "127.0.0.1",
                "MQTT_PORT": "9",
                "PATH": "/usr/bin:/bin",
            },
        )
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert result.returncode == 2, result.stderr
    assert str(db) in result.stderr
    assert "readonly" in result.stderr
    assert "writable" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_locked_database_holds_no_account_back_from_polling(
    standin: CrossModelStandin, mosquitto: Mosquitto, ntfy: Receivers, tmp_path: Path
) -> None:
    # One request at a time: a poll that kept its slot while its alert commit waits for the
    # lock would hold every other account back by the lock's timeout, one after the other.
    ids = ["a0", "a1", "a2", "a3"]
    accounts = [
        {"id": i, "api_key": "cm-test-0123456789abcdefSECRET", "api_url": standin.url} for i in ids
    ]
    data = tmp_path / "data"
    config = make_config(
        standin.url,
        mosquitto.port,
        accounts=accounts,
        poll={"max_concurrency": 1},
        data_dir=str(data),
        extra={"alerts": {"low_balance": {"below": "5.00"}}},
    )
    async with recording(mosquitto.port) as rec, running(config) as bridge:
        for i in ids:
            await rec.wait_topic(f"cm_mqtt_bridge/{i}/balance", "8.059489")
        with exclusive_lock(data):
            standin.credits["balance_micro"] = 4_000_000 + HOLDS
            await publish(mosquitto.port, "cm_mqtt_bridge/refresh/set", "PRESS")
            for i in ids:
                await rec.wait_topic(f"cm_mqtt_bridge/{i}/balance", "4.125", timeout=5)
            # Each commit waits the lock's 1 s before it fails, one after the other: holding
            # the slot through it published the fourth account after three failed commits;
            # released, all go out before the first has failed.
            assert bridge.store is not None
            assert bridge.store.problem is None
            await until(lambda: bridge.store and bridge.store.problem, 10, "a failed commit")


async def test_retry_after_on_usage_leaves_usage_alone_but_keeps_the_balance(
    standin: CrossModelStandin, mosquitto: Mosquitto
) -> None:
    standin.always["usage"] = Reply(status=429, headers={"Retry-After": "600"})
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config):
        await rec.wait_topic(f"{BASE}/balance", "8.059489")
        assert standin.count("usage") == 1
        standin.credits["balance_micro"] = 7_000_000 + HOLDS
        await publish(mosquitto.port, REFRESH, "PRESS")
        await rec.wait_topic(f"{BASE}/balance", "7.125")
        standin.credits["balance_micro"] = 6_000_000 + HOLDS
        await publish(mosquitto.port, REFRESH, "PRESS")
        doc = await rec.wait_for(
            lambda r: (m := r.last(STATE)) and json.loads(m.payload)["balance"] == "6.125" and m,
            what="third balance",
        )
        assert json.loads(doc.payload)["usage_state"] == "failed"
        # The balance was polled three times, /usage only once in its Retry-After window.
        assert standin.count("credits") == 3
        assert standin.count("usage") == 1


async def test_a_flood_of_thresholds_is_saved_once_and_logged_in_bounds(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, data)
    topic = f"{BASE}/low_balance_below/set"

    def lines(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    async with recording(mosquitto.port) as rec, running(config):
        await rec.wait_for(lambda r: balance_doc(r, "8.059489"), what="first balance")
        async with aiomqtt_client(mosquitto.port) as client:
            # The database is locked while 300 values arrive: each save waits for it, so
            # the values that arrive meanwhile can only replace each other.
            with exclusive_lock(data):
                for n in range(1, 301):
                    await client.publish(topic, f"{n}.5", qos=1)
                # A rejected marker after them: once it is logged, all 300 were received.
                await client.publish(topic, "marker", qos=1)
                await until(lambda: lines("'marker'"), 10, "the marker")
            await rec.wait_for(
                lambda r: threshold_in(r.last(STATE)) == "300.5", what="the last value"
            )
            for _ in range(300):
                await client.publish(topic, "abc", qos=1)
            await client.publish(topic, "9.5", qos=1)
        await rec.wait_for(lambda r: threshold_in(r.last(STATE)) == "9.5", what="a later value")
    attempts = lines("set to") + lines("not saved")
    # One save at a time, each waiting out the lock (1 s): a handful, not one per message.
    assert 2 <= len(attempts) <= 12, attempts
    assert lines("set to")[-2].endswith("low_balance_below set to 300.5 from Home Assistant")
    # Rejections: ten lines a minute (the marker and nine 'abc'), the rest only counted.
    assert len(lines("rejected threshold")) == 10
