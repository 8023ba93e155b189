"""`check | head -1` and `demo | head -3`: when the reader of the output goes away, the
command stops quietly (exit 141, as a shell reports for `git log | head`), no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import KEY
from tests.helpers import COMMAND, clean_env
from tests.mosquitto import free_port


def _run_into_pipe(args: list[str], tmp_path: Path, lines: int) -> tuple[int, str, list[str]]:
    """Run `cm-mqtt-bridge ARGS | head -LINES`: read that many lines, then close the pipe."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [*COMMAND, *args],
        stdout=write_end,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=clean_env(tmp_path),
    )
    os.close(write_end)
    got: list[str] = []
    try:
        with os.fdopen(read_end, "rb", buffering=0) as reader:
            buf = b""
            while len(got) < lines:
                chunk = reader.read(4096)
                assert chunk, f"output ended after {got}"
                buf += chunk
                *done, buf = buf.split(b"\n")
                got += [line.decode() for line in done]
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode(), got[:lines]


def test_check_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    nothing = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"accounts:\n  - {{id: main, api_key: {KEY}, api_url: 'http://127.0.0.1:{nothing}/v1'}}\n"
        f"poll: {{retries: 0}}\nmqtt: {{host: 127.0.0.1, port: {nothing}}}\n"
    )
    code, err, lines = _run_into_pipe(["check", "-c", str(config)], tmp_path, 1)
    assert lines[0].startswith("ok      config: valid")
    # The whole report fits the pipe's buffer: it is written before head closes the pipe,
    # so the check ends as usual (1: the API and broker fail). Nothing is printed on stderr.
    assert code in (1, 141)
    assert err == ""


def test_check_with_the_pipe_closed_before_it_writes(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    nothing = free_port()
    config.write_text(
        f"accounts:\n  - {{id: main, api_key: {KEY}, api_url: 'http://127.0.0.1:{nothing}/v1'}}\n"
        f"poll: {{retries: 0}}\nmqtt: {{host: 127.0.0.1, port: {nothing}}}\n"
    )
    code, err, _ = _run_into_pipe(["check", "-c", str(config)], tmp_path, 0)
    assert (code, err) == (141, "")


def test_demo_into_head_stops_quietly(tmp_path: Path) -> None:
    # Far longer than the test waits: it ends because the pipe closed, not because it is done.
    code, err, lines = _run_into_pipe(["demo", "--seconds", "300"], tmp_path, 3)
    assert lines[0].startswith("Started a private Mosquitto on 127.0.0.1:")
    assert code == 141, err
    assert "Traceback" not in err, err
    assert "BrokenPipe" not in err, err
