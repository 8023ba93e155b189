"""The bridge side of the benchmark: each mode runs in a fresh process started by bench.py.

    .venv/bin/python -m benchmarks.worker rss   --api URL --mqtt-port P --polls 100
    .venv/bin/python -m benchmarks.worker cycle --api URL --mqtt-port P --accounts N --cycles K
    .venv/bin/python -m benchmarks.worker idle  --api URL --mqtt-port P --seconds 3600

`cycle --profile PATH` (without --baselines) writes a cProfile of the measured cycles.

Each prints one JSON line of results on stdout. The bridge is the real `Bridge` from
`cm_mqtt_bridge.service.bridge`; the benchmark only observes it (it wraps each account runtime's
`poll_once` and the publisher's flush to know when a cycle is complete) and never changes how
it works.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import aiomqtt

from cm_mqtt_bridge import __version__
from cm_mqtt_bridge.config.settings import Config, PollConfig
from cm_mqtt_bridge.core.clock import Clock
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.ha.entities import ENTITIES
from cm_mqtt_bridge.ha.topics import Kind
from cm_mqtt_bridge.service.bridge import Bridge
from cm_mqtt_bridge.service.publisher import _MQTT_LOG, IN_FLIGHT
from cm_mqtt_bridge.service.runtime import AccountRuntime


def third_party_modules() -> list[str]:
    """Every module loaded from site-packages except the bridge's own: the dependencies as the
    bridge really uses them (several packages import their submodules lazily), plus sqlite3."""
    out = ["sqlite3"]
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if "site-packages" in path and not name.startswith("cm_mqtt_bridge"):
            out.append(name)
    return sorted(out)


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def data_dir() -> str:
    path = tempfile.mkdtemp(prefix="cm-bridge-bench-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_config(
    api_url: str,
    mqtt_port: int,
    accounts: int,
    poll: dict[str, Any],
    *,
    alerts: dict[str, Any] | None = None,
) -> Config:
    """A validated config, then a PollConfig built with model_construct (as demo.py does) so the
    benchmark may poll faster than users are allowed to."""
    config = Config.model_validate(
        {
            "accounts": [
                {
                    "id": f"a{i:04d}" if accounts > 1 else "default",
                    "name": f"Account {i}",
                    "api_key": f"cm-bench-{i:04d}-0123456789abcdef",
                    "api_url": api_url,
                }
                for i in range(accounts)
            ],
            "data_dir": data_dir(),
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": "bridge-bench"},
            **({"alerts": alerts} if alerts else {}),
        }
    )
    return config.model_copy(update={"poll": PollConfig.model_construct(**poll)})


class Observed:
    """Watches a running Bridge from outside: poll completions and publisher flushes.

    The account runtimes are built when the bridge starts (`Bridge._start`), before any of
    their tasks runs: each one's `poll_once` is wrapped right then."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.polls_done = 0
        self.flushes = 0
        self._want_polls = 0
        self._done = asyncio.Event()
        start = bridge._start

        async def observed_start(*args: Any, **kwargs: Any) -> None:
            await start(*args, **kwargs)
            for runtime in bridge.accounts.values():
                self._wrap(runtime)

        bridge._start = observed_start  # type: ignore[method-assign]
        pub = bridge.publisher
        self._flush = pub._flush
        pub._flush = self._counted_flush  # type: ignore[method-assign]

    def _wrap(self, runtime: AccountRuntime) -> None:
        poll_once = runtime.poll_once

        async def counted_poll() -> None:
            await poll_once()
            self.polls_done += 1
            self._check()

        runtime.poll_once = counted_poll  # type: ignore[method-assign]

    async def _counted_flush(self, client: aiomqtt.Client) -> None:
        await self._flush(client)
        self.flushes += 1
        self._check()

    def in_sync(self) -> bool:
        # False while a flush is due; the flush calls _check again when done.
        return self.bridge.publisher.in_sync()

    def _check(self) -> None:
        if self.polls_done >= self._want_polls and self.in_sync():
            self._done.set()

    async def until(self, polls: int, timeout: float = 120.0) -> None:
        """Wait until `polls` polls in total have completed and everything is on the broker."""
        self._want_polls = polls
        self._done.clear()
        self._check()
        await asyncio.wait_for(self._done.wait(), timeout)


async def start_bridge(
    config: Config, **kwargs: Any
) -> tuple[Bridge, Observed, asyncio.Event, asyncio.Task[None]]:
    bridge = Bridge(config, rng=random.Random(7), timings=Timings(readback_seconds=0.5), **kwargs)
    observed = Observed(bridge)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    return bridge, observed, stop, task


async def stop_bridge(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)


def quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


T = TypeVar("T")


# ---- rss -------------------------------------------------------------------------------------


async def mode_rss(args: argparse.Namespace) -> dict[str, Any]:
    poll = {"interval": 0.01, "min_refresh_interval": 0, "jitter": 0, "stale_after": 60}
    config = make_config(args.api, args.mqtt_port, 1, poll)
    bridge, observed, stop, task = await start_bridge(config)
    await observed.until(args.polls)
    acc = next(iter(bridge.accounts.values()))
    rss = vm_rss_kb()
    result = {
        "rss_kb": rss,
        "polls": acc.polls,
        "publishes": int(bridge.metrics.total("mqtt_messages")),
        "third_party": third_party_modules(),
        "modules": len(sys.modules),
    }
    await stop_bridge(stop, task)
    return result


# ---- cycle -----------------------------------------------------------------------------------


def headers_for(key: str) -> dict[str, str]:
    # What CrossModelClient sends, so both sides send the same requests.
    return {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json",
        "User-Agent": f"cm-mqtt-bridge/{__version__}",
    }


async def raw_http(
    session: aiohttp.ClientSession, requests: list[tuple[str, dict[str, str]]], concurrency: int
) -> tuple[float, float]:
    """The same GETs with plain aiohttp and `concurrency` workers; (wall s, CPU s)."""
    todo = iter(requests)

    async def worker() -> None:
        for url, headers in todo:
            async with session.get(url, headers=headers) as resp:
                await resp.read()

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, time.process_time() - c0


RAW_MQTT_WINDOW = 20  # paho's default max_inflight_messages: more in flight only queues


async def raw_mqtt(client: aiomqtt.Client, messages: Sequence[tuple[str, bytes, int]]) -> float:
    """The same retained messages with plain aiomqtt: `RAW_MQTT_WINDOW` workers, each
    publishing the next message once its previous one is acknowledged; wall seconds."""
    todo = iter(messages)

    async def worker() -> None:
        for topic, payload, qos in todo:
            await client.publish(topic, payload, qos=qos, retain=True)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(RAW_MQTT_WINDOW)))
    return time.perf_counter() - t0


async def bridge_cycle(bridge: Bridge, observed: Observed) -> tuple[float, float, int]:
    """Refresh every account (what `<base>/refresh/set` does) and wait until every account was
    polled and everything is published; returns (wall s, CPU s, messages published)."""
    want = observed.polls_done + len(bridge.accounts)
    published = int(bridge.metrics.total("mqtt_messages"))
    c0, t0 = time.process_time(), time.perf_counter()
    for acc in bridge.accounts.values():
        acc.refresh()
    await observed.until(want)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, int(bridge.metrics.total("mqtt_messages")) - published


async def captured_cycle(bridge: Bridge, observed: Observed) -> list[tuple[str, bytes, int]]:
    """One (unmeasured) cycle, recording every message the bridge publishes in it."""
    client = bridge.publisher._client
    assert client is not None
    seen: list[tuple[str, bytes, int]] = []
    publish = client.publish

    async def recording(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        seen.append((topic, payload, qos))
        await publish(topic, payload, qos=qos, retain=retain)

    client.publish = recording  # type: ignore[method-assign,assignment]
    try:
        await bridge_cycle(bridge, observed)
    finally:
        del client.publish
    return seen


async def bridge_resend(
    bridge: Bridge, observed: Observed, deadline: float
) -> tuple[float, int, bool]:
    """Republish every retained topic (what Home Assistant's birth message triggers, without
    the random delay). Returns (wall s, messages the publisher counted as sent, completed)."""
    published = int(bridge.metrics.total("mqtt_messages"))
    t0 = time.perf_counter()
    bridge.publisher.resend(Kind.STATUS, Kind.DISCOVERY, Kind.AVAILABILITY, Kind.STATE)
    try:
        await observed.until(observed.polls_done, timeout=deadline)
    except TimeoutError:
        return (
            time.perf_counter() - t0,
            int(bridge.metrics.total("mqtt_messages")) - published,
            False,
        )
    return time.perf_counter() - t0, int(bridge.metrics.total("mqtt_messages")) - published, True


FIRST_CYCLE_DEADLINE = 60.0  # start-up with 1,000 accounts takes seconds when healthy
CYCLE_DEADLINE = 60.0


class Failed(Exception):
    """The bridge did not finish a step in time; the message says which and how far it got."""


async def step(what: str, bridge: Bridge, observed: Observed, awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except TimeoutError:
        pub = bridge.publisher
        raise Failed(
            f"{what} did not complete: {observed.polls_done} polls done, "
            f"{pub.metrics.total('mqtt_messages'):.0f} messages published, "
            f"{pub.metrics.total('mqtt_connections'):.0f} MQTT connection(s)"
        ) from None


async def mode_cycle(args: argparse.Namespace) -> dict[str, Any]:
    concurrency = PollConfig().max_concurrency
    poll = {
        "interval": 3600,
        "min_refresh_interval": 0,
        "jitter": 0,
        "max_concurrency": concurrency,
    }
    config = make_config(args.api, args.mqtt_port, args.accounts, poll)
    out: dict[str, Any] = {
        "accounts": args.accounts,
        "concurrency": concurrency,
        # Each poll runs /credits and /usage at once: that many GETs in flight.
        "http_concurrency": 2 * concurrency,
        "wall": [],
        "cpu": [],
        "cycle_publishes": [],
    }
    t0 = time.perf_counter()
    bridge, observed, stop, task = await start_bridge(config)
    try:
        await step(
            f"start-up (first cycle, within {FIRST_CYCLE_DEADLINE:.0f} s)",
            bridge,
            observed,
            observed.until(args.accounts, timeout=FIRST_CYCLE_DEADLINE),
        )
        out["first_cycle_s"] = time.perf_counter() - t0
        if args.baselines:
            await cycles_with_baselines(args, bridge, observed, out)
        else:
            await cycles(args, bridge, observed, out)
    except Failed as exc:
        out["failed"] = str(exc)
    finally:
        await stop_bridge(stop, task)
    if args.baselines and "failed" in out:
        # Still measure the baselines, for the table.
        await baselines_only(args, bridge, out)
    return out


async def cycles(
    args: argparse.Namespace, bridge: Bridge, observed: Observed, out: dict[str, Any]
) -> None:
    what = f"a refresh cycle (within {CYCLE_DEADLINE:.0f} s)"
    await step(what, bridge, observed, bridge_cycle(bridge, observed))  # warm-up
    with profiled(args.profile):
        for _ in range(args.cycles):
            wall, cpu, published = await step(
                what, bridge, observed, bridge_cycle(bridge, observed)
            )
            out["wall"].append(wall)
            out["cpu"].append(cpu)
            out["cycle_publishes"].append(published)
    if args.resend:
        async with raw_client(args) as client:
            out.update(await measure_publishing(bridge, observed, client, args.cycles))


@contextlib.contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """cProfile of the event-loop thread while the measured cycles run (`--profile PATH`,
    pstats format; not used by bench.py: profiling slows the bridge down several-fold)."""
    if path is None:
        yield
        return
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(path)


def raw_client(args: argparse.Namespace) -> aiomqtt.Client:
    # The bridge's own aiomqtt logger (it filters aiomqtt's pending-calls warning).
    client = aiomqtt.Client("127.0.0.1", args.mqtt_port, identifier="raw-bench", logger=_MQTT_LOG)
    client.pending_calls_threshold = 2 * IN_FLIGHT  # as the bridge's own client
    return client


def raw_session(out: dict[str, Any]) -> aiohttp.ClientSession:
    limit = out["http_concurrency"]
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))


def http_requests(bridge: Bridge) -> list[tuple[str, dict[str, str]]]:
    return [
        (f"{acc.api_url}/{endpoint}", headers_for(acc.api_key.get_secret_value()))
        for acc in bridge.config.accounts
        for endpoint in ("credits", "usage")
    ]


async def cycles_with_baselines(
    args: argparse.Namespace, bridge: Bridge, observed: Observed, out: dict[str, Any]
) -> None:
    what = f"a refresh cycle (within {CYCLE_DEADLINE:.0f} s)"
    requests = http_requests(bridge)
    workers = out["http_concurrency"]
    control = args.api.split("/moving/")[0] + "/ctl"
    # One unmeasured cycle (the bridge's warm-up) records what a cycle publishes.
    cycle_messages = await step(what, bridge, observed, captured_cycle(bridge, observed))
    out.update(raw_http=[], raw_http_cpu=[], raw_mqtt_cycle=[], unchanged_wall=[])
    out.update(unchanged_cpu=[], unchanged_publishes=[], requests=len(requests))
    out["cycle_messages"] = len(cycle_messages)
    async with raw_session(out) as session, raw_client(args) as client:
        # Warm-up of the baselines (connections made, code paths hot), not measured.
        await raw_http(session, requests, workers)
        await raw_mqtt(client, cycle_messages)
        # Interleaved, so drift in the machine's speed hits both sides alike.
        for _ in range(args.cycles):
            wall, cpu, published = await step(
                what, bridge, observed, bridge_cycle(bridge, observed)
            )
            out["wall"].append(wall)
            out["cpu"].append(cpu)
            out["cycle_publishes"].append(published)
            raw_wall, raw_cpu = await raw_http(session, requests, workers)
            out["raw_http"].append(raw_wall)
            out["raw_http_cpu"].append(raw_cpu)
            out["raw_mqtt_cycle"].append(await raw_mqtt(client, cycle_messages))

        # The same cycle when no value changed since the last poll: polling cost alone.
        async with session.get(f"{control}/freeze") as resp:
            await resp.read()
        try:
            await step(what, bridge, observed, bridge_cycle(bridge, observed))  # last change
            for _ in range(args.cycles):
                wall, cpu, published = await step(
                    what, bridge, observed, bridge_cycle(bridge, observed)
                )
                out["unchanged_wall"].append(wall)
                out["unchanged_cpu"].append(cpu)
                out["unchanged_publishes"].append(published)
        finally:
            async with session.get(f"{control}/move") as resp:
                await resp.read()

        out.update(await measure_publishing(bridge, observed, client, args.cycles))


async def baselines_only(args: argparse.Namespace, bridge: Bridge, out: dict[str, Any]) -> None:
    """The raw baselines when the bridge could not be measured."""
    requests = http_requests(bridge)
    messages = retained_messages(bridge)
    out.update(raw_http=[], raw_http_cpu=[], raw_mqtt=[], messages=len(messages))
    out["message_bytes"] = sum(len(t) + len(p) for t, p, _ in messages)
    async with raw_session(out) as session, raw_client(args) as client:
        await raw_http(session, requests, out["http_concurrency"])
        await raw_mqtt(client, messages)
        for _ in range(args.cycles):
            raw_wall, raw_cpu = await raw_http(session, requests, out["http_concurrency"])
            out["raw_http"].append(raw_wall)
            out["raw_http_cpu"].append(raw_cpu)
            out["raw_mqtt"].append(await raw_mqtt(client, messages))


def retained_messages(bridge: Bridge) -> list[tuple[str, bytes, int]]:
    qos = bridge.config.mqtt.qos
    return [(t, payload, qos) for t, payload in bridge.publisher.retained()]


async def measure_publishing(
    bridge: Bridge, observed: Observed, client: aiomqtt.Client, runs: int
) -> dict[str, Any]:
    """Every retained topic republished by the bridge, and the same messages by raw aiomqtt.
    Run last: a republish that does not finish leaves the bridge reconnecting."""
    pub = bridge.publisher
    messages = retained_messages(bridge)
    out: dict[str, Any] = {
        "messages": len(messages),
        "message_bytes": sum(len(t) + len(p) for t, p, _ in messages),
        "raw_mqtt": [],
        "resend": [],
    }
    await raw_mqtt(client, messages)  # warm-up
    for _ in range(runs):
        out["raw_mqtt"].append(await raw_mqtt(client, messages))
    deadline = max(12.0, 10 * min(out["raw_mqtt"]))
    for _ in range(runs):
        wall, sent, completed = await bridge_resend(bridge, observed, deadline)
        out["resend"].append({"wall": wall, "sent": sent, "completed": completed})
        if not completed:
            break
    out["connections"] = int(pub.metrics.total("mqtt_connections"))
    return out


# ---- idle hour -------------------------------------------------------------------------------


def state_topic_filter(base: str) -> Callable[[str], bool]:
    plain = {e.value.key for e in ENTITIES if e.plain and e.value is not None}

    def is_state(topic: str) -> bool:
        parts = topic.split("/")
        if len(parts) != len(base.split("/")) + 2 or not topic.startswith(base + "/"):
            return False
        return parts[-1] == "state" or parts[-1] in plain

    return is_state


async def mode_idle(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.vclock import VirtualClock, run_for, settle

    # The defaults users run with (60 s interval, jitter, min refresh), values that never move,
    # and a low-balance rule that does not fire (so the alert path runs on every poll too).
    poll = PollConfig().model_dump()
    alerts = {"low_balance": {"below": "5.00", "margin": "0.50"}}
    config = make_config(args.api, args.mqtt_port, 1, poll, alerts=alerts)
    clock = VirtualClock()
    bridge, observed, stop, task = await start_bridge(config, clock=_as_clock(clock))
    is_state = state_topic_filter(config.mqtt.base_topic)
    seen: list[tuple[float, str, bytes]] = []

    async def record(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else b""
            seen.append((clock.elapsed, str(m.topic), payload))

    async with aiomqtt.Client("127.0.0.1", args.mqtt_port, identifier="idle-recorder") as client:
        await client.subscribe(f"{config.mqtt.base_topic}/#", qos=1)
        recorder = asyncio.create_task(record(client))
        async with asyncio.timeout(15):
            while not bridge.accounts:  # built when the bridge starts
                await asyncio.sleep(0.01)
        # Long-lived sleepers once the bridge is idle: each account's poller and watcher,
        # housekeeping, and one per alert channel in the dispatcher.
        assert bridge.dispatcher is not None
        min_sleepers = 2 * len(bridge.accounts) + 1 + len(bridge.dispatcher.names)
        # The first poll waits a random part of the jitter (virtual time): move time on,
        # timer by timer, until it has happened.
        while observed.polls_done < 1:
            await settle(clock, min_sleepers=min_sleepers, idle=observed.in_sync, quiet=0.1)
            deadline = clock.next_deadline()
            if observed.polls_done or deadline is None:
                break
            clock.advance_to(deadline)
        await observed.until(1)
        await settle(clock, min_sleepers=min_sleepers, idle=observed.in_sync, quiet=0.1)
        polls0, count0, seen0 = (
            observed.polls_done,
            int(bridge.metrics.total("mqtt_messages")),
            len(seen),
        )
        wall0 = time.perf_counter()
        steps = await run_for(clock, args.seconds, min_sleepers=min_sleepers, idle=observed.in_sync)
        await asyncio.sleep(0.2)  # let the recorder catch the last messages
        wall = time.perf_counter() - wall0
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
    later = seen[seen0:]
    state = [(round(t, 1), topic, p.decode(errors="replace")[:80]) for t, topic, p in later]
    result = {
        "virtual_s": args.seconds,
        "wall_s": wall,
        "steps": steps,
        "polls": observed.polls_done - polls0,
        "publishes": int(bridge.metrics.total("mqtt_messages")) - count0,
        "state_publishes": sum(1 for _, topic, _ in state if is_state(topic)),
        "messages_seen": len(later),
        "examples": state[:12],
    }
    await stop_bridge(stop, task)
    return result


def _as_clock(clock: Clock) -> Clock:
    return clock  # a static check that VirtualClock implements the Clock protocol


# ---- main ------------------------------------------------------------------------------------


MODES: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]] = {
    "rss": mode_rss,
    "cycle": mode_cycle,
    "idle": mode_idle,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.worker")
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--api", required=True, help="stand-in API base URL")
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--polls", type=int, default=100)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--baselines", action="store_true")
    parser.add_argument("--resend", action="store_true")
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--profile", metavar="PATH", help="cycle: cProfile the measured cycles")
    args = parser.parse_args(argv)
    quiet_logs()
    result = asyncio.run(MODES[args.mode](args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
