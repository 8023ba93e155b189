"""Helpers shared by the tests: waiting on a condition, reading the state database, and running
the console script (as a subprocess, or in-process through `cli.main`)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from cm_mqtt_bridge.cli.main import main
from cm_mqtt_bridge.store.db import DB_NAME


async def until(check: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Wait until `check()` is truthy and return it; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)
    return result


def db_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` on the state database in `data_dir` (empty while it does not exist)."""
    if not (data_dir / DB_NAME).exists():
        return []
    db = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


INSTALL_SUFFIX = re.compile(r"\.[0-9a-f]{10}$")


def bare(notice_id: str | None) -> str:
    """A notice id without its install id (`main.low_balance.1.3fa9c2d41b` -> `main.low_balance.1`):
    tests that check the order and count of notices compare these."""
    assert notice_id is not None
    assert INSTALL_SUFFIX.search(notice_id), f"{notice_id!r} carries no install id"
    return INSTALL_SUFFIX.sub("", notice_id)


def outbox(data_dir: Path) -> list[tuple[str, str, int, bool]]:
    """(id without its install id, channel, attempts, delivered) of every outbox row."""
    return [
        (bare(i), c, a, d is not None)
        for i, c, a, d in db_rows(
            data_dir, "SELECT id, channel, attempts, delivered FROM outbox ORDER BY id, channel"
        )
    ]


# ---- the console script ----------------------------------------------------------------------

SCRIPT = Path(sys.executable).with_name("cm-mqtt-bridge")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cm_mqtt_bridge.cli.main"]
BRIDGE_ENV_PREFIXES = ("CROSSMODEL_", "MQTT_", "CM_MQTT_BRIDGE")


@dataclass
class Result:
    code: int
    out: str
    err: str


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The parent's env minus anything that configures the bridge, HOME in `home`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(BRIDGE_ENV_PREFIXES) and name != "XDG_CONFIG_HOME"
    }
    return {**env, "HOME": str(home), "PYTHONIOENCODING": "utf-8", **extra}


@contextlib.asynccontextmanager
async def cli_process(
    *args: str,
    env: Mapping[str, str],
    cwd: Path | None = None,
    stdin: bool = False,
    stderr: int | IO[Any] = asyncio.subprocess.PIPE,
    new_session: bool = False,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`cm-mqtt-bridge ARGS` as a subprocess, killed on the way out if it still runs.
    `new_session`: its own process group, as a terminal's foreground job (for a Ctrl-C)."""
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        start_new_session=new_session,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_cli(
    *args: str,
    env: Mapping[str, str],
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
    secrets: Sequence[str] = (),
) -> Result:
    """Run `cm-mqtt-bridge ARGS` to the end. It never crashes nor prints one of `secrets`."""
    async with cli_process(*args, env=env, cwd=cwd, stdin=stdin is not None) as proc:
        data = stdin.encode() if stdin is not None else None
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    assert proc.returncode is not None
    result = Result(proc.returncode, out.decode(), err.decode())
    check_output(result, secrets)
    return result


def run_main(
    capsys: pytest.CaptureFixture[str],
    *args: str,
    env: Mapping[str, str],
    stdin: str | None = None,
    secrets: Sequence[str] = (),
) -> Result:
    """`cm_mqtt_bridge.cli.main.main(ARGS, env)` in-process: much faster than a subprocess. `stdin`
    is what it reads from standard input; an argparse exit (`--version`, a usage error) is
    its exit code. Commands that call `asyncio.run` (status, check, …) need a thread of their
    own from an async test: `await asyncio.to_thread(run_main, capsys, ...)`."""
    capsys.readouterr()
    real_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(args), env)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        sys.stdin = real_stdin
    out, err = capsys.readouterr()
    result = Result(code, out, err)
    check_output(result, secrets)
    return result


def check_output(result: Result, secrets: Sequence[str]) -> None:
    for stream in (result.out, result.err):
        assert "Traceback" not in stream
        for secret in secrets:
            assert secret not in stream
