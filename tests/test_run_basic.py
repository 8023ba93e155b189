"""The `run` service against a real Mosquitto and the CrossModel stand-in."""

from __future__ import annotations

import asyncio
import json

from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from tests.mqtt_helpers import make_config, recording


async def test_first_publish_has_status_discovery_state_and_plain_values(standin, mosquitto):
    config = make_config(standin.url, mosquitto.port)
    bridge = Bridge(config, timings=Timings(readback_seconds=0.1))
    stop = asyncio.Event()
    async with recording(mosquitto.port) as rec:
        task = asyncio.create_task(bridge.run(stop))
        state = await rec.wait_topic("cm_mqtt_bridge/main/state")
        await rec.wait_topic("cm_mqtt_bridge/main/balance")
        stop.set()
        await asyncio.wait_for(task, 5)
        # The bridge's `offline` is on its way: the recorder must stay until it arrives.
        await rec.wait_topic("cm_mqtt_bridge/status", "offline")
    doc = json.loads(state.payload)
    assert doc["balance"] == "8.059489"
    assert doc["available"] == "7.934489"
    assert state.retain
    balance = rec.last("cm_mqtt_bridge/main/balance")
    assert balance is not None
    assert balance.text == "8.059489"
    disc = rec.last("homeassistant/device/cm_main/config")
    assert disc is not None
    assert disc.retain
    assert json.loads(disc.payload)["cmps"]["balance"]["unit_of_measurement"] == "USD"
    assert [m.text for m in rec.on("cm_mqtt_bridge/status")] == ["online", "offline"]
