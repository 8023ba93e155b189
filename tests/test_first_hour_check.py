"""`check` tests every part without sending a notice; `test-alert` sends one marked test notice
through every channel. Real parts: the stand-in API, Mosquitto, recording receivers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from email.header import decode_header, make_header
from pathlib import Path

import aiohttp
import pytest

from cm_mqtt_bridge.core.rules import BY_NAME
from cm_mqtt_bridge.ha.entities import entities_for
from cm_mqtt_bridge.notify.channels import DeliveryError, WebhookConfig, probe_webhook
from tests.conftest import KEY
from tests.helpers import Result, run_main
from tests.mosquitto import Mosquitto, discard, free_port, started
from tests.mqtt_helpers import recording
from tests.receivers import Receivers
from tests.standin import CrossModelStandin

TOKEN = "tk_first-hour-token-0815"
SECRETS = (KEY, TOKEN)


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    rec = Receivers()
    rec.token = TOKEN  # a protected ntfy topic
    await rec.start()
    yield rec
    await rec.stop()


def write_config(
    tmp_path: Path,
    standin: CrossModelStandin,
    mqtt_port: int,
    rec: Receivers,
    *,
    token: str = TOKEN,
    apprise: str = "",
    webhook: str = "",
) -> Path:
    # Apprise's JSON plugin posting to the receivers, with the token as a header.
    apprise = apprise or f"json://127.0.0.1:{rec.port}/apprise?+Authorization=Bearer%20{token}"
    path = tmp_path / "config.yaml"
    path.write_text(
        f"accounts:\n  - {{id: main, name: Main, api_key: {KEY}, api_url: {standin.url}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}}}\n"
        f"data_dir: {tmp_path / 'data'}\n"
        "alerts: {low_balance: {below: 5.00}}\n"
        "notify:\n"
        f"  ntfy: {{url: '{rec.url}', topic: wallet, token: {token}}}\n"
        f"  webhook: {{url: '{webhook or rec.webhook_url}'}}\n"
        f"  apprise: ['{apprise}']\n"
    )
    return path


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    # In-process, on a thread: the stand-in and receivers keep answering on this loop.
    return await asyncio.to_thread(run_main, capsys, *args, env={}, secrets=SECRETS)


async def test_check_all_ok_sends_nothing(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    receivers: Receivers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, standin, mosquitto.port, receivers)
    result = await cli(capsys, "check", "-c", str(config))
    assert result.code == 0, result.out + result.err
    lines = result.out.splitlines()
    assert lines[:6] == [
        f"ok      config: valid ({config}, 1 account)",
        f"ok      account main: {standin.url} answers, balance 8.06 USD",
        f"ok      broker 127.0.0.1:{mosquitto.port}: connected",
        f"ok      ntfy {receivers.url}/wallet: the server answers and accepts the access token",
        f"ok      webhook {receivers.webhook_url}: the receiver answers (HTTP 200 to HEAD)",
        "ok      apprise: 1 URL parses",
    ]
    assert lines[-1].startswith("All 6 checks passed")
    assert "(retained)" not in result.out  # discovery only on request
    assert receivers.posts == []  # no notice sent
    assert [(g.path, g.header("Authorization")) for g in receivers.gets] == [
        ("/v1/account", f"Bearer {TOKEN}"),
        ("/hook", None),
    ]
    shown = await cli(capsys, "check", "--show-discovery", "-c", str(config))
    assert "homeassistant/device/cm_main/config (retained)" in shown.out


async def test_check_names_every_failure(
    standin: CrossModelStandin,
    receivers: Receivers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nothing = free_port()
    standin.always["credits"] = standin.always["usage"] = None
    config = write_config(
        tmp_path,
        standin,
        nothing,
        receivers,
        token="tk_wrong",
        apprise="nonsense://what",
        webhook=f"http://127.0.0.1:{nothing}/hook",
    )
    text = config.read_text().replace(standin.url, standin.url.removesuffix("/v1"))
    config.write_text(text)
    result = await cli(capsys, "check", "-c", str(config))
    assert result.code == 1
    failed = [line for line in result.out.splitlines() if line.startswith("FAILED")]
    base = standin.url.removesuffix("/v1")
    assert failed == [
        "FAILED  account main: invalid_response: /credits: HTTP 404 not found at "
        f"{base}/credits; check that the API URL ends with /v1",
        f"FAILED  broker 127.0.0.1:{nothing}: [Errno 111] Connection refused",
        f"FAILED  ntfy {receivers.url}/wallet: the access token was rejected (HTTP 401)",
        f"FAILED  webhook http://127.0.0.1:{nothing}/hook: "
        f"cannot connect to 127.0.0.1:{nothing}: Connection refused",
        "FAILED  apprise: URL 1 of 1 does not parse",
    ]
    assert result.out.splitlines()[-1] == (
        f"5 of 6 checks FAILED: account main, broker 127.0.0.1:{nothing}, "
        f"ntfy {receivers.url}/wallet, webhook http://127.0.0.1:{nothing}/hook, apprise"
    )
    assert "ssl:default" not in result.out + result.err
    assert receivers.posts == []


async def test_check_ntfy_pointing_at_nothing_fails(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    receivers: Receivers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, standin, mosquitto.port, receivers)
    await receivers.stop()
    result = await cli(capsys, "check", "-c", str(config))
    assert result.code == 1
    assert f"FAILED  ntfy {receivers.url}/wallet: cannot connect to 127.0.0.1:" in result.out


async def test_test_alert_reaches_every_channel_and_leaves_no_state(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    receivers: Receivers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, standin, mosquitto.port, receivers)
    async with recording(mosquitto.port, "cm_mqtt_bridge/#") as rec:
        result = await cli(capsys, "test-alert", "--account", "main", "-c", str(config))
        got = await rec.wait_topic("cm_mqtt_bridge/main/alerts")
    assert result.code == 0, result.out + result.err
    assert result.out.splitlines()[1:5] == [
        "ok      mqtt cm_mqtt_bridge/main/alerts (Home Assistant event type 'test')",
        "ok      ntfy",
        "ok      webhook",
        "ok      apprise",
    ]
    assert result.out.rstrip().endswith("Delivered through all 4 channels.")
    event = json.loads(got.payload)
    assert (event["event_type"], event["account"], got.retain) == ("test", "main", False)
    assert event["message"].startswith("TEST notice from cm-mqtt-bridge for CrossModel Main")
    (push,) = receivers.ntfy("wallet")
    assert push.header("Title") == "[TEST] CrossModel Main"
    assert push.header("Authorization") == f"Bearer {TOKEN}"
    (hook,) = receivers.webhook()
    assert hook.json()["event_type"] == "test"
    assert [p.path for p in receivers.posts if p.path == "/apprise"] == ["/apprise"]
    # Straight to the channels: no alert state, outbox or history was written.
    assert not (tmp_path / "data").exists()
    # Home Assistant's Alert event entity accepts the type.
    (alert,) = [e for e in entities_for((BY_NAME["low_balance"],)) if e.key == "alert"]
    assert alert.event_types == ("low_balance", "test")


async def test_test_alert_reports_each_failed_channel(
    standin: CrossModelStandin,
    receivers: Receivers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    receivers.fail(503)
    config = write_config(tmp_path, standin, free_port(), receivers)
    result = await cli(capsys, "test-alert", "-c", str(config))
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[1].startswith("FAILED  mqtt cm_mqtt_bridge/main/alerts")
    assert lines[2] == "FAILED  ntfy: HTTP 503: receiver unavailable"
    assert lines[3] == "FAILED  webhook: HTTP 503: receiver unavailable"
    assert lines[-1] == "Not delivered through: mqtt, ntfy, webhook, apprise"
    bad = await cli(capsys, "test-alert", "--account", "nope", "-c", str(config))
    assert (bad.code, bad.err) == (2, "cm-mqtt-bridge: unknown account 'nope' (configured: main)\n")


class _PostOnly(http.server.BaseHTTPRequestHandler):
    """A webhook receiver as many are written: POST only, so HEAD gets http.server's 501."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_server(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for the loop to look again: every 0.5 s by default.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _webhook_line(out: str) -> str:
    (line,) = [line for line in out.splitlines() if line.split()[1:2] == ["webhook"]]
    return line


async def test_check_webhook_post_only_receiver_is_there_and_404_is_not(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    receivers: Receivers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A POST-only receiver (501 to HEAD) that test-alert delivers to is "ok" ...
    with http_server(_PostOnly) as url:
        config = write_config(tmp_path, standin, mosquitto.port, receivers, webhook=url + "/hook")
        result = await cli(capsys, "check", "-c", str(config))
        assert _webhook_line(result.out) == (
            f"ok      webhook {url}/hook: the receiver answers (HTTP 501 to HEAD)"
        )
        assert result.code == 0, result.out
        sent = await cli(capsys, "test-alert", "-c", str(config))
        assert "ok      webhook" in sent.out.splitlines()
    # ... and a mistyped path on a server that answers 404 is FAILED.
    (tmp_path / "www").mkdir()
    with http_server(functools.partial(_Files, directory=str(tmp_path / "www"))) as url:
        config = write_config(tmp_path, standin, mosquitto.port, receivers, webhook=url + "/hok")
        result = await cli(capsys, "check", "-c", str(config))
        assert _webhook_line(result.out) == (
            f"FAILED  webhook {url}/hok: nothing at this path (HTTP 404 to HEAD)"
        )
        assert result.code == 1


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        *[(s, True) for s in (200, 401, 403, 405, 501)],
        *[(s, False) for s in (404, 410, 500, 502, 503, 302)],
    ],
)
async def test_check_webhook_status_meanings(hook: Receivers, status: int, ok: bool) -> None:
    hook.fail(status)
    cfg = WebhookConfig(url=hook.webhook_url)
    async with aiohttp.ClientSession() as session:
        try:
            detail = await probe_webhook(cfg, session)
        except DeliveryError as exc:
            detail, passed = str(exc), False
        else:
            passed = True
    assert passed is ok, detail
    assert f"HTTP {status} to HEAD" in detail


async def test_check_names_a_host_that_does_not_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # .invalid never resolves (RFC 6761), with or without a network.
    host = "nothing.invalid"
    path = tmp_path / "config.yaml"
    path.write_text(
        f"accounts:\n  - {{id: main, api_key: {KEY}, api_url: 'https://{host}/v1'}}\n"
        f"poll: {{retries: 0}}\nmqtt: {{host: {host}}}\n"
        f"notify:\n  ntfy: {{url: 'https://{host}', topic: t}}\n"
        f"  webhook: {{url: 'https://{host}/hook'}}\n"
    )
    result = await cli(capsys, "check", "-c", str(path))
    assert result.code == 1
    failed = [line for line in result.out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 4, result.out
    for line in failed:
        assert f"cannot resolve {host}" in line, line
    assert "Unknown error" not in result.out


async def test_check_broker_not_authorized_names_the_variables(
    standin: CrossModelStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "bridge", "right-pass-1"],
        check=True,
        capture_output=True,
    )
    passwd.chmod(0o600)
    broker = started(tmp_path, listener_options=f"allow_anonymous false\npassword_file {passwd}\n")
    try:
        path = tmp_path / "config.yaml"
        path.write_text(
            f"accounts:\n  - {{id: main, api_key: {KEY}, api_url: '{standin.url}'}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: bridge}}\n"
        )
        env = {"MQTT_PASSWORD": "wrong-pass-2"}
        result = await asyncio.to_thread(
            run_main, capsys, "check", "-c", str(path), env=env, secrets=(KEY, "wrong-pass-2")
        )
    finally:
        discard(broker)
    (line,) = [line for line in result.out.splitlines() if line.startswith("FAILED")]
    assert line.startswith(f"FAILED  broker 127.0.0.1:{broker.port}: "), line
    assert line.endswith("check MQTT_USERNAME and MQTT_PASSWORD (mqtt.username, mqtt.password)")


async def test_ntfy_title_keeps_every_character(
    standin: CrossModelStandin,
    receivers: Receivers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, standin, free_port(), receivers)
    config.write_text(config.read_text().replace("name: Main", "name: 'Büro ☕'"))
    await cli(capsys, "test-alert", "-c", str(config))
    (push,) = receivers.ntfy("wallet")
    title = push.header("Title")
    assert title is not None
    assert title.isascii()  # what any HTTP hop carries unchanged
    assert str(make_header(decode_header(title))) == "[TEST] CrossModel Büro ☕"
