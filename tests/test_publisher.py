"""The retained-state reconciler on a real broker: volume, and nothing sent twice."""

from __future__ import annotations

import asyncio
import functools
import json
import tracemalloc

from cm_mqtt_bridge.config.settings import MqttConfig
from cm_mqtt_bridge.core.clock import SystemClock
from cm_mqtt_bridge.ha.topics import Kind, Topics
from cm_mqtt_bridge.service.publisher import Publisher
from tests.helpers import until
from tests.mqtt_helpers import recording


async def _ignore(topic: str, payload: bytes) -> None:
    return None


def _publisher(port: int, client_id: str) -> Publisher:
    cfg = MqttConfig(host="127.0.0.1", port=port, client_id=client_id)
    topics = Topics("cm_mqtt_bridge", "homeassistant")
    return Publisher(cfg, topics, SystemClock(), subscriptions=(), on_message=_ignore)


async def test_twenty_thousand_retained_topics_go_out_on_one_connection(mosquitto):
    # Starting every publish at once once made this time out and reconnect forever.
    pub = _publisher(mosquitto.port, "reconciler-test")
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


def _device(i: int, version: int = 1) -> str:
    """A discovery-sized payload (about 10 KB), built again the same each time."""
    return json.dumps({"account": i, "version": version, "cmps": ["x" * 100] * 100})


async def test_a_payload_with_a_source_is_not_kept_yet_every_resend_is_the_same(mosquitto):
    pub = _publisher(mosquitto.port, "source-test")
    topics = [f"homeassistant/device/cm_acc{i}/config" for i in range(200)]
    tracemalloc.start()
    try:
        held_before = tracemalloc.get_traced_memory()[0]
        for i, topic in enumerate(topics):
            pub.set(topic, _device(i), Kind.DISCOVERY, source=functools.partial(_device, i))
        held = tracemalloc.get_traced_memory()[0] - held_before
    finally:
        tracemalloc.stop()
    assert held < 200 * 1024  # the payloads themselves are 2 MB
    async with recording(mosquitto.port, "homeassistant/device/#") as rec:
        task = asyncio.create_task(pub.run())
        await until(pub.in_sync, timeout=10, what="every device sent")
        await rec.wait_for(lambda r: len(r.messages) == 200, what="200 devices")
        pub.set(topics[0], _device(0), Kind.DISCOVERY, source=functools.partial(_device, 0))
        await until(pub.in_sync, what="nothing to send")
        assert pub.metrics.total("mqtt_messages") == 200  # the same payload again: not resent
        pub.resend(Kind.DISCOVERY)  # Home Assistant restarted: everything again
        await rec.wait_for(lambda r: len(r.messages) == 400, what="200 devices resent")
        pub.set(topics[2], _device(2, 2), Kind.DISCOVERY, source=functools.partial(_device, 2, 2))
        await rec.wait_for(lambda r: len(r.messages) == 401, what="the changed device")
        await until(pub.in_sync, what="the change sent")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert pub.metrics.total("mqtt_messages") == 401
    for i, topic in enumerate(topics):
        sent = [m.payload for m in rec.on(topic)]
        assert sent[:2] == [_device(i).encode()] * 2
    assert rec.on(topics[2])[-1].payload == _device(2, 2).encode()
    assert pub.retained()[2] == (topics[2], _device(2, 2).encode())
