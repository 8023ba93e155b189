"""Test-side MQTT: a recorder subscribed to everything, and bridge/config factories."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from cm_mqtt_bridge.config.settings import Config, PollConfig
from cm_mqtt_bridge.service.publisher import Publisher

BARRIER = "test/barrier/"


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str:
        return self.payload.decode()


class Recorder:
    """Every message seen on the broker (retained ones included), in arrival order."""

    def __init__(self) -> None:
        self.messages: list[Got] = []
        self._changed = asyncio.Condition()

    def on(self, topic: str) -> list[Got]:
        return [m for m in self.messages if m.topic == topic]

    def last(self, topic: str) -> Got | None:
        found = self.on(topic)
        return found[-1] if found else None

    async def wait_for(
        self, predicate: Callable[[Recorder], Any], timeout: float = 5.0, what: str = ""
    ) -> Any:
        async def _wait() -> Any:
            async with self._changed:
                while not (result := predicate(self)):
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            topics = sorted({m.topic for m in self.messages})
            raise AssertionError(
                f"timed out waiting for {what or predicate}; topics: {topics}"
            ) from None

    async def wait_topic(
        self, topic: str, payload: str | None = None, timeout: float = 5.0, after: int = 0
    ) -> Got:
        def check(r: Recorder) -> Got | None:
            for m in r.messages[after:]:
                if m.topic == topic and (payload is None or m.text == payload):
                    return m
            return None

        result: Got = await self.wait_for(check, timeout, f"{topic}={payload}")
        return result

    async def _add(self, got: Got) -> None:
        async with self._changed:
            self.messages.append(got)
            self._changed.notify_all()


async def barrier(rec: Recorder, publisher: Publisher) -> None:
    """Everything `publisher` handed the broker before this call has reached `rec`.

    A marker goes out on the same connection and the broker delivers one client's messages
    in order, so once the marker is here, nothing published earlier is still on its way."""
    topic = f"{BARRIER}{uuid.uuid4().hex}"
    await publisher.publish_now(topic, b"")
    await rec.wait_topic(topic)


def is_barrier(topic: str) -> bool:
    return topic.startswith(BARRIER)


@contextlib.asynccontextmanager
async def recording(port: int, topic: str = "#") -> AsyncIterator[Recorder]:
    rec = Recorder()
    # MQTT 5 with retain-as-published, so the recorder sees each message's real retain flag.
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=f"recorder-{id(rec)}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))

        async def pump() -> None:
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                await rec._add(Got(str(m.topic), payload, m.retain, m.qos))

        task = asyncio.create_task(pump())
        try:
            yield rec
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish(port: int, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-publisher") as client:
        await client.publish(topic, payload, qos=1, retain=retain)


def make_config(
    api_url: str,
    mqtt_port: int,
    *,
    accounts: list[dict[str, Any]] | None = None,
    poll: dict[str, Any] | None = None,
    data_dir: str | None = None,
    extra: dict[str, Any] | None = None,
    **mqtt: Any,
) -> Config:
    """A validated config, then fast polling that users may not configure (tests only)."""
    config = Config.model_validate(
        {
            "accounts": accounts
            or [
                {
                    "id": "main",
                    "name": "Main",
                    "api_key": "cm-test-0123456789abcdefSECRET",
                    "api_url": api_url,
                }
            ],
            # A fresh data dir per config: alert state must not leak between tests.
            "data_dir": data_dir or tempfile.mkdtemp(prefix="cm-bridge-test-"),
            "mqtt": {
                "host": "127.0.0.1",
                "port": mqtt_port,
                "client_id": "bridge-under-test",
                **mqtt,
            },
            **(extra or {}),
        }
    )
    fast = {
        "interval": 3600,
        "jitter": 0.0,
        "min_refresh_interval": 0.0,
        "retries": 0,
        "credits_timeout": 2.0,
        "usage_timeout": 1.0,
        **(poll or {}),
    }
    return config.model_copy(update={"poll": PollConfig.model_construct(**fast)})
