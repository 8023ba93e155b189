"""The health port under a burst of requests, and what /metrics exports (issue 15, items 8
and 10), on real parts: the bridge, Mosquitto, the stand-in API and real HTTP clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from tests.conftest import KEY
from tests.helpers import until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import make_config, publish, recording
from tests.standin import CrossModelStandin

ACCOUNTS = 20
BURST = 40
CAP = 8  # health.MAX_REQUESTS


class HeldCollector:
    """Collected with every render of /metrics: counts them, and holds the first one until
    released, so the test sees requests wait for a render in progress."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        self.calls += 1
        if self.calls == 1:
            self.release.wait(10)
        return iter(())


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as resp:
        return resp.status, await resp.read()


async def test_a_burst_is_capped_rendered_once_a_second_and_polling_goes_on(
    standin: CrossModelStandin, mosquitto: Mosquitto
) -> None:
    ids = [f"a{i}" for i in range(ACCOUNTS)]
    config = make_config(
        standin.url,
        mosquitto.port,
        accounts=[{"id": i, "name": i, "api_key": KEY, "api_url": standin.url} for i in ids],
        extra={"health": {"enabled": True, "port": 0}},
    )
    bridge = Bridge(config, timings=Timings(readback_seconds=0.1))
    held = HeldCollector()
    bridge.metrics.registry.register(held)
    stop = asyncio.Event()
    async with recording(mosquitto.port, "cm_mqtt_bridge/#") as rec:
        task = asyncio.create_task(bridge.run(stop))
        try:
            await rec.wait_for(
                lambda r: all(r.last(f"cm_mqtt_bridge/{i}/balance") for i in ids), 10
            )
            assert bridge.health is not None
            base = f"http://127.0.0.1:{bridge.health.port}"
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                started = time.monotonic()
                burst = [asyncio.create_task(_get(http, f"{base}/metrics")) for _ in range(BURST)]
                # The first CAP requests wait for the (held) render; the rest are refused.
                await until(lambda: sum(t.done() for t in burst) == BURST - CAP, 10, "refusals")
                # /healthz has a cap of its own: a /metrics burst does not make it fail.
                assert (await _get(http, f"{base}/healthz"))[0] == 200

                # A refresh goes out while the burst is still being answered.
                standin.credits["balance_micro"] = 1_234_567
                mark = len(rec.messages)
                await publish(mosquitto.port, "cm_mqtt_bridge/refresh/set", "PRESS")
                await rec.wait_for(
                    lambda r: (
                        {m.topic for m in r.messages[mark:] if m.payload == b"1.234567"}
                        >= {f"cm_mqtt_bridge/{i}/balance" for i in ids}
                    ),
                    10,
                    "the refreshed balances",
                )
                assert sum(t.done() for t in burst) == BURST - CAP, "the burst is still on"

                held.release.set()
                first = await asyncio.gather(*burst)
                second = await asyncio.gather(
                    *(_get(http, f"{base}/metrics") for _ in range(BURST))
                )
                elapsed = time.monotonic() - started
        finally:
            held.release.set()
            stop.set()
            await asyncio.wait_for(task, 10)

    statuses = sorted(status for status, _ in first)
    assert statuses == [200] * CAP + [503] * (BURST - CAP)
    assert len({body for status, body in first if status == 200}) == 1, "one render shared"
    assert {status for status, _ in second} <= {200, 503}
    assert 200 in {status for status, _ in second}
    # At most one render a second, however many requests.
    assert held.calls <= 1 + elapsed
    assert bridge.health.renders == held.calls
    offline = [m for m in rec.messages if m.topic.endswith("/availability") and m.text != "online"]
    assert offline == [], "no account went offline"


@pytest.fixture
async def scraped(standin: CrossModelStandin, mosquitto: Mosquitto) -> AsyncIterator[Any]:
    config = make_config(
        standin.url, mosquitto.port, extra={"health": {"enabled": True, "port": 0}}
    )
    bridge = Bridge(config, timings=Timings(readback_seconds=0.1))
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await until(lambda: bridge.health is not None and bridge.accounts, 10, "started")
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _scrape_until(bridge: Bridge, line: str, timeout: float = 10) -> str:
    """/metrics once it shows `line` (a render is at most a second old)."""
    assert bridge.health is not None
    url = f"http://127.0.0.1:{bridge.health.port}/metrics"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            status, body = await _get(http, url)
            text = body.decode()
            if status == 200 and line in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"/metrics never showed {line!r}:\n{text}")
            await asyncio.sleep(0.05)


async def test_a_currency_change_drops_the_old_currency_series(
    scraped: Bridge, standin: CrossModelStandin, mosquitto: Mosquitto
) -> None:
    await _scrape_until(scraped, 'cm_bridge_balance{account="main",currency="USD"} 8.059489')
    standin.credits["currency"] = "EUR"
    standin.usage["currency"] = "EUR"
    await publish(mosquitto.port, "cm_mqtt_bridge/main/refresh/set", "PRESS")
    text = await _scrape_until(scraped, 'cm_bridge_balance{account="main",currency="EUR"} 8.059489')
    assert 'cm_bridge_spend{account="main",currency="EUR",window="daily"} 0.01025' in text
    assert 'currency="USD"' not in text
