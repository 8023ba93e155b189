"""cm-mqtt-bridge benchmark: memory, start-up, 1,000-account cycles, publishing, idle, CPU.

Run from the repository root (about two minutes on a 2-core machine; needs Mosquitto):

    .venv/bin/python benchmarks/bench.py          # print the table
    .venv/bin/python benchmarks/bench.py --save   # and write benchmarks/RESULTS.md

Every figure is a ratio against a baseline measured in the same run, on the same machine, with
the same loopback CrossModel stand-in (benchmarks/standin_server.py, its own process) and a
private Mosquitto (a fresh one per stage). The bridge runs in fresh processes
(benchmarks/worker.py, or the real `cm-mqtt-bridge run` console script for start-up).
The "Outside" rows measure the real `python -m cm_mqtt_bridge run` process from outside
(benchmarks/outside.py; `.venv/bin/python -m benchmarks.outside` runs that part alone).
Not part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from cm_mqtt_bridge.cli.localbroker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BRIDGE_EXE = str(Path(PY).parent / "cm-mqtt-bridge")
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
NOTES_MARK = "<!-- notes: kept as written when bench.py --save rewrites this file -->"
# The declared dependencies (pyproject) the bridge imports, by import name, + sqlite3.
DECLARED = ("aiohttp", "aiomqtt", "paho", "pydantic", "tenacity", "yaml", "prometheus_client")
BARE_IMPORTS = (*DECLARED, "sqlite3")
BALANCE_TOPIC = "cm_mqtt_bridge/default/balance"
START_RUNS = 5
RSS_RUNS = 3
SCALES = {1: 200, 10: 60, 100: 10}  # accounts -> measured cycles (1,000 comes from the big run)
BIG = 1000
BIG_CYCLES = 3
RESEND_AT = 100  # also measure the full republish here, where it can complete
OUTSIDE_RUNS = 3  # fresh processes per outside figure (the median is reported)
OUTSIDE_CYCLES = 3
OUTSIDE_BASELINE = (
    "aiohttp",
    "aiomqtt",
    "paho-mqtt",
    "pydantic",
    "pydantic-settings (if installed)",
    "tenacity",
    "PyYAML",
)
RAW_MQTT_WINDOW = 20  # benchmarks/worker.py: paho's default max_inflight_messages

# A process that imports the modules named in a JSON file (argv[2]), then prints the
# /proc/self/status figure named by argv[1] (VmRSS, or VmHWM for the peak). A module that is
# not installed is skipped.
IMPORT_ONLY = """
import importlib, json, sys
for name in json.load(open(sys.argv[2])):
    try:
        importlib.import_module(name)
    except Exception:
        pass
for line in open("/proc/self/status"):
    if line.startswith(sys.argv[1] + ":"):
        print(line.split()[1])
"""


def log(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


# ---- infrastructure -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def standin() -> AsyncIterator[str]:
    """The stand-in server process; yields its base URL (http://127.0.0.1:PORT)."""
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "benchmarks.standin_server", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"stand-in did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


@contextlib.asynccontextmanager
async def broker() -> AsyncIterator[int]:
    """A fresh private Mosquitto (nothing retained from an earlier stage); yields its port.

    With TCP_NODELAY: Mosquitto's default (Nagle on) holds back small PUBACKs until the
    client's delayed ACK (40 ms), which makes wall times bimodal at low message counts, for
    the bridge and the baselines alike."""
    with tempfile.TemporaryDirectory(prefix="cm-bench-mqtt-") as tmp:
        options = "allow_anonymous true\nset_tcp_nodelay true\n"
        mqtt = Mosquitto(Path(tmp), listener_options=options)
        await asyncio.to_thread(mqtt.start)
        try:
            yield mqtt.port
        finally:
            await asyncio.to_thread(mqtt.stop)


async def worker(mode: str, *args: str, timeout: float = 150.0) -> dict[str, Any]:
    with tempfile.TemporaryFile() as errors:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "benchmarks.worker",
            mode,
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"worker {mode} failed ({proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def import_only(names: list[str], figure: str = "VmRSS") -> tuple[int, float]:
    """(`figure` kB, wall seconds from spawn to exit) of a Python that imports `names` and
    exits; `figure`: VmRSS, or VmHWM (its peak)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(names, f)
        f.flush()
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", IMPORT_ONLY, figure, f.name, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        wall = time.perf_counter() - t0
    return int(out.decode().split()[0]), wall


# ---- stages --------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    ok: bool | None  # None: information only
    note: str = ""

    @property
    def result(self) -> str:
        return "info" if self.ok is None else ("PASS" if self.ok else "MISS")


async def stage_rss(api: str, details: dict[str, Any]) -> tuple[list[Row], list[str]]:
    log("RSS: bridge with one account after 100 polls, and import-only processes")
    bridge: list[int] = []
    used: list[int] = []
    plain: list[int] = []
    third_party: list[str] = []
    for _ in range(RSS_RUNS):
        async with broker() as port:
            res = await worker("rss", "--api", f"{api}/moving/v1", "--mqtt-port", str(port))
        bridge.append(res["rss_kb"])
        third_party = res["third_party"]
        used.append((await import_only(third_party))[0])
        plain.append((await import_only(list(BARE_IMPORTS)))[0])
    b, u, p = statistics.median(bridge), statistics.median(used), statistics.median(plain)
    details["rss"] = {
        "bridge_kb": bridge,
        "deps_as_used_kb": used,
        "deps_plain_import_kb": plain,
        "third_party_modules": len(third_party),
    }
    rows = [
        Row(
            "RSS, 1 account after 100 polls",
            f"{b / 1024:.1f} MiB",
            f"{u / 1024:.1f} MiB",
            b / u,
            "≤ 1.15",
            b / u <= 1.15,
            f"baseline imports the {len(third_party)} dependency modules the bridge loaded",
        ),
        Row(
            "↳ same, vs bare `import <package>`",
            f"{b / 1024:.1f} MiB",
            f"{p / 1024:.1f} MiB",
            b / p,
            "",
            None,
            "`import pydantic` alone loads little: pydantic imports its submodules lazily",
        ),
    ]
    return rows, third_party


async def start_once(api: str) -> float:
    with tempfile.TemporaryDirectory(prefix="cm-bench-start-") as tmp:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "LANG": "C.UTF-8",
            "CROSSMODEL_API_KEY": "cm-bench-start-0123456789abcdef",
            "CROSSMODEL_API_URL": f"{api}/static/v1",
            "MQTT_HOST": "127.0.0.1",
            "CM_MQTT_BRIDGE__DATA_DIR": f"{tmp}/data",
        }
        async with (
            broker() as port,
            aiomqtt.Client(
                "127.0.0.1", port, identifier="bench-start", protocol=aiomqtt.ProtocolVersion.V5
            ) as sub,
        ):
            await sub.subscribe(
                BALANCE_TOPIC, options=SubscribeOptions(qos=1, retainAsPublished=True)
            )
            env["MQTT_PORT"] = str(port)
            with open(f"{tmp}/bridge.log", "wb") as errors:
                t0 = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(
                    BRIDGE_EXE, "run", env=env, cwd=tmp, stdout=errors, stderr=errors
                )
                try:
                    async with asyncio.timeout(30):
                        async for message in sub.messages:
                            if message.retain and str(message.topic) == BALANCE_TOPIC:
                                return time.perf_counter() - t0
                except TimeoutError:
                    pass
                finally:
                    if proc.returncode is None:
                        proc.terminate()
                        await proc.wait()
        tail = Path(f"{tmp}/bridge.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"no retained balance within 30 s; the bridge's log ends:\n{tail}")


async def stage_start(api: str, third_party: list[str], details: dict[str, Any]) -> list[Row]:
    log(f"start-up: `cm-mqtt-bridge run` to first retained balance, {START_RUNS} runs")
    bridge: list[float] = []
    base: list[float] = []
    for _ in range(START_RUNS):
        base.append((await import_only(third_party))[1])
        bridge.append(await start_once(api))
    b, u = statistics.median(bridge), statistics.median(base)
    details["start"] = {"bridge_s": bridge, "import_only_s": base}
    return [
        Row(
            "Start → first retained balance",
            f"{b * 1000:.0f} ms",
            f"{u * 1000:.0f} ms",
            b / u,
            "≤ 1.2",
            b / u <= 1.2,
            f"median of {START_RUNS}; baseline: spawn, import the same dependencies, exit",
        )
    ]


def med(values: list[float]) -> float:
    return statistics.median(values)


async def stage_big(api: str, details: dict[str, Any]) -> tuple[list[Row], float | None]:
    log(f"{BIG} accounts: cycles vs raw aiohttp, publishing vs raw aiomqtt (~1 min)")
    async with broker() as port:
        res = await worker(
            "cycle",
            "--api",
            f"{api}/moving/v1",
            "--mqtt-port",
            str(port),
            "--accounts",
            str(BIG),
            "--cycles",
            str(BIG_CYCLES),
            "--baselines",
        )
    details["big"] = res
    raw = med(res["raw_http"])
    gets = f"{2 * BIG} GETs, {res['http_concurrency']} in flight (2 per poll)"
    cycle = f"{BIG}-account cycle, values changed"
    publish = f"Publish throughput, full republish, {BIG} accounts"
    if "failed" in res:
        raw_rate = res["messages"] / med(res["raw_mqtt"])
        return [
            Row(cycle, "did not finish", f"{raw:.3f} s", None, "≤ 1.4", False, res["failed"]),
            Row(publish, "did not finish", f"{raw_rate:,.0f} msg/s", None, "≥ 0.8", False, ""),
        ], None
    wall = med(res["wall"])
    raw_mqtt_cycle = med(res["raw_mqtt_cycle"])
    unchanged = med(res["unchanged_wall"])
    both = raw + raw_mqtt_cycle
    rows = [
        Row(
            f"{cycle}, vs raw aiohttp + raw aiomqtt",
            f"{wall:.2f} s",
            f"{both:.3f} s",
            wall / both,
            "≤ 1.4",
            wall / both <= 1.4,
            f"{gets}; the baseline also publishes the cycle's {res['cycle_messages']} "
            f"messages with aiomqtt (bridge: {med(res['cycle_publishes']):.0f})",
        ),
        Row(
            "↳ same, vs raw aiohttp alone",
            f"{wall:.2f} s",
            f"{raw:.3f} s",
            wall / raw,
            "",
            None,
            "the GETs without the publishes",
        ),
        Row(
            f"{BIG}-account cycle, values unchanged, vs raw aiohttp",
            f"{unchanged:.2f} s",
            f"{raw:.3f} s",
            unchanged / raw,
            "≤ 2.0",
            unchanged / raw <= 2.0,
            f"{med(res['unchanged_publishes']):.0f} messages; CPU per account: bridge "
            f"{med(res['unchanged_cpu']) / BIG * 1e6:.0f} µs, raw aiohttp "
            f"{med(res['raw_http_cpu']) / BIG * 1e6:.0f} µs",
        ),
        publishing_row(publish, res),
    ]
    return rows, med(res["cpu"]) / BIG * 1e6


def publishing_row(figure: str, res: dict[str, Any], *, target: bool = True) -> Row:
    raw_rate = res["messages"] / med(res["raw_mqtt"])
    resends = res["resend"]
    if all(r["completed"] for r in resends):
        rate = res["messages"] / med([r["wall"] for r in resends])
        note = f"every retained topic ({res['messages']} messages, {res['message_bytes']:,} B)"
    else:
        failed = next(r for r in resends if not r["completed"])
        rate = failed["sent"] / failed["wall"]
        note = (
            f"DID NOT COMPLETE: {failed['sent']} of {res['messages']} acknowledged in "
            f"{failed['wall']:.0f} s; {res['connections'] - 1} reconnect(s) by then"
        )
    return Row(
        figure,
        f"{rate:,.0f} msg/s",
        f"{raw_rate:,.0f} msg/s",
        rate / raw_rate,
        "≥ 0.8" if target else "",
        rate / raw_rate >= 0.8 if target else None,
        note + f"; raw aiomqtt keeps {RAW_MQTT_WINDOW} publishes in flight",
    )


async def stage_scaling(api: str, big_us: float | None, details: dict[str, Any]) -> list[Row]:
    log("CPU per account per cycle at 1, 10, 100 accounts")
    per_account: dict[int, float | None] = {}
    rows: list[Row] = []
    for accounts, cycles in SCALES.items():
        extra = ["--resend"] if accounts == RESEND_AT else []
        async with broker() as port:
            res = await worker(
                "cycle",
                "--api",
                f"{api}/moving/v1",
                "--mqtt-port",
                str(port),
                "--accounts",
                str(accounts),
                "--cycles",
                str(cycles),
                *extra,
            )
        details.setdefault("scaling", {})[accounts] = res
        per_account[accounts] = None if "failed" in res else med(res["cpu"]) / accounts * 1e6
        if extra and "failed" not in res:
            rows.append(publishing_row(f"↳ same, {accounts} accounts", res, target=False))
    per_account[BIG] = big_us
    details["cpu_us_per_account"] = per_account
    known = [us for us in per_account.values() if us is not None]
    low, high = min(known), max(known)
    shown = ", ".join(
        f"{n}: {us:,.0f}" if us is not None else f"{n}: did not finish"
        for n, us in per_account.items()
    )
    complete = len(known) == len(per_account)
    return [
        *rows,
        Row(
            "CPU µs/account/cycle (max ÷ min)",
            shown,
            f"min {low:,.0f} µs",
            high / low,
            "≤ 1.5 (flat)",
            complete and high / low <= 1.5,
            "accounts: µs of bridge-process CPU per account per refresh cycle"
            + ("" if complete else "; not every size finished a cycle"),
        ),
    ]


async def stage_idle(api: str, details: dict[str, Any]) -> list[Row]:
    log("idle hour on a virtual clock (default poll settings, unchanged values)")
    async with broker() as port:
        res = await worker("idle", "--api", f"{api}/static/v1", "--mqtt-port", str(port))
    details["idle"] = res
    count = res["state_publishes"]
    return [
        Row(
            "Idle hour: state publishes after the first",
            str(count),
            "0",
            None,
            "0",
            count == 0,
            f"{res['polls']} polls in {res['virtual_s']:.0f} virtual s ({res['wall_s']:.1f} s "
            f"real); all messages: {res['messages_seen']}",
        )
    ]


# ---- report --------------------------------------------------------------------------------


async def stage_outside(api: str, details: dict[str, Any]) -> list[Row]:
    """The outside method (benchmarks/outside.py): the real `run` process under refresh-all
    commands, CPU from /proc with idle subtracted, peak RSS; raw aiohttp beside it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.outside import measure

    log(f"outside: the real `run` process, 1 and {BIG} accounts, refresh-all over MQTT")
    async with broker() as port:
        res = await measure(api, port, OUTSIDE_RUNS, BIG, OUTSIDE_CYCLES)
    details["outside"] = res
    cpu, raw = med(res["cpu_ms_per_account_big"]), med(res["raw_cpu_ms_per_account_big"])
    ten = med(res["cpu_ms_per_account_10"])
    one, base = med(res["hwm_kb_1"]), med(res["baseline_hwm_kb"])
    health, big = med(res["hwm_kb_1_health"]), med(res["hwm_kb_big"])
    load = f"load average {res['load_before']} before, {res['load_after']} after"
    return [
        Row(
            f"Outside: CPU per account per unchanged refresh-all, {BIG:,} accounts",
            f"{cpu:.2f} ms",
            f"{raw:.2f} ms",
            cpu / raw if raw else None,
            "≤ 0.60 ms",
            cpu <= 0.60,
            f"baseline: raw aiohttp, the same 2 GETs per account, its own process; {load}",
        ),
        Row(
            "Outside: ↳ same, 10 accounts (flat from 10 to 1,000)",
            f"{ten:.2f} ms",
            f"{cpu:.2f} ms",
            ten / cpu if cpu else None,
            "info",
            None,
            "ratio: 10 accounts ÷ 1,000 accounts",
        ),
        Row(
            "Outside: peak RSS (VmHWM), 1 account after 3 polls",
            f"{one / 1024:.1f} MiB",
            f"{base / 1024:.1f} MiB",
            one / base,
            "≤ 1.00",
            one / base <= 1.00,
            "baseline: a process that only imports " + ", ".join(OUTSIDE_BASELINE),
        ),
        Row(
            "Outside: ↳ same with the health endpoint on",
            f"{health / 1024:.1f} MiB",
            f"{one / 1024:.1f} MiB",
            health / one,
            "info",
            None,
            "aiohttp.web is imported only when the endpoint starts",
        ),
        Row(
            f"Outside: peak RSS (VmHWM), {BIG:,} accounts",
            f"{big / 1024:.1f} MiB",
            f"{one / 1024:.1f} MiB",
            big / one,
            "≤ 75 MiB",
            big / 1024 <= 75,
            f"{(big - one) / (BIG - 1):.0f} KB per account above the 1-account process",
        ),
    ]


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("aiohttp", "aiomqtt", "paho-mqtt", "pydantic"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def table(rows: list[Row]) -> list[str]:
    out = [
        "| Figure | Bridge | Baseline | Ratio | Target | Result | Note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "–"
        out.append(
            f"| {r.figure} | {r.value} | {r.baseline} | {ratio} | {r.target} | {r.result} "
            f"| {r.note} |"
        )
    return out


def plain_table(rows: list[Row]) -> str:
    cells = [("Figure", "Bridge", "Baseline", "Ratio", "Target", "Result")]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        cells.append((r.figure, r.value, r.baseline, ratio, r.target, r.result))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summarize(value: Any) -> Any:
    """Long lists of numbers (per-cycle timings) become median/min/max, for RESULTS.md."""
    if isinstance(value, dict):
        return {k: summarize(v) for k, v in value.items()}
    numbers = isinstance(value, list) and all(isinstance(v, int | float) for v in value)
    if numbers and len(value) > 5:
        summary = {"n": len(value), "median": med(value), "min": min(value), "max": max(value)}
        return summarize(summary)
    if isinstance(value, list):
        return [summarize(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def results_markdown(rows: list[Row], details: dict[str, Any], seconds: float) -> str:
    m = machine()
    notes = ""
    if RESULTS.exists():
        text = RESULTS.read_text()
        if NOTES_MARK in text:
            notes = text[text.index(NOTES_MARK) :]
    lines = [
        "# Benchmark results",
        "",
        "Produced by `.venv/bin/python benchmarks/bench.py --save` "
        f"(took {seconds:.0f} s). Ratios are against baselines measured in the same run.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores; {m['os']}",
        f"- Python {m['python']}; {m['packages']}",
        f"- Date: {m['date']}",
        "",
        *table(rows),
        "",
        "<details><summary>Raw numbers</summary>",
        "",
        "```json",
        json.dumps(summarize(details), default=str, indent=None)
        .replace('}, "', '},\n "')
        .replace('], "', '],\n "'),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines) + (notes or NOTES_MARK + "\n")


async def run(save: bool) -> int:
    t0 = time.perf_counter()
    details: dict[str, Any] = {}
    rows: list[Row] = []
    async with standin() as api:
        rss_rows, third_party = await stage_rss(api, details)
        rows += rss_rows
        rows += await stage_start(api, third_party, details)
        big_rows, big_us = await stage_big(api, details)
        idle_rows = await stage_idle(api, details)
        scale_rows = await stage_scaling(api, big_us, details)
        rows += big_rows + scale_rows[:-1] + idle_rows + scale_rows[-1:]
        rows += await stage_outside(api, details)
    seconds = time.perf_counter() - t0
    print(plain_table(rows))
    print()
    for r in rows:
        if r.note:
            print(f"- {r.figure.strip()}: {r.note}")
    print(f"\nTotal {seconds:.0f} s. Details: --save writes them to {RESULTS.relative_to(ROOT)}.")
    if save:
        RESULTS.write_text(results_markdown(rows, details, seconds))
        log(f"wrote {RESULTS}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--save", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args()
    os.chdir(ROOT)
    return asyncio.run(run(args.save))


if __name__ == "__main__":
    sys.exit(main())
