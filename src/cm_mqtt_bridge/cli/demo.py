"""`cm-mqtt-bridge demo`: the real service end to end with no account and no broker set up.

It starts the built-in simulator, a private Mosquitto when one is installed (else it uses the
broker from --mqtt-host/MQTT_HOST), runs the bridge with a low-balance alert and prints every
topic as it changes. However it is stopped (the time is up, Ctrl-C, SIGTERM) it says offline,
stops its broker and removes its temporary directory; after a SIGKILL the broker dies with it
(Linux) and the next demo removes the directory left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiomqtt

from ..config.settings import Config, PollConfig
from ..core.timings import Timings
from ..crossmodel.simulator import Simulator
from ..exits import EXIT_INTERRUPTED, EXIT_OK
from ..service.bridge import Bridge
from .localbroker import Mosquitto, find_mosquitto, start_private

DEMO_KEY = "cm-demo-not-a-real-key"
DIR_PREFIX = "cm-mqtt-bridge-demo-"
PID_FILE = "demo.pid"
ALERT_AT, TOPUP_AT = 30.0, 45.0  # seconds into the simulator's story


@dataclass(frozen=True)
class DemoOptions:
    """What the global flags mean for the demo: a broker of your own, and what it ignores."""

    mqtt_host: str | None = None
    mqtt_port: int | None = None
    ignored: tuple[str, ...] = ()
    handle_signals: bool = False


def demo_options(args: argparse.Namespace) -> DemoOptions:
    ignored = tuple(
        flag
        for flag, attr in (
            ("--config", "config"),
            ("--api-url", "api_url"),
            ("--interval", "interval"),
            ("--data-dir", "data_dir"),
            ("--mqtt-username", "mqtt_username"),
        )
        if hasattr(args, attr)
    )
    return DemoOptions(
        mqtt_host=getattr(args, "mqtt_host", None),
        mqtt_port=getattr(args, "mqtt_port", None),
        ignored=ignored,
        handle_signals=True,
    )


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_dirs(tmp: Path) -> list[Path]:
    """Remove the directories of demos that were killed (their process is gone)."""
    removed = []
    for workdir in tmp.glob(DIR_PREFIX + "*"):
        try:
            pid = int((workdir / PID_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or a demo that is just starting
        if not _alive(pid):
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(workdir)
    return removed


def _describe(topic: str, payload: bytes) -> str | None:
    text = payload.decode("utf-8", "replace")
    if "/_readback/" in topic:
        return None  # the bridge's own marker while it reads back retained discovery
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


class Viewer:
    """Prints every topic of the demo as it changes."""

    def __init__(self, out: TextIO, t0: float, status_topic: str, stop: asyncio.Event) -> None:
        self.out = out
        self.t0 = t0
        self.status_topic = status_topic
        self.offline = asyncio.Event()
        self.stop = stop  # set when nobody reads the output any more (`demo | head`)
        self.closed = False

    async def run(self, host: str, port: int, base: str) -> None:
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
                if line is not None and not self.closed:
                    try:
                        self.out.write(f"{time.monotonic() - self.t0:6.1f}s  {topic:<45} {line}\n")
                        self.out.flush()
                    except BrokenPipeError:
                        # Stop the demo cleanly (broker, temp dir); the CLI exits quietly.
                        self.closed = True
                        self.stop.set()
                if topic == self.status_topic and payload == b"offline":
                    self.offline.set()


async def run_demo(
    seconds: float,
    env: Mapping[str, str],
    out: TextIO,
    *,
    speed: float = 1.0,
    options: DemoOptions | None = None,
) -> int:
    """`speed` > 1 runs the same story faster (tests)."""
    opts = options or DemoOptions()
    t0 = time.monotonic()
    stop = asyncio.Event()
    signals: list[int] = []
    loop = asyncio.get_running_loop()

    def stopped_by(sig: int) -> None:
        signals.append(sig)
        stop.set()

    if opts.handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped_by, sig)
    try:
        await _run(seconds, env, out, speed, opts, t0, stop)
    finally:
        if opts.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return EXIT_INTERRUPTED if signal.SIGINT in signals else EXIT_OK


async def _run(
    seconds: float,
    env: Mapping[str, str],
    out: TextIO,
    speed: float,
    opts: DemoOptions,
    t0: float,
    stop: asyncio.Event,
) -> None:
    if opts.ignored:
        out.write(f"The demo uses its own settings; ignoring {', '.join(opts.ignored)}.\n")
    tmp = Path(tempfile.gettempdir())
    for stale in reap_stale_dirs(tmp):
        out.write(f"Removed {stale}, left behind by a demo that was killed.\n")
    workdir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
    broker: Mosquitto | None = None
    try:
        (workdir / PID_FILE).write_text(str(os.getpid()))
        if opts.mqtt_host is None and find_mosquitto() is not None:
            broker = start_private(workdir, die_with_parent=True)  # this thread: see start()
            host, port = "127.0.0.1", broker.port
            out.write(f"Started a private Mosquitto on {host}:{port}\n")
        else:
            host = opts.mqtt_host or env.get("MQTT_HOST", "localhost")
            port = opts.mqtt_port or int(env.get("MQTT_PORT", "1883"))
            why = "" if opts.mqtt_host else "mosquitto not installed; "
            out.write(f"{why}using the broker at {host}:{port}\n")
        await _story(seconds, out, speed, t0, stop, host, port, workdir)
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.stop)
        shutil.rmtree(workdir, ignore_errors=True)


async def _story(
    seconds: float,
    out: TextIO,
    speed: float,
    t0: float,
    stop: asyncio.Event,
    host: str,
    port: int,
    workdir: Path,
) -> None:
    sim = Simulator(lambda: (time.monotonic() - t0) * speed)
    url = await sim.start()
    alert_at, topup_at = ALERT_AT / speed, TOPUP_AT / speed
    config = demo_config(url, host, port, str(workdir / "data"), speed)
    out.write(
        f"Simulated CrossModel at {url}; balance falls below the 5.00 USD alert at about "
        f"{alert_at:.0f} s, a top-up arrives at about {topup_at:.0f} s.\n"
        f"Running for {seconds:g} s (Ctrl-C stops). Topics as they change:\n\n"
    )
    out.flush()
    bridge = Bridge(config, timings=Timings(readback_seconds=0.2))
    viewer = Viewer(out, t0, bridge.topics.bridge_status, stop)
    viewing = asyncio.create_task(viewer.run(host, port, config.mqtt.base_topic))
    service = asyncio.create_task(bridge.run(stop))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(service), seconds)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(service, 5)
        # Show the offline the bridge just published before the viewer goes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(viewer.offline.wait(), 1)
        viewing.cancel()
        with contextlib.suppress(BaseException):
            await viewing
        await sim.stop()
    if viewer.closed:
        raise BrokenPipeError("the demo's output was closed")
    elapsed = time.monotonic() - t0
    if elapsed < alert_at:
        out.write(
            f"\nStopped at {elapsed:.0f} s, before the low-balance alert, which would have come "
            f"at about {alert_at:.0f} s: run it with --seconds {max(70, seconds):g} to see it.\n"
        )
    out.write("\nDemo finished. Point `cm-mqtt-bridge run` at your broker with your own key.\n")
    out.flush()
