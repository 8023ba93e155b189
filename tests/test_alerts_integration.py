"""Alerts end to end, in-process: a real Mosquitto, the CrossModel stand-in, and aiohttp
stand-ins for ntfy and the webhook. Nothing is mocked; time is real but short."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cm_mqtt_bridge.config.settings import Config
from cm_mqtt_bridge.core.clock import Clock
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from cm_mqtt_bridge.store.db import DB_NAME
from tests.helpers import bare, db_rows, outbox, until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import Recorder, barrier, make_config, publish, recording
from tests.receivers import Receivers
from tests.standin import CrossModelStandin, Reply

BASE = "cm_mqtt_bridge/main"
STATE = f"{BASE}/state"
ALERTS = f"{BASE}/alerts"
ACTIVE = f"{BASE}/alerts/active"
REFRESH = f"{BASE}/refresh/set"
SET_LOW = f"{BASE}/low_balance_below/set"
SET_RUNWAY = f"{BASE}/runway_below_days/set"
DEVICE = "homeassistant/device/cm_main/config"
TOPIC = "wallet"
SECRET = "hook-secret-7f3a"
HOLDS = 125_000  # the stand-in's uncollected_micro
THRESHOLD = 5_000_000
LOW = {"low_balance": {"below": "5.00", "margin": "0.50"}}
# A channel that failed tries again after this long (5 s in production): long enough for a
# test to see the failure and bring the receiver back (tens of ms), short enough not to wait
# for it.
DISPATCH_BACKOFF = 0.5


def alert_config(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    data_dir: Path,
    alerts: dict[str, Any] | None = None,
) -> Config:
    return make_config(
        standin.url,
        mosquitto.port,
        data_dir=str(data_dir),
        extra={
            "alerts": alerts or LOW,
            "notify": {
                "ntfy": {"url": ntfy.url, "topic": TOPIC},
                "webhook": {"url": hook.webhook_url, "secret": SECRET},
            },
        },
    )


@contextlib.asynccontextmanager
async def running(
    config: Config, dispatch_backoff: float = DISPATCH_BACKOFF, clock: Clock | None = None
) -> AsyncIterator[Bridge]:
    timings = Timings.fast(
        dispatch_backoff=(dispatch_backoff, 300.0),
        restart_backoff=(0.1, 1.0),
        retry_backoff=(0.1, 1.0),
    )
    bridge = Bridge(config, clock=clock, timings=timings)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def set_available(standin: CrossModelStandin, micro: int) -> None:
    standin.credits["balance_micro"] = micro + HOLDS


def all_delivered(data_dir: Path, rows: int) -> bool:
    """The outbox holds `rows` rows, every one delivered: nothing is left for any channel to
    send, so no later POST or MQTT alert can come from them."""
    box = outbox(data_dir)
    return len(box) == rows and all(row[3] for row in box)


async def wait_doc(
    rec: Recorder, pred: Callable[[dict[str, Any]], bool], after: int = 0, timeout: float = 5.0
) -> dict[str, Any]:
    def check(r: Recorder) -> dict[str, Any] | None:
        for m in r.messages[after:]:
            if m.topic != STATE:
                continue
            doc: dict[str, Any] = json.loads(m.payload)
            if pred(doc):
                return doc
        return None

    found: dict[str, Any] = await rec.wait_for(check, timeout, "state document")
    return found


def alert_ids(rec: Recorder) -> list[str]:
    return [bare(json.loads(m.payload)["id"]) for m in rec.on(ALERTS)]


def active_rules(rec: Recorder) -> list[list[str]]:
    return [[a["rule"] for a in json.loads(m.payload)] for m in rec.on(ACTIVE)]


# ---- one alert per crossing, on every channel ------------------------------------------------


async def test_one_alert_per_crossing_on_every_channel(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, hook, data)
    async with recording(mosquitto.port) as rec, running(config) as bridge:
        await wait_doc(rec, lambda d: d.get("alert_low_balance") is False)
        await rec.wait_for(lambda r: active_rules(r) == [[]], what="empty alerts/active")
        disc = json.loads(rec.last(DEVICE).payload)  # type: ignore[union-attr]
        assert disc["cmps"]["alert"]["state_topic"] == ALERTS
        assert disc["cmps"]["alert"]["event_types"] == ["low_balance", "test"]

        # ---- the balance drops below 5.00 ----
        set_available(standin, 4_000_000)
        await publish(mosquitto.port, REFRESH, "PRESS")
        (push,) = await ntfy.wait_for(lambda r: r.ntfy(TOPIC), what="ntfy POST")
        (post,) = await hook.wait_for(lambda r: r.webhook(), what="webhook POST")
        msg = await rec.wait_topic(ALERTS)

        assert push.text == "CrossModel Main: available balance 4.00 USD is below 5.00 USD"
        assert bare(push.header("X-Message-Id")) == "main.low_balance.1"
        assert push.header("Title") == "CrossModel Main"
        assert push.header("Priority") == "4"  # ntfy "high", the configured default
        assert push.header("Tags") == "moneybag"
        assert push.header("Authorization") is None

        expected_sig = "sha256=" + hmac.new(SECRET.encode(), post.body, hashlib.sha256).hexdigest()
        assert post.header("X-CM-Bridge-Signature") == expected_sig
        assert bare(post.header("X-CM-Bridge-Id")) == "main.low_balance.1"
        assert post.header("Content-Type") == "application/json"
        body = post.json()
        at = body.pop("at")
        body["id"] = bare(body["id"])
        assert body == {
            "id": "main.low_balance.1",
            "account": "main",
            "event_type": "low_balance",
            "rule": "low_balance",
            "kind": "fired",
            "title": "CrossModel Main",
            "message": "CrossModel Main: available balance 4.00 USD is below 5.00 USD",
            "value": "4.00 USD",
            "threshold": "5.00 USD",
            "priority": None,
            "tags": [],
        }

        assert (msg.qos, msg.retain) == (1, False)
        event = json.loads(msg.payload)
        assert (event["event_type"], bare(event["id"]), event["kind"], event["at"]) == (
            "low_balance",
            "main.low_balance.1",
            "fired",
            at,
        )
        await rec.wait_for(lambda r: active_rules(r)[-1] == ["low_balance"], what="active list")
        active = rec.last(ACTIVE)
        assert active is not None
        assert active.retain
        assert json.loads(active.payload) == [{"rule": "low_balance", "since": at}]
        doc = await wait_doc(rec, lambda d: d.get("alert_low_balance") is True)
        assert doc["available"] == "4"

        # ---- wobbling +-1 micro around the threshold for 20 polls ----
        acc = bridge.accounts["main"]
        polls = acc.polls
        for n in range(20):
            set_available(standin, THRESHOLD + 1 if n % 2 == 0 else THRESHOLD - 1)
            await acc.poll_once()
        assert acc.polls == polls + 20
        await wait_doc(rec, lambda d: d.get("available") == "4.999999")
        assert [r[:2] for r in outbox(data)] == [
            ("main.low_balance.1", "mqtt"),
            ("main.low_balance.1", "ntfy"),
            ("main.low_balance.1", "webhook"),
        ]
        # Every row delivered and the rule fired once: no channel has anything left to send,
        # and the MQTT alert sent before the marker has reached the recorder.
        await until(lambda: all_delivered(data, 3), what="first alert delivered everywhere")
        assert db_rows(data, "SELECT rule, firing, seq FROM rule_state") == [("low_balance", 1, 1)]
        await barrier(rec, bridge.publisher)
        assert (len(ntfy.posts), len(hook.posts), alert_ids(rec)) == (
            1,
            1,
            ["main.low_balance.1"],
        )

        # ---- recovery past the margin (5.50), then a new drop ----
        set_available(standin, 5_500_000)
        await acc.poll_once()
        await rec.wait_for(lambda r: active_rules(r)[-1] == [], what="active list cleared")
        set_available(standin, THRESHOLD - 1)
        await acc.poll_once()
        await ntfy.wait_for(lambda r: len(r.ntfy(TOPIC)) == 2, what="second ntfy POST")
        await hook.wait_for(lambda r: len(r.webhook()) == 2, what="second webhook POST")
        await rec.wait_for(lambda r: len(r.on(ALERTS)) == 2, what="second MQTT alert")
        await until(lambda: all_delivered(data, 6), what="second alert delivered everywhere")
        await barrier(rec, bridge.publisher)

    assert [bare(p.header("X-Message-Id")) for p in ntfy.posts] == [
        "main.low_balance.1",
        "main.low_balance.2",
    ]
    assert ntfy.posts[1].text == "CrossModel Main: available balance 4.999999 USD is below 5.00 USD"
    assert [bare(p.header("X-CM-Bridge-Id")) for p in hook.posts] == [
        "main.low_balance.1",
        "main.low_balance.2",
    ]
    assert alert_ids(rec) == ["main.low_balance.1", "main.low_balance.2"]
    assert all(m.qos == 1 and not m.retain for m in rec.on(ALERTS))
    assert all(m.retain for m in rec.on(ACTIVE))
    assert all(outbox_row[3] for outbox_row in outbox(data))
    assert db_rows(data, "SELECT rule, firing, seq FROM rule_state") == [("low_balance", 1, 2)]


# ---- a channel that is down ------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["http_503", "stopped"])
async def test_ntfy_down_when_the_alert_fires_delivers_once_it_is_back(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    outage: str,
) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, hook, data)
    async with recording(mosquitto.port) as rec, running(config) as bridge:
        await wait_doc(rec, lambda d: d.get("alert_low_balance") is False)
        if outage == "http_503":
            ntfy.fail(503)
        else:
            await ntfy.stop()
        set_available(standin, 1_000_000)
        await bridge.accounts["main"].poll_once()

        # The other channels do not wait for ntfy.
        await hook.wait_for(lambda r: r.webhook(), what="webhook POST")
        await rec.wait_topic(ALERTS)
        # ntfy: retried, then kept in the outbox with a later retry time.
        await until(
            lambda: ("main.low_balance.1", "ntfy", 1, False) in outbox(data),
            what="ntfy row marked failed",
        )
        assert len(ntfy.posts) == (3 if outage == "http_503" else 0)
        assert not any(p.ok for p in ntfy.posts)
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "cm_mqtt_bridge.notify.dispatch" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1
        assert warnings[0].startswith("ntfy: could not deliver alert main.low_balance.1.")
        assert warnings[0].endswith(f"); kept, next try in {DISPATCH_BACKOFF:g} s")
        if outage == "http_503":
            assert "(HTTP 503: receiver unavailable)" in warnings[0]

        # ---- ntfy is back ----
        if outage == "http_503":
            ntfy.recover()
        else:
            await ntfy.start()
        # Sent once its backoff is over (0.5 s here), not after a second, longer one.
        (delivered,) = await ntfy.wait_for(
            lambda r: r.ntfy(TOPIC, ok_only=True),
            timeout=DISPATCH_BACKOFF + 4,
            what="delivery after the outage",
        )
        # Recorded as delivered: nothing is left in the outbox to send again.
        await until(lambda: all_delivered(data, 3), what="ntfy delivery recorded")
        await barrier(rec, bridge.publisher)

    assert bare(delivered.header("X-Message-Id")) == "main.low_balance.1"
    assert delivered.text == "CrossModel Main: available balance 1.00 USD is below 5.00 USD"
    assert len(ntfy.ntfy(TOPIC, ok_only=True)) == 1
    assert len(hook.posts) == 1
    assert alert_ids(rec) == ["main.low_balance.1"]
    assert outbox(data) == [
        ("main.low_balance.1", "mqtt", 1, True),
        ("main.low_balance.1", "ntfy", 2, True),
        ("main.low_balance.1", "webhook", 1, True),
    ]


# ---- the broker is down ----------------------------------------------------------------------


async def fire_while_the_broker_is_down(
    bridge: Bridge, standin: CrossModelStandin, mosquitto: Mosquitto, data: Path
) -> None:
    await until(
        lambda: bridge.publisher.connected.is_set() and bridge.accounts["main"].view.alerts,
        what="bridge up",
    )
    await asyncio.to_thread(mosquitto.stop)
    await until(lambda: not bridge.publisher.connected.is_set(), what="disconnect noticed")
    set_available(standin, 1_000_000)
    await bridge.accounts["main"].poll_once()
    await until(
        lambda: any(
            row[:2] == ("main.low_balance.1", "mqtt") and row[2] >= 1 and not row[3]
            for row in outbox(data)
        ),
        what="MQTT alert kept in the outbox",
    )


class ConnectGate:
    """Holds the bridge's MQTT connection attempts while closed. The bridge reconnects within
    ~0.1 s here, so a test closes the gate to subscribe to a restarted broker first."""

    def __init__(self, bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = asyncio.Event()
        self.opened.set()
        self.connecting = 0
        make_client = bridge.publisher.broker.client
        gate = self

        class Gated:
            def __init__(self, client: Any) -> None:
                self.client = client

            async def __aenter__(self) -> Any:
                await gate.opened.wait()
                gate.connecting += 1
                try:
                    return await self.client.__aenter__()
                finally:
                    gate.connecting -= 1

            async def __aexit__(self, *exc: Any) -> Any:
                return await self.client.__aexit__(*exc)

        monkeypatch.setattr(
            bridge.publisher.broker,
            "client",
            lambda *, probe=False: Gated(make_client(probe=probe)),
        )

    async def close(self) -> None:
        """Closed, and no attempt that passed before is still under way."""
        self.opened.clear()
        await until(lambda: self.connecting == 0, what="no connection attempt under way")


async def test_broker_down_when_the_alert_fires_publishes_it_after_reconnect(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, hook, data)
    # A backoff far longer than the test: what goes out on reconnect did not wait for it.
    async with running(config, dispatch_backoff=60.0) as bridge:
        gate = ConnectGate(bridge, monkeypatch)
        await fire_while_the_broker_is_down(bridge, standin, mosquitto, data)
        # The push channels did not wait for the broker.
        assert [bare(p.header("X-Message-Id")) for p in ntfy.posts] == ["main.low_balance.1"]
        assert [bare(p.header("X-CM-Bridge-Id")) for p in hook.posts] == ["main.low_balance.1"]

        connections = bridge.metrics.total("mqtt_connections")
        # The recorder subscribes to the restarted broker before the bridge is let back on.
        await gate.close()
        await asyncio.to_thread(mosquitto.start)
        async with recording(mosquitto.port) as rec:
            gate.opened.set()
            await until(
                lambda: (
                    bridge.metrics.total("mqtt_connections") > connections
                    and bridge.publisher.connected.is_set()
                ),
                timeout=10,
                what="reconnect",
            )
            # It waited out no backoff: it goes as soon as the broker is back.
            msg = await rec.wait_topic(ALERTS, timeout=1.0)
            await rec.wait_for(lambda r: r.on(ACTIVE) and active_rules(r)[-1] == ["low_balance"])
            await until(lambda: all_delivered(data, 3), what="MQTT delivery recorded")
            await barrier(rec, bridge.publisher)
    event = json.loads(msg.payload)
    assert (bare(event["id"]), event["event_type"], msg.qos, msg.retain) == (
        "main.low_balance.1",
        "low_balance",
        1,
        False,
    )
    assert alert_ids(rec) == ["main.low_balance.1"]
    (row,) = [r for r in outbox(data) if r[:2] == ("main.low_balance.1", "mqtt")]
    assert row[2] >= 2  # failed while the broker was down, then delivered
    assert row[3] is True


# ---- thresholds from Home Assistant ----------------------------------------------------------


async def test_threshold_from_ha_is_validated_applied_persisted_and_survives_restart(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    config = alert_config(
        standin,
        mosquitto,
        ntfy,
        hook,
        data,
        alerts={**LOW, "runway": {"below_days": 3}},
    )
    port = mosquitto.port
    async with recording(port) as rec:
        async with running(config) as bridge:
            await wait_doc(rec, lambda d: d.get("low_balance_below") == "5")
            bad = ["-1", "2000000", "abc", "", "NaN"]
            for payload in bad:
                await publish(port, SET_LOW, payload)
            await publish(port, SET_LOW, "3.5")
            await publish(port, SET_RUNWAY, "7.5")
            doc = await wait_doc(
                rec,
                lambda d: d.get("low_balance_below") == "3.5" and d["runway_below_days"] == "7.5",
            )
            assert doc["alert_low_balance"] is False

            rejected = [
                r.getMessage()
                for r in caplog.records
                if r.name == "cm_mqtt_bridge.service.inbound" and r.levelno == logging.WARNING
            ]
            assert rejected == [
                "main: rejected threshold from MQTT: low_balance_below: '-1' is outside 0..1000000",
                "main: rejected threshold from MQTT: low_balance_below: '2000000' is outside "
                "0..1000000",
                "main: rejected threshold from MQTT: low_balance_below: 'abc' is not a number",
                "main: rejected threshold from MQTT: low_balance_below: '' is not a number",
                "main: rejected threshold from MQTT: low_balance_below: 'NaN' is outside "
                "0..1000000",
            ]
            # No rejected payload ever reached the state document.
            shown = [
                d["low_balance_below"]
                for m in rec.on(STATE)
                if "low_balance_below" in (d := json.loads(m.payload))
            ]
            assert sorted(set(shown), key=shown.index) == ["5", "3.5"]
            assert db_rows(
                data, "SELECT account, key, value, config_value FROM overrides ORDER BY key"
            ) == [
                ("main", "low_balance_below", "3.5", "5"),
                ("main", "runway_below_days", "7.5", "3"),
            ]

            # Applied at once, without waiting for a poll: 8.00 is above the 7.93 available.
            polls = bridge.accounts["main"].polls
            await publish(port, SET_LOW, "8")
            msg = await rec.wait_topic(ALERTS)
            event = json.loads(msg.payload)
            assert (bare(event["id"]), event["value"], event["threshold"]) == (
                "main.low_balance.1",
                "7.93 USD",
                "8.00 USD",
            )
            await wait_doc(rec, lambda d: d.get("low_balance_below") == "8")
            assert bridge.accounts["main"].polls == polls
            await ntfy.wait_for(lambda r: r.ntfy(TOPIC))
            await hook.wait_for(lambda r: r.webhook())
            await until(lambda: all_delivered(data, 3), what="alert delivered everywhere")

        # ---- restart with the same data dir ----
        fired_state = db_rows(
            data, "SELECT rule, firing, since, last_notified, seq FROM rule_state"
        )
        assert [r[:2] + r[4:] for r in fired_state] == [("low_balance", 1, 1)]
        after = len(rec.messages)
        async with running(config) as bridge:
            doc = await wait_doc(
                rec, lambda d: "low_balance_below" in d and d["balance"] is not None, after=after
            )
            assert (doc["low_balance_below"], doc["runway_below_days"]) == ("8", "7.5")
            assert doc["alert_low_balance"] is True  # still firing: not re-fired
            # That state was evaluated: a re-fire would already be in the outbox and sent
            # on MQTT before the marker.
            await barrier(rec, bridge.publisher)
            assert all_delivered(data, 3)
        # The rule was not fired again (that would move `since`/`last_notified`).
        assert (
            db_rows(data, "SELECT rule, firing, since, last_notified, seq FROM rule_state")
            == fired_state
        )
    assert alert_ids(rec) == ["main.low_balance.1"]
    assert len(ntfy.posts) == 1
    assert db_rows(data, "SELECT value FROM overrides ORDER BY key") == [("8",), ("7.5",)]


# ---- the API rejects the key -----------------------------------------------------------------


async def test_auth_failed_alert_from_a_rejected_key(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, hook, data, alerts={"auth_failed": True})
    async with recording(mosquitto.port) as rec, running(config) as bridge:
        await wait_doc(rec, lambda d: d.get("alert_auth_failed") is False)
        standin.always["credits"] = Reply(status=401, json={"error": "invalid key"})
        acc = bridge.accounts["main"]
        await acc.poll_once()
        await acc.poll_once()
        msg = await rec.wait_topic(ALERTS)
        await wait_doc(rec, lambda d: d.get("alert_auth_failed") is True)
        standin.always["credits"] = None
        await acc.poll_once()
        await wait_doc(
            rec, lambda d: d.get("alert_auth_failed") is False, after=len(rec.messages) - 1
        )
        await ntfy.wait_for(lambda r: r.ntfy(TOPIC))
        await until(lambda: all_delivered(data, 3), what="auth_failed delivered everywhere")
        await barrier(rec, bridge.publisher)
    event = json.loads(msg.payload)
    assert (bare(event["id"]), event["event_type"], event["value"]) == (
        "main.auth_failed.1",
        "auth_failed",
        "auth_failed",
    )
    assert alert_ids(rec) == ["main.auth_failed.1"]
    assert [bare(p.header("X-Message-Id")) for p in ntfy.posts] == ["main.auth_failed.1"]


# ---- the database is busy --------------------------------------------------------------------


async def test_a_locked_database_does_not_stop_polling(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = alert_config(standin, mosquitto, ntfy, hook, data)
    async with recording(mosquitto.port) as rec, running(config) as bridge:
        await wait_doc(rec, lambda d: d.get("alert_low_balance") is False)
        assert bridge.store is not None
        store = bridge.store
        locker = sqlite3.connect(data / DB_NAME, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")  # e.g. a backup or an sqlite3 shell
            set_available(standin, 6_000_000)  # a new figure: the poll writes a sample
            polled = standin.count("credits")
            await publish(mosquitto.port, REFRESH, "PRESS")
            await until(lambda: standin.count("credits") > polled, what="poll while locked")
            # The bridge's write waits out SQLite's busy timeout, then gives up.
            await until(lambda: store.problem is not None, what="the locked write given up")
        finally:
            locker.rollback()
            locker.close()
        # The lock is gone: the next refresh polls again and the alert fires.
        set_available(standin, 1_000_000)
        polled = standin.count("credits")
        await publish(mosquitto.port, REFRESH, "PRESS")
        await until(lambda: standin.count("credits") > polled, timeout=2, what="poll after lock")
        await rec.wait_topic(ALERTS, timeout=3)
