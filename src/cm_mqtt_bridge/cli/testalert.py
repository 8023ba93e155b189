"""`cm-mqtt-bridge test-alert`: one clearly marked test notice through every configured
channel of the registry (MQTT: the `alerts` topic and Home Assistant's Alert event, type
`test`; ntfy; the webhook; Apprise), so a user learns that the phone push works before the
wallet runs low.

It goes straight to the channels, never through the outbox: no rule state, no history, and
nothing is sent again later."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import TextIO

import aiohttp
import aiomqtt

from ..config.settings import AccountConfig, Config
from ..core.clock import SystemClock
from ..core.notice import Notice
from ..exits import EXIT_OK, EXIT_UPSTREAM
from ..ha.entities import TEST_EVENT
from ..ha.topics import Topics
from ..notify.channels import Channel, DeliveryError, Wiring, build_channels
from ..service.publisher import Publisher


def test_notice(acc: AccountConfig, now: datetime) -> Notice:
    return Notice(
        id=f"test-{uuid.uuid4().hex[:12]}",
        account_id=acc.id,
        rule=TEST_EVENT,
        kind="test",
        title=f"[TEST] CrossModel {acc.name}",
        message=(
            f"TEST notice from cm-mqtt-bridge for CrossModel {acc.name}: alerts for this "
            "account will arrive here. Nothing to do."
        ),
        value=None,
        threshold=None,
        at=now,
        priority="default",
        tags=("test_tube",),
    )


async def _deliver(channel: Channel, notice: Notice) -> str | None:
    try:
        await channel.deliver(notice)
    except DeliveryError as exc:
        return str(exc) or type(exc).__name__
    return None


async def send_test_alert(config: Config, acc: AccountConfig, out: TextIO) -> int:
    topics = Topics(base=config.mqtt.base_topic, prefix=config.mqtt.discovery_prefix)

    async def ignore(topic: str, payload: bytes) -> None:
        return None

    # Its own client id and no Will (a probe's connection): a running bridge keeps its session.
    publisher = Publisher(config.mqtt, topics, SystemClock(), subscriptions=(), on_message=ignore)
    notice = test_notice(acc, datetime.now(UTC))
    async with contextlib.AsyncExitStack() as stack:
        client: aiomqtt.Client | None = None
        mqtt_problem = ""
        try:
            client = await stack.enter_async_context(publisher.broker.client(probe=True))
        except aiomqtt.MqttError as exc:
            mqtt_problem = f"broker {config.mqtt.host}:{config.mqtt.port}: {exc}"

        async def publish(topic: str, payload: bytes) -> None:
            if client is None:
                raise DeliveryError(mqtt_problem)
            try:
                await client.publish(topic, payload, qos=1, retain=False)
            except aiomqtt.MqttError as exc:
                raise DeliveryError(str(exc) or type(exc).__name__) from None

        session = await stack.enter_async_context(aiohttp.ClientSession())
        channels = build_channels(config.notify, Wiring(session, publish, topics.alerts))
        problems = await asyncio.gather(*(_deliver(c, notice) for c in channels))
    out.write(f"Test notice {notice.id} for account {acc.id}:\n")
    failed = []
    for channel, problem in zip(channels, problems, strict=True):
        name = channel.name
        if name == "mqtt":
            name = f"mqtt {topics.alerts(acc.id)} (Home Assistant event type {TEST_EVENT!r})"
        if problem is None:
            out.write(f"ok      {name}\n")
        else:
            failed.append(channel.name)
            out.write(f"FAILED  {name}: {problem}\n")
    if failed:
        out.write(f"\nNot delivered through: {', '.join(failed)}\n")
        return EXIT_UPSTREAM
    out.write(f"\nDelivered through all {len(channels)} channels.\n")
    return EXIT_OK
