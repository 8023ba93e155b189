"""A device is announced once on a first start, with its money entities: discovery waits for
the first poll (the currency), because Home Assistant 2024.11-2025.4 can drop a component of
a device message that arrives while it still handles the one before (seen in the HA harness:
one dashboard card "Entity not available" until HA restarted). When the API does not answer,
the device is announced anyway: at the first failed poll, or after Timings.discovery_grace. Real
Mosquitto and stand-in API; the bridge's timers on a clock the test drives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cm_mqtt_bridge.core.timings import DEFAULTS
from tests.fakes import ManualClock
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import Recorder, make_config, recording
from tests.standin import CrossModelStandin, Reply
from tests.test_clock_steps import T0, running

DEVICE = "homeassistant/device/cm_main/config"
BALANCE = "cm_mqtt_bridge/main/balance"


def devices(rec: Recorder) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in rec.messages if m.topic == DEVICE]


async def test_a_first_start_announces_the_device_once_with_its_money_entities(
    standin: CrossModelStandin, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # The answer comes after the bridge has connected: the case that used to send twice.
    standin.queue("credits", Reply(json=standin.credits, delay=0.5))
    cfg = make_config(standin.url, mosquitto.port, data_dir=str(tmp_path))
    async with recording(mosquitto.port) as rec, running(cfg, ManualClock(T0)):
        await rec.wait_for(lambda r: r.last(BALANCE), what="the first balance")
        await rec.wait_for(devices, what="the device")
    (device,) = devices(rec)
    assert device["cmps"]["balance"]["unit_of_measurement"] == "USD"


async def test_without_an_answer_the_device_is_announced_after_the_grace(
    standin: CrossModelStandin, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    standin.queue("credits", Reply(json=standin.credits, delay=30))  # hangs past the test
    cfg = make_config(standin.url, mosquitto.port, data_dir=str(tmp_path))
    clock = ManualClock(T0)
    async with recording(mosquitto.port) as rec, running(cfg, clock):
        await rec.wait_for(lambda r: r.last("cm_mqtt_bridge/status"), what="bridge online")
        clock.advance(DEFAULTS.discovery_grace - 1)
        assert devices(rec) == []
        clock.advance(1)
        await rec.wait_for(devices, what="the device after the grace")
    (device,) = devices(rec)
    assert "balance" not in device["cmps"]  # no currency yet: the money entities come later
    assert device["cmps"]


async def test_a_failed_first_poll_announces_the_device_at_once(
    standin: CrossModelStandin, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    standin.always["credits"] = Reply(status=401, json={"error": "invalid key"})
    cfg = make_config(standin.url, mosquitto.port, data_dir=str(tmp_path))
    async with recording(mosquitto.port) as rec, running(cfg, ManualClock(T0)):
        await rec.wait_for(devices, what="the device after the failed poll")
    (device,) = devices(rec)
    assert "balance" not in device["cmps"]
