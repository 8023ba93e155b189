"""Memory soak: N accounts for M minutes against the stand-in and a real Mosquitto; RSS over time.

    .venv/bin/python -m benchmarks.soak --accounts 200 --minutes 30
    .venv/bin/python -m benchmarks.soak --accounts 200 --minutes 8 --interval 10 --tracemalloc

Target (issue 15): a 30-minute soak ends within 2 MB of its 5-minute mark.

The bridge is the real `Bridge` (real clock, real HTTP to benchmarks/standin_server.py in its
own process, a private Mosquitto), run in this process so that `--tracemalloc` can show where
memory grows; the driver adds only an RSS sampler and a scraper that asks /healthz and /metrics
every 15 s, as Prometheus and a Docker healthcheck would. The moving stand-in endpoints change
every answer, so every poll publishes and the alert rules evaluate a new sample. `--interval`
below 30 s (users cannot configure that) compresses the polls of a long run into a short one.
`--api-host localhost` makes every poll resolve a name (aiohttp's resolver threads), as with
the real API. Prints one line per sample and a summary: RSS at the mark (default 5 min) and at
the end. Each sample also shows malloc's bytes in use (glibc), SQLite's own allocations, and
with `--tracemalloc` the traced Python heap; its snapshot at the mark costs about 10 MB of RSS,
so the reference is then taken after it.

What it found (issue 15): RSS climbs for the first minute (connections, discovery, metrics,
SQLite and malloc warming up), then the Python heap stays flat; what still grows is SQLite's
page cache filling as the samples table grows (about 70 bytes a poll), which SQLite caps at its
default 2 MB per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import sys
import time
import tracemalloc
from typing import Any

import aiohttp

from benchmarks.bench import broker, standin
from benchmarks.worker import make_config, start_bridge, stop_bridge, vm_rss_kb


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc_mallinfo() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None  # not glibc >= 2.33
    fn.restype = _MallInfo2
    return fn


def _sqlite_memory_used() -> Any:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        fn = lib.sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int64
    return fn


MALLINFO = _libc_mallinfo()
SQLITE_MEMORY = _sqlite_memory_used()


def breakdown() -> str:
    """Where the memory is: malloc in use (all C and Python objects), SQLite's share of it,
    and the Python heap as tracemalloc sees it (when on)."""
    parts = []
    if MALLINFO is not None:
        info = MALLINFO()
        parts.append(f"malloc in use {(info.uordblks + info.hblkhd) / 2**20:6.2f} MB")
    if SQLITE_MEMORY is not None:
        parts.append(f"sqlite {SQLITE_MEMORY() / 2**20:5.2f} MB")
    if tracemalloc.is_tracing():
        parts.append(f"python traced {tracemalloc.get_traced_memory()[0] / 2**20:6.2f} MB")
    return "  ".join(parts)


def say(text: str) -> None:
    print(text, flush=True)


async def scrape(port: int, every: float) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            for path in ("/healthz", "/metrics"):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                        await resp.read()
            await asyncio.sleep(every)


def top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int = 15) -> None:
    say(f"--- tracemalloc: top {n} growths between the mark and the end ---")
    for stat in after.compare_to(before, "lineno")[:n]:
        say(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
        say("    " + stat.traceback.format(limit=1)[0].strip())


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    poll = {
        "interval": args.interval,
        "jitter": min(5.0, args.interval / 2),
        "min_refresh_interval": 10.0,
        "stale_after": 3 * args.interval,
        "max_concurrency": 10,
        "credits_timeout": 15.0,
        "usage_timeout": 5.0,
        "retries": 3,
    }
    alerts = {  # evaluated on every poll; low_balance does not fire at these balances
        "low_balance": {"below": "5.00", "margin": "0.50"},
        "runway": {"below_days": 3},
        "budget": {"daily": "1000.00"},
    }
    async with standin() as url, broker() as mqtt_port:
        # `--api-host localhost` makes every poll resolve a name, as with the real API.
        url = url.replace("127.0.0.1", args.api_host)
        config = make_config(f"{url}/moving/v1", mqtt_port, args.accounts, poll, alerts=alerts)
        config = config.model_copy(
            update={"health": config.health.model_copy(update={"enabled": True, "port": 0})}
        )
        if args.tracemalloc:
            tracemalloc.start(8)
        bridge, _observed, stop, task = await start_bridge(config)
        async with asyncio.timeout(30):
            while bridge.health is None or bridge.health.port == 0:
                await asyncio.sleep(0.05)
        scraper = asyncio.create_task(scrape(bridge.health.port, 15.0))
        start = time.monotonic()
        mark_snapshot: tracemalloc.Snapshot | None = None
        at_mark: int | None = None
        samples: list[tuple[float, int]] = []
        end = args.minutes * 60
        mark = args.mark * 60
        next_sample = 0.0
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= next_sample or elapsed >= end:
                rss = vm_rss_kb()
                samples.append((elapsed, rss))
                polls = sum(a.polls for a in bridge.accounts.values())
                say(
                    f"{elapsed / 60:6.2f} min  RSS {rss / 1024:7.2f} MB  {breakdown()}  "
                    f"polls {polls}"
                )
                next_sample += args.sample
                if at_mark is None and elapsed >= mark:
                    at_mark = rss
                    if args.tracemalloc:
                        gc.collect()
                        mark_snapshot = tracemalloc.take_snapshot()
                        # The snapshot itself costs RSS (about 10 MB at 200 accounts): the
                        # reference is taken after it.
                        at_mark = vm_rss_kb()
            if elapsed >= end:
                break
            await asyncio.sleep(min(1.0, max(0.0, next_sample - elapsed)))
        if args.tracemalloc and mark_snapshot is not None:
            gc.collect()
            top_growth(mark_snapshot, tracemalloc.take_snapshot())
        scraper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraper
        await stop_bridge(stop, task)
    final = samples[-1][1]
    return {"at_mark_kb": at_mark, "final_kb": final, "samples": samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.soak")
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=60.0, help="poll interval, seconds")
    parser.add_argument("--api-host", default="127.0.0.1", help="how the bridge names the API")
    parser.add_argument("--mark", type=float, default=5.0, help="minutes: the reference RSS")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--tracemalloc", action="store_true", help="print what grew after the mark")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = asyncio.run(soak(args))
    at_mark, final = result["at_mark_kb"], result["final_kb"]
    if at_mark is None:
        say(f"ended before the {args.mark:g}-minute mark: RSS {final / 1024:.2f} MB")
        return
    growth = (final - at_mark) / 1024
    say(
        f"{args.accounts} accounts, {args.minutes:g} min, interval {args.interval:g} s: "
        f"RSS {at_mark / 1024:.2f} MB at {args.mark:g} min, {final / 1024:.2f} MB at the end "
        f"({growth:+.2f} MB; target within 2 MB)"
    )


if __name__ == "__main__":
    main()
