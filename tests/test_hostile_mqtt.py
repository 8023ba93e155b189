"""Hostile peers on a real broker (issue 11, finding 6): a spoofed retained discovery message
is ignored with one log line, and a flood of commands for unknown accounts is one warning."""

from __future__ import annotations

import asyncio
import json
import logging

import aiomqtt
import pytest

from cm_mqtt_bridge.commands import LimitedWarning
from cm_mqtt_bridge.service import Bridge
from tests.fakes import FakeClock
from tests.helpers import until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import make_config, publish, recording
from tests.standin import CrossModelStandin

DEVICE = "homeassistant/device/cm_main/config"


def spoofed(components: int, unique_ids: bool) -> bytes:
    """Claims our origin and reads from our base topic, but was not written by this bridge."""
    cmps = {
        f"x{i}": {
            "p": "sensor",
            "state_topic": "cm_mqtt_bridge/main/state",
            **({"unique_id": f"evil_{i}"} if unique_ids else {}),
        }
        for i in range(components)
    }
    doc = {
        "dev": {"identifiers": ["cm_main"], "name": "CrossModel Main"},
        "o": {"name": "cm-mqtt-bridge", "sw_version": "9.9"},
        "cmps": cmps,
    }
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (spoofed(20_000, True), "larger than 262144 bytes"),  # about 1.8 MB, as in the issue
        (spoofed(250, True), "more than 200 components"),
        (spoofed(5, True), "a component unique_id this bridge did not write"),
    ],
    ids=["1.8 MB", "250 components", "foreign unique_ids"],
)
async def test_a_spoofed_retained_discovery_message_is_ignored_with_one_line(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
    why: str,
) -> None:
    await publish(mosquitto.port, DEVICE, payload, retain=True)
    config = make_config(standin.url, mosquitto.port)
    stop = asyncio.Event()
    async with recording(mosquitto.port, DEVICE) as rec:
        await rec.wait_topic(DEVICE)  # the spoofed retained one
        task = asyncio.create_task(Bridge(config, readback_seconds=2).run(stop))
        try:
            await rec.wait_for(lambda r: len(r.on(DEVICE)) >= 2, timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
    ours = json.loads(rec.on(DEVICE)[1].payload)
    assert len(rec.on(DEVICE)[1].payload) < 64 * 1024
    assert not [k for k in ours["cmps"] if k.startswith("x")], "no removals for foreign ids"
    warnings = [r.getMessage() for r in caplog.records if "did not write" in r.getMessage()]
    assert warnings == [f"ignored retained discovery this bridge did not write: {DEVICE} ({why})"]


async def test_a_flood_of_commands_for_unknown_accounts_is_one_warning(
    standin: CrossModelStandin, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(standin.url, mosquitto.port)
    stop = asyncio.Event()
    bridge = Bridge(config, readback_seconds=0.1)
    task = asyncio.create_task(bridge.run(stop))
    try:
        await until(bridge.publisher.connected.is_set, 10, "connected")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="flood") as client:
            for i in range(1010):
                await client.publish(f"cm_mqtt_bridge/acc{i}/refresh/set", b"PRESS", qos=1)
                await client.publish(f"cm_mqtt_bridge/main/bogus{i}/set", b"1", qos=1)
            # Delivered in order on one connection: once this is handled, so are the others.
            await client.publish("cm_mqtt_bridge/main/refresh/set", b"PRESS", qos=1)
        await until(lambda: any("refresh requested" in r.getMessage() for r in caplog.records), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "command for unknown account 'acc0' ignored",
        "main: unknown command 'bogus0' ignored",
    ]


def test_a_limited_warning_logs_the_count_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    limited = LimitedWarning(clock, "commands for unknown accounts")
    for i in range(5):
        limited.warn("command for unknown account %r ignored", f"a{i}")
    clock.advance(61)
    limited.warn("command for unknown account %r ignored", "late")
    assert [r.getMessage() for r in caplog.records] == [
        "command for unknown account 'a0' ignored",
        "command for unknown account 'late' ignored "
        "(4 more commands for unknown accounts ignored in the last minute)",
    ]
