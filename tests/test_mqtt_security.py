"""Broker TLS and authentication, against a real Mosquitto configured for them."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from tests.helpers import until
from tests.mosquitto import Mosquitto, discard, started
from tests.mqtt_helpers import make_config

PASSWORD = "broker-pass-7f3k"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a server certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    )
    return d


def _tls_broker(tmp_path: Path, certs: Path) -> Mosquitto:
    return started(
        tmp_path,
        listener_options=(
            f"allow_anonymous true\ncafile {certs / 'ca.crt'}\n"
            f"certfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"
        ),
    )


async def _run_until_connected(bridge: Bridge, seconds: float) -> bool:
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await asyncio.wait_for(bridge.publisher.connected.wait(), seconds)
        connected = True
    except TimeoutError:
        connected = False
    stop.set()
    await asyncio.wait_for(task, 10)
    return connected


async def _run_until_refused(
    bridge: Bridge, caplog: pytest.LogCaptureFixture, text: str, seconds: float = 5
) -> bool:
    """Run until the bridge logs `text` (its attempt was refused); True if it connected."""
    seen = len(caplog.records)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await until(
            lambda: any(text in r.getMessage() for r in caplog.records[seen:]), seconds, text
        )
        return bridge.publisher.connected.is_set()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_tls_with_the_ca_file_publishes_state(standin, tmp_path, certs):
    broker = _tls_broker(tmp_path, certs)
    try:
        config = make_config(standin.url, broker.port, tls=True, ca_file=str(certs / "ca.crt"))
        bridge = Bridge(config, timings=Timings(readback_seconds=0.2))
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        tls = aiomqtt.TLSParameters(ca_certs=str(certs / "ca.crt"))
        async with aiomqtt.Client("127.0.0.1", broker.port, tls_params=tls) as sub:
            await sub.subscribe("cm_mqtt_bridge/main/balance", qos=1)
            message = await asyncio.wait_for(anext(aiter(sub.messages)), 5)
        stop.set()
        await asyncio.wait_for(task, 10)
        assert message.payload == b"8.059489"
    finally:
        discard(broker)


async def test_tls_refuses_an_unknown_ca_unless_told_to_be_insecure(
    standin, tmp_path, certs, caplog
):
    broker = _tls_broker(tmp_path, certs)
    try:
        caplog.set_level(logging.WARNING)
        strict = make_config(standin.url, broker.port, tls=True)
        strict_bridge = Bridge(strict, timings=Timings(readback_seconds=0.2))
        assert not await _run_until_refused(strict_bridge, caplog, "CERTIFICATE_VERIFY_FAILED")
        assert strict_bridge.metrics.total("mqtt_connections") == 0

        insecure = make_config(standin.url, broker.port, tls=True, tls_insecure=True)
        assert await _run_until_connected(
            Bridge(insecure, timings=Timings(readback_seconds=0.2)), 5
        )
    finally:
        discard(broker)


async def test_username_and_password(standin, tmp_path, caplog):
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "bridge", PASSWORD],
        check=True,
        capture_output=True,
    )
    passwd.chmod(0o600)
    broker = started(tmp_path, listener_options=f"allow_anonymous false\npassword_file {passwd}\n")
    try:
        caplog.set_level(logging.DEBUG)
        good = make_config(standin.url, broker.port, username="bridge", password=PASSWORD)
        assert await _run_until_connected(Bridge(good, timings=Timings(readback_seconds=0.2)), 5)

        wrong = make_config(standin.url, broker.port, username="bridge", password="nope-123")
        wrong_bridge = Bridge(wrong, timings=Timings(readback_seconds=0.2))
        assert not await _run_until_refused(wrong_bridge, caplog, "reconnecting")
        assert wrong_bridge.metrics.total("mqtt_connections") == 0
        refused = [r.getMessage() for r in caplog.records if "MQTT broker" in r.getMessage()]
        assert any("reconnecting" in m for m in refused)
        assert any("check MQTT_USERNAME and MQTT_PASSWORD" in m for m in refused), refused
        assert not any(
            PASSWORD in r.getMessage() or "nope-123" in r.getMessage() for r in caplog.records
        )
    finally:
        discard(broker)
