"""Signals to the real `run` process (issue 15, item 10): SIGHUP stops it cleanly, SIGTERM
lets an alert delivery in flight finish and be recorded, so a restart sends no second copy, and
a stop never hangs on a task that lost its cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from cm_mqtt_bridge.core.clock import SystemClock
from cm_mqtt_bridge.service.supervisor import Supervisor
from tests.conftest import KEY
from tests.helpers import bare, clean_env, cli_process, outbox, until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import recording
from tests.receivers import Receivers
from tests.standin import CrossModelStandin

STATUS = "cm_mqtt_bridge/status"
DRAINING = "waiting up to 5 s for alert deliveries in flight"


class HeldReceivers(Receivers):
    """A webhook receiver that holds every request until the test opens `gate`."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrived.set()
        await self.gate.wait()
        return await super()._handle(request)


def bridge_env(home: Path, mosquitto: Mosquitto) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return clean_env(
        home,
        MQTT_HOST="127.0.0.1",
        MQTT_PORT=str(mosquitto.port),
        # No start-up jitter (up to 5 s by default): the first poll goes at once.
        CM_MQTT_BRIDGE__POLL__JITTER="0",
    )


@contextlib.asynccontextmanager
async def bridge(
    env: dict[str, str], log: Path, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as err:
        async with cli_process("run", *args, env=env, stderr=err) as proc:
            yield proc


async def test_sighup_stops_cleanly_with_a_log_line_and_offline_published(
    standin: CrossModelStandin, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    env = bridge_env(tmp_path / "home", mosquitto)
    env.update(CROSSMODEL_API_KEY=KEY, CROSSMODEL_API_URL=standin.url)
    log = tmp_path / "run.log"
    async with recording(mosquitto.port) as rec, bridge(env, log) as proc:
        await rec.wait_topic(STATUS, "online", timeout=10)
        await rec.wait_topic("cm_mqtt_bridge/default/balance", "8.059489", timeout=5)
        proc.send_signal(signal.SIGHUP)
        await asyncio.wait_for(proc.wait(), 5)
        offline = await rec.wait_topic(STATUS, "offline", timeout=2)
    text = log.read_text()
    # Exit 0 after a clean stop: not killed by the signal (-1), not the broker's Will.
    assert proc.returncode == 0, text
    assert "SIGHUP (terminal closed?): stopping" in text
    assert "shutting down" in text
    assert offline.retain
    assert [m.text for m in rec.on(STATUS)] == ["online", "offline"]
    assert "Traceback" not in text
    assert KEY not in text


async def test_sigterm_lets_a_delivery_in_flight_finish_and_starts_no_new_one(
    standin: CrossModelStandin, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hook = HeldReceivers()
    await hook.start()
    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    accounts = ""
    for name in ("a", "b"):
        key = tmp_path / f"{name}.key"
        key.write_text(f"{KEY}{name}\n")
        key.chmod(0o600)
        accounts += f"  - {{id: {name}, api_key_file: {key}, api_url: '{standin.url}'}}\n"
    config.write_text(
        f"data_dir: {data}\n"
        f"accounts:\n{accounts}"
        "alerts:\n"
        "  low_balance: {below: 10.00, margin: 0.50}\n"  # 7.934489 available: fires at once
        "notify:\n"
        f"  webhook: {{url: '{hook.webhook_url}'}}\n"
    )
    env = bridge_env(tmp_path / "home", mosquitto)

    def webhook_rows() -> list[tuple[str, bool]]:
        return [(i, delivered) for i, c, _a, delivered in outbox(data) if c == "webhook"]

    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    try:
        async with bridge(env, first_log, "--config", str(config)) as proc:
            # One notice per account; the first is held at the receiver, the other waits.
            await asyncio.wait_for(hook.arrived.wait(), 15)
            await until(lambda: len(webhook_rows()) == 2, 10, "both notices in the outbox")
            # MQTT has delivered both: the webhook is the one delivery in flight.
            await until(
                lambda: [d for _i, c, _a, d in outbox(data) if c == "mqtt"] == [True, True],
                10,
                "both MQTT deliveries recorded",
            )
            proc.send_signal(signal.SIGTERM)
            await until(
                lambda: DRAINING in first_log.read_text() or proc.returncode is not None,
                10,
                "the bridge waiting for the delivery (or exiting)",
            )
            assert DRAINING in first_log.read_text(), first_log.read_text()
            hook.gate.set()
            await asyncio.wait_for(proc.wait(), 10)
        first = first_log.read_text()
        assert proc.returncode == 0, first
        # The held delivery finished and was recorded; the second never started.
        assert sorted(d for _i, d in webhook_rows()) == [False, True], first
        assert len(hook.webhook()) == 1
        sent = hook.webhook()[0].header("X-CM-Bridge-Id")
        assert (bare(sent), True) in webhook_rows()
        assert f"webhook: delivered alert {sent}" in first
        assert "still in flight" not in first

        async with bridge(env, second_log, "--config", str(config)) as proc:
            await hook.wait_for(lambda r: len(r.webhook()) == 2, 15, "the other notice")
            await until(lambda: all(d for _i, d in webhook_rows()), 5, "both recorded")
            # Likely during the read-back of retained discovery: that stop hung (see below).
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0, second_log.read_text()
    finally:
        hook.gate.set()
        await hook.stop()
    ids = [bare(p.header("X-CM-Bridge-Id")) for p in hook.webhook()]
    assert sorted(ids) == sorted(i for i, _d in webhook_rows())  # each once: no second copy
    assert all(p.ok for p in hook.webhook())
    assert KEY not in first + second_log.read_text()


async def test_stop_cancels_again_a_task_that_lost_its_cancellation() -> None:
    # Python 3.11's asyncio.wait_for returns its result when a cancellation arrives just as
    # the future completes (the publisher's read-back, aiomqtt's subscribe): the cancel is
    # gone, and a stop during the read-back after a restart waited for the publisher forever.
    lost = asyncio.Event()

    async def loses_one_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            lost.set()  # swallowed, as wait_for does
        await asyncio.Event().wait()

    supervisor = Supervisor(SystemClock())
    supervisor.start("stubborn", loses_one_cancel)
    await asyncio.sleep(0)  # the task runs up to its first wait
    await asyncio.wait_for(supervisor.stop(), 5)
    assert lost.is_set()
