"""A broker without MQTT 5 (an old Mosquitto, Aedes, VerneMQ by default): the bridge speaks
MQTT 5 by default and falls back to 3.1.1 when the broker refuses it. Real Mosquitto behind a
small TCP proxy that answers an MQTT 5 CONNECT as a 3.1.1-only broker does (CONNACK return
code 1, "unacceptable protocol version") and passes every other connection through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from cm_mqtt_bridge.config.settings import MqttConfig
from cm_mqtt_bridge.core.clock import SystemClock
from cm_mqtt_bridge.ha.topics import Kind, Topics
from cm_mqtt_bridge.service.publisher import Publisher
from tests.helpers import until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import recording


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def v311_only(upstream: int) -> AsyncIterator[tuple[int, list[int]]]:
    """A port that refuses MQTT 5 and forwards 3.1.1 to `upstream`; yields the port and the
    protocol levels of the CONNECTs it saw."""
    levels: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(2)
        length, shift, last = head[1] & 0x7F, 7, head[1]
        rest = b""
        while last & 0x80:  # the remaining length is a variable-length integer
            last = (await reader.readexactly(1))[0]
            rest += bytes([last])
            length |= (last & 0x7F) << shift
            shift += 7
        body = await reader.readexactly(length)
        level = body[6]  # after the protocol name: 00 04 'M' 'Q' 'T' 'T'
        levels.append(level)
        if level == 5:
            writer.write(bytes([0x20, 0x02, 0x00, 0x01]))
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        up_writer.write(head + rest + body)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], levels
    finally:
        server.close()


async def _ignore(topic: str, payload: bytes) -> None:
    return None


def publisher(port: int) -> Publisher:
    cfg = MqttConfig(host="127.0.0.1", port=port, client_id="old-broker-test")
    return Publisher(
        cfg,
        Topics("cm_mqtt_bridge", "homeassistant"),
        SystemClock(),
        subscriptions=(),
        on_message=_ignore,
    )


async def test_a_broker_without_mqtt5_gets_3_1_1_at_once_with_one_warning(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    async with v311_only(mosquitto.port) as (port, levels), recording(mosquitto.port) as rec:
        pub = publisher(port)
        pub.set("cm_mqtt_bridge/main/state", "8.06", Kind.STATE)
        task = asyncio.create_task(pub.run())
        try:
            await rec.wait_for(
                lambda r: any(m.topic == "cm_mqtt_bridge/main/state" for m in r.messages),
                what="the state through the 3.1.1 connection",
            )
            await until(pub.connected.is_set, 5, "connected")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert levels == [5, 4]  # one refused MQTT 5 CONNECT, then 3.1.1, no backoff wait between
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"MQTT broker 127.0.0.1:{port} does not speak MQTT 5; using MQTT 3.1.1 (without the "
        'client-side message size bound; set mqtt.protocol: "3.1.1" to skip this try)'
    ]


async def test_check_connects_to_a_broker_without_mqtt5(mosquitto: Mosquitto) -> None:
    async with v311_only(mosquitto.port) as (port, levels):
        assert await publisher(port).broker.probe() is None
    assert levels == [5, 4]


async def test_mqtt5_stays_when_the_broker_speaks_it(mosquitto: Mosquitto) -> None:
    pub = publisher(mosquitto.port)
    assert await pub.broker.probe() is None
    assert pub.broker.v5
