"""Hostile or unlucky conditions the service must survive, on real parts."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import pytest

from cm_mqtt_bridge.cli.main import setup_logging
from cm_mqtt_bridge.config.settings import ConfigError, load_config
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service import schedule
from cm_mqtt_bridge.service.bridge import Bridge
from tests.conftest import KEY
from tests.helpers import run_cli
from tests.mqtt_helpers import make_config, publish, recording
from tests.standin import Reply


async def test_a_hostile_retained_discovery_message_does_not_stop_mqtt(standin, mosquitto):
    # Deeply nested JSON raises RecursionError in the parser: it must be skipped, not fatal.
    await publish(mosquitto.port, "homeassistant/device/evil/config", "[" * 200_000, retain=True)
    config = make_config(standin.url, mosquitto.port)
    stop = asyncio.Event()
    task = asyncio.create_task(Bridge(config, timings=Timings(readback_seconds=0.5)).run(stop))
    async with recording(mosquitto.port, "cm_mqtt_bridge/main/balance") as rec:
        got = await rec.wait_topic("cm_mqtt_bridge/main/balance", timeout=5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert got.text == "8.059489"


async def test_an_absurd_retry_after_does_not_stop_polling(standin, mosquitto, monkeypatch):
    monkeypatch.setattr(schedule, "MAX_RETRY_AFTER", 0.3)
    standin.queue("credits", Reply(status=429, headers={"Retry-After": "99999999"}))
    config = make_config(standin.url, mosquitto.port, poll={"interval": 0.1})
    stop = asyncio.Event()
    task = asyncio.create_task(Bridge(config, timings=Timings(readback_seconds=0.1)).run(stop))
    async with recording(mosquitto.port, "cm_mqtt_bridge/main/balance") as rec:
        await rec.wait_topic("cm_mqtt_bridge/main/balance", timeout=5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert standin.count("credits") >= 2


async def test_check_never_knocks_a_running_bridge_offline(standin, mosquitto, tmp_path):
    config = make_config(standin.url, mosquitto.port)
    stop = asyncio.Event()
    marker = "test/after-the-check"
    async with recording(mosquitto.port) as rec:
        task = asyncio.create_task(Bridge(config, timings=Timings(readback_seconds=0.1)).run(stop))
        await rec.wait_topic("cm_mqtt_bridge/status", "online")
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "CROSSMODEL_API_KEY": KEY,
            "CROSSMODEL_API_URL": standin.url,
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(mosquitto.port),
            # The same client id as the running bridge: the probe must not take its session.
            "CM_MQTT_BRIDGE__MQTT__CLIENT_ID": "bridge-under-test",
        }
        result = await run_cli("check", env=env, timeout=60)
        # The check has exited: a Will fired by its probe connection would be at the broker
        # before this later message, and delivered to the recorder before it.
        await publish(mosquitto.port, marker, "after the check")
        await rec.wait_topic(marker)
        stop.set()
        await asyncio.wait_for(task, 5)
        await rec.wait_topic("cm_mqtt_bridge/status", "offline")
    assert result.code == 0, result.out + result.err
    statuses = [m.text for m in rec.on("cm_mqtt_bridge/status")]
    assert statuses == ["online", "offline"]  # the only offline is our own clean stop


async def test_a_busy_health_port_is_a_clear_startup_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "CROSSMODEL_API_KEY": KEY,
            "CROSSMODEL_API_URL": "http://127.0.0.1:9/v1",
            "MQTT_PORT": "9",
            "CM_MQTT_BRIDGE__DATA_DIR": str(tmp_path / "data"),
            "CM_MQTT_BRIDGE__HEALTH__ENABLED": "true",
            "CM_MQTT_BRIDGE__HEALTH__PORT": str(port),
        }
        result = await run_cli("run", env=env)
    assert result.code == 2
    assert f"health: cannot listen on 127.0.0.1:{port}" in result.err


def test_a_missing_tls_file_is_a_config_error(tmp_path):
    env = {
        "CROSSMODEL_API_KEY": KEY,
        "CM_MQTT_BRIDGE__MQTT__TLS": "true",
        "CM_MQTT_BRIDGE__MQTT__CA_FILE": str(tmp_path / "nope.crt"),
    }
    with pytest.raises(ConfigError) as err:
        load_config(env=env)
    assert err.value.problems == [
        f"CM_MQTT_BRIDGE__MQTT__CA_FILE (mqtt.ca_file): file not found: {tmp_path / 'nope.crt'}"
    ]


def test_apprise_never_logs_below_warning_even_verbose():
    setup_logging("DEBUG")
    assert logging.getLogger("apprise").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("aiohttp").getEffectiveLevel() == logging.WARNING
