"""The command line against the stand-in server: in-process through `cli.main(argv, env)` (the
same code, without starting Python for each run), plus smoke tests through the real console
script as a subprocess (status, a configuration error, set-api-key)."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import pytest

from cm_mqtt_bridge import __version__
from tests.helpers import Result, clean_env, run_cli, run_main
from tests.standin import CrossModelStandin, Reply

# Distinctive, so a leak anywhere in the output cannot be a coincidence.
CLI_KEY = "cm-cli-Xq7ZpL0-distinctive-1138"
# Whatever happened, the key never reaches the terminal (not even in part).
SECRETS = (CLI_KEY, "Xq7ZpL0")

EXPECTED_TEXT = """\
CrossModel · Default (default)
  Balance    8.06 USD
  Holds      0.13 USD
  Available  7.93 USD
  Today      0.01 USD · 12,000 tokens · 41 requests
  Week       0.67 USD · 529,000 tokens · 529 requests
  Month      5.37 USD · 3,200,000 tokens · 3,200 requests
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def base_env(home: Path) -> dict[str, str]:
    """The parent's env minus anything that configures the bridge, HOME in a temp dir."""
    return clean_env(home)


@pytest.fixture
def env(base_env: dict[str, str], standin: CrossModelStandin) -> dict[str, str]:
    return {**base_env, "CROSSMODEL_API_KEY": CLI_KEY, "CROSSMODEL_API_URL": standin.url}


async def cli(*args: str, env: Mapping[str, str], stdin: str | None = None) -> Result:
    """The real console script, as a subprocess."""
    return await run_cli(*args, env=env, stdin=stdin, secrets=SECRETS)


Main = Callable[..., Awaitable[Result]]


@pytest.fixture
def main(capsys: pytest.CaptureFixture[str]) -> Main:
    """`cli.main(ARGS, env)` in-process, on a thread of its own: `status` calls `asyncio.run`,
    and the stand-in keeps answering on the test's loop meanwhile."""

    async def run(*args: str, env: Mapping[str, str], stdin: str | None = None) -> Result:
        return await asyncio.to_thread(
            run_main, capsys, *args, env=env, stdin=stdin, secrets=SECRETS
        )

    return run


# ---- status -------------------------------------------------------------------------------


async def test_status_text(env: dict[str, str], standin: CrossModelStandin) -> None:
    result = await cli("status", env=env)
    assert result.code == 0, result.err
    assert result.out == EXPECTED_TEXT
    assert "$" not in result.out
    assert standin.count("credits") == 1
    assert standin.count("usage") == 1
    assert standin.seen[0].headers["Authorization"] == f"Bearer {CLI_KEY}"


async def test_status_json_has_exact_micro_values(
    env: dict[str, str], standin: CrossModelStandin, main: Main
) -> None:
    result = await main("status", "--json", env=env)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    [acc] = doc["accounts"]
    fetched_at = acc.pop("fetched_at")
    assert fetched_at.endswith("+00:00")
    assert acc == {
        "id": "default",
        "name": "Default",
        "ok": True,
        "currency": "USD",
        "balance_micro": 8059489,
        "holds_micro": 125000,
        "available_micro": 7934489,
        "balance": "8.059489",
        "holds": "0.125",
        "available": "7.934489",
        "usage_state": "ok",
        "usage_error": None,
        "usage": {
            "daily": {
                "cost_micro": 10250,
                "cost": "0.01025",
                "prompt_tokens": 9100,
                "completion_tokens": 2900,
                "total_tokens": 12000,
                "request_count": 41,
                "success_count": 40,
            },
            "weekly": {
                "cost_micro": 670000,
                "cost": "0.67",
                "prompt_tokens": 401000,
                "completion_tokens": 128000,
                "total_tokens": 529000,
                "request_count": 529,
                "success_count": 521,
            },
            "monthly": {
                "cost_micro": 5370000,
                "cost": "5.37",
                "prompt_tokens": 2500000,
                "completion_tokens": 700000,
                "total_tokens": 3200000,
                "request_count": 3200,
                "success_count": 3150,
            },
        },
    }


async def test_status_shows_the_currency_code_never_a_dollar(
    env: dict[str, str], standin: CrossModelStandin, main: Main
) -> None:
    standin.credits["currency"] = "eur"
    standin.usage["currency"] = "EUR"
    result = await main("status", env=env)
    assert result.code == 0, result.err
    assert result.out == EXPECTED_TEXT.replace("USD", "EUR")
    assert "$" not in result.out
    assert "USD" not in result.out


async def test_status_usage_unavailable_keeps_the_balance(
    env: dict[str, str], standin: CrossModelStandin, main: Main
) -> None:
    standin.always["usage"] = Reply(status=500, json={})
    result = await main("status", env={**env, "CM_MQTT_BRIDGE__POLL__RETRIES": "0"})
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "CrossModel · Default (default)",
        "  Balance    8.06 USD",
        "  Holds      0.13 USD",
        "  Available  7.93 USD",
        "  Usage      unavailable (failed: /usage: HTTP 500)",
    ]
    assert "usage figures were not available for every account (balance is current)" in (result.err)


async def test_status_auth_failure_exits_1(
    env: dict[str, str], standin: CrossModelStandin, main: Main
) -> None:
    standin.always["credits"] = Reply(status=401, json={"error": f"bad key {CLI_KEY}"})
    text = await main("status", env=env)
    as_json = await main("status", "--json", env=env)
    assert (text.code, as_json.code) == (1, 1)
    assert text.out == (
        "CrossModel · Default (default)\n"
        "  Error      auth_failed: /credits: HTTP 401: the API key was rejected\n"
    )
    assert json.loads(as_json.out) == {
        "accounts": [
            {
                "id": "default",
                "name": "Default",
                "ok": False,
                "api_status": "auth_failed",
                "error": "/credits: HTTP 401: the API key was rejected",
            }
        ]
    }
    assert standin.count("credits") == 2  # once per run: never retried


async def test_status_upstream_unreachable_exits_1(
    env: dict[str, str], standin: CrossModelStandin, main: Main
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    standin.always["credits"] = Reply(status=500, body=f"<html>{CLI_KEY}</html>".encode())
    no_retry = {**env, "CM_MQTT_BRIDGE__POLL__RETRIES": "0"}
    refused = {**no_retry, "CROSSMODEL_API_URL": f"http://127.0.0.1:{closed_port}/v1"}
    http_500 = await main("status", env=no_retry)
    conn = await main("status", env=refused)
    assert http_500.code == 1
    assert http_500.out == (
        "CrossModel · Default (default)\n  Error      server_error: /credits: HTTP 500\n"
    )
    assert standin.count("credits") == 1
    assert conn.code == 1
    assert conn.out.startswith(
        "CrossModel · Default (default)\n  Error      unreachable: /credits: connection failed: "
    )


async def test_verbose_flag_before_or_after_the_command(
    env: dict[str, str], standin: CrossModelStandin, main: Main
) -> None:
    before = await main("-v", "status", env=env)
    after = await main("status", "--verbose", env=env)
    for result in (before, after):
        assert result.code == 0, result.err
        assert result.out == EXPECTED_TEXT
    assert standin.count("credits") == 2


async def test_config_and_api_url_flags(
    base_env: dict[str, str], standin: CrossModelStandin, tmp_path: Path, main: Main
) -> None:
    key_file = tmp_path / "secret"
    key_file.write_text(f"'{CLI_KEY}'\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "accounts:\n"
        "  - id: main\n"
        "    name: Main wallet\n"
        f"    api_key_file: {key_file}\n"
        f"    api_url: {standin.url}\n"
    )
    env_url = {
        **base_env,
        "CROSSMODEL_API_KEY": CLI_KEY,
        "CROSSMODEL_API_URL": "https://api.crossmodel.invalid/v1",
    }
    from_file = await main("status", "--config", str(config), env=base_env)
    from_flag = await main("status", "--api-url", standin.url, env=env_url)
    assert from_file.code == 0, from_file.err
    assert from_file.out == EXPECTED_TEXT.replace("Default (default)", "Main wallet (main)")
    assert from_flag.code == 0, from_flag.err
    assert from_flag.out == EXPECTED_TEXT
    assert [s.headers["Authorization"] for s in standin.seen] == [f"Bearer {CLI_KEY}"] * 4


# ---- bad configuration: exit 2, one line per problem, no request made ---------------------


def config_error(*problems: str) -> str:
    return "cm-mqtt-bridge: invalid configuration:\n" + "".join(f"  - {p}\n" for p in problems)


async def test_bad_config_exits_2(
    env: dict[str, str], standin: CrossModelStandin, tmp_path: Path, main: Main
) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(f"accounts:\n  - id: main\n    api_key: {CLI_KEY}: oops\n")
    misplaced = tmp_path / "misplaced.yaml"
    misplaced.write_text(f"accounts:\n  - id: main\n    api_key_file: {CLI_KEY}\n")
    missing = tmp_path / "nope.yaml"
    colon = len("    api_key: ") + len(CLI_KEY) + 1
    cases: list[tuple[str, dict[str, str], list[str], str]] = [
        (
            "http to a remote host",
            {"CROSSMODEL_API_URL": "http://api.crossmodel.ai/v1"},
            [],
            config_error(
                "CROSSMODEL_API_URL (accounts[0].api_url): http is only allowed for loopback "
                "hosts; use https"
            ),
        ),
        (
            "credentials in the URL",
            {"CROSSMODEL_API_URL": f"https://{CLI_KEY}@api.crossmodel.ai/v1"},
            [],
            config_error(
                "CROSSMODEL_API_URL (accounts[0].api_url): must not contain credentials "
                "(user:password@)"
            ),
        ),
        (
            "key without cm-",
            {"CROSSMODEL_API_KEY": "sk-proj-Xq7ZpL0-wrong"},
            [],
            config_error(
                "CROSSMODEL_API_KEY (accounts[0].api_key): API key must start with 'cm-' "
                "(CrossModel keys do)"
            ),
        ),
        (
            "--interval below 30",
            {},
            ["--interval", "10"],
            config_error("--interval (poll.interval): Input should be greater than or equal to 30"),
        ),
        (
            "two problems from env",
            {"CM_MQTT_BRIDGE__POLL__INTERVAL": "5", "CM_MQTT_BRIDGE__MQTT__HOTS": "x"},
            [],
            config_error(
                "CM_MQTT_BRIDGE__POLL__INTERVAL (poll.interval): Input should be greater than "
                "or equal to 30",
                "CM_MQTT_BRIDGE__MQTT__HOTS (mqtt.hots): unknown option; did you mean host?",
            ),
        ),
        (
            "no account",
            {"CROSSMODEL_API_KEY": ""},
            [],
            config_error(
                "accounts: no account configured: set CROSSMODEL_API_KEY or list accounts in "
                "the config file"
            ),
        ),
        (
            "invalid YAML holding the key",
            {},
            ["--config", str(bad_yaml)],
            config_error(
                f"config file {bad_yaml}: invalid YAML at line 3, column {colon}: "
                "mapping values are not allowed here"
            ),
        ),
        (
            "key given as api_key_file",
            {"CROSSMODEL_API_KEY": ""},
            ["-c", str(misplaced)],
            config_error(
                "accounts[0].api_key_file: cannot read cm-… (No such file or directory)",
            ),
        ),
        (
            "missing config file",
            {},
            ["--config", str(missing)],
            config_error(f"config file {missing}: not found"),
        ),
    ]
    for name, extra, args, expected in cases:
        # The stand-in keeps answering, so a request would be seen.
        result = await main("status", *args, env={**env, **extra})
        assert (result.code, result.out, result.err) == (2, "", expected), name
    assert standin.seen == []
    # One of them through the real console script too.
    name, extra, args, expected = cases[0]
    result = await cli("status", *args, env={**env, **extra})
    assert (result.code, result.out, result.err) == (2, "", expected), name


# ---- version ------------------------------------------------------------------------------


async def test_version(base_env: dict[str, str], main: Main) -> None:
    result = await main("--version", env=base_env)
    assert result.code == 0
    assert result.out == f"cm-mqtt-bridge {__version__}\n"


# ---- config set-api-key -------------------------------------------------------------------


def set_key(main: Main, path: Path, typed: str, env: Mapping[str, str]) -> Awaitable[Result]:
    return main("config", "set-api-key", "--stdin", "--file", str(path), env=env, stdin=typed)


async def test_set_api_key_writes_a_normalized_0600_file(
    base_env: dict[str, str], tmp_path: Path, main: Main
) -> None:
    typed = [f"  {CLI_KEY}\n", f'"{CLI_KEY}"\n', f" '{CLI_KEY}' \n"]
    paths = [tmp_path / f"secrets{i}" / "crossmodel_key" for i in range(len(typed))]
    existing = paths[0]
    existing.parent.mkdir()
    existing.write_text("cm-old\n")
    existing.chmod(0o644)
    results = [await set_key(main, p, t, base_env) for p, t in zip(paths, typed, strict=True)]
    for path, result in zip(paths, results, strict=True):
        assert result.code == 0, result.err
        assert result.out == (
            f"API key stored in {path} (mode 0600). Point api_key_file at it, or leave it there.\n"
        )
        assert path.read_text() == f"{CLI_KEY}\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in path.parent.iterdir()] == ["crossmodel_key"]  # no temp file


async def test_set_api_key_refuses_a_bad_key(
    base_env: dict[str, str], tmp_path: Path, main: Main
) -> None:
    cases = [
        ("sk-Xq7ZpL0-not-crossmodel\n", "API key must start with 'cm-' (CrossModel keys do)"),
        ("\n", "API key is empty"),
        ("cm-Xq7ZpL0 two words\n", "API key contains whitespace or control characters"),
    ]
    paths = [tmp_path / f"key{i}" for i in range(len(cases))]
    results = [
        await set_key(main, p, typed, base_env) for p, (typed, _) in zip(paths, cases, strict=True)
    ]
    for path, (_, message), result in zip(paths, cases, results, strict=True):
        assert (result.code, result.out, result.err) == (2, "", f"cm-mqtt-bridge: {message}\n")
        assert not path.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]


async def test_stored_key_is_used_by_status(
    base_env: dict[str, str], home: Path, standin: CrossModelStandin, main: Main
) -> None:
    # set-api-key through the real console script; status in-process.
    result = await cli("config", "set-api-key", "--stdin", env=base_env, stdin=CLI_KEY)
    assert result.code == 0, result.err
    stored = home / ".config" / "cm-mqtt-bridge" / "api_key"
    assert stored.read_text() == f"{CLI_KEY}\n"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    result = await main("status", env={**base_env, "CROSSMODEL_API_URL": standin.url})
    assert result.code == 0, result.err
    assert result.out == EXPECTED_TEXT
    assert standin.seen[0].headers["Authorization"] == f"Bearer {CLI_KEY}"
