"""The wall clock steps (a Pi boots with its last shutdown time, then NTP corrects it): every
duration is measured on the monotonic clock, so a step either way raises no false alert and
holds no delivery back. Real parts (Mosquitto, SQLite on disk, the stand-in API, the push
receivers) with an injected clock the test drives; the pure parts on their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cm_mqtt_bridge.config.settings import Config
from cm_mqtt_bridge.core.evaluate import RuleState, evaluate
from cm_mqtt_bridge.core.model import ApiStatus
from cm_mqtt_bridge.core.notice import Notice
from cm_mqtt_bridge.core.rules import AlertsConfig, Inputs
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.core.view import AccountView
from cm_mqtt_bridge.service.alerting import AlertAccount, AlertEngine
from cm_mqtt_bridge.service.bridge import Bridge
from cm_mqtt_bridge.store.db import AsyncStore, Store
from tests.fakes import FakeClock, ManualClock
from tests.helpers import bare, db_rows, outbox, until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import make_config
from tests.receivers import Receivers
from tests.standin import CrossModelStandin, Reply

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
HOUR = 3600.0
AFTER = 15 * 60  # api_down's `after`
BACKOFF = 5.0  # the outbox's first retry, as in production
TOPIC = "wallet"
HOLDS = 125_000  # the stand-in's uncollected_micro


# ---- on real parts ---------------------------------------------------------------------------


def config(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    data: Path,
    alerts: dict[str, Any],
) -> Config:
    return make_config(
        standin.url,
        mosquitto.port,
        data_dir=str(data),
        extra={
            "alerts": alerts,
            "notify": {
                "ntfy": {"url": ntfy.url, "topic": TOPIC},
                "webhook": {"url": hook.webhook_url},
            },
        },
    )


@contextlib.asynccontextmanager
async def running(cfg: Config, clock: ManualClock) -> AsyncIterator[Bridge]:
    # Every timer of the bridge runs on `clock`: nothing moves unless the test advances it
    # (one delivery's attempts follow each other at once).
    bridge = Bridge(
        cfg,
        clock=clock,
        timings=Timings(
            readback_seconds=0.1,
            dispatch_backoff=(BACKOFF, 300.0),
            delivery_retry_wait=(0.0, 0.0),
        ),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await until(bridge.publisher.connected.is_set, 10, "connected")
        await until(lambda: "main" in bridge.accounts, 5, "the account")
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_forward_step_then_a_failed_poll_is_no_outage(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    cfg = config(standin, mosquitto, ntfy, hook, data, {"api_down": {"after": "15m"}})
    clock = ManualClock(T0)
    async with running(cfg, clock) as bridge:
        acc = bridge.accounts["main"]
        await acc.poll_once()
        assert acc.view.api_status == "ok"

        # NTP steps the clock an hour forward; the next poll fails.
        clock.step_wall(HOUR)
        standin.queue("credits", Reply(status=503))
        await acc.poll_once()  # evaluated and committed when it returns
        assert acc.view.api_status != "ok"
        assert acc.view.alerts is not None
        assert "api_down" not in acc.view.alerts.active
        assert outbox(data) == []

        # A real outage still fires, after `after` seconds of monotonic time.
        standin.always["credits"] = Reply(status=503)
        clock.advance(AFTER - 1)
        await acc.poll_once()
        assert outbox(data) == []
        clock.advance(1)
        await acc.poll_once()
        (push,) = await ntfy.wait_for(lambda r: r.ntfy(TOPIC), what="the api_down push")
    assert bare(push.header("X-Message-Id")) == "main.api_down.1"
    assert "no successful poll for 15 min" in push.text


async def test_a_backward_step_holds_no_retry_back(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    low = {"low_balance": {"below": "5.00", "margin": "0.50", "notify_recovered": True}}
    cfg = config(standin, mosquitto, ntfy, hook, data, low)
    clock = ManualClock(T0)
    async with running(cfg, clock) as bridge:
        acc = bridge.accounts["main"]
        await acc.poll_once()
        ntfy.fail(503)
        hook.fail(503)
        standin.credits["balance_micro"] = 4_000_000 + HOLDS
        await acc.poll_once()
        # Both push channels failed: the notice waits for its retry, BACKOFF s from now.
        await until(
            lambda: (
                {r[1:] for r in outbox(data) if r[1] != "mqtt"}
                == {("ntfy", 1, False), ("webhook", 1, False)}
            ),
            what="ntfy and webhook waiting for their retry",
        )

        # The clock steps an hour back; the receivers are back; a later notice comes.
        clock.step_wall(-HOUR)
        ntfy.recover()
        hook.recover()
        standin.credits["balance_micro"] = 6_000_000 + HOLDS
        await acc.poll_once()
        assert db_rows(data, "SELECT COUNT(*) FROM outbox") == [(6,)]
        assert ntfy.ntfy(TOPIC, ok_only=True) == []  # the retry waits its backoff

        # The backoff passes (monotonic): both notices go, in order, on both channels.
        clock.advance(BACKOFF)
        await ntfy.wait_for(lambda r: len(r.ntfy(TOPIC, ok_only=True)) == 2, what="ntfy")
        await hook.wait_for(lambda r: len(r.webhook(ok_only=True)) == 2, what="webhook")
        await until(lambda: all(r[3] for r in outbox(data)), what="all recorded delivered")
    ids = ["main.low_balance.1", "main.low_balance.2"]
    assert [bare(p.header("X-Message-Id")) for p in ntfy.ntfy(TOPIC, ok_only=True)] == ids
    assert [bare(p.header("X-CM-Bridge-Id")) for p in hook.webhook(ok_only=True)] == ids


# ---- the pure parts --------------------------------------------------------------------------


def down(api_status: ApiStatus, last_success: float | None) -> tuple[AccountView, float | None]:
    """What a failing account shows the engine: no values, its API status, its last success."""
    return AccountView(api_status=api_status), last_success


async def open_engine(
    path: Path, clock: FakeClock, alerts: dict[str, Any]
) -> tuple[AlertEngine, AsyncStore]:
    store = AsyncStore(Store(path))
    cfg = AlertsConfig.model_validate(alerts)
    engine = AlertEngine(store, [AlertAccount("main", "Main", cfg)], clock, ["mqtt"])
    await engine.load()
    return engine, store


async def rules_of(engine: AlertEngine, seen: tuple[AccountView, float | None]) -> list[str]:
    _status, notices = await engine.observe("main", *seen, record=False)
    return [f"{n.rule}.{n.kind}" for n in notices]


async def test_api_down_counts_monotonic_seconds_since_the_last_success(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    engine, store = await open_engine(tmp_path / "a.db", clock, {"api_down": {"after": "15m"}})
    ok_at = clock.monotonic()
    assert await rules_of(engine, down("ok", ok_at)) == []
    clock.step_wall(HOUR)
    assert await rules_of(engine, down("unreachable", ok_at)) == []
    clock.step_wall(-2 * HOUR)
    clock.advance(AFTER - 1)
    assert await rules_of(engine, down("unreachable", ok_at)) == []
    clock.advance(1)
    assert await rules_of(engine, down("unreachable", ok_at)) == ["api_down.fired"]
    store.close()


async def test_api_down_after_a_restart_counts_from_the_start(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    engine, store = await open_engine(tmp_path / "a.db", clock, {"api_down": {"after": "15m"}})
    clock.step_wall(HOUR)  # no good poll in this process yet, and a step
    assert await rules_of(engine, down("unreachable", None)) == []
    clock.advance(AFTER)
    assert await rules_of(engine, down("unreachable", None)) == ["api_down.fired"]
    store.close()


def step(
    states: dict[str, RuleState], clock: FakeClock, alerts: dict[str, Any], **inputs: Any
) -> list[Notice]:
    i = Inputs(
        account_id="main",
        account_name="Main",
        now=clock.now(),
        monotonic=clock.monotonic(),
        **inputs,
    )
    changed, notices = evaluate(AlertsConfig.model_validate(alerts), i, states)
    states.update(changed)
    return notices


def test_reminders_are_measured_on_the_monotonic_clock() -> None:
    alerts = {"auth_failed": {"repeat_every": "12h"}}
    clock = FakeClock(T0)
    states: dict[str, RuleState] = {}
    assert [n.kind for n in step(states, clock, alerts, api_status="auth_failed")] == ["fired"]
    clock.step_wall(13 * HOUR)  # forward: no reminder yet
    assert step(states, clock, alerts, api_status="auth_failed") == []
    clock.step_wall(-26 * HOUR)  # back: the reminder still comes on time
    clock.advance(12 * HOUR - 1)
    assert step(states, clock, alerts, api_status="auth_failed") == []
    clock.advance(1)
    (reminder,) = step(states, clock, alerts, api_status="auth_failed")
    assert (reminder.kind, reminder.at) == ("reminder", clock.now())


def restored(path: Path, last_notified: datetime) -> None:
    """A database where auth_failed fired and last notified at `last_notified`."""
    store = Store(path)
    state = RuleState(True, last_notified, last_notified, None, 1)
    store.commit("main", {"auth_failed": state}, [], ["mqtt"], last_notified)
    store.close()


async def test_a_restored_reminder_is_timed_once_at_start_then_monotonic(tmp_path: Path) -> None:
    alerts = {"auth_failed": {"repeat_every": "12h"}}
    rejected = down("auth_failed", None)
    # Restarted an hour after the last notice; then the clock steps 12 h forward.
    path = tmp_path / "a.db"
    restored(path, T0)
    clock = FakeClock(T0 + timedelta(hours=1))
    engine, store = await open_engine(path, clock, alerts)
    clock.step_wall(12 * HOUR)
    assert await rules_of(engine, rejected) == []
    clock.advance(11 * HOUR)
    assert await rules_of(engine, rejected) == ["auth_failed.reminder"]
    store.close()

    # A Pi booted with an old time: the last notice seems to lie in the future. It counts as
    # just sent, so the reminder comes `repeat_every` after the start, not a day late.
    path = tmp_path / "b.db"
    restored(path, T0)
    clock = FakeClock(T0 - timedelta(days=1))
    engine, store = await open_engine(path, clock, alerts)
    clock.advance(12 * HOUR - 1)
    assert await rules_of(engine, rejected) == []
    clock.advance(1)
    assert await rules_of(engine, rejected) == ["auth_failed.reminder"]
    store.close()
