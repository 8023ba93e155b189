"""The retained-state reconciler on a real broker: volume, and nothing sent twice."""

from __future__ import annotations

import asyncio

from cm_mqtt_bridge.config.settings import MqttConfig
from cm_mqtt_bridge.core.clock import SystemClock
from cm_mqtt_bridge.ha.topics import Kind, Topics
from cm_mqtt_bridge.service.publisher import Publisher
from tests.helpers import until
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
        await until(pub.in_sync, timeout=15, what="all 20,000 topics sent")
        await rec.wait_for(lambda r: len(r.messages) == 10, what="the last account's topics")
        sent_once = pub.metrics.total("mqtt_messages")
        pub.set("cm_mqtt_bridge/acc0/value0", "0", Kind.STATE)  # unchanged: nothing to send
        pub.set("cm_mqtt_bridge/acc0/value1", "changed", Kind.STATE)
        # Not sent until the change is: anything sent with it is sent by then too.
        await until(pub.in_sync, what="the change sent")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert pub.metrics.total("mqtt_connections") == 1
    assert sent_once == 20_000
    assert pub.metrics.total("mqtt_messages") == 20_001
