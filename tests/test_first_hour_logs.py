"""Logs that show the service is alive, and one-shot commands that fail in one line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from tests.conftest import KEY
from tests.helpers import run_main
from tests.mosquitto import Mosquitto, free_port
from tests.mqtt_helpers import make_config, recording
from tests.standin import CrossModelStandin, Reply


async def test_one_start_summary_and_a_line_per_poll(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    caplog_all: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    config = make_config(
        standin.url,
        mosquitto.port,
        data_dir=str(tmp_path / "data"),
        extra={
            "alerts": {"low_balance": {"below": "5.00"}, "topup": True},
            "notify": {"webhook": {"url": "http://127.0.0.1:9/hook", "secret": "whsec-0815"}},
        },
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Bridge(config, timings=Timings(readback_seconds=0.2)).run(stop))
    async with recording(mosquitto.port) as rec:
        await rec.wait_topic("cm_mqtt_bridge/main/balance")
    stop.set()
    await asyncio.wait_for(task, 5)
    starts = [r for r in caplog_all.records if r.getMessage().startswith("starting version")]
    (start,) = starts
    assert start.levelno == logging.INFO
    assert start.getMessage().endswith(
        f"accounts main; interval 3600 s; broker 127.0.0.1:{mosquitto.port}; "
        "base topic cm_mqtt_bridge; discovery prefix homeassistant; "
        "rules low_balance, topup; channels mqtt, webhook"
    )
    polls = [r for r in caplog_all.records if ": poll ok in " in r.getMessage()]
    assert polls
    assert polls[0].levelno == logging.DEBUG
    text = polls[0].getMessage()
    assert text.startswith("main: poll ok in ")
    assert text.endswith(" ms: balance 8.06 USD, available 7.93 USD")
    assert all(KEY not in r.getMessage() and "whsec" not in r.getMessage() for r in starts)


async def test_status_retries_log_at_debug_and_a_failure_is_one_line(
    standin: CrossModelStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"CROSSMODEL_API_KEY": KEY, "CROSSMODEL_API_URL": standin.url}
    standin.queue("credits", Reply(status=503, json={}))
    verbose = await asyncio.to_thread(run_main, capsys, "status", "-v", env=env, secrets=(KEY,))
    assert verbose.code == 0
    assert (
        "DEBUG cm_mqtt_bridge.crossmodel.client: default: attempt 1 failed (/credits: HTTP 503)"
        in (verbose.err)
    )
    port = free_port()
    down = {
        "CROSSMODEL_API_KEY": KEY,
        "CROSSMODEL_API_URL": f"http://127.0.0.1:{port}/v1",
        "CM_MQTT_BRIDGE__POLL__RETRIES": "0",
    }
    failed = await asyncio.to_thread(run_main, capsys, "status", env=down, secrets=(KEY,))
    assert failed.code == 1
    assert failed.out.splitlines()[1:] == [
        "  Error      unreachable: /credits: connection failed: "
        f"cannot connect to 127.0.0.1:{port}: Connection refused"
    ]
    assert failed.err == ""
