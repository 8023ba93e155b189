"""The `run` service in-process, against a real Mosquitto and the CrossModel stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cm_mqtt_bridge.config.settings import Config
from cm_mqtt_bridge.core.clock import Clock, SleepClock
from cm_mqtt_bridge.core.model import Window
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.ha.discovery import device_payload
from cm_mqtt_bridge.ha.topics import Topics
from cm_mqtt_bridge.service.bridge import Bridge
from tests.conftest import KEY
from tests.helpers import until
from tests.mqtt_helpers import (
    Got,
    Recorder,
    barrier,
    is_barrier,
    make_config,
    publish,
    recording,
)
from tests.standin import CrossModelStandin, Reply, Seen

TOPICS = Topics(base="cm_mqtt_bridge", prefix="homeassistant")
STATE = "cm_mqtt_bridge/main/state"
DEVICE = "homeassistant/device/cm_main/config"
STATUS = "cm_mqtt_bridge/status"
AVAILABILITY = "cm_mqtt_bridge/main/availability"
REFRESH = "cm_mqtt_bridge/main/refresh/set"
PLAIN = (
    "balance",
    "holds",
    "available",
    "spend_today",
    "spend_week",
    "spend_month",
    "tokens_today",
    "tokens_week",
    "tokens_month",
    "requests_today",
    "requests_week",
    "requests_month",
    "last_update",
    "api_status",
    "connected",
)
ISSUE3_DOC_KEYS = (
    "balance",
    "holds",
    "available",
    "currency",
    *(
        f"{v}_{w}"
        for w in ("today", "week", "month")
        for v in (
            "spend",
            "reset",
            "tokens",
            "prompt_tokens",
            "completion_tokens",
            "requests",
            "success_rate",
        )
    ),
    "api_status",
    "connected",
    "error",
    "usage_state",
    "last_update",
)


# Filled in by the alert engine (forecast, lifetime spend), not by this issue's poll: present,
# not pinned.
FORECAST_KEYS = {"burn_rate", "burn_rate_source", "runway_days", "total_spend"}


@pytest.fixture(autouse=True)
def _data_dir_in_tmp(tmp_path, monkeypatch):
    # The bridge keeps its history under ./data: never in the repository.
    monkeypatch.chdir(tmp_path)


class SteppedClock(SleepClock):
    """Real sleeps and monotonic time; wall-clock time only moves when the test says so.

    It also counts `idle`: how often the poll loop went back to waiting for its next poll
    (the only wait between 10 minutes and the one-hour interval), so a test knows a poll,
    including handing its values to the publisher, is over."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.idle = 0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        if 600 < seconds < 3600:
            self.idle += 1
        await asyncio.sleep(seconds)


def account(account_id: str, url: str, name: str | None = None) -> dict[str, Any]:
    return {"id": account_id, "name": name or account_id.title(), "api_key": KEY, "api_url": url}


def expected_discovery(currency: str | None = "USD", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "account_id": "main",
        "account_name": "Main",
        "topics": TOPICS,
        "currency": currency,
        "qos": 1,
    }
    args.update(kw)
    return device_payload(**args)


@contextlib.asynccontextmanager
async def running(
    config: Config, rec: Recorder | None = None, clock: Clock | None = None, **timings: Any
) -> AsyncIterator[Bridge]:
    """The bridge, stopped on the way out. With `rec`, also wait for its `offline`: the last
    thing it publishes, so everything it sent before has reached the recorder. `timings`:
    fields of Timings."""
    bridge = Bridge(config, clock=clock, timings=Timings(readback_seconds=0.1, **timings))
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    index = len(rec.messages) if rec is not None else 0
    try:
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    if rec is not None:
        await rec.wait_topic(STATUS, "offline", after=index)


async def sent(rec: Recorder, bridge: Bridge) -> None:
    """What the bridge wants retained is published, and has reached the recorder."""
    await until(bridge.publisher.in_sync, what="publisher idle")
    await barrier(rec, bridge.publisher)


def unmarked(rec: Recorder, index: int = 0) -> list[Got]:
    """Messages since `index`, without the test's own barrier markers."""
    return [m for m in rec.messages[index:] if not is_barrier(m.topic)]


async def wait_state(
    rec: Recorder,
    pred: Callable[[dict[str, Any]], bool] = lambda d: True,
    *,
    topic: str = STATE,
    after: int = 0,
    timeout: float = 3.0,
) -> tuple[Got, dict[str, Any]]:
    def check(r: Recorder) -> tuple[Got, dict[str, Any]] | None:
        for m in r.messages[after:]:
            if m.topic == topic and m.payload:
                doc = json.loads(m.payload)
                if pred(doc):
                    return m, doc
        return None

    result: tuple[Got, dict[str, Any]] = await rec.wait_for(check, timeout, f"state on {topic}")
    return result


async def wait_device(
    rec: Recorder, pred: Callable[[dict[str, Any]], bool], *, topic: str = DEVICE
) -> Got:
    def check(r: Recorder) -> Got | None:
        for m in r.on(topic):
            with contextlib.suppress(KeyError):
                if m.payload and pred(json.loads(m.payload)):
                    return m
        return None

    got: Got = await rec.wait_for(check, 3, f"device message on {topic}")
    return got


def has_usage(doc: dict[str, Any]) -> bool:
    return doc["spend_today"] is not None


async def settled(rec: Recorder) -> tuple[Got, dict[str, Any]]:
    """The first full state (balance and usage) and its plain topics have arrived."""
    got = await wait_state(rec, has_usage)
    await rec.wait_topic("cm_mqtt_bridge/main/requests_month")
    return got


def since(rec: Recorder, index: int, topics: set[str] | str) -> list[Got]:
    wanted = {topics} if isinstance(topics, str) else topics
    return [m for m in rec.messages[index:] if m.topic in wanted]


async def refresh(port: int, topic: str = REFRESH, payload: str | bytes = "PRESS") -> None:
    await publish(port, topic, payload)


# ---- first connection ---------------------------------------------------------------------


async def test_first_publish_order_values_and_retain_flags(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config, rec):
        _, doc = await settled(rec)
    today = datetime.now(UTC)
    assert set(doc) - FORECAST_KEYS == set(ISSUE3_DOC_KEYS)
    assert {k: doc[k] for k in ISSUE3_DOC_KEYS} == {
        "balance": "8.059489",
        "holds": "0.125",
        "available": "7.934489",
        "currency": "USD",
        "spend_today": "0.01025",
        "reset_today": Window.DAY.start(today).isoformat(),
        "tokens_today": 12000,
        "prompt_tokens_today": 9100,
        "completion_tokens_today": 2900,
        "requests_today": 41,
        "success_rate_today": 97.6,
        "spend_week": "0.67",
        "reset_week": Window.WEEK.start(today).isoformat(),
        "tokens_week": 529000,
        "prompt_tokens_week": 401000,
        "completion_tokens_week": 128000,
        "requests_week": 529,
        "success_rate_week": 98.5,
        "spend_month": "5.37",
        "reset_month": Window.MONTH.start(today).isoformat(),
        "tokens_month": 3200000,
        "prompt_tokens_month": 2500000,
        "completion_tokens_month": 700000,
        "requests_month": 3200,
        "success_rate_month": 98.4,
        "api_status": "ok",
        "connected": True,
        "error": None,
        "usage_state": "ok",
        "last_update": doc["last_update"],
    }
    assert abs(datetime.fromisoformat(doc["last_update"]) - today).total_seconds() < 5
    plain = {k: rec.last(f"cm_mqtt_bridge/main/{k}") for k in PLAIN}
    account_topics = {m.topic for m in rec.messages if m.topic.startswith("cm_mqtt_bridge/main/")}
    assert account_topics - {f"cm_mqtt_bridge/main/{k}" for k in PLAIN} == {
        STATE,
        AVAILABILITY,
        "cm_mqtt_bridge/main/burn_rate",
        "cm_mqtt_bridge/main/runway_days",
        "cm_mqtt_bridge/main/total_spend",
    }
    assert {k: m.text for k, m in plain.items() if m} == {
        "balance": "8.059489",
        "holds": "0.125",
        "available": "7.934489",
        "spend_today": "0.01025",
        "spend_week": "0.67",
        "spend_month": "5.37",
        "tokens_today": "12000",
        "tokens_week": "529000",
        "tokens_month": "3200000",
        "requests_today": "41",
        "requests_week": "529",
        "requests_month": "3200",
        "last_update": doc["last_update"],
        "api_status": "ok",
        "connected": "ON",
    }
    device = rec.last(DEVICE)
    assert device is not None
    assert json.loads(device.payload) == expected_discovery()
    statuses = [m.text for m in rec.on(STATUS)]
    assert statuses == ["online", "offline"]
    assert [m.text for m in rec.on(AVAILABILITY)] == ["online"]
    ours = [m for m in rec.messages if m.topic in account_topics | {STATUS, DEVICE}]
    assert all(m.retain for m in ours), [m.topic for m in ours if not m.retain]
    # online first, then discovery, then availability, then the values.
    topics = [m.topic for m in unmarked(rec)]
    assert topics.index(STATUS) < topics.index(DEVICE) < topics.index(AVAILABILITY)
    assert topics.index(AVAILABILITY) < topics.index(STATE)


# ---- refresh ------------------------------------------------------------------------------


async def test_refresh_publishes_new_state_within_2s_and_no_discovery(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config, rec):
        await settled(rec)
        index = len(rec.messages)
        standin.credits["balance_micro"] = 9_000_000
        pressed = time.monotonic()
        await refresh(mosquitto.port)
        got, doc = await wait_state(rec, lambda d: d["balance"] == "9", after=index, timeout=2)
        await rec.wait_topic("cm_mqtt_bridge/main/available", "8.875", timeout=2, after=index)
    assert got.at - pressed < 2.0
    assert (doc["available"], got.retain) == ("8.875", True)
    balance = since(rec, index, "cm_mqtt_bridge/main/balance")
    assert [(m.text, m.retain) for m in balance] == [("9", True)]
    # An ordinary poll never republishes discovery.
    assert since(rec, index, DEVICE) == []
    assert standin.count("credits") == 2


async def test_refresh_all_polls_every_account(standin, mosquitto):
    accounts = [account("main", standin.url), account("team-b", standin.url, "Team B")]
    config = make_config(standin.url, mosquitto.port, accounts=accounts)
    b_state = "cm_mqtt_bridge/team-b/state"
    async with recording(mosquitto.port) as rec, running(config, rec):
        await wait_state(rec, has_usage)
        await wait_state(rec, has_usage, topic=b_state)
        assert standin.count("credits") == 2
        index = len(rec.messages)
        standin.credits["balance_micro"] = 9_500_000
        await refresh(mosquitto.port, "cm_mqtt_bridge/refresh/set")
        await wait_state(rec, lambda d: d["balance"] == "9.5", after=index, timeout=2)
        await wait_state(rec, lambda d: d["balance"] == "9.5", topic=b_state, after=index)
    assert standin.count("credits") == 4
    b_device = rec.last("homeassistant/device/cm_team-b/config")
    assert b_device is not None
    assert json.loads(b_device.payload)["dev"]["name"] == "CrossModel Team B"


async def test_refreshes_inside_the_window_collapse_into_one_deferred_poll(standin, mosquitto):
    # Long enough that three refreshes sent at once land inside it on a busy machine too.
    window = 1.0
    config = make_config(standin.url, mosquitto.port, poll={"min_refresh_interval": window})
    started = time.monotonic()
    async with recording(mosquitto.port) as rec, running(config):
        await settled(rec)
        assert standin.count("credits") == 1
        index = len(rec.messages)
        standin.credits["balance_micro"] = 7_000_000
        for _ in range(3):
            await refresh(mosquitto.port)
        first, *_ = credits_requests(standin)
        # All three inside the window (the first poll's request came just after it opened).
        assert time.monotonic() - first.at < window * 0.75
        await wait_state(rec, lambda d: d["balance"] == "7", after=index, timeout=2)
        _, second = credits_requests(standin)
        # A leftover poll would run at the end of the next window: no event can stand in
        # for it not happening, so this waits out that window (inherent to the behaviour).
        await asyncio.sleep(max(0.0, second.at + window + 0.25 - time.monotonic()))
    # Deferred to the end of the window (which opened after `started`), not dropped, and
    # only once.
    assert window <= second.at - started
    assert second.at - first.at < window + 0.8
    assert standin.count("credits") == 2
    assert [m.text for m in since(rec, index, "cm_mqtt_bridge/main/balance")] == ["7"]


def credits_requests(standin: CrossModelStandin) -> list[Seen]:
    return [s for s in standin.seen if s.path.endswith("/credits")]


# ---- broker and Home Assistant restarts ---------------------------------------------------


async def test_broker_restart_reconnects_and_republishes_everything(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    async with running(config, reconnect_backoff=(0.05, 0.2)) as bridge:
        async with recording(mosquitto.port) as before:
            _, doc = await settled(before)
            device_before = before.last(DEVICE)
        mosquitto.stop()
        mosquitto.start()  # same port, no persistence: every retained message is gone
        async with recording(mosquitto.port) as after:
            await after.wait_topic(STATUS, "online", timeout=5)
            await after.wait_topic(DEVICE, timeout=3)
            _, doc_after = await wait_state(after, timeout=3)
            await after.wait_topic("cm_mqtt_bridge/main/connected", "ON", timeout=3)
            await after.wait_topic(AVAILABILITY, "online", timeout=3)
        assert bridge.metrics.total("mqtt_connections") == 2
    assert device_before is not None
    device_after = after.last(DEVICE)
    assert device_after is not None
    assert device_after.payload == device_before.payload
    assert doc_after == doc
    balance = after.last("cm_mqtt_bridge/main/balance")
    assert balance is not None
    assert (balance.text, balance.retain) == ("8.059489", True)
    defined = [m for m in after.messages if m.topic.startswith("cm_mqtt_bridge/main/")]
    assert len(defined) >= len(PLAIN) + 2
    assert all(m.retain for m in defined)


async def test_home_assistant_birth_republishes_discovery_then_state(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config, rec, birth_delay=(0.0, 0.0)):
        await settled(rec)
        index = len(rec.messages)
        await publish(mosquitto.port, "homeassistant/status", "offline")
        # A refresh sent after it is handled after it: once its new balance is out, a resend
        # the offline had (wrongly) caused, with no birth delay, would be out too.
        standin.credits["balance_micro"] = 9_000_000
        await refresh(mosquitto.port)
        await wait_state(rec, lambda d: d["balance"] == "9", after=index, timeout=2)
        polled = standin.count("credits")
        assert since(rec, index, DEVICE) == []
        assert {json.loads(m.payload)["balance"] for m in since(rec, index, STATE)} == {"9"}
        index = len(rec.messages)
        await publish(mosquitto.port, "homeassistant/status", "online")
        await rec.wait_topic(DEVICE, timeout=2, after=index)
        await wait_state(rec, after=index, timeout=2)
    device = since(rec, index, DEVICE)
    assert len(device) == 1
    assert json.loads(device[0].payload) == expected_discovery()
    topics = [m.topic for m in rec.messages[index:]]
    assert topics.index(DEVICE) < topics.index(STATE)
    assert standin.count("credits") == polled  # a birth resends, it does not poll


# ---- API trouble --------------------------------------------------------------------------


async def test_slow_usage_does_not_delay_the_balance(standin, mosquitto):
    standin.always["usage"] = Reply(delay=10, json=standin.usage)
    config = make_config(standin.url, mosquitto.port, poll={"usage_timeout": 5})
    started = time.monotonic()
    try:
        async with recording(mosquitto.port) as rec, running(config):
            got = await rec.wait_topic("cm_mqtt_bridge/main/balance", "8.059489", timeout=1)
            _, doc = await wait_state(rec, timeout=1)
    finally:
        # The stand-in would otherwise hold its teardown until the 10 s answer is written.
        assert standin.runner is not None
        await standin.runner.server.shutdown(0.1)
    assert got.at - started < 1.0
    assert (doc["balance"], doc["spend_today"], doc["api_status"]) == ("8.059489", None, "ok")


async def test_auth_failure_keeps_values_and_recovers(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config):
        _, good = await settled(rec)
        index = len(rec.messages)
        standin.queue("credits", Reply(status=401, json={"error": "invalid key"}))
        await refresh(mosquitto.port)
        _, bad = await wait_state(rec, lambda d: d["api_status"] == "auth_failed", after=index)
        await rec.wait_topic("cm_mqtt_bridge/main/connected", "OFF", after=index)
        await rec.wait_topic("cm_mqtt_bridge/main/api_status", "auth_failed", after=index)
        failed_at = len(rec.messages)
        await refresh(mosquitto.port)
        _, again = await wait_state(rec, lambda d: d["api_status"] == "ok", after=failed_at)
        await rec.wait_topic("cm_mqtt_bridge/main/connected", "ON", after=failed_at)
    assert bad == good | {
        "api_status": "auth_failed",
        "connected": False,
        "error": bad["error"],
        "last_update": good["last_update"],
    }
    assert "401" in bad["error"]
    assert KEY not in json.dumps(bad)
    assert again == good | {"last_update": again["last_update"]}
    # Values were never unavailable: one failed poll is not stale data.
    assert [m.text for m in rec.on(AVAILABILITY)] == ["online"]
    assert since(rec, index, "cm_mqtt_bridge/main/balance") == []


async def poll_ten_times(
    rec: Recorder,
    bridge: Bridge,
    standin: Any,
    clock: SteppedClock,
    step: timedelta = timedelta(0),
) -> None:
    """Ten refreshes, each one a whole poll whose publishing has reached the recorder."""
    base = standin.count("usage")
    for i in range(1, 11):
        clock.at += step
        await refresh_and_finish(bridge, clock, f"poll {i} over")
        await sent(rec, bridge)
    assert standin.count("usage") == base + 10


async def refresh_and_finish(bridge: Bridge, clock: SteppedClock, what: str) -> None:
    idle = clock.idle
    await refresh(bridge.config.mqtt.port)
    await until(lambda: clock.idle > idle, what=what)


async def first_poll_sent(rec: Recorder, bridge: Bridge, clock: SteppedClock) -> None:
    await until(lambda: clock.idle > 0, what="first poll over")
    await sent(rec, bridge)


# Mid-month, mid-week, mid-day: no window starts during the test.
T0 = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)


async def test_unchanged_values_over_ten_polls_publish_nothing(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    clock = SteppedClock(T0)
    async with recording(mosquitto.port) as rec, running(config, clock=clock) as bridge:
        await settled(rec)
        await first_poll_sent(rec, bridge, clock)
        index = len(rec.messages)
        await poll_ten_times(rec, bridge, standin, clock)
        quiet = [m for m in unmarked(rec, index) if not m.topic.endswith("/set")]
        # The check can fail: a real change right after is seen.
        standin.credits["balance_micro"] = 1
        await refresh(mosquitto.port)
        await wait_state(rec, lambda d: d["balance"] == "0.000001", after=index, timeout=2)
    assert [m.topic for m in quiet] == []
    assert since(rec, index, DEVICE) == []


async def test_unchanged_values_over_ten_polls_a_minute_apart_publish_nothing(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    clock = SteppedClock(T0)
    async with recording(mosquitto.port) as rec, running(config, clock=clock) as bridge:
        _, first = await settled(rec)
        await first_poll_sent(rec, bridge, clock)
        index = len(rec.messages)
        await poll_ten_times(rec, bridge, standin, clock, step=timedelta(seconds=60))
        quiet = [m.topic for m in unmarked(rec, index) if not m.topic.endswith("/set")]
    changed = {
        key
        for m in since(rec, index, STATE)
        for key, value in json.loads(m.payload).items()
        if key != "last_update" and first.get(key) != value
    }
    assert changed == set()
    assert quiet == []


async def test_stale_data_turns_availability_offline_and_back(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port, poll={"stale_after": 0.5})
    async with recording(mosquitto.port) as rec, running(config):
        good_msg, good = await settled(rec)
        await rec.wait_topic(AVAILABILITY, "online")
        standin.always["credits"] = Reply(status=500)
        index = len(rec.messages)
        await refresh(mosquitto.port)
        _, failed = await wait_state(rec, lambda d: d["api_status"] == "server_error", after=index)
        offline = await rec.wait_topic(AVAILABILITY, "offline", timeout=3, after=index)
        standin.always["credits"] = None
        back = len(rec.messages)
        await refresh(mosquitto.port)
        online = await rec.wait_topic(AVAILABILITY, "online", timeout=2, after=back)
        _, recovered = await wait_state(rec, lambda d: d["api_status"] == "ok", after=back)
    # Offline only once the 0.5 s is up (counted from the last good poll, before its publish).
    assert offline.at - good_msg.at > 0.35
    assert (offline.retain, online.retain) == (True, True)
    assert failed["balance"] == good["balance"] == recovered["balance"] == "8.059489"
    assert [m.text for m in rec.on(AVAILABILITY)] == ["online", "offline", "online"]


# ---- devices and components that are gone ------------------------------------------------


async def test_removed_account_loses_its_device_on_next_start(standin, mosquitto):
    old_device = "homeassistant/device/cm_old/config"
    both = make_config(
        standin.url,
        mosquitto.port,
        accounts=[account("main", standin.url), account("old", standin.url)],
    )
    async with recording(mosquitto.port) as rec, running(both):
        await wait_state(rec, has_usage, topic="cm_mqtt_bridge/old/state")
        await wait_device(rec, lambda d: "balance" in d["cmps"], topic=old_device)
    only_main = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(only_main, rec) as bridge:
        await rec.wait_topic(old_device, "", timeout=3)
        await settled(rec)
        async with recording(mosquitto.port) as fresh:
            await fresh.wait_topic(DEVICE)
            # Retained messages come in one go on subscribing: the marker comes after them.
            await barrier(fresh, bridge.publisher)
    removal = [m for m in rec.on(old_device) if not m.payload]
    assert len(removal) == 1
    assert removal[0].retain
    assert fresh.on(old_device) == []
    main = rec.last(DEVICE)
    assert main is not None
    assert json.loads(main.payload) == expected_discovery()


def _previous_run_payload() -> dict[str, Any]:
    """What an earlier version announced: today's components plus one since dropped."""
    doc = expected_discovery()
    doc["cmps"]["old_gauge"] = {
        "p": "sensor",
        "name": "Old gauge",
        "unique_id": "cm_main_old_gauge",
        "state_topic": STATE,
        "value_template": "{{ value_json.old }}",
    }
    return doc


async def test_dropped_component_is_sent_as_bare_platform(standin, mosquitto):
    await publish(mosquitto.port, DEVICE, json.dumps(_previous_run_payload()), retain=True)
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config, rec):
        got = await wait_device(rec, lambda d: d["cmps"]["old_gauge"] == {"p": "sensor"})
        await settled(rec)
    assert got.retain
    assert json.loads(got.payload) == expected_discovery(removed={"old_gauge": "sensor"})
    # The earlier run's retained message, then exactly one new one.
    assert len(rec.on(DEVICE)) == 2


async def test_a_birth_resends_the_removal_byte_for_byte(standin, mosquitto):
    # The publisher keeps only a digest of the device message and builds it again to resend
    # it: the removal it carried must be in the resend too, until the next device message.
    await publish(mosquitto.port, DEVICE, json.dumps(_previous_run_payload()), retain=True)
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config, rec, birth_delay=(0.0, 0.0)):
        first = await wait_device(rec, lambda d: d["cmps"]["old_gauge"] == {"p": "sensor"})
        await settled(rec)
        index = len(rec.messages)
        await publish(mosquitto.port, "homeassistant/status", "online")
        again = await rec.wait_topic(DEVICE, timeout=2, after=index)
    assert again.payload == first.payload


async def test_foreign_device_messages_are_left_alone(standin, mosquitto):
    foreign = "homeassistant/device/cm_other/config"
    theirs = json.loads(json.dumps(expected_discovery()))
    for cfg in theirs["cmps"].values():  # another bridge, another base topic
        for key in ("state_topic", "json_attributes_topic"):
            if key in cfg:
                cfg[key] = cfg[key].replace("cm_mqtt_bridge/", "other_bridge/")
    await publish(mosquitto.port, foreign, json.dumps(theirs), retain=True)
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config, rec):
        await settled(rec)
    assert [m.retain for m in rec.on(foreign)] == [True]
    assert all(m.payload for m in rec.on(foreign))


async def test_dropped_component_is_left_out_after_its_removal_was_sent(standin, mosquitto):
    await publish(mosquitto.port, DEVICE, json.dumps(_previous_run_payload()), retain=True)
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config):
        await settled(rec)
        await wait_device(rec, lambda d: d["cmps"]["old_gauge"] == {"p": "sensor"})
        index = len(rec.messages)
        standin.credits["currency"] = standin.usage["currency"] = "EUR"
        await refresh(mosquitto.port)
        got = await rec.wait_topic(DEVICE, timeout=2, after=index)
    cmps = json.loads(got.payload)["cmps"]
    assert cmps["balance"]["unit_of_measurement"] == "EUR"
    assert "old_gauge" not in cmps
    assert json.loads(got.payload) == expected_discovery("EUR")


async def test_currency_change_republishes_discovery_with_new_unit(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config, rec):
        await settled(rec)
        index = len(rec.messages)
        standin.credits["currency"] = standin.usage["currency"] = "EUR"
        await refresh(mosquitto.port)
        got = await rec.wait_topic(DEVICE, timeout=2, after=index)
        _, doc = await wait_state(rec, lambda d: d["currency"] == "EUR", after=index)
    cmps = json.loads(got.payload)["cmps"]
    assert cmps["balance"]["unit_of_measurement"] == "EUR"
    assert cmps["spend_today"]["unit_of_measurement"] == "EUR"
    assert json.loads(got.payload) == expected_discovery("EUR")
    assert got.retain
    assert len(since(rec, index, DEVICE)) == 1
    assert doc["balance"] == "8.059489"


# ---- bad input ----------------------------------------------------------------------------


async def test_bad_commands_do_not_disturb_the_bridge(standin, mosquitto, caplog):
    caplog.set_level(logging.WARNING)
    config = make_config(standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, running(config) as bridge:
        await settled(rec)
        await publish(mosquitto.port, "cm_mqtt_bridge/nosuch/refresh/set", "PRESS")
        await publish(mosquitto.port, "cm_mqtt_bridge/Main/refresh/set", b"\xff\x00")
        await publish(mosquitto.port, "homeassistant/status", b"\xff\xfe\x00 not a status")
        await publish(mosquitto.port, "homeassistant/status", "")
        for command in ("low_balance_below", "runway_below_days", "nonsense", "state"):
            for junk in (b"\xff\xfe", b"-1", b"1e999", b"NaN", b""):
                await publish(mosquitto.port, f"cm_mqtt_bridge/main/{command}/set", junk)
        # A poll a junk command (wrongly) asked for would collapse into any later refresh,
        # so no later event can show it: a short settle for its request to reach the stand-in.
        await asyncio.sleep(0.4)
        assert standin.count("credits") == 1
        index = len(rec.messages)
        # Any payload on the account's own topic refreshes it, binary and empty ones too.
        standin.credits["balance_micro"] = 3_000_000
        await refresh(mosquitto.port, REFRESH, b"\x00\xff" * 50_000)
        await wait_state(rec, lambda d: d["balance"] == "3", after=index, timeout=2)
        standin.credits["balance_micro"] = 4_000_000
        await refresh(mosquitto.port, REFRESH, b"")
        await wait_state(rec, lambda d: d["balance"] == "4", after=index, timeout=2)
        assert bridge.metrics.total("mqtt_connections") == 1
    assert standin.count("credits") == 3
    assert since(rec, index, DEVICE) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
