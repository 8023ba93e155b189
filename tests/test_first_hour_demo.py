"""`demo` stops cleanly however it is stopped, and its private broker never outlives it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from cm_mqtt_bridge.cli.demo import DIR_PREFIX, reap_stale_dirs
from tests.helpers import clean_env, cli_process, run_main, until


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return False
    except OSError:
        return True


async def read_until(stream: asyncio.StreamReader, pattern: str, timeout: float = 10) -> str:
    text = ""
    async with asyncio.timeout(timeout):
        while not re.search(pattern, text):
            line = await stream.readline()
            assert line, f"output ended before {pattern!r}: {text}"
            text += line.decode()
    return text


async def stop_demo(tmp: Path, how: str) -> tuple[int, str, str, float, int]:
    """Start the demo, wait until the bridge is online, stop it `how`; return the exit
    code, its output and stderr, how long it took to exit, and the private broker's port."""
    tmp.mkdir()
    env = clean_env(tmp, TMPDIR=str(tmp))
    async with cli_process("demo", env=env, new_session=how == "ctrl-c") as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        out = await read_until(proc.stdout, r"Started a private Mosquitto on 127\.0\.0\.1:\d+")
        port = int(re.findall(r"127\.0\.0\.1:(\d+)", out)[0])
        out += await read_until(proc.stdout, r"demo/status +online")
        sent = time.monotonic()
        if how == "ctrl-c":  # the terminal signals the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal({"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}[how])
        rest, err = await asyncio.wait_for(proc.communicate(), 5)
        took = time.monotonic() - sent
    assert proc.returncode is not None
    return proc.returncode, out + rest.decode(), err.decode(), took, port


async def test_demo_stops_cleanly_on_sigint_sigterm_and_ctrl_c(tmp_path: Path) -> None:
    hows = ("sigint", "sigterm", "ctrl-c")
    results = await asyncio.gather(*(stop_demo(tmp_path / how, how) for how in hows))
    for how, (code, out, err, took, port) in zip(hows, results, strict=True):
        assert code == (0 if how == "sigterm" else 130), (how, err)
        assert took < 5, how
        assert "Traceback" not in err, (how, err)
        assert "KeyboardInterrupt" not in err
        assert re.search(r"demo/status +offline", out), (how, out)
        assert "before the low-balance alert, which would have come at about 30 s" in out
        assert out.rstrip().endswith("with your own key."), (how, out)
        assert refused(port), f"{how}: the private broker still runs"
        assert not list((tmp_path / how).glob(DIR_PREFIX + "*")), f"{how}: temp dir left"


async def test_a_sigkilled_demo_takes_its_broker_along_and_its_dir_is_reaped(
    tmp_path: Path,
) -> None:
    env = clean_env(tmp_path, TMPDIR=str(tmp_path))
    async with cli_process("demo", env=env) as proc:
        assert proc.stdout is not None
        out = await read_until(proc.stdout, r"Started a private Mosquitto on 127\.0\.0\.1:\d+")
        port = int(re.findall(r"127\.0\.0\.1:(\d+)", out)[0])
        proc.kill()
        await proc.wait()
    # Nothing ran in the demo after SIGKILL: the kernel stopped its broker.
    await until(lambda: refused(port), what="the orphaned broker to stop")
    (left,) = tmp_path.glob(DIR_PREFIX + "*")
    # The next demo's start removes what the killed one left behind (and nothing alive).
    alive = tmp_path / (DIR_PREFIX + "running")
    alive.mkdir()
    (alive / "demo.pid").write_text(str(os.getpid()))
    assert reap_stale_dirs(tmp_path) == [left]
    assert not left.exists()
    assert alive.exists()


def test_demo_takes_the_global_flags_and_says_when_the_alert_would_come(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    config = tmp_path / "config.yaml"
    config.write_text("poll: {interval: 60}\n")
    result = run_main(capsys, "demo", "-v", "--config", str(config), "--seconds", "1", env={})
    assert result.code == 0, result.err
    assert "ignoring --config" in result.out
    assert "_readback" not in result.out
    assert re.search(r"demo/status +offline", result.out)
    assert "which would have come at about 30 s: run it with --seconds 70" in result.out
    assert "DEBUG cm_mqtt_bridge.service.runtime: demo: poll ok in " in result.err
    assert not list(tmp_path.glob(DIR_PREFIX + "*"))
