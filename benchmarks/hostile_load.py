"""Issue 15, items 8 and 9 at full scale: a burst on the health port, a huge HA status message.

Run from the repository root (needs Mosquitto; about a minute on a 2-core machine):

    .venv/bin/python -m benchmarks.hostile_load [--accounts 500] [--requests 2000]

The bridge is the real `cm-mqtt-bridge run` in its own process, polling the loopback stand-in
(benchmarks/standin_server.py, also its own process); RSS is read from /proc of the bridge.

- burst: `--requests` concurrent GETs, half /healthz and half /metrics; meanwhile a refresh of
  every account is sent, and the time until every account's new balance is on the broker is
  measured. Targets: published within 10 s, no account offline, RSS +100 MB at most.
- status: one 100 MB message on homeassistant/status, over MQTT 5 and over 3.1.1. Target:
  RSS +30 MB at most (MQTT 5; 3.1.1 has no client-side bound, see README).
Not part of the test suite's pass/fail: the suite checks the same properties at a small scale.

Measured 2026-12-04 (2-core AMD EPYC, Python 3.11, Mosquitto 2.0.11, other suites running):
- burst, 500 accounts, 2,000 requests: 1,008 answered 200, 992 refused with 503; the refresh
  was on the broker 1.6 s after it was sent; 0 accounts offline; RSS 74 -> 162 MB (+88 MB).
  Before (issue 15): polling stalled 106 s, 256 accounts offline, RSS 82 -> 595 MB.
- status, 100 MB message: MQTT 5 RSS 54 -> 54 MB (the broker dropped it); 3.1.1 peak +303 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiomqtt
import yaml

from benchmarks.bench import broker, standin

BRIDGE = str(Path(sys.executable).parent / "cm-mqtt-bridge")


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB: now, and the peak so far."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def bridge(
    api: str, mqtt: int, accounts: int, health_port: int, protocol: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    with tempfile.TemporaryDirectory(prefix="cm-bench-hostile-") as tmp:
        config = {
            "accounts": [
                {
                    "id": f"a{i}",
                    "name": f"A{i}",
                    "api_key": "cm-bench-0123456789abcdef",
                    "api_url": f"{api}/moving/v1",
                }
                for i in range(accounts)
            ],
            "poll": {"interval": 3600, "min_refresh_interval": 0},
            "mqtt": {
                "host": "127.0.0.1",
                "port": mqtt,
                "client_id": "bench-bridge",
                "protocol": protocol,
            },
            "data_dir": f"{tmp}/data",
            "health": {"enabled": True, "port": health_port},
            "log_level": "WARNING",
        }
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = await asyncio.create_subprocess_exec(
            BRIDGE, "run", "--config", str(path), stdout=asyncio.subprocess.DEVNULL
        )
        try:
            yield proc
        finally:
            proc.terminate()
            await proc.wait()


async def balances(mqtt: int, accounts: int, since: dict[str, bytes]) -> dict[str, bytes]:
    """Every account's balance as retained now (waits until all are there)."""
    seen: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", mqtt, identifier=f"bench-{time.monotonic()}") as c:
        await c.subscribe("cm_mqtt_bridge/+/balance", qos=1)
        async for m in c.messages:
            if isinstance(m.payload, bytes) and since.get(str(m.topic)) != m.payload:
                seen[str(m.topic)] = m.payload
            if len(seen) == accounts:
                return seen
    raise AssertionError("unreachable")


async def stage_burst(api: str, accounts: int, requests: int) -> None:
    async with broker() as mqtt:
        port = int(os.environ.get("BENCH_HEALTH_PORT", "18099"))
        async with bridge(api, mqtt, accounts, port, "5") as proc:
            first = await asyncio.wait_for(balances(mqtt, accounts, {}), 120)
            offline: list[str] = []

            async def watch() -> None:
                async with aiomqtt.Client("127.0.0.1", mqtt, identifier="bench-watch") as c:
                    await c.subscribe("cm_mqtt_bridge/+/availability", qos=1)
                    async for m in c.messages:
                        if m.payload == b"offline":
                            offline.append(str(m.topic))

            watcher = asyncio.create_task(watch())
            before, _ = rss_mb(proc.pid)
            statuses: collections.Counter[int] = collections.Counter()
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as http:

                async def get(path: str) -> None:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}{path}") as r:
                            await r.read()
                            statuses[r.status] += 1
                    except aiohttp.ClientError:
                        statuses[0] += 1

                paths = ["/healthz", "/metrics"] * (requests // 2)
                burst = asyncio.gather(*(get(p) for p in paths))
                await asyncio.sleep(0.2)  # the burst is under way
                started = time.monotonic()
                async with aiomqtt.Client("127.0.0.1", mqtt, identifier="bench-refresh") as c:
                    waiting = asyncio.create_task(balances(mqtt, accounts, first))
                    await asyncio.sleep(0.5)  # subscribed before the refresh
                    await c.publish("cm_mqtt_bridge/refresh/set", b"PRESS", qos=1)
                await asyncio.wait_for(waiting, 120)
                refresh_s = time.monotonic() - started - 0.5
                await burst
            after, peak = rss_mb(proc.pid)
            watcher.cancel()
            print(
                f"burst: {accounts} accounts, {requests} concurrent requests "
                f"(status counts {dict(statuses)}): refresh published in {refresh_s:.1f} s, "
                f"{len(set(offline))} accounts offline, RSS {before:.0f} -> {after:.0f} MB "
                f"(peak {peak:.0f} MB)"
            )


async def stage_status(api: str, protocol: str, size: int) -> None:
    async with broker() as mqtt, bridge(api, mqtt, 1, 0, protocol) as proc:
        await asyncio.wait_for(balances(mqtt, 1, {}), 60)
        before, _ = rss_mb(proc.pid)
        async with aiomqtt.Client("127.0.0.1", mqtt, identifier="bench-ha") as c:
            await c.publish("homeassistant/status", b"x" * size, qos=1)
            await c.publish("homeassistant/status", b"online", qos=1)
        await asyncio.sleep(5)  # the bridge reads it (or the broker drops it)
        after, peak = rss_mb(proc.pid)
        print(
            f"status ({protocol}): {size // 2**20} MB message: RSS {before:.0f} -> "
            f"{after:.0f} MB (peak {peak:.0f} MB, +{peak - before:.0f} MB)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--status-mb", type=int, default=100)
    args = parser.parse_args()
    async with standin() as api:
        await stage_burst(api, args.accounts, args.requests)
        for protocol in ("5", "3.1.1"):
            await stage_status(api, protocol, args.status_mb * 2**20)


if __name__ == "__main__":
    asyncio.run(main())
