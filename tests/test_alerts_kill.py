"""kill -9 between firing an alert and delivering it: the real console script, twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tests.helpers import bare, clean_env, cli_process, db_rows, outbox, until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import recording
from tests.receivers import Receivers
from tests.standin import CrossModelStandin

KEY = "cm-kill-test-0123456789abcdef"
TOPIC = "wallet"
ALERTS = "cm_mqtt_bridge/default/alerts"
STATE = "cm_mqtt_bridge/default/state"
ALERT_ID = "default.low_balance.1"


@contextlib.asynccontextmanager
async def bridge(
    config: Path, env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as err:
        async with cli_process("run", "--config", str(config), env=env, stderr=err) as proc:
            yield proc


async def test_sigkill_before_delivery_delivers_once_after_restart(
    standin: CrossModelStandin, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    ntfy = Receivers()
    await ntfy.start()
    # ntfy answers 503, and slowly: the process is killed while its first POST is in flight.
    ntfy.fail(503, delay=3.0)
    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {data}\n"
        "alerts:\n"
        "  low_balance: {below: 10.00, margin: 0.50}\n"  # 7.934489 available: fires at once
        "notify:\n"
        f"  ntfy: {{url: 'http://127.0.0.1:{ntfy.port}', topic: {TOPIC}}}\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(
        home,
        CROSSMODEL_API_KEY=KEY,
        CROSSMODEL_API_URL=standin.url,
        MQTT_HOST="127.0.0.1",
        MQTT_PORT=str(mosquitto.port),
        # No start-up jitter (up to 5 s by default): the first poll goes at once.
        CM_MQTT_BRIDGE__POLL__JITTER="0",
    )
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    rule_sql = "SELECT account, rule, firing, since, seq FROM rule_state"
    try:
        async with recording(mosquitto.port) as rec:
            # ---- run 1: the alert fires; MQTT gets it, ntfy does not answer in time ----
            async with bridge(config, env, first_log) as proc:
                await ntfy.wait_for(lambda r: r.posts, timeout=15, what="first ntfy POST")
                await rec.wait_topic(ALERTS, timeout=10)
                await until(
                    lambda: (ALERT_ID, "mqtt", 1, 1) in outbox(data), 5, "MQTT delivery recorded"
                )
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            assert proc.returncode == -signal.SIGKILL
            # Fired and in the outbox, not delivered, not even marked failed yet.
            assert outbox(data) == [(ALERT_ID, "mqtt", 1, 1), (ALERT_ID, "ntfy", 0, 0)]
            fired_state = db_rows(data, rule_sql)
            assert [r[:3] + r[4:] for r in fired_state] == [("default", "low_balance", 1, 1)]
            attempts_before = len(ntfy.posts)
            assert attempts_before == 1

            # ---- ntfy is back; run 2 delivers what was left, and fires nothing new ----
            ntfy.recover()
            started = time.monotonic()
            seen = len(rec.messages)
            async with bridge(config, env, second_log) as proc:
                # Due rows are sent as the bridge starts, not after a retry backoff (5 s).
                await ntfy.wait_for(
                    lambda r: r.ntfy(TOPIC, ok_only=True),
                    timeout=4.5,
                    what="delivery after restart",
                )
                delivered_after = time.monotonic() - started
                await until(lambda: (ALERT_ID, "ntfy", 1, 1) in outbox(data), 5, "ntfy delivered")
                # The restarted bridge has polled and evaluated the rule (still firing): a
                # re-fire would be in the outbox before this state document goes out.
                await rec.wait_for(
                    lambda r: any(
                        m.topic == STATE and json.loads(m.payload).get("alert_low_balance")
                        for m in r.messages[seen:]
                    ),
                    timeout=10,
                    what="a state document of the second run with the alert active",
                )
                # Every row delivered and recorded: nothing is left to send a second time.
                assert outbox(data) == [(ALERT_ID, "mqtt", 1, 1), (ALERT_ID, "ntfy", 1, 1)]
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 10)
            assert proc.returncode == 0, second_log.read_text()
    finally:
        await ntfy.stop()

    ok = ntfy.ntfy(TOPIC, ok_only=True)
    assert [bare(p.header("X-Message-Id")) for p in ok] == [ALERT_ID]
    assert len(ntfy.posts) == attempts_before + 1
    assert {bare(p.header("X-Message-Id")) for p in ntfy.posts} == {ALERT_ID}
    assert ok[0].text == "CrossModel Default: available balance 7.93 USD is below 10.00 USD"
    assert delivered_after < 4.5
    assert [bare(json.loads(m.payload)["id"]) for m in rec.on(ALERTS)] == [ALERT_ID]
    assert outbox(data) == [(ALERT_ID, "mqtt", 1, 1), (ALERT_ID, "ntfy", 1, 1)]
    assert db_rows(data, rule_sql) == fired_state
    second = second_log.read_text()
    assert f"ntfy: delivered alert {ALERT_ID}" in second
    assert "alert low_balance fired" not in second
    assert "alert low_balance fired" in first_log.read_text()
    assert KEY not in first_log.read_text() + second
