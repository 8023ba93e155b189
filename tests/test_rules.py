"""Alert rules as pure functions: explicit datetimes or a FakeClock, no sleeping."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from cm_mqtt_bridge.core.evaluate import RuleState, evaluate
from cm_mqtt_bridge.core.forecast import Burn
from cm_mqtt_bridge.core.notice import Notice
from cm_mqtt_bridge.core.rules import AlertsConfig, Inputs
from tests.fakes import FakeClock

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday
THRESHOLD = 5_000_000  # 5.00 USD in micro units


class Account:
    """Feeds inputs to `evaluate` the way the engine does: states carried over, notices kept."""

    def __init__(self, alerts: Mapping[str, Any], clock: FakeClock | None = None) -> None:
        self.cfg = AlertsConfig.model_validate(alerts)
        self.clock = clock or FakeClock(T0)
        self.states: dict[str, RuleState] = {}
        self.notices: list[Notice] = []

    def step(self, *, at: datetime | None = None, **inputs: Any) -> list[Notice]:
        now = at or self.clock.now()
        i = Inputs(account_id="main", account_name="Main", now=now, currency="USD", **inputs)
        changed, notices = evaluate(self.cfg, i, self.states)
        for rule, state in changed.items():
            assert self.states.get(rule) != state, "only changed states are returned"
        self.states.update(changed)
        self.notices += notices
        return notices

    def ids(self) -> list[str]:
        return [n.id for n in self.notices]


def low(**extra: Any) -> dict[str, Any]:
    return {"low_balance": {"below": "5.00", "margin": "0.50", **extra}}


# ---- low_balance -----------------------------------------------------------------------------


def test_low_balance_fires_once_on_crossing() -> None:
    acc = Account(low())
    assert acc.step(available_micro=6_000_000) == []
    assert acc.step(available_micro=THRESHOLD) == []  # at the threshold is not below it
    acc.clock.advance(60)
    fired = acc.step(available_micro=4_000_000)
    assert fired == [
        Notice(
            id="main.low_balance.1",
            account_id="main",
            rule="low_balance",
            kind="fired",
            title="CrossModel Main",
            message="CrossModel Main: available balance 4.00 USD is below 5.00 USD",
            value="4.00 USD",
            threshold="5.00 USD",
            at=T0 + timedelta(seconds=60),
            priority=None,
            tags=(),
        )
    ]
    assert acc.states["low_balance"] == RuleState(
        firing=True,
        since=T0 + timedelta(seconds=60),
        last_notified=T0 + timedelta(seconds=60),
        window=None,
        seq=1,
    )
    for _ in range(5):
        acc.clock.advance(60)
        assert acc.step(available_micro=3_000_000) == []
    assert acc.ids() == ["main.low_balance.1"]


def test_wobbling_one_micro_around_the_threshold_notifies_once() -> None:
    acc = Account(low())
    acc.step(available_micro=THRESHOLD + 1)
    for n in range(20):
        acc.clock.advance(60)
        acc.step(available_micro=THRESHOLD - 1 if n % 2 == 0 else THRESHOLD + 1)
    assert acc.ids() == ["main.low_balance.1"]
    assert acc.notices[0].at == T0 + timedelta(seconds=60)
    first = T0 + timedelta(seconds=60)
    assert acc.states["low_balance"] == RuleState(True, first, first, None, 1)


def test_recovery_past_the_margin_then_a_new_drop_notifies_again() -> None:
    acc = Account(low())
    acc.step(available_micro=THRESHOLD - 1)
    # Just short of threshold + margin (5.50) does not re-arm.
    acc.step(available_micro=5_499_999)
    acc.step(available_micro=THRESHOLD - 1)
    assert acc.ids() == ["main.low_balance.1"]
    assert acc.states["low_balance"].firing is True
    acc.clock.advance(60)
    assert acc.step(available_micro=5_500_000) == []  # re-armed, silently (no notify_recovered)
    assert acc.states["low_balance"].firing is False
    assert acc.states["low_balance"].seq == 1
    acc.clock.advance(60)
    second = acc.step(available_micro=THRESHOLD - 1)
    assert [(n.id, n.kind, n.at) for n in second] == [
        ("main.low_balance.2", "fired", T0 + timedelta(seconds=120))
    ]


def test_without_a_margin_the_default_is_ten_percent_of_the_threshold() -> None:
    acc = Account({"low_balance": {"below": "5.00"}})
    for n in range(6):
        acc.step(available_micro=THRESHOLD - 1 if n % 2 == 0 else THRESHOLD)
    assert acc.ids() == ["main.low_balance.1"]
    acc.step(available_micro=5_499_999)  # still inside the default 0.50 margin
    acc.step(available_micro=THRESHOLD - 1)
    assert acc.ids() == ["main.low_balance.1"]
    acc.step(available_micro=5_500_000)  # recovered past 5.00 + 10 %
    acc.step(available_micro=THRESHOLD - 1)
    assert acc.ids() == ["main.low_balance.1", "main.low_balance.2"]


def test_an_explicit_zero_margin_re_arms_on_every_recovery() -> None:
    acc = Account({"low_balance": {"below": "5.00", "margin": 0}})
    for n in range(6):
        acc.step(available_micro=THRESHOLD - 1 if n % 2 == 0 else THRESHOLD)
    assert acc.ids() == ["main.low_balance.1", "main.low_balance.2", "main.low_balance.3"]


def test_notify_recovered() -> None:
    acc = Account(low(notify_recovered=True))
    acc.step(available_micro=4_000_000)
    acc.clock.advance(600)
    acc.step(available_micro=5_400_000)  # inside the margin: nothing
    acc.clock.advance(600)
    (recovered,) = acc.step(available_micro=5_500_000)
    assert recovered == Notice(
        id="main.low_balance.2",
        account_id="main",
        rule="low_balance",
        kind="recovered",
        title="CrossModel Main (recovered)",
        message="CrossModel Main (recovered): available balance is back to 5.50 USD",
        value="5.50 USD",
        threshold="5.00 USD",
        at=T0 + timedelta(seconds=1200),
        priority="default",
        tags=(),
    )
    assert acc.states["low_balance"] == RuleState(
        firing=False, since=None, last_notified=T0 + timedelta(seconds=1200), window=None, seq=2
    )
    acc.step(available_micro=6_000_000)
    (again,) = acc.step(available_micro=1_000_000)
    assert (again.id, again.kind) == ("main.low_balance.3", "fired")


def test_repeat_every_reminds_while_still_active() -> None:
    acc = Account(low(repeat_every="12h", priority="urgent", tags=["warning"]))
    acc.step(available_micro=4_000_000)
    acc.clock.advance(12 * 3600 - 1)
    assert acc.step(available_micro=4_000_000) == []
    acc.clock.advance(1)
    (reminder,) = acc.step(available_micro=3_000_000)
    assert reminder == Notice(
        id="main.low_balance.2",
        account_id="main",
        rule="low_balance",
        kind="reminder",
        title="CrossModel Main (reminder)",
        message="CrossModel Main (reminder): available balance 3.00 USD is below 5.00 USD",
        value="3.00 USD",
        threshold="5.00 USD",
        at=T0 + timedelta(hours=12),
        priority="urgent",
        tags=("warning",),
    )
    # The next reminder counts from this one.
    acc.clock.advance(12 * 3600 - 60)
    assert acc.step(available_micro=3_000_000) == []
    # Above the threshold but inside the margin: not active, so no reminder.
    acc.clock.advance(3600)
    assert acc.step(available_micro=5_200_000) == []
    acc.clock.advance(60)
    (third,) = acc.step(available_micro=4_500_000)
    assert (third.id, third.kind, third.at) == (
        "main.low_balance.3",
        "reminder",
        T0 + timedelta(hours=25),
    )
    assert acc.states["low_balance"].since == T0  # still the original crossing


def test_threshold_from_home_assistant_wins_over_the_config() -> None:
    acc = Account(low())
    assert acc.step(available_micro=4_000_000, thresholds={"low_balance_below": Decimal("3")}) == []
    (fired,) = acc.step(available_micro=2_999_999, thresholds={"low_balance_below": Decimal("3")})
    assert fired.threshold == "3.00 USD"
    assert fired.message == "CrossModel Main: available balance 2.999999 USD is below 3.00 USD"
    # Re-arm uses the effective threshold plus the configured margin: 3.50.
    acc.step(available_micro=3_499_999, thresholds={"low_balance_below": Decimal("3")})
    assert acc.states["low_balance"].firing is True
    acc.step(available_micro=3_500_000, thresholds={"low_balance_below": Decimal("3")})
    assert acc.states["low_balance"].firing is False


def test_no_balance_known_leaves_the_state_alone() -> None:
    acc = Account(low())
    acc.step(available_micro=4_000_000)
    before = dict(acc.states)
    assert acc.step(available_micro=None) == []
    assert acc.states == before


# ---- runway ----------------------------------------------------------------------------------


def runway_inputs(days: str | None, per_day: int = 1_000_000) -> dict[str, Any]:
    return {
        "available_micro": 2_500_000,
        "burn": Burn(Decimal(per_day), "history_7d"),
        "runway_days": None if days is None else Decimal(days),
    }


def test_runway_fires_and_re_arms_after_the_margin_days() -> None:
    acc = Account({"runway": {"below_days": 3, "margin_days": "1.5"}})
    assert acc.step(**runway_inputs("3")) == []
    (fired,) = acc.step(**runway_inputs("2.5"))
    assert (fired.id, fired.kind, fired.value, fired.threshold, fired.message) == (
        "main.runway.1",
        "fired",
        "2.5",
        "3.0",
        "CrossModel Main: about 2.5 days of credit left at 1.00 USD/day",
    )
    assert acc.step(**runway_inputs("4.49")) == []  # below 3 + 1.5: still firing
    assert acc.states["runway"].firing is True
    assert acc.step(**runway_inputs("2")) == []
    assert acc.step(**runway_inputs("4.5")) == []
    assert acc.states["runway"].firing is False
    (second,) = acc.step(**runway_inputs("0.04", per_day=62_500_000))
    assert (second.id, second.value) == ("main.runway.2", "0.0")
    assert second.message == "CrossModel Main: about 0.0 days of credit left at 62.50 USD/day"


def test_runway_re_arms_when_nothing_is_spent_and_waits_without_a_burn_rate() -> None:
    acc = Account({"runway": {"below_days": 3}})
    acc.step(**runway_inputs("1"))
    # No burn rate yet: no decision at all.
    assert acc.step(available_micro=100, burn=None, runway_days=None) == []
    assert acc.states["runway"].firing is True
    # Spending stopped (runway unknown = infinite): re-armed.
    acc.step(**runway_inputs(None, per_day=0))
    assert acc.states["runway"].firing is False
    assert acc.ids() == ["main.runway.1"]


def test_runway_threshold_from_home_assistant() -> None:
    acc = Account({"runway": {"below_days": 3, "margin_days": 1}})
    (fired,) = acc.step(**runway_inputs("6.9"), thresholds={"runway_below_days": Decimal(7)})
    assert fired.threshold == "7.0"
    acc.step(**runway_inputs("7.9"), thresholds={"runway_below_days": Decimal(7)})
    assert acc.states["runway"].firing is True
    acc.step(**runway_inputs("8"), thresholds={"runway_below_days": Decimal(7)})
    assert acc.states["runway"].firing is False


# ---- budgets ---------------------------------------------------------------------------------


def budget_step(acc: Account, at: datetime, window: str, spend: int, usage_at: datetime | None):
    return acc.step(at=at, spend_micro={window: spend}, usage_at=usage_at)


def test_daily_budget_fires_once_and_re_arms_at_midnight() -> None:
    acc = Account({"budget": {"daily": "2.00"}})
    day1 = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    assert budget_step(acc, day1, "daily", 2_000_000, day1) == []  # at the limit is not over
    (fired,) = budget_step(acc, day1 + timedelta(hours=1), "daily", 2_000_001, day1)
    assert (fired.id, fired.rule, fired.value, fired.threshold, fired.message) == (
        "main.budget_daily.1",
        "budget_daily",
        "2.00 USD",
        "2.00 USD",
        "CrossModel Main: spend today 2.000001 USD is over the daily budget of 2.00 USD "
        "(resets 2026-03-05 00:00 UTC)",
    )
    assert acc.states["budget_daily"].window == "2026-03-04T00:00:00+00:00"
    last = datetime(2026, 3, 4, 23, 59, 59, tzinfo=UTC)
    assert budget_step(acc, last, "daily", 9_000_000, last) == []
    # Midnight: the old figures are yesterday's, yet the rule re-arms for the new window.
    midnight = datetime(2026, 3, 5, 0, 0, tzinfo=UTC)
    assert budget_step(acc, midnight, "daily", 9_000_000, last) == []
    assert acc.states["budget_daily"] == RuleState(
        firing=False, since=None, last_notified=day1 + timedelta(hours=1), window=None, seq=1
    )
    assert budget_step(acc, midnight + timedelta(minutes=5), "daily", 100, midnight) == []
    at = midnight + timedelta(hours=5)
    (second,) = budget_step(acc, at, "daily", 2_500_000, at)
    assert (second.id, second.value) == ("main.budget_daily.2", "2.50 USD")
    assert acc.states["budget_daily"].window == "2026-03-05T00:00:00+00:00"


def test_cached_figures_just_after_midnight_do_not_fire_again() -> None:
    # The API caches for up to a minute: at 00:00:30 /usage may still return yesterday's
    # total, stamped with today's time. That must not read as "over today's budget".
    acc = Account({"budget": {"daily": "2.00"}})
    evening = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
    (fired,) = budget_step(acc, evening, "daily", 2_500_000, evening)
    assert fired.kind == "fired"
    just_after = datetime(2026, 3, 5, 0, 0, 30, tzinfo=UTC)
    assert budget_step(acc, just_after, "daily", 2_500_000, just_after) == []
    later = datetime(2026, 3, 5, 0, 2, tzinfo=UTC)
    assert budget_step(acc, later, "daily", 10_000, later) == []
    assert acc.ids() == ["main.budget_daily.1"]


def test_budget_over_again_in_the_new_window_re_arms_and_fires_in_one_evaluation() -> None:
    acc = Account({"budget": {"daily": "2.00"}})
    day1 = datetime(2026, 3, 4, 22, 0, tzinfo=UTC)
    budget_step(acc, day1, "daily", 3_000_000, day1)
    day2 = datetime(2026, 3, 5, 22, 0, tzinfo=UTC)
    notices = budget_step(acc, day2, "daily", 4_000_000, day2)
    assert [(n.id, n.kind, n.value) for n in notices] == [
        ("main.budget_daily.2", "fired", "4.00 USD")
    ]
    assert acc.states["budget_daily"].window == "2026-03-05T00:00:00+00:00"


def test_stale_usage_from_an_earlier_window_never_fires_a_budget() -> None:
    acc = Account({"budget": {"daily": "2.00"}})
    yesterday = datetime(2026, 3, 3, 23, 0, tzinfo=UTC)
    now = datetime(2026, 3, 4, 1, 0, tzinfo=UTC)
    assert budget_step(acc, now, "daily", 5_000_000, yesterday) == []
    assert acc.states == {}
    assert budget_step(acc, now, "daily", 5_000_000, None) == []
    assert acc.states == {}


def test_weekly_budget_re_arms_on_the_iso_week_start() -> None:
    acc = Account({"budget": {"weekly": "10"}})
    sunday = datetime(2026, 3, 8, 23, 59, 59, tzinfo=UTC)  # ISO week 10 ends
    (fired,) = budget_step(acc, sunday, "weekly", 10_000_001, sunday)
    assert fired.id == "main.budget_weekly.1"
    assert fired.message == (
        "CrossModel Main: spend this week 10.000001 USD is over the weekly budget of 10.00 USD "
        "(resets 2026-03-09 00:00 UTC)"
    )
    assert acc.states["budget_weekly"].window == "2026-03-02T00:00:00+00:00"
    monday = datetime(2026, 3, 9, 0, 0, tzinfo=UTC)
    # Still the last figures of week 10 in the first seconds of week 11: re-armed only.
    assert budget_step(acc, monday, "weekly", 10_000_001, sunday) == []
    assert acc.states["budget_weekly"].firing is False
    at = monday + timedelta(days=6)
    (second,) = budget_step(acc, at, "weekly", 12_000_000, at)
    assert second.id == "main.budget_weekly.2"
    assert acc.states["budget_weekly"].window == "2026-03-09T00:00:00+00:00"


def test_weekly_budget_does_not_re_arm_inside_the_week() -> None:
    acc = Account({"budget": {"weekly": "10"}})
    monday = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    budget_step(acc, monday, "weekly", 11_000_000, monday)
    for day in range(1, 7):  # Tuesday .. Sunday, spend falling back under the limit
        at = monday + timedelta(days=day)
        assert budget_step(acc, at, "weekly", 1_000_000, at) == []
        assert acc.states["budget_weekly"].firing is True
    assert acc.ids() == ["main.budget_weekly.1"]


def test_weekly_budget_spans_the_new_year_inside_one_iso_week() -> None:
    acc = Account({"budget": {"weekly": "10"}})
    thu = datetime(2026, 12, 31, 20, 0, tzinfo=UTC)  # ISO week 53 of 2026 began Mon 28 Dec
    budget_step(acc, thu, "weekly", 11_000_000, thu)
    assert acc.states["budget_weekly"].window == "2026-12-28T00:00:00+00:00"
    fri = datetime(2027, 1, 1, 8, 0, tzinfo=UTC)  # new month and year, same ISO week
    assert budget_step(acc, fri, "weekly", 12_000_000, fri) == []
    assert acc.states["budget_weekly"].firing is True
    mon = datetime(2027, 1, 4, 0, 5, tzinfo=UTC)
    (again,) = budget_step(acc, mon, "weekly", 10_500_000, mon)
    assert again.id == "main.budget_weekly.2"
    assert acc.states["budget_weekly"].window == "2027-01-04T00:00:00+00:00"


def test_monthly_budget_re_arms_on_the_first_of_the_month_and_the_year() -> None:
    acc = Account({"budget": {"monthly": "30.00"}})
    mar31 = datetime(2026, 3, 31, 18, 0, tzinfo=UTC)
    (fired,) = budget_step(acc, mar31, "monthly", 31_000_000, mar31)
    assert fired.message == (
        "CrossModel Main: spend this month 31.00 USD is over the monthly budget of 30.00 USD "
        "(resets 2026-04-01 00:00 UTC)"
    )
    assert acc.states["budget_monthly"].window == "2026-03-01T00:00:00+00:00"
    apr30 = datetime(2026, 4, 30, 23, 0, tzinfo=UTC)
    (april,) = budget_step(acc, apr30, "monthly", 30_500_000, apr30)
    assert april.id == "main.budget_monthly.2"
    assert acc.states["budget_monthly"].window == "2026-04-01T00:00:00+00:00"
    dec = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    (december,) = budget_step(acc, dec, "monthly", 40_000_000, dec)
    jan = datetime(2027, 1, 1, 0, 30, tzinfo=UTC)
    assert budget_step(acc, jan, "monthly", 40_000_000, dec) == []
    (january,) = budget_step(acc, jan, "monthly", 30_000_001, jan)
    assert [december.id, january.id] == ["main.budget_monthly.3", "main.budget_monthly.4"]
    assert acc.states["budget_monthly"].window == "2027-01-01T00:00:00+00:00"


def test_budget_recovered_notice_at_the_new_window() -> None:
    acc = Account({"budget": {"daily": "1", "notify_recovered": True}})
    day1 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    budget_step(acc, day1, "daily", 1_500_000, day1)
    day2 = datetime(2026, 3, 5, 0, 5, tzinfo=UTC)
    (recovered,) = budget_step(acc, day2, "daily", 0, day2)
    assert (recovered.id, recovered.kind, recovered.message) == (
        "main.budget_daily.2",
        "recovered",
        "CrossModel Main (recovered): a new daily budget window has started",
    )


def test_each_budget_window_is_its_own_rule() -> None:
    acc = Account({"budget": {"daily": "1", "weekly": "5", "monthly": "20"}})
    at = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    notices = acc.step(
        at=at,
        spend_micro={"daily": 1_000_001, "weekly": 4_000_000, "monthly": 20_000_001},
        usage_at=at,
    )
    assert [n.id for n in notices] == ["main.budget_daily.1", "main.budget_monthly.1"]


# ---- auth_failed / api_down ------------------------------------------------------------------


def test_auth_failed_fires_once_and_re_arms_on_success() -> None:
    acc = Account({"auth_failed": True})
    assert acc.step(api_status="ok") == []
    (fired,) = acc.step(api_status="auth_failed")
    assert (fired.id, fired.value, fired.message) == (
        "main.auth_failed.1",
        "auth_failed",
        "CrossModel Main: the API key was rejected (revoked or wrong): update it to resume "
        "monitoring",
    )
    assert acc.step(api_status="auth_failed") == []
    assert acc.step(api_status="unreachable") == []  # not a success: stays firing
    assert acc.states["auth_failed"].firing is True
    assert acc.step(api_status="ok") == []
    assert acc.states["auth_failed"].firing is False
    (second,) = acc.step(api_status="auth_failed")
    assert second.id == "main.auth_failed.2"


def test_api_down_after_the_configured_time() -> None:
    # `down_for` is measured by the engine on the monotonic clock (test_clock_steps.py).
    acc = Account({"api_down": {"after": "15m"}})
    assert acc.step(api_status="unreachable", down_for=14 * 60 + 59) == []
    (fired,) = acc.step(api_status="unreachable", down_for=15 * 60)
    assert (fired.id, fired.value, fired.threshold, fired.message) == (
        "main.api_down.1",
        "15 min",
        "15 min",
        "CrossModel Main: no successful poll for 15 min (last error: unreachable)",
    )
    assert acc.step(api_status="rate_limited", down_for=75 * 60) == []
    assert acc.step(api_status="ok", down_for=0) == []
    assert acc.states["api_down"].firing is False
    assert acc.step(api_status="unreachable", down_for=15 * 60 - 1) == []
    (second,) = acc.step(api_status="unreachable", down_for=15 * 60)
    assert second.id == "main.api_down.2"


# ---- topup -----------------------------------------------------------------------------------


def test_topup_is_an_event_when_the_balance_rose_more_than_spend_explains() -> None:
    acc = Account({"topup": True})
    (event,) = acc.step(
        balance_micro=15_000_000, prev_balance_micro=5_000_000, spend_since_prev_micro=100_000
    )
    assert event == Notice(
        id="main.topup.1",
        account_id="main",
        rule="topup",
        kind="event",
        title="CrossModel Main",
        message="CrossModel Main: top-up of about 10.10 USD (balance now 15.00 USD)",
        value="10.10 USD",
        threshold=None,
        at=T0,
        priority=None,
        tags=(),
    )
    assert acc.states["topup"] == RuleState(firing=False, last_notified=T0, seq=1)
    (again,) = acc.step(
        balance_micro=30_000_000, prev_balance_micro=15_000_000, spend_since_prev_micro=0
    )
    assert again.id == "main.topup.2"


@pytest.mark.parametrize(
    ("balance", "prev", "spent"),
    [
        (4_900_000, 5_000_000, 100_000),  # a plain spend
        (4_950_000, 5_000_000, 0),  # balance fell with no recorded spend (holds settled)
        (5_010_000, 5_000_000, 0),  # 0.01 up: rounding, not a top-up
        (5_000_000, 5_000_000, 10_000),  # spend the counter saw but the balance not yet
    ],
)
def test_no_topup_event_on_a_plain_spend(balance: int, prev: int, spent: int) -> None:
    acc = Account({"topup": True})
    assert (
        acc.step(balance_micro=balance, prev_balance_micro=prev, spend_since_prev_micro=spent) == []
    )
    assert acc.states == {}


def test_topup_just_above_the_minimum_amount() -> None:
    acc = Account({"topup": True})
    (event,) = acc.step(balance_micro=5_010_001, prev_balance_micro=5_000_000)
    assert event.value == "0.01 USD"


def test_no_topup_without_a_previous_sample() -> None:
    acc = Account({"topup": True})
    assert acc.step(balance_micro=50_000_000, prev_balance_micro=None) == []


# ---- notice ids ------------------------------------------------------------------------------


def test_notice_ids_are_per_rule_sequences_that_only_grow() -> None:
    acc = Account({**low(notify_recovered=True), "auth_failed": True, "topup": True})
    acc.step(available_micro=4_000_000, api_status="auth_failed")
    acc.step(available_micro=6_000_000, api_status="ok")
    acc.step(
        available_micro=4_000_000,
        balance_micro=20_000_000,
        prev_balance_micro=4_000_000,
        spend_since_prev_micro=0,
    )
    assert acc.ids() == [
        "main.low_balance.1",
        "main.auth_failed.1",
        "main.low_balance.2",  # recovered
        "main.low_balance.3",
        "main.topup.1",
    ]
    assert {r: s.seq for r, s in acc.states.items()} == {
        "low_balance": 3,
        "auth_failed": 1,
        "topup": 1,
    }


def test_sequence_continues_from_a_restored_state() -> None:
    acc = Account(low())
    acc.states["low_balance"] = RuleState(seq=41)
    (fired,) = acc.step(available_micro=1)
    assert fired.id == "main.low_balance.42"


def test_disabled_rules_never_run() -> None:
    acc = Account({"low_balance": None, "auth_failed": False})
    assert acc.cfg.rule_names() == ()
    assert acc.step(available_micro=0, api_status="auth_failed") == []
    assert acc.states == {}


def test_no_top_up_when_the_balance_falls_while_the_spend_counter_runs_ahead() -> None:
    # /credits and /usage are cached separately: 0.06 counted as spent while the balance
    # only fell by 0.01 is not money added.
    acc = Account({"topup": True})
    assert (
        acc.step(
            balance_micro=4_990_000, prev_balance_micro=5_000_000, spend_since_prev_micro=60_000
        )
        == []
    )
    (topup,) = acc.step(
        balance_micro=24_900_000, prev_balance_micro=4_990_000, spend_since_prev_micro=90_000
    )
    assert topup.value == "20.00 USD"


def test_a_budget_of_zero_means_any_spend() -> None:
    acc = Account({"budget": {"daily": 0}})
    at = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    assert acc.cfg.rule_names() == ("budget_daily",)
    assert budget_step(acc, at, "daily", 0, at) == []
    (fired,) = budget_step(acc, at + timedelta(hours=1), "daily", 1, at + timedelta(hours=1))
    assert fired.rule == "budget_daily"
