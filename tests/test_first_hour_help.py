"""Help that teaches, and commands that work without their mandatory-looking flags."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from cm_mqtt_bridge.cli.main import build_parser
from cm_mqtt_bridge.store.db import DB_NAME, Store
from tests.conftest import KEY
from tests.helpers import run_main
from tests.mosquitto import free_port


def all_parsers(
    parser: argparse.ArgumentParser, name: str = "cm-mqtt-bridge"
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += all_parsers(sub, f"{name} {sub_name}")
    return out


def test_every_command_says_what_it_does_and_every_flag_has_help() -> None:
    parsers = all_parsers(build_parser())
    assert len(parsers) >= 11
    for name, parser in parsers:
        description = parser.description or ""
        first = description.split(". ")[0]
        assert first[:1].isupper(), f"{name}: {description!r}"
        assert description.rstrip().endswith("."), name
        for action in parser._actions:
            if action.option_strings:
                assert action.help, f"{name} {action.option_strings}: no help"
        usage, _, after = parser.format_help().partition("\n\n")
        assert usage.startswith("usage:")
        assert after.startswith(description.split()[0]), name


def test_top_level_help_lists_environment_and_exit_codes() -> None:
    text = build_parser().format_help()
    for name in (
        "CROSSMODEL_API_KEY ",
        "CROSSMODEL_API_KEY_FILE",
        "CROSSMODEL_API_URL",
        "MQTT_HOST",
        "MQTT_PASSWORD",
        "CM_MQTT_BRIDGE_CONFIG",
        "CM_MQTT_BRIDGE__<SECTION>__<KEY>",
    ):
        assert name in text
    codes = text.split("exit codes:")[1]
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {code}" in codes


def test_history_writes_csv_without_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Store.open(tmp_path / DB_NAME).close()
    env = {"CROSSMODEL_API_KEY": KEY}
    result = run_main(capsys, "history", "--data-dir", str(tmp_path), env=env)
    assert result.code == 0, result.err
    assert result.out.startswith("account,time,balance,")


def test_set_api_key_reads_a_pipe_and_prompts_a_terminal_without_echo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    piped = tmp_path / "piped"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"  {KEY}\n"))
    result = run_main(capsys, "config", "set-api-key", "--file", str(piped), env={})
    assert result.code == 0, result.err
    assert piped.read_text() == KEY + "\n"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []

    def getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return KEY

    monkeypatch.setattr("sys.stdin", Terminal(""))
    monkeypatch.setattr("getpass.getpass", getpass)
    typed = tmp_path / "typed"
    result = run_main(capsys, "config", "set-api-key", "--file", str(typed), env={})
    assert result.code == 0, result.err
    assert typed.read_text() == KEY + "\n"
    assert prompts == ["CrossModel API key (input hidden): "]
    assert KEY not in result.out + result.err


def test_healthcheck_reads_the_port_from_the_config_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens: the URL it asked shows in the answer
    config = tmp_path / "config.yaml"
    config.write_text(f"health: {{enabled: true, host: 0.0.0.0, port: {port}}}\n")
    result = run_main(capsys, "healthcheck", "--config", str(config), env={})
    assert result.code == 1
    assert result.out.startswith(f"unhealthy: http://127.0.0.1:{port}/healthz: cannot connect")
    from_env = run_main(capsys, "healthcheck", env={"CM_MQTT_BRIDGE_CONFIG": str(config)})
    assert from_env.out == result.out


def _shown_globals(parser: argparse.ArgumentParser) -> set[str]:
    helps = parser.format_help()
    return {
        flag
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for flag in action.option_strings
        if flag.startswith("--") and flag in helps
    }


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("status", {"--config", "--verbose", "--api-url", "--json"}),
        (
            "run",
            {"--config", "--verbose", "--api-url", "--interval", "--data-dir"}
            | {"--mqtt-host", "--mqtt-port", "--mqtt-username"},
        ),
        (
            "check",
            {"--config", "--verbose", "--api-url", "--show-discovery"}
            | {"--mqtt-host", "--mqtt-port", "--mqtt-username"},
        ),
        (
            "test-alert",
            {"--config", "--verbose", "--account"}
            | {"--mqtt-host", "--mqtt-port", "--mqtt-username"},
        ),
        ("healthcheck", {"--config", "--verbose", "--url"}),
        ("demo", {"--verbose", "--mqtt-host", "--mqtt-port", "--seconds"}),
        ("history", {"--config", "--verbose", "--data-dir", "--csv", "--account", "--since"}),
        ("dashboard", {"--config", "--verbose", "--account", "--all"}),
        ("config set-api-key", {"--verbose", "--stdin", "--file"}),
    ],
)
def test_each_command_help_lists_only_the_options_that_apply(
    command: str, expected: set[str]
) -> None:
    parsers = dict(all_parsers(build_parser()))
    assert _shown_globals(parsers[f"cm-mqtt-bridge {command}"]) == expected | {"--help"}


def test_set_api_key_takes_verbose_like_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    path = tmp_path / "key"
    result = run_main(capsys, "config", "set-api-key", "-v", "--file", str(path), env={})
    assert result.code == 0, result.err
    assert path.read_text() == KEY + "\n"
