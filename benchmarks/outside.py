"""The outside method: the real `run` process measured the way a user's machine sees it.

`python -m cm_mqtt_bridge run` with a generated config (N accounts on the stand-in's static
endpoints, so every value is unchanged after the first cycle), driven by refresh-all commands
over MQTT. CPU comes from /proc/<pid>/task/*/schedstat (ns) with the process's own idle rate
subtracted; memory is VmHWM (peak RSS) from /proc/<pid>/status. Next to it, in the same run, a
raw aiohttp process does the same GETs, measured the same way, and a process that only imports
the dependencies gives the RSS baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
BASE_TOPIC = "cm_mqtt_bridge"
# What the issue names as the import-only baseline (pydantic-settings: only if installed).
BASELINE_IMPORTS = ("aiohttp", "aiomqtt", "paho.mqtt.client", "pydantic", "tenacity", "yaml")
RAW_CONCURRENCY = 20

# A raw aiohttp process: on each stdin line, the same 2N GETs the bridge makes (the same URLs
# and keys), then "done".
RAW = """
import asyncio, json, sys
import aiohttp
async def main():
    api, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    urls = [(f"{api}/static/v1/{what}", f"cm-bench-{i:04d}-0123456789abcdef")
            for i in range(n) for what in ("credits", "usage")]
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            todo = iter(urls)
            async def worker():
                for url, key in todo:
                    async with s.get(url, headers={"Authorization": "Bearer " + key,
                                                   "Accept": "application/json"}) as r:
                        await r.read()
            await asyncio.gather(*(worker() for _ in range(conc)))
            print("done", flush=True)
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    """CPU time of the process's threads, in ns steps from /proc/<pid>/task/*/schedstat
    (utime + stime in /proc/<pid>/stat count 10 ms ticks: too coarse for 10 accounts)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except OSError:
        total = 0
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key}")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def count(session: aiohttp.ClientSession, api: str) -> int:
    async with session.get(f"{api}/ctl/count") as resp:
        return int(await resp.text())


async def settle(pid: int, quiet: float = 0.3) -> float:
    """Wait until the process uses no CPU for `quiet` seconds; its CPU seconds then."""
    last = cpu_seconds(pid)
    still = 0.0
    while still < quiet:
        await asyncio.sleep(0.05)
        now = cpu_seconds(pid)
        # Below 0.5 ms in 50 ms: only housekeeping (MQTT keepalive, timers) left.
        still = still + 0.05 if now - last < 0.0005 else 0.0
        last = now
    return last


async def idle_rate(pid: int, seconds: float = 2.0) -> float:
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)


def write_config(tmp: Path, api: str, port: int, accounts: int, *, health: bool) -> Path:
    lines = ["accounts:"]
    for i in range(accounts):
        lines += [
            f"  - id: a{i:04d}",
            f"    api_key: cm-bench-{i:04d}-0123456789abcdef",
            f"    api_url: {api}/static/v1",
        ]
    lines += [
        f"data_dir: {tmp / 'data'}",
        "mqtt:",
        "  host: 127.0.0.1",
        f"  port: {port}",
        "  client_id: bridge-outside",
        "poll:",
        "  interval: 86400",  # only the refresh-all commands poll
        "  min_refresh_interval: 0",
    ]
    if health:
        lines += ["health:", "  enabled: true", "  port: 0"]
    path = tmp / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def bridge_process(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "cm_mqtt_bridge",
        "run",
        "--config",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def wait_requests(session: aiohttp.ClientSession, api: str, target: int) -> None:
    deadline = time.monotonic() + 300
    while await count(session, api) < target:
        if time.monotonic() > deadline:
            raise RuntimeError("the bridge did not make its requests in time")
        await asyncio.sleep(0.05)


async def run_bridge(
    api: str, port: int, accounts: int, cycles: int, *, health: bool = False
) -> dict[str, Any]:
    """CPU ms per account per unchanged refresh-all cycle (idle subtracted) and VmHWM."""
    with tempfile.TemporaryDirectory(prefix="cm-bench-outside-") as t:
        tmp = Path(t)
        config = write_config(tmp, api, port, accounts, health=health)
        async with (
            aiohttp.ClientSession() as session,
            aiomqtt.Client("127.0.0.1", port) as mqtt,
        ):
            start = await count(session, api)
            async with bridge_process(config) as proc:
                await wait_requests(session, api, start + 2 * accounts)  # the first cycle
                await settle(proc.pid, quiet=1.0)
                idle = await idle_rate(proc.pid)
                per_cycle: list[float] = []
                for i in range(cycles):
                    c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                    await mqtt.publish(f"{BASE_TOPIC}/refresh/set", b"", qos=1)
                    await wait_requests(session, api, start + 2 * accounts * (i + 2))
                    c1 = await settle(proc.pid)
                    wall = time.perf_counter() - t0 - 0.3  # minus settle's quiet wait
                    per_cycle.append(max(0.0, c1 - c0 - idle * wall))
                hwm = status_kb(proc.pid, "VmHWM")
    return {
        "cpu_ms_per_account": [c / accounts * 1000 for c in per_cycle],
        "idle_cpu_per_s": idle,
        "hwm_kb": hwm,
    }


async def run_raw(api: str, accounts: int, cycles: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-c",
        RAW,
        api,
        str(accounts),
        str(RAW_CONCURRENCY),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        per_cycle = []
        await asyncio.sleep(1.0)  # imported
        idle = await idle_rate(proc.pid, 1.0)
        for _ in range(cycles + 1):  # the first one warms the connections, like the bridge's
            c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            await asyncio.wait_for(proc.stdout.readline(), 120)
            await asyncio.sleep(0.05)  # let the tick accounting catch up
            per_cycle.append(cpu_seconds(proc.pid) - c0 - idle * (time.perf_counter() - t0))
        return {"cpu_ms_per_account": [max(0.0, c) / accounts * 1000 for c in per_cycle[1:]]}
    finally:
        proc.stdin.close()
        await proc.wait()


async def import_baseline() -> int:
    """VmHWM of a process that only imports the dependencies (pydantic-settings if installed)."""
    from benchmarks.bench import import_only

    return (await import_only([*BASELINE_IMPORTS, "pydantic_settings"], "VmHWM"))[0]


def med(values: list[float]) -> float:
    return statistics.median(values)


async def measure(api: str, broker_port: int, runs: int, big: int, cycles: int) -> dict[str, Any]:
    """Every outside figure, each the median of `runs` fresh processes."""
    out: dict[str, Any] = {"load_before": load(), "runs": runs, "big": big, "cycles": cycles}
    small_hwm, base_hwm, big_cpu, big_hwm, raw_cpu, one_cpu, health_hwm = [], [], [], [], [], [], []
    for _ in range(runs):
        base_hwm.append(await import_baseline())
        one = await run_bridge(api, broker_port, 1, 2)  # first poll + 2 refreshes = 3 polls
        small_hwm.append(one["hwm_kb"])
        # The same with the health endpoint on (it alone imports aiohttp.web).
        health_hwm.append((await run_bridge(api, broker_port, 1, 2, health=True))["hwm_kb"])
        many = await run_bridge(api, broker_port, big, cycles)
        big_cpu.append(med(many["cpu_ms_per_account"]))
        big_hwm.append(many["hwm_kb"])
        raw = await run_raw(api, big, cycles)
        raw_cpu.append(med(raw["cpu_ms_per_account"]))
        ten = await run_bridge(api, broker_port, 10, 10)
        one_cpu.append(med(ten["cpu_ms_per_account"]))
    out.update(
        {
            "cpu_ms_per_account_big": big_cpu,
            "raw_cpu_ms_per_account_big": raw_cpu,
            "cpu_ms_per_account_10": one_cpu,
            "hwm_kb_1": small_hwm,
            "hwm_kb_1_health": health_hwm,
            "hwm_kb_big": big_hwm,
            "baseline_hwm_kb": base_hwm,
            "load_after": load(),
        }
    )
    return out


async def _main() -> None:
    import argparse

    from benchmarks.bench import broker, standin

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=3)
    args = parser.parse_args()
    async with standin() as api, broker() as port:
        res = await measure(api, port, args.runs, args.accounts, args.cycles)
    print(json.dumps(res))


if __name__ == "__main__":
    asyncio.run(_main())
