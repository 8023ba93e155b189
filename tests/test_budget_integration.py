"""Budget warning ladders and the overrun forecast end to end: the CrossModel stand-in, a real
Mosquitto, ntfy and webhook receivers, the state database on disk, a restart. The wall clock
is fixed (mid-month), so the windows and the pace do not depend on the day the test runs."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from pathlib import Path

from cm_mqtt_bridge.core.clock import SystemClock
from cm_mqtt_bridge.service.bridge import Bridge
from tests.helpers import outbox, until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import barrier, recording
from tests.receivers import Receivers
from tests.standin import CrossModelStandin
from tests.test_alerts_integration import (
    ALERTS,
    TOPIC,
    alert_config,
    all_delivered,
    running,
    wait_doc,
)

USD = 1_000_000


class WallAt(SystemClock):
    """Real sleeps and monotonic time; the wall clock stands at `at`."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


async def month_spend(bridge: Bridge, standin: CrossModelStandin, micro: int) -> None:
    """One full poll that sees this month-to-date spend (its notices are in the outbox)."""
    standin.usage["monthly"]["cost_micro"] = micro
    await bridge.accounts["main"].poll_once()


def pushes(ntfy: Receivers) -> list[str]:
    return [p.text.removeprefix("CrossModel Main: ") for p in ntfy.ntfy(TOPIC)]


async def test_ladder_50_80_then_over_budget_once_each_and_nothing_after_a_restart(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    alerts = {"budget": {"monthly": "30.00", "warn_at": [50, 80]}}
    config = alert_config(standin, mosquitto, ntfy, hook, data, alerts)
    clock = WallAt(datetime(2026, 12, 19, 12, 0, tzinfo=UTC))
    expected = [
        "spend this month 16.00 USD is 53 % of the 30.00 USD monthly budget "
        "(the 50 % warning; resets 2027-01-01 00:00 UTC)",
        "spend this month 25.00 USD is 83 % of the 30.00 USD monthly budget "
        "(the 80 % warning; resets 2027-01-01 00:00 UTC)",
        "spend this month 31.00 USD is over the monthly budget of 30.00 USD "
        "(resets 2027-01-01 00:00 UTC)",
    ]
    async with recording(mosquitto.port) as rec, running(config, clock=clock) as bridge:
        doc = await wait_doc(rec, lambda d: d.get("alert_budget_monthly") is False)
        assert doc["resets_at_budget_monthly"] == "2027-01-01T00:00:00+00:00"
        assert doc["warn_step_budget_monthly"] is None
        sent = 0
        for spend, notices in ((16, 1), (17, 0), (25, 1), (26, 0), (31, 1), (32, 0)):
            await month_spend(bridge, standin, spend * USD)
            sent += notices
            # Three channels a notice (MQTT, ntfy, webhook), all delivered: nothing pending.
            await until(functools.partial(all_delivered, data, 3 * sent), what=f"spend {spend}")
            assert pushes(ntfy) == expected[:sent], f"after month spend {spend}"
        await barrier(rec, bridge.publisher)
        doc = await wait_doc(rec, lambda d: d.get("alert_budget_monthly") is True)
        assert doc["warn_step_budget_monthly"] == 80
        events = [json.loads(m.payload) for m in rec.on(ALERTS)]
        assert [(e["event_type"], e.get("step")) for e in events] == [
            ("budget_monthly_warn", 50),
            ("budget_monthly_warn", 80),
            ("budget_monthly", None),
        ]
        assert {e["resets_at"] for e in events} == {"2027-01-01T00:00:00+00:00"}
        assert [h.json()["step"] for h in hook.webhook()[:2]] == [50, 80]

    # A restart: the database remembers every step. (The broker still holds the first run's
    # retained state document: wait for one with the new spend, which this run published.)
    standin.usage["monthly"]["cost_micro"] = 33 * USD
    async with recording(mosquitto.port) as rec, running(config, clock=clock) as bridge:
        doc = await wait_doc(rec, lambda d: d.get("spend_month") == "33")
        assert doc["warn_step_budget_monthly"] == 80
        await month_spend(bridge, standin, 33 * USD)  # returns once its evaluation is stored
        await until(lambda: all_delivered(data, 9), what="nothing new in the outbox")
        await barrier(rec, bridge.publisher)
        assert rec.on(ALERTS) == []
    assert pushes(ntfy) == expected
    assert [i for i, channel, _a, _d in outbox(data) if channel == "ntfy"] == [
        "main.budget_monthly.1",
        "main.budget_monthly_warn.1",
        "main.budget_monthly_warn.2",
    ]


async def test_forecast_pushes_once_naming_a_date(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    ntfy: Receivers,
    hook: Receivers,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    alerts = {"budget": {"monthly": "30.00", "forecast": True}}
    config = alert_config(standin, mosquitto, ntfy, hook, data, alerts)
    # 13 December, 00:00: 12 days of the month have passed.
    clock = WallAt(datetime(2026, 12, 13, 0, 0, tzinfo=UTC))
    async with recording(mosquitto.port) as rec, running(config, clock=clock) as bridge:
        await wait_doc(rec, lambda d: d.get("alert_budget_monthly") is False)
        assert pushes(ntfy) == []  # the stand-in's 5.37 projects to 13.87: within budget
        await month_spend(bridge, standin, 16_800_000)
        await until(lambda: all_delivered(data, 3), what="forecast delivered")
        for spend in (17 * USD, 18 * USD, 20 * USD):
            await month_spend(bridge, standin, spend)
        await until(lambda: all_delivered(data, 3), what="no second forecast")
        await barrier(rec, bridge.publisher)
        (event,) = [json.loads(m.payload) for m in rec.on(ALERTS)]
    assert pushes(ntfy) == [
        "on pace to pass the 30.00 USD monthly budget around 2026-12-22 (projected 43.40 USD "
        "by month end at the pace of the first 12 days; resets 2027-01-01 00:00 UTC)"
    ]
    assert (event["event_type"], event["value"], event["threshold"]) == (
        "budget_monthly_forecast",
        "43.40 USD",
        "30.00 USD",
    )
