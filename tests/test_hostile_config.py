"""Hostile and broken configs, as files: each is exit 2 with one line naming the file or the
field, never a traceback, a hang or a machine out of memory (issue 11, finding 1 and 2).

Configs that could eat memory or hang run in ONE subprocess under a 500 MB address-space
limit and a timeout, so a regression fails the test instead of taking the machine down."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cm_mqtt_bridge.cli.main import main
from tests.conftest import KEY

ACCOUNT = f"accounts:\n  - id: main\n    api_key: {KEY}\n"
MEMORY_LIMIT = 500 * 1024 * 1024


def run_main(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv, env or {"HOME": "/nonexistent"})
    return code, err.getvalue()


def check_config(tmp_path: Path, text: str | bytes) -> str:
    """`check` on a config file that must be refused; returns the one problem line."""
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = run_main(["check", "--config", str(path)])
    assert code == 2, err
    assert "Traceback" not in err
    assert KEY not in err
    lines = err.splitlines()
    assert lines[0] == "cm-mqtt-bridge: invalid configuration:"
    return "\n".join(lines[1:])


def anchor_bomb(levels: int = 10) -> str:
    lines = ["a0: &a0 {k: x}"]
    for n in range(1, levels):
        refs = ", ".join(f"k{i}: *a{n - 1}" for i in range(10))
        lines.append(f"a{n}: &a{n} {{{refs}}}")
    return "\n".join(lines) + "\n"


# ---- in process: cheap refusals ------------------------------------------------------------


def test_a_non_utf8_byte_names_line_and_column(tmp_path: Path) -> None:
    problem = check_config(tmp_path, ACCOUNT.encode() + b"mqtt:\n  host: caf\xe9\n")
    assert "not UTF-8 at line 5, column 12 (byte 0xe9)" in problem


def test_a_non_utf8_key_file_names_line_and_column_but_no_byte_of_it(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"cm-abc\xf1def\n")
    key_file.chmod(0o600)
    problem = check_config(tmp_path, f"accounts:\n  - id: main\n    api_key_file: {key_file}\n")
    assert f"api_key_file: {key_file} is not UTF-8 at line 1, column 7; save it" in problem
    assert "0xf1" not in problem
    assert "cm-abc" not in problem


def test_duplicate_keys_are_refused_with_their_place(tmp_path: Path) -> None:
    problem = check_config(tmp_path, ACCOUNT + "poll:\n  interval: 60\n  interval: 30\n")
    assert "invalid YAML at line 6, column 3: duplicate key 'interval'" in problem


def test_an_alias_is_refused_with_its_place(tmp_path: Path) -> None:
    problem = check_config(tmp_path, ACCOUNT + "x: &a {k: 1}\ny: *a\n")
    assert "invalid YAML at line 5, column 4: aliases (*name) are not supported" in problem


def test_deep_nesting_is_reported_not_a_recursion_error(tmp_path: Path) -> None:
    problem = check_config(tmp_path, ACCOUNT + "x: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "nested deeper than 20 levels" in problem


def test_a_config_over_1_mb_is_refused_saying_the_limit(tmp_path: Path) -> None:
    problem = check_config(tmp_path, ACCOUNT + "#" * (1024 * 1024) + "\n")
    assert "larger than the limit of 1,048,576 bytes" in problem


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("accounts[0].id", '"main\\n"', "control characters"),
        ("accounts[0].name", '"Main\\u0007"', "control characters"),
        ("mqtt.base_topic", '"cm\\n"', "no + or #"),
        ("mqtt.discovery_prefix", '"homeassistant\\n"', "no + or #"),
        ("mqtt.base_topic", '"cm/#"', "no + or #"),
        ("mqtt.client_id", '"bridge\\u0001"', "no control characters"),
        ("mqtt.client_id", '"bridge/#"', "'+' or '#'"),
        ("notify.ntfy.topic", '"wallet\\n"', "ntfy topics use"),
    ],
)
def test_control_characters_and_wildcards_are_refused(
    tmp_path: Path, field: str, value: str, rule: str
) -> None:
    section, _, name = field.rpartition(".")
    if section == "accounts[0]":
        text = f"accounts:\n  - id: main\n    api_key: {KEY}\n    {name}: {value}\n"
        if name == "id":
            text = f"accounts:\n  - api_key: {KEY}\n    id: {value}\n"
    else:
        nested = section.split(".")
        text = ACCOUNT + "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(nested))
        text += "  " * len(nested) + f"{name}: {value}\n"
        if section == "notify.ntfy":
            text += "    url: http://127.0.0.1:9\n"
    problem = check_config(tmp_path, text)
    assert problem.startswith(f"  - {field}: "), problem
    assert rule in problem


@pytest.mark.parametrize("field", ["id", "name"])
def test_a_key_pasted_into_id_or_name_is_refused_and_not_echoed(tmp_path: Path, field: str) -> None:
    pasted = "cm-zq81lowercasekeyvalue0123456789"
    other = "name: Main" if field == "id" else "id: main"
    text = f"accounts:\n  - {other}\n    api_key: {KEY}\n    {field}: {pasted}\n"
    problem = check_config(tmp_path, text)
    assert problem == f"  - accounts[0].{field}: looks like an API key; put the key in " + (
        "api_key_file, not here"
    )
    assert "zq81" not in problem


# ---- in a subprocess under a memory limit: what could eat the machine or hang ----------------

_RUNNER = """
import contextlib, io, json, resource, sys, time, traceback
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from cm_mqtt_bridge.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv, {{"HOME": "/nonexistent"}})
    except BaseException:
        code, err = -1, io.StringIO(traceback.format_exc())
    results.append([code, err.getvalue(), time.monotonic() - start])
print(json.dumps(results))
"""


def run_limited(cases: list[list[str]], timeout: float) -> list[tuple[int, str, float]]:
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER.format(limit=MEMORY_LIMIT), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    return [(int(c), str(e), float(s)) for c, e, s in json.loads(result.stdout)]


def test_memory_and_hang_hazards_are_exit_2_within_5_s_under_500_mb(tmp_path: Path) -> None:
    def config(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:  # 50 MB, sparse: nothing of it needs to be read
        f.truncate(50 * 1024 * 1024)
    ntfy = "notify:\n  ntfy:\n    url: http://127.0.0.1:9\n    topic: t\n"
    hook = "notify:\n  webhook:\n    url: http://127.0.0.1:9/hook\n"
    cases: dict[str, tuple[str, str]] = {
        "bomb under an unknown key": (
            config("bomb1.yaml", ACCOUNT + anchor_bomb()),
            "aliases (*name) are not supported",
        ),
        "bomb under alerts": (
            config("bomb2.yaml", ACCOUNT + "alerts:\n  " + anchor_bomb().replace("\n", "\n  ")),
            "aliases (*name) are not supported",
        ),
        "50 MB file": (str(big), "larger than the limit of 1,048,576 bytes"),
        "deep nesting": (
            config("deep.yaml", "x: " + "[" * 50_000 + "]" * 50_000 + "\n"),
            "nested deeper than 20 levels",
        ),
        "api_key_file /dev/zero": (
            config("zero.yaml", "accounts:\n  - id: main\n    api_key_file: /dev/zero\n"),
            "accounts[0].api_key_file: cannot read /dev/zero (not a regular file",
        ),
        "api_key_file FIFO": (
            config("fifo.yaml", f"accounts:\n  - id: main\n    api_key_file: {fifo}\n"),
            f"accounts[0].api_key_file: cannot read {fifo} (not a regular file",
        ),
        "token_file /dev/zero": (
            config("token.yaml", ACCOUNT + ntfy + "    token_file: /dev/zero\n"),
            "cannot read /dev/zero (not a regular file",
        ),
        "secret_file FIFO": (
            config("secret.yaml", ACCOUNT + hook + f"    secret_file: {fifo}\n"),
            f"cannot read {fifo} (not a regular file",
        ),
    }
    results = run_limited([["check", "--config", path] for path, _ in cases.values()], 30)
    for (name, (_path, expected)), (code, err, seconds) in zip(cases.items(), results, strict=True):
        assert code == 2, f"{name}: {err}"
        assert expected in err, f"{name}: {err}"
        assert "Traceback" not in err, f"{name}: {err}"
        assert seconds < 5, f"{name}: {seconds:.1f} s"


def test_a_key_file_over_4_kb_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY + "\n" * 5000)
    text = f"accounts:\n  - id: main\n    api_key_file: {key}\n"
    problem = check_config(tmp_path, text)
    assert "larger than the limit of 4,096 bytes" in problem
