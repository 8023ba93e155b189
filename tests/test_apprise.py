"""Apprise (the optional extra) delivering to a real HTTP receiver through its json:// plugin."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cm_mqtt_bridge.cli.main import setup_logging
from cm_mqtt_bridge.config.settings import load_config
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from tests.conftest import KEY
from tests.helpers import outbox, until
from tests.mqtt_helpers import make_config, publish, recording
from tests.receivers import Receivers

pytest.importorskip("apprise", reason="the optional apprise extra is not installed")

APPRISE_SECRET = "apprise-pass-93jd"


async def test_an_alert_goes_out_through_apprise(standin, mosquitto, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    receiver = Receivers()
    await receiver.start()
    try:
        data = tmp_path / "data"
        url = f"json://bridge:{APPRISE_SECRET}@127.0.0.1:{receiver.port}/apprise"
        config = make_config(
            standin.url,
            mosquitto.port,
            data_dir=str(data),
            extra={"alerts": {"low_balance": {"below": "5.00"}}, "notify": {"apprise": [url]}},
        )
        standin.credits["balance_micro"] = 3_000_000
        stop = asyncio.Event()
        task = asyncio.create_task(Bridge(config, timings=Timings(readback_seconds=0.1)).run(stop))
        (post,) = await receiver.wait_for(
            lambda r: r.ntfy("apprise"), timeout=10, what="Apprise POST"
        )
        # A second poll, still low (and a new figure, so its publishing shows it is over):
        # its values go out after its rules ran, so a notice from it would be in the outbox.
        standin.credits["balance_micro"] = 2_500_000
        async with recording(mosquitto.port) as rec:
            await publish(mosquitto.port, "cm_mqtt_bridge/main/refresh/set", "x")
            await rec.wait_topic("cm_mqtt_bridge/main/available", "2.375")
        await until(lambda: all(row[3] for row in outbox(data)), what="outbox delivered")
        assert {row[0] for row in outbox(data)} == {"main.low_balance.1"}
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await receiver.stop()
    body = post.json()
    assert body["title"] == "CrossModel Main"
    assert body["message"] == "CrossModel Main: available balance 2.88 USD is below 5.00 USD"
    assert len(receiver.posts) == 1  # a second poll, still low: nothing more
    assert all(APPRISE_SECRET not in r.getMessage() for r in caplog.records)


def test_apprise_urls_are_redacted_from_every_log_line(capsys):
    url = f"json://u:{APPRISE_SECRET}@127.0.0.1:9/p"
    config = load_config(env={"CROSSMODEL_API_KEY": KEY}, cli={"notify": {"apprise": [url]}})
    setup_logging("DEBUG", config.secrets())
    logging.getLogger("cm_mqtt_bridge.test").warning("delivery to %s failed", url)
    err = capsys.readouterr().err
    assert "delivery to" in err
    assert APPRISE_SECRET not in err
