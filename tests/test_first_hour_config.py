"""Config errors: one message per real mistake, in the user's words; config.example.yaml's
commented blocks are valid where they stand."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from cm_mqtt_bridge.config.settings import ConfigError, load_config
from cm_mqtt_bridge.notify.channels import NtfyConfig
from tests.conftest import KEY
from tests.helpers import run_main

UNKNOWN = "unknown option (check the spelling against config.example.yaml)"
EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.yaml"


def errors(result_err: str) -> list[str]:
    lines = result_err.splitlines()
    assert lines[0] == "cm-mqtt-bridge: invalid configuration:", result_err
    return [line.removeprefix("  - ") for line in lines[1:]]


def two_accounts(tmp_path: Path, alerts: str = "") -> Path:
    for name in ("a", "b"):
        (tmp_path / name).write_text(KEY + "\n")
        (tmp_path / name).chmod(0o600)  # as `config set-api-key` writes it: no mode warning
    path = tmp_path / "config.yaml"
    path.write_text(
        "accounts:\n"
        f"  - {{id: a, api_key_file: {tmp_path / 'a'}, api_url: http://127.0.0.1:9/v1}}\n"
        f"  - {{id: b, api_key_file: {tmp_path / 'b'}, api_url: http://127.0.0.1:9/v1}}\n"
        f"{alerts}"
    )
    return path


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"CROSSMODEL_API_KEY": KEY}, [], "CROSSMODEL_API_KEY is set"),
        ({"CROSSMODEL_API_KEY_FILE": "/nonexistent"}, [], "CROSSMODEL_API_KEY_FILE is set"),
        ({"CROSSMODEL_API_URL": "http://127.0.0.1:9/v1"}, [], "CROSSMODEL_API_URL is set"),
        ({}, ["--api-url", "http://127.0.0.1:9/v1"], "--api-url is set"),
    ],
)
def test_single_account_setting_with_two_accounts_is_one_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    args: list[str],
    named: str,
) -> None:
    path = two_accounts(tmp_path)
    result = run_main(capsys, "status", "-c", str(path), *args, env=env, secrets=(KEY,))
    assert result.code == 2
    (line,) = errors(result.err)
    assert line.startswith(named + ", but the config file lists 2 accounts"), line
    assert "give each account its own api_key_file" in line


def test_top_level_alert_typo_is_reported_once_where_it_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = two_accounts(tmp_path, "alerts:\n  low_balance: {belo: 5.00}\n  runway: {days: 3}\n")
    result = run_main(capsys, "status", "-c", str(path), env={})
    assert result.code == 2
    assert errors(result.err) == [
        "alerts.low_balance.belo: unknown option; did you mean below?",
        "alerts.runway.days: unknown option; did you mean below_days?",
    ]


def test_an_accounts_own_alert_mistake_stays_at_its_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = two_accounts(tmp_path, "alerts:\n  topup: {min_amout: 1}\n")
    text = path.read_text().replace(
        f"  - {{id: b, api_key_file: {tmp_path / 'b'}, api_url: http://127.0.0.1:9/v1}}\n",
        f"  - {{id: b, api_key_file: {tmp_path / 'b'}, alerts: {{topup: {{min_amout: 2}}}}}}\n",
    )
    path.write_text(text)
    result = run_main(capsys, "status", "-c", str(path), env={})
    assert errors(result.err) == [
        "accounts[1].alerts.topup.min_amout: unknown option; did you mean min_amount?",
        "alerts.topup.min_amout: unknown option; did you mean min_amount?",
    ]


@pytest.mark.parametrize(
    ("notify", "expected"),
    [
        ("notify:\n  ntfy: 5\n", "notify.ntfy: must be a mapping of options"),
        ("notify: [ntfy]\n", "notify: must be a mapping of options"),
        ("notify:\n  webhook: just-a-url\n", "notify.webhook: must be a mapping of options"),
    ],
)
def test_no_internal_class_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], notify: str, expected: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(notify)
    result = run_main(capsys, "status", "-c", str(path), env={"CROSSMODEL_API_KEY": KEY})
    (line,) = errors(result.err)
    assert line.startswith(expected), line
    assert "instance" not in line
    assert "Config" not in line


def test_an_unreadable_key_file_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"accounts:\n  - {{id: main, api_key_file: {tmp_path / 'nope'}}}\n")
    result = run_main(capsys, "status", "-c", str(path), env={})
    (line,) = errors(result.err)
    assert line.startswith("accounts[0].api_key_file: cannot read")


# ---- config.example.yaml ---------------------------------------------------------------------

BLOCK_START = re.compile(r"^( *)# ([a-z_]+:.*)$")
# Blocks that replace the option above them rather than add to it.
INSTEAD_OF = {"api_key": "api_key_file"}


def commented_blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(first, end) line ranges of every commented-out YAML block."""
    blocks = []
    i = 0
    while i < len(lines):
        match = BLOCK_START.match(lines[i])
        if not match:
            i += 1
            continue
        indent = match.group(1)
        end = i + 1
        while end < len(lines) and lines[end].startswith(indent + "#   "):
            end += 1
        blocks.append((i, end))
        i = end
    return blocks


def uncomment(lines: list[str], first: int, end: int) -> list[str]:
    indent = len(BLOCK_START.match(lines[first]).group(1))  # type: ignore[union-attr]
    out = list(lines)
    for n in range(first, end):
        out[n] = out[n][:indent] + out[n][indent + 2 :]
    key = lines[first][indent + 2 :].split(":")[0]
    if key in INSTEAD_OF:
        out = [ln for ln in out if not ln.strip().startswith(INSTEAD_OF[key] + ":")]
    return out


def test_every_commented_block_of_the_example_is_valid_where_it_stands(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    lines = EXAMPLE.read_text().replace("/run/secrets/crossmodel_key", str(key_file)).splitlines()
    blocks = commented_blocks(lines)
    found = {lines[first].split("#", 1)[1].split(":")[0].strip() for first, _ in blocks}
    assert {"api_key", "alerts", "ntfy", "webhook", "apprise"} <= found
    for first, end in [(0, 0), *blocks]:
        path = tmp_path / "config.yaml"
        path.write_text("\n".join(uncomment(lines, first, end) if end else lines) + "\n")
        try:
            config = load_config(config_path=path, env={})
        except ConfigError as exc:
            raise AssertionError(f"block at line {first + 1}: {exc.problems}") from None
        assert config.accounts[0].id == "main"
    ntfy = uncomment(lines, *next(b for b in blocks if "# ntfy:" in lines[b[0]]))
    path.write_text("\n".join(ntfy) + "\n")
    assert load_config(config_path=path, env={}).notify.get(NtfyConfig) is not None


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({}, ["--interval", "10"], "--interval (poll.interval): "),
        ({"CM_MQTT_BRIDGE__POLL__INTERVAL": "10"}, [], "CM_MQTT_BRIDGE__POLL__INTERVAL (poll."),
        ({"MQTT_PORT": "abc"}, [], "MQTT_PORT (mqtt.port): Input should be a valid integer"),
        ({}, ["--mqtt-port", "0"], "--mqtt-port (mqtt.port): "),
        ({"CROSSMODEL_API_URL": "http://example.com/v1"}, [], "CROSSMODEL_API_URL (accounts[0]."),
        ({}, ["--api-url", "ftp://x"], "--api-url (accounts[0].api_url): "),
        ({"CM_MQTT_BRIDGE__POLL__INTERVALL": "60"}, [], "CM_MQTT_BRIDGE__POLL__INTERVALL (poll."),
    ],
)
def test_errors_name_the_flag_or_variable_the_value_came_from(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    args: list[str],
    expected: str,
) -> None:
    # The file sets the same options validly: the message must blame what overrode them.
    path = tmp_path / "config.yaml"
    path.write_text("poll: {interval: 60}\nmqtt: {port: 1883}\n")
    result = run_main(
        capsys, "status", "-c", str(path), *args, env={"CROSSMODEL_API_KEY": KEY, **env}
    )
    assert result.code == 2
    (line,) = errors(result.err)
    assert line.startswith(expected), line


def test_file_values_keep_the_config_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("poll: {interval: 10}\nmqtt: {port: abc}\n")
    result = run_main(capsys, "status", "-c", str(path), env={"CROSSMODEL_API_KEY": KEY})
    assert [line.split(":")[0] for line in errors(result.err)] == ["poll.interval", "mqtt.port"]
    bad_key = run_main(capsys, "status", env={"CROSSMODEL_API_KEY": "sk-not-a-cm-key-000"})
    assert errors(bad_key.err) == [
        "CROSSMODEL_API_KEY (accounts[0].api_key): API key must start with 'cm-' (CrossModel "
        "keys do)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "accounts: [{id: a, api_keyfile: /nonexistent}]\n",
            "accounts[0].api_keyfile: unknown option; did you mean api_key_file?",
        ),
        (
            f"accounts: [{{id: a, api_key: {KEY}}}]\nalerts: {{low_balence: {{below: 5}}}}\n",
            "alerts.low_balence: unknown option; did you mean low_balance?",
        ),
        (
            f"accounts: [{{id: a, api_key: {KEY}}}]\nmqtt: {{hots: broker}}\n",
            "mqtt.hots: unknown option; did you mean host?",
        ),
        (
            f"accounts: [{{id: a, api_key: {KEY}}}]\ndatadir: /tmp\n",
            "datadir: unknown option; did you mean data_dir?",
        ),
        (
            f"accounts: [{{id: a, api_key: {KEY}}}]\nnotify: {{ntfy: {{topik: x}}}}\n",
            "notify.ntfy.topik: unknown option; did you mean topic?",
        ),
    ],
)
def test_did_you_mean_names_the_closest_option_in_every_section(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config_path=path, env={})
    assert caught.value.problems == [expected]


def test_the_example_copied_as_it_is_keeps_a_client_id_per_machine(tmp_path: Path) -> None:
    # Two bridges made from the example must not share a client id (they would kick each
    # other off the broker): the default names this machine.
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    path = tmp_path / "config.yaml"
    path.write_text(EXAMPLE.read_text().replace("/run/secrets/crossmodel_key", str(key_file)))
    config = load_config(config_path=path, env={})
    assert config.mqtt.client_id == f"cm-mqtt-bridge-{socket.gethostname()}"[:64]
