"""`cm-mqtt-bridge demo`: the real service end to end with no account and no broker set up.

It starts the built-in simulator, a private Mosquitto when one is installed (else it uses the
broker from MQTT_HOST/MQTT_PORT), runs the bridge with a low-balance alert and prints every
topic as it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import aiomqtt

from .config import Config, PollConfig
from .localbroker import Mosquitto, find_mosquitto
from .service import Bridge
from .simulator import Simulator

DEMO_KEY = "cm-demo-not-a-real-key"


def demo_config(api_url: str, host: str, port: int, data_dir: str, speed: float = 1.0) -> Config:
    config = Config.model_validate(
        {
            "accounts": [{"id": "demo", "name": "Demo", "api_key": DEMO_KEY, "api_url": api_url}],
            # Own topics, so a demo against a real broker never shows up in Home Assistant.
            "mqtt": {
                "host": host,
                "port": port,
                "client_id": "cm-mqtt-bridge-demo",
                "base_topic": "cm_mqtt_bridge_demo",
                "discovery_prefix": "cm_mqtt_bridge_demo/homeassistant",
            },
            "data_dir": data_dir,
            "alerts": {
                "low_balance": {"below": "5.00", "margin": "0.50", "notify_recovered": True},
                "topup": True,
            },
        }
    )
    # Faster than users may configure (the real API caches for 60 s): the demo should move.
    fast = PollConfig.model_construct(
        interval=5 / speed,
        jitter=0.0,
        min_refresh_interval=1.0 / speed,
        retries=1,
        stale_after=60 / speed,
    )
    return config.model_copy(update={"poll": fast})


def _describe(topic: str, payload: bytes) -> str | None:
    text = payload.decode("utf-8", "replace")
    if topic.endswith("/config"):
        try:
            count = len(json.loads(text).get("cmps", {}))
        except (ValueError, AttributeError):
            count = 0
        return f"discovery for Home Assistant ({count} entities)" if text else "device removed"
    if topic.endswith("/state"):
        return None  # the same values appear on the plain topics, one per line
    if topic.endswith("/alerts"):
        try:
            notice = json.loads(text)
            return f"ALERT [{notice['event_type']} {notice['kind']}] {notice['message']}"
        except (ValueError, KeyError, TypeError):
            return text
    return text


async def _print_changes(host: str, port: int, base: str, out: TextIO, t0: float) -> None:
    seen: dict[str, bytes] = {}
    async with aiomqtt.Client(host, port, identifier="cm-mqtt-bridge-demo-viewer") as client:
        await client.subscribe(f"{base}/#")
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if seen.get(topic) == payload and not topic.endswith("/alerts"):
                continue
            seen[topic] = payload
            line = _describe(topic, payload)
            if line is not None:
                out.write(f"{time.monotonic() - t0:6.1f}s  {topic:<45} {line}\n")
                out.flush()


async def run_demo(
    seconds: float, env: Mapping[str, str], out: TextIO, *, speed: float = 1.0
) -> int:
    """`speed` > 1 runs the same story faster (tests)."""
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cm-mqtt-bridge-demo-"))
    broker: Mosquitto | None = None
    if find_mosquitto() is not None:
        broker = Mosquitto(workdir)
        await asyncio.to_thread(broker.start)
        host, port = "127.0.0.1", broker.port
        out.write(f"Started a private Mosquitto on {host}:{port}\n")
    else:
        host, port = env.get("MQTT_HOST", "localhost"), int(env.get("MQTT_PORT", "1883"))
        out.write(f"mosquitto not installed; using the broker at {host}:{port}\n")
    sim = Simulator(lambda: (time.monotonic() - t0) * speed)
    url = await sim.start()
    config = demo_config(url, host, port, str(workdir / "data"), speed)
    out.write(
        f"Simulated CrossModel at {url}; balance falls below the 5.00 USD alert at about "
        f"{30 / speed:.0f} s, a top-up arrives at about {45 / speed:.0f} s.\n"
        f"Running for {seconds:.0f} s (Ctrl-C stops). Topics as they change:\n\n"
    )
    stop = asyncio.Event()
    bridge = Bridge(config, readback_seconds=0.2)
    viewer = asyncio.create_task(_print_changes(host, port, config.mqtt.base_topic, out, t0))
    service = asyncio.create_task(bridge.run(stop))
    try:
        await asyncio.wait_for(asyncio.shield(service), seconds)
    except TimeoutError:
        pass
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(service, 5)
        viewer.cancel()
        with contextlib.suppress(BaseException):
            await viewer
        await sim.stop()
        if broker is not None:
            await asyncio.to_thread(broker.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    out.write("\nDemo finished. Point `cm-mqtt-bridge run` at your broker with your own key.\n")
    return 0
