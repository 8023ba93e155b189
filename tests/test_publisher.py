"""The retained-state reconciler on a real broker: volume, and nothing sent twice."""

from __future__ import annotations

import asyncio
import time

from cm_mqtt_bridge.clock import SystemClock
from cm_mqtt_bridge.config import MqttConfig
from cm_mqtt_bridge.discovery import Topics
from cm_mqtt_bridge.publisher import Kind, Publisher
from tests.mqtt_helpers import recording


async def _ignore(topic: str, payload: bytes) -> None:
    return None


async def test_twenty_thousand_retained_topics_go_out_on_one_connection(mosquitto):
    # Starting every publish at once once made this time out and reconnect forever.
    cfg = MqttConfig(host="127.0.0.1", port=mosquitto.port, client_id="reconciler-test")
    pub = Publisher(
        cfg,
        Topics("cm_mqtt_bridge", "homeassistant"),
        SystemClock(),
        subscriptions=(),
        on_message=_ignore,
    )
    for i in range(20_000):
        pub.set(f"cm_mqtt_bridge/acc{i // 10}/value{i % 10}", str(i), Kind.STATE)
    async with recording(mosquitto.port, "cm_mqtt_bridge/acc1999/#") as rec:
        task = asyncio.create_task(pub.run())
        started = time.monotonic()
        while not pub.all_sent():
            assert time.monotonic() - started < 15, f"{pub.publish_count} sent"
            await asyncio.sleep(0.05)
        await rec.wait_for(lambda r: len(r.messages) == 10, what="the last account's topics")
        sent_once = pub.publish_count
        pub.set("cm_mqtt_bridge/acc0/value0", "0", Kind.STATE)  # unchanged: nothing to send
        pub.set("cm_mqtt_bridge/acc0/value1", "changed", Kind.STATE)
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert pub.connections == 1
    assert sent_once == 20_000
    assert pub.publish_count == 20_001
