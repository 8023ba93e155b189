"""The console script as users run it: `run` (Will, SIGTERM) and `check`, in a subprocess;
the other `check` outcomes in-process through `cli.main` (the same code, started faster)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cm_mqtt_bridge.core.rules import BY_NAME
from cm_mqtt_bridge.ha.discovery import device_payload
from cm_mqtt_bridge.ha.entities import entities_for
from cm_mqtt_bridge.ha.topics import Topics
from tests.conftest import KEY
from tests.helpers import cli_process, run_cli, run_main
from tests.mosquitto import free_port
from tests.mqtt_helpers import publish, recording
from tests.standin import Reply

STATUS = "cm_mqtt_bridge/status"
DEVICE = "homeassistant/device/cm_default/config"
MARKER = "test/after-the-check"


def env_for(tmp_path: Path, api_url: str, mqtt_port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CROSSMODEL_API_KEY": KEY,
        "CROSSMODEL_API_URL": api_url,
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(mqtt_port),
        # No start-up jitter (up to 5 s by default): the first poll goes at once.
        "CM_MQTT_BRIDGE__POLL__JITTER": "0",
        **extra,
    }


async def run_check(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`check --show-discovery` through the real console script."""
    result = await run_cli("check", "--show-discovery", *args, env=env, cwd=tmp_path, timeout=15)
    return result.code, result.out, result.err


async def check_in_process(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], *args: str
) -> tuple[int, str, str]:
    """`check --show-discovery` through `cli.main`, on a thread (it calls `asyncio.run`)
    while the stand-in answers on the test's loop. The caller chdirs to its tmp_path, as
    `run_check` runs there."""
    result = await asyncio.to_thread(run_main, capsys, "check", "--show-discovery", *args, env=env)
    return result.code, result.out, result.err


def printed_payload(out: str, topic: str) -> Any:
    header = f"{topic} (retained)\n"
    assert header in out, out
    start = out.index(header) + len(header)
    doc, _end = json.JSONDecoder().raw_decode(out[start:])
    return doc


def expected(currency: str | None, rules: tuple[str, ...] = ()) -> dict[str, Any]:
    return device_payload(
        account_id="default",
        account_name="Default",
        topics=Topics(base="cm_mqtt_bridge", prefix="homeassistant"),
        currency=currency,
        qos=1,
        entities=entities_for(tuple(BY_NAME[r] for r in rules)),
    )


async def test_sigkill_leaves_the_will_offline_retained(standin, mosquitto, tmp_path):
    env = env_for(tmp_path, standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, cli_process("run", env=env, cwd=tmp_path) as proc:
        await rec.wait_topic(STATUS, "online", timeout=10)
        await rec.wait_topic("cm_mqtt_bridge/default/balance", "8.059489", timeout=5)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 5)
        offline = await rec.wait_topic(STATUS, "offline", timeout=5)
    assert proc.returncode == -signal.SIGKILL
    assert offline.retain
    async with recording(mosquitto.port) as later:
        retained = await later.wait_topic(STATUS, timeout=3)
    assert (retained.text, retained.retain) == ("offline", True)


async def test_sigterm_exits_0_within_5s_and_says_offline(standin, mosquitto, tmp_path):
    env = env_for(tmp_path, standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec, cli_process("run", env=env, cwd=tmp_path) as proc:
        await rec.wait_topic(STATUS, "online", timeout=10)
        await rec.wait_topic(DEVICE, timeout=5)
        await rec.wait_topic("cm_mqtt_bridge/default/balance", "8.059489", timeout=5)
        proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        _out, err = await asyncio.wait_for(proc.communicate(), 5)
        exited_after = loop.time() - sent
        offline = await rec.wait_topic(STATUS, "offline", timeout=2)
    assert proc.returncode == 0, err.decode()
    assert exited_after < 5
    assert offline.retain
    assert [m.text for m in rec.on(STATUS)] == ["online", "offline"]
    assert "Traceback" not in err.decode()
    assert KEY not in err.decode()


async def test_check_prints_discovery_and_never_the_key(standin, mosquitto, tmp_path):
    env = env_for(tmp_path, standin.url, mosquitto.port)
    async with recording(mosquitto.port) as rec:
        code, out, err = await run_check(tmp_path, env)
        # The check has exited; a message it published (or its Will) would be at the broker
        # before a later one of ours, which the broker delivers after it.
        await publish(mosquitto.port, MARKER, "after the check")
        await rec.wait_topic(MARKER)
    assert code == 0, out + err
    assert printed_payload(out, DEVICE) == expected("USD")
    assert f"ok      broker 127.0.0.1:{mosquitto.port}: connected" in out
    assert "ok      account default:" in out
    assert out.rstrip().endswith("All 3 checks passed.")
    assert "FAILED" not in out
    assert KEY not in out
    assert KEY not in err
    assert KEY[3:] not in out + err  # not even without its prefix
    # A dry run: nothing published, and no Will fired by the probe connection.
    assert [m.topic for m in rec.messages] == [MARKER]


async def test_check_with_broker_down_fails(standin, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = free_port()  # nothing listens here
    env = env_for(tmp_path, standin.url, port)
    code, out, err = await check_in_process(capsys, env)
    assert code != 0
    assert f"FAILED  broker 127.0.0.1:{port}: " in out
    assert "1 of 3 checks FAILED: broker" in out
    assert "ok      account default:" in out
    assert KEY not in out + err


async def test_check_with_api_key_rejected_fails_and_prints_no_monetary_entities(
    standin, mosquitto, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    standin.always["credits"] = Reply(status=401)
    env = env_for(tmp_path, standin.url, mosquitto.port)
    code, out, err = await check_in_process(capsys, env)
    assert code != 0
    assert "FAILED  account default: auth_failed" in out
    assert printed_payload(out, DEVICE) == expected(None)
    assert KEY not in out + err


async def test_check_prints_what_run_would_publish_with_alert_rules(
    standin, mosquitto, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("alerts:\n  low_balance:\n    below: 5\n")
    env = env_for(tmp_path, standin.url, mosquitto.port)
    code, out, err = await check_in_process(capsys, env, "--config", str(cfg))
    assert code == 0, out + err
    printed = printed_payload(out, DEVICE)
    assert {"alert_low_balance", "alert", "low_balance_below"} <= set(printed["cmps"])
    assert printed == expected("USD", ("low_balance",))


async def test_run_with_an_unusable_data_dir_exits_2_with_a_clear_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CROSSMODEL_API_KEY": "cm-test-0123456789abcdefSECRET",
        "CROSSMODEL_API_URL": "http://127.0.0.1:9/v1",
        "CM_MQTT_BRIDGE__DATA_DIR": str(blocker / "data"),
    }
    result = await run_cli("run", env=env, secrets=["SECRET"])
    assert result.code == 2
    assert f"data_dir: cannot use {blocker / 'data'}: Not a directory" in result.err
