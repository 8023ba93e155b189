from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.mosquitto import Mosquitto, discard, started
from tests.receivers import Receivers
from tests.standin import CrossModelStandin

KEY = "cm-test-0123456789abcdefSECRET"


@pytest.fixture
async def standin() -> AsyncIterator[CrossModelStandin]:
    server = CrossModelStandin()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def ntfy() -> AsyncIterator[Receivers]:
    """A recording stand-in for ntfy (and, on its /hook path, a webhook receiver)."""
    rx = Receivers()
    await rx.start()
    yield rx
    await rx.stop()


@pytest.fixture
async def hook() -> AsyncIterator[Receivers]:
    """A second recording receiver, for the webhook, when a test needs both apart."""
    rx = Receivers()
    await rx.start()
    yield rx
    await rx.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = started(tmp_path)
    yield broker
    discard(broker)


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests pass env explicitly; a developer's real key must never leak into one.
    for name in (
        "CROSSMODEL_API_KEY",
        "CROSSMODEL_API_URL",
        "CM_MQTT_BRIDGE_CONFIG",
        "MQTT_HOST",
        "MQTT_PORT",
        "MQTT_USERNAME",
        "MQTT_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # setup_logging() reconfigures the root logger; no test may leave that to the next one.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {
        n: logging.getLogger(n).level
        for n in ("aiohttp", "asyncio", "apprise", "cm_mqtt_bridge.mqtt")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in named.items():
        logging.getLogger(name).setLevel(lvl)
