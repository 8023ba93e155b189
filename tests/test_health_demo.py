"""The health/metrics endpoint, `healthcheck`, and `demo`, on real parts."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import pytest

from cm_mqtt_bridge.cli.demo import run_demo
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from tests.helpers import clean_env, run_cli, run_main, until
from tests.mosquitto import free_port
from tests.mqtt_helpers import make_config, recording


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_healthz_and_metrics_follow_the_bridge(standin, mosquitto, tmp_path, capsys):
    config = make_config(
        standin.url, mosquitto.port, extra={"health": {"enabled": True, "port": 0}}
    )
    bridge = Bridge(config, timings=Timings(readback_seconds=0.5))
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    async with recording(mosquitto.port) as rec:
        await rec.wait_topic("cm_mqtt_bridge/main/balance")
    assert bridge.health is not None
    await until(bridge.publisher.in_sync, what="every retained topic sent")
    base = f"http://127.0.0.1:{bridge.health.port}"
    status, body = await _get(f"{base}/healthz")
    assert status == 200, body
    report = json.loads(body)
    assert report["healthy"] is True
    assert report["broker_connected"] is True
    assert report["mqtt_in_sync"] is True
    assert report["accounts"]["main"]["ok"] is True
    assert report["accounts"]["main"]["api_status"] == "ok"

    status, metrics = await _get(f"{base}/metrics")
    assert status == 200
    assert 'cm_bridge_polls_total{account="main",result="ok"} 1.0' in metrics
    assert 'cm_bridge_balance{account="main",currency="USD"} 8.059489' in metrics
    assert 'cm_bridge_spend{account="main",currency="USD",window="daily"} 0.01025' in metrics
    assert "cm_bridge_mqtt_connections_total 1.0" in metrics
    assert "cm_bridge_ha_resends_total 0.0" in metrics
    assert bridge.metrics.total("mqtt_messages") > 0

    # The healthcheck command says the same, through the real console script.
    env = clean_env(tmp_path)
    ok = await run_cli("healthcheck", "--url", f"{base}/healthz", env=env)
    assert ok.code == 0, ok.out + ok.err

    mosquitto.stop()
    await until(lambda: not bridge.publisher.connected.is_set(), what="broker loss noticed")
    status, body = await _get(f"{base}/healthz")
    assert status == 503
    assert '"broker_connected": false' in body
    assert '"mqtt_in_sync": false' in body
    # In-process (on a thread: it calls asyncio.run) while the bridge runs on this loop.
    bad = await asyncio.to_thread(
        run_main, capsys, "healthcheck", "--url", f"{base}/healthz", env=env
    )
    assert bad.code == 1
    stop.set()
    await asyncio.wait_for(task, 5)


def test_healthcheck_without_a_bridge_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    result = run_main(
        capsys, "healthcheck", env=clean_env(tmp_path, CM_MQTT_BRIDGE__HEALTH__PORT=str(port))
    )
    assert result.code == 1
    assert f"unhealthy: http://127.0.0.1:{port}/healthz" in result.out


async def test_demo_shows_a_low_balance_alert_and_a_topup():
    out = io.StringIO()
    # Thirty times faster than the real demo: crossing at ~1 s, top-up at ~1.5 s, both seen
    # by ~1.7 s even with another process keeping a core busy; it runs for 2.75 s.
    code = await run_demo(2.75, {}, out, speed=30)
    text = out.getvalue()
    assert code == 0
    assert "Started a private Mosquitto" in text
    assert "cm_mqtt_bridge_demo/demo/balance" in text
    assert "ALERT [low_balance fired] CrossModel Demo: available balance" in text
    assert "ALERT [topup event] CrossModel Demo: top-up of about 10.00 USD" in text
    assert "ALERT [low_balance recovered]" in text
    assert text.index("[low_balance fired]") < text.index("[topup event]")
    assert text.rstrip().endswith("with your own key.")
    assert "cm_mqtt_bridge_demo/status" in text
