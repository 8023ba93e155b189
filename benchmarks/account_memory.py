"""What one account costs in memory: tracemalloc of the real `Bridge` with N accounts.

    .venv/bin/python -m benchmarks.account_memory --accounts 300 [--top 25]

The bridge runs in this process (real HTTP to the stand-in's static endpoints, a private
Mosquitto) until every account has polled once and everything is on the broker. The Python
heap traced from just before the bridge starts to then, divided by N, is the per-account cost;
`--top` lists the source lines (of this package, else the first frame) that hold most of it.
Prints one JSON line last: {"accounts", "traced_kb_per_account", "blocks_per_account"}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tracemalloc
from typing import Any

from benchmarks.bench import broker, standin
from benchmarks.worker import make_config, quiet_logs, start_bridge, stop_bridge

PACKAGE = "cm_mqtt_bridge"


def _where(trace: tracemalloc.Traceback) -> str:
    for frame in reversed(trace):  # the most recent first
        if PACKAGE in frame.filename:
            name = frame.filename.split(PACKAGE + "/", 1)[1]
            return f"{name}:{frame.lineno}"
    frame = trace[-1]
    return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"


def top_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> list[str]:
    held: dict[str, list[int]] = {}
    for stat in after.compare_to(before, "traceback"):
        if stat.size_diff <= 0:
            continue
        slot = held.setdefault(_where(stat.traceback), [0, 0])
        slot[0] += stat.size_diff
        slot[1] += stat.count_diff
    ranked = sorted(held.items(), key=lambda item: -item[1][0])[:n]
    return [f"{size:>10,} B {count:>7} blocks  {where}" for where, (size, count) in ranked]


async def measure(accounts: int, top: int) -> dict[str, Any]:
    async with standin() as api, broker() as port:
        config = make_config(f"{api}/static/v1", port, accounts, {"interval": 86400})
        tracemalloc.start(12)
        gc.collect()
        before = tracemalloc.take_snapshot()
        bridge, observed, stop, task = await start_bridge(config)
        try:
            await observed.until(accounts, timeout=300)
            await asyncio.sleep(2.0)  # the last tasks of the first cycle end
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            await stop_bridge(stop, task)
        tracemalloc.stop()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    blocks = sum(s.count_diff for s in after.compare_to(before, "filename"))
    for line in top_lines(before, after, top):
        print(line)
    del bridge
    return {
        "accounts": accounts,
        "traced_kb_per_account": round(size / accounts / 1024, 2),
        "blocks_per_account": round(blocks / accounts, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    quiet_logs()
    print(json.dumps(asyncio.run(measure(args.accounts, args.top))))


if __name__ == "__main__":
    main()
