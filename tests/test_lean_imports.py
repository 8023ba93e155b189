"""`run` loads only what the configured features use (issue 19)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Everything `run` imports before it reads the config, and what the bridge runs with: a
# Bridge built from a config without the health endpoint.
PROBE = """
import sys, tempfile
import cm_mqtt_bridge.cli.main
import cm_mqtt_bridge.service.bridge
import cm_mqtt_bridge.service.health
from cm_mqtt_bridge.config.settings import Config
config = Config.model_validate(
    {"accounts": [{"id": "main", "api_key": "cm-test-0123456789abcdef"}],
     "data_dir": tempfile.mkdtemp()}
)
cm_mqtt_bridge.service.bridge.Bridge(config)
print(",".join(m for m in sys.argv[1:] if m in sys.modules))
"""
ONLY_FOR = ("aiohttp.web", "apprise", "prometheus_client", "difflib", "getpass")


def loaded_by_run() -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *ONLY_FOR],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_run_without_health_does_not_import_aiohttp_web_apprise_or_prometheus() -> None:
    # aiohttp.web is only the health endpoint's server (about 4 MiB of RSS), prometheus_client
    # only its /metrics (about 1.5 MiB); Apprise only an Apprise channel's; difflib only a
    # config with errors, getpass only `set-api-key` at a terminal.
    assert loaded_by_run() == ""


async def test_health_endpoint_still_answers_with_its_late_import() -> None:
    import aiohttp

    from cm_mqtt_bridge.core.clock import SystemClock
    from cm_mqtt_bridge.service.health import HealthServer
    from cm_mqtt_bridge.service.metrics import Metrics

    server = HealthServer("127.0.0.1", 0, lambda: {"healthy": True}, Metrics(), SystemClock())
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{url}/healthz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"healthy": True}
            async with session.get(f"{url}/metrics") as resp:
                assert resp.status == 200
    finally:
        await server.stop()


def _snapshot() -> Any:
    from cm_mqtt_bridge.core.model import Snapshot, UsageState

    return Snapshot(
        "main", datetime(2026, 1, 1, tzinfo=UTC), "USD", 5_000_000, 0, None, UsageState.OK
    )


def test_per_account_metrics_only_when_something_serves_them(tmp_path: Path) -> None:
    from cm_mqtt_bridge.config.settings import Config
    from cm_mqtt_bridge.service.bridge import Bridge

    def bridge(health: bool) -> Bridge:
        config = Config.model_validate(
            {
                "accounts": [{"id": "main", "api_key": "cm-test-0123456789abcdef"}],
                "data_dir": str(tmp_path),
                "health": {"enabled": health},
            }
        )
        return Bridge(config)

    for health, series in ((True, True), (False, False)):
        metrics = bridge(health).metrics
        metrics.poll("main", "ok", 0.1)
        metrics.snapshot(_snapshot())
        metrics.restarted("poll:main")
        metrics.mqtt_connected(True)
        text = metrics.render().decode()
        assert ('cm_bridge_balance{account="main"' in text) is series
        assert ('cm_bridge_polls_total{account="main"' in text) is series
        assert ('cm_bridge_task_restarts_total{task="poll:main"} 1.0' in text) is series
        assert ("cm_bridge_mqtt_connected 1.0" in text) is series
