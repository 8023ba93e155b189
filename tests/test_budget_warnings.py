"""Budget warning ladders (`warn_at`), the overrun forecast and `resets_at`: pure rules on
explicit datetimes, their state through a real SQLite state database, and what HA reads."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from cm_mqtt_bridge.config.settings import ConfigError, load_config
from cm_mqtt_bridge.core.evaluate import AlertStatus, RuleState, warn_steps
from cm_mqtt_bridge.core.model import Window
from cm_mqtt_bridge.core.rules import FORECAST_AFTER, AlertsConfig
from cm_mqtt_bridge.core.view import AccountView
from cm_mqtt_bridge.ha.entities import entities_for
from cm_mqtt_bridge.ha.render import state_document
from cm_mqtt_bridge.store.db import DB_NAME, Store
from tests.test_rules import Account
from tests.test_state import snapshot

USD = 1_000_000
# Saturday 19 December 2026, mid-month, mid-week: no window starts during a ladder test.
MID = datetime(2026, 12, 19, 12, 0, tzinfo=UTC)
LADDER = {"budget": {"monthly": "30.00", "warn_at": [50, 80]}}


def month(acc: Account, at: datetime, spend: int) -> list[str]:
    """One evaluation with a fresh month-to-date figure; the messages it sent."""
    notices = acc.step(at=at, spend_micro={"monthly": spend}, usage_at=at)
    return [n.message.removeprefix("CrossModel Main: ") for n in notices]


# ---- config ----------------------------------------------------------------------------------


def test_warn_at_is_sorted_and_deduplicated() -> None:
    cfg = AlertsConfig.model_validate({"budget": {"daily": 2, "warn_at": [80, 50, 80]}})
    budget = cfg.section("budget")
    assert budget is not None
    assert budget.warn_at == (50, 80)  # type: ignore[attr-defined]
    assert "budget_daily_warn" in cfg.rule_names()
    assert "budget_monthly_warn" not in cfg.rule_names()  # no monthly budget configured


@pytest.mark.parametrize(
    ("warn_at", "problem"),
    [
        ([50, 100], "100 is not a whole percentage from 1 to 99, e.g. [50, 80]"),
        ([0], "0 is not a whole percentage from 1 to 99, e.g. [50, 80]"),
        ([50.5], "50.5 is not a whole percentage from 1 to 99, e.g. [50, 80]"),
        (["50"], "'50' is not a whole percentage from 1 to 99, e.g. [50, 80]"),
        ([True], "True is not a whole percentage from 1 to 99, e.g. [50, 80]"),
        (50, "expected a list of percentages of the budget, e.g. [50, 80]"),
    ],
)
def test_a_bad_warn_at_is_a_clear_config_error(tmp_path: Path, warn_at: Any, problem: str) -> None:
    path = tmp_path / "config.yaml"
    data = {
        "accounts": [{"id": "main", "name": "Main", "api_key": "cm-test-key-0123456789"}],
        "alerts": {"budget": {"monthly": 30, "warn_at": warn_at}},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config_path=path, env={}, cli=None)
    assert info.value.problems == [f"alerts.budget.warn_at: {problem}"]


# ---- the ladder ------------------------------------------------------------------------------


def test_each_step_once_in_order_then_only_the_budget_alert() -> None:
    acc = Account(LADDER)
    assert month(acc, MID, 14 * USD) == []
    assert month(acc, MID + timedelta(hours=1), 16 * USD) == [
        "spend this month 16.00 USD is 53 % of the 30.00 USD monthly budget "
        "(the 50 % warning; resets 2027-01-01 00:00 UTC)"
    ]
    warning = acc.notices[-1]
    assert (warning.rule, warning.kind, warning.step, warning.threshold) == (
        "budget_monthly_warn",
        "event",
        50,
        "50 %",
    )
    assert warning.to_json()["step"] == 50
    assert warning.to_json()["resets_at"] == "2027-01-01T00:00:00+00:00"
    assert month(acc, MID + timedelta(hours=2), 17 * USD) == []
    assert month(acc, MID + timedelta(hours=3), 25 * USD) == [
        "spend this month 25.00 USD is 83 % of the 30.00 USD monthly budget "
        "(the 80 % warning; resets 2027-01-01 00:00 UTC)"
    ]
    assert month(acc, MID + timedelta(hours=4), 26 * USD) == []
    assert month(acc, MID + timedelta(hours=5), 31 * USD) == [
        "spend this month 31.00 USD is over the monthly budget of 30.00 USD "
        "(resets 2027-01-01 00:00 UTC)"
    ]
    assert month(acc, MID + timedelta(hours=6), 32 * USD) == []
    assert [n.rule for n in acc.notices] == [
        "budget_monthly_warn",
        "budget_monthly_warn",
        "budget_monthly",
    ]
    assert acc.states["budget_monthly_warn"].step == 80


def test_a_jump_past_several_steps_sends_only_the_highest() -> None:
    acc = Account({"budget": {"monthly": "30.00", "warn_at": [25, 50, 80]}})
    (only,) = month(acc, MID, 27 * USD)
    assert only.startswith("spend this month 27.00 USD is 90 % of the 30.00 USD monthly budget")
    assert "(the 80 % warning;" in only
    assert month(acc, MID + timedelta(hours=1), 28 * USD) == []


def test_a_jump_straight_over_budget_sends_the_budget_alert_and_no_late_step() -> None:
    acc = Account(LADDER)
    (over,) = month(acc, MID, 40 * USD)
    assert "is over the monthly budget" in over
    # The step is recorded while over budget: a refund that brings the figure back under
    # the budget does not bring a late "80 %" warning.
    assert acc.states["budget_monthly_warn"].step == 80
    assert month(acc, MID + timedelta(hours=1), 29 * USD) == []


def test_exactly_at_a_step_fires_it() -> None:
    acc = Account(LADDER)
    (at_step,) = month(acc, MID, 15 * USD)
    assert at_step.startswith("spend this month 15.00 USD is 50 % of the 30.00 USD")


def test_steps_fire_again_in_the_next_window_but_not_from_a_stale_figure() -> None:
    acc = Account({"budget": {"daily": "2.00", "warn_at": [50]}})
    day1 = datetime(2026, 12, 18, 20, 0, tzinfo=UTC)
    (first,) = acc.step(at=day1, spend_micro={"daily": 1_500_000}, usage_at=day1)
    assert first.message.endswith("(the 50 % warning; resets 2026-12-19 00:00 UTC)")
    # Just after midnight the API may still answer with yesterday's total for up to a minute.
    midnight = datetime(2026, 12, 19, 0, 0, 30, tzinfo=UTC)
    assert acc.step(at=midnight, spend_micro={"daily": 1_500_000}, usage_at=midnight) == []
    later = datetime(2026, 12, 19, 9, 0, tzinfo=UTC)
    (second,) = acc.step(at=later, spend_micro={"daily": 1_200_000}, usage_at=later)
    assert second.message == (
        "CrossModel Main: spend today 1.20 USD is 60 % of the 2.00 USD daily budget "
        "(the 50 % warning; resets 2026-12-20 00:00 UTC)"
    )
    assert acc.states["budget_daily_warn"].window == "2026-12-19T00:00:00+00:00"


def test_a_zero_budget_has_no_ladder() -> None:
    cfg = AlertsConfig.model_validate({"budget": {"monthly": 0, "warn_at": [50]}})
    assert cfg.rule_names() == ("budget_monthly",)


def test_the_ladder_survives_a_restart_through_the_state_database(tmp_path: Path) -> None:
    first = Account(LADDER)
    month(first, MID, 16 * USD)
    month(first, MID + timedelta(hours=1), 25 * USD)
    store = Store(tmp_path / DB_NAME)
    try:
        store.commit("main", first.states, first.notices, ["ntfy"], MID)
    finally:
        store.close()
    store = Store(tmp_path / DB_NAME)
    try:
        restored = store.rule_states("main")
    finally:
        store.close()
    assert restored["budget_monthly_warn"].step == 80
    again = Account(LADDER)
    again.states = restored
    assert month(again, MID + timedelta(hours=2), 26 * USD) == []
    (over,) = month(again, MID + timedelta(hours=3), 31 * USD)
    assert "is over the monthly budget" in over


def test_a_database_from_before_steps_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE rule_state (account TEXT NOT NULL, rule TEXT NOT NULL, firing INTEGER "
        "NOT NULL, since REAL, last_notified REAL, window TEXT, seq INTEGER NOT NULL, "
        "PRIMARY KEY (account, rule))"
    )
    old.execute("INSERT INTO rule_state VALUES ('main', 'budget_daily', 1, NULL, NULL, 'w', 3)")
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert store.rule_states("main") == {"budget_daily": RuleState(True, None, None, "w", 3)}
        state = RuleState(window="2026-12-01T00:00:00+00:00", seq=1, step=50)
        store.commit("main", {"budget_monthly_warn": state}, [], [], MID)
        assert store.rule_states("main")["budget_monthly_warn"] == state
    finally:
        store.close()


# ---- the forecast ----------------------------------------------------------------------------

FORECAST = {"budget": {"monthly": "30.00", "forecast": True}}
DEC13 = datetime(2026, 12, 13, 0, 0, tzinfo=UTC)  # 12 of December's 31 days have passed


def test_forecast_once_per_window_naming_the_date_and_its_basis() -> None:
    acc = Account(FORECAST)
    assert month(acc, DEC13, 11 * USD) == []  # 28.41 by month end: within the budget
    at = DEC13 + timedelta(minutes=1)
    spend = 16_800_000  # 1.40 a day
    (notice,) = acc.step(at=at, spend_micro={"monthly": spend}, usage_at=DEC13)
    assert notice.message == (
        "CrossModel Main: on pace to pass the 30.00 USD monthly budget around 2026-12-22 "
        "(projected 43.40 USD by month end at the pace of the first 12 days; "
        "resets 2027-01-01 00:00 UTC)"
    )
    assert (notice.rule, notice.kind, notice.value, notice.threshold) == (
        "budget_monthly_forecast",
        "event",
        "43.40 USD",
        "30.00 USD",
    )
    for hours in (1, 24, 100):
        later = DEC13 + timedelta(hours=hours)
        assert month(acc, later, 17 * USD + hours * 100_000) == []
    # A new month: a new forecast once its guard has passed.
    jan = datetime(2027, 1, 3, 0, 0, tzinfo=UTC)
    (january,) = month(acc, jan, 5 * USD)
    assert january.startswith("on pace to pass the 30.00 USD monthly budget around 2027-01-13 ")
    assert "(projected 77.50 USD by month end at the pace of the first 2 days;" in january


@pytest.mark.parametrize(
    ("window", "start", "limit"),
    [
        (Window.DAY, datetime(2026, 12, 15, tzinfo=UTC), "daily"),
        (Window.WEEK, datetime(2026, 12, 14, tzinfo=UTC), "weekly"),  # a Monday
        (Window.MONTH, datetime(2026, 12, 1, tzinfo=UTC), "monthly"),
    ],
)
def test_no_forecast_from_the_start_of_a_window(
    window: Window, start: datetime, limit: str
) -> None:
    assert {
        Window.DAY: timedelta(hours=6),
        Window.WEEK: timedelta(days=1),
        Window.MONTH: timedelta(days=1),
    } == FORECAST_AFTER
    acc = Account({"budget": {limit: "30.00", "forecast": True}})
    guard = FORECAST_AFTER[window]
    # 29.99 spent just before the guard ends: far past the budget at that pace, yet silent.
    early = start + guard - timedelta(seconds=1)
    assert acc.step(at=early, spend_micro={limit: 29_990_000}, usage_at=early) == []
    at = start + guard
    (notice,) = acc.step(at=at, spend_micro={limit: 29_990_000}, usage_at=at)
    assert notice.rule == f"budget_{limit}_forecast"
    assert notice.resets_at == window.end(at).isoformat()


def test_daily_forecast_names_a_time_and_hours() -> None:
    acc = Account({"budget": {"daily": "2.00", "forecast": True}})
    at = datetime(2026, 12, 15, 7, 30, tzinfo=UTC)
    (notice,) = acc.step(at=at, spend_micro={"daily": 1_000_000}, usage_at=at)
    assert notice.message == (
        "CrossModel Main: on pace to pass the 2.00 USD daily budget around 15:00 UTC "
        "(projected 3.20 USD by midnight UTC at the pace of the first 7.5 hours; "
        "resets 2026-12-16 00:00 UTC)"
    )


def test_no_forecast_once_over_budget_or_without_spend() -> None:
    acc = Account(FORECAST)
    assert month(acc, DEC13, 0) == []
    (over,) = month(acc, DEC13 + timedelta(hours=1), 31 * USD)
    assert "is over the monthly budget" in over  # the budget alert only, no forecast
    assert "budget_monthly_forecast" not in acc.states


def test_the_forecast_survives_a_restart(tmp_path: Path) -> None:
    first = Account(FORECAST)
    assert len(month(first, DEC13, 20 * USD)) == 1
    store = Store(tmp_path / DB_NAME)
    try:
        store.commit("main", first.states, first.notices, ["ntfy"], DEC13)
        again = Account(FORECAST)
        again.states = store.rule_states("main")
    finally:
        store.close()
    assert month(again, DEC13 + timedelta(hours=5), 21 * USD) == []


# ---- what Home Assistant reads ---------------------------------------------------------------


def test_the_budget_sensor_carries_resets_at_and_the_step() -> None:
    cfg = AlertsConfig.model_validate({"budget": {"weekly": 10, "monthly": 30, "warn_at": [50]}})
    states = {
        "budget_monthly_warn": RuleState(window="2026-12-01T00:00:00+00:00", seq=1, step=50),
        # Last week's step: not this week's.
        "budget_weekly_warn": RuleState(window="2026-12-07T00:00:00+00:00", seq=1, step=50),
    }
    fetched = datetime(2026, 12, 16, 8, 0, tzinfo=UTC)  # a Wednesday
    steps = warn_steps(cfg.rules(), states, fetched)
    assert steps == {"budget_monthly": 50}
    entities = entities_for(cfg.rules())
    sensor = next(e for e in entities if e.key == "alert_budget_monthly")
    assert [name for name, _value in sensor.attributes] == ["resets_at", "warn_step"]
    view = AccountView(
        snapshot=snapshot(at=fetched),
        alerts=AlertStatus(rules=cfg.rule_names(), steps=steps),
    )
    doc = state_document(view, entities)
    assert doc["resets_at_budget_monthly"] == "2027-01-01T00:00:00+00:00"
    assert doc["warn_step_budget_monthly"] == 50
    assert doc["resets_at_budget_weekly"] == "2026-12-21T00:00:00+00:00"
    assert doc["warn_step_budget_weekly"] is None
    # The ladder and the forecast are events: in the event entity, no binary sensor each.
    alert = next(e for e in entities if e.key == "alert")
    assert "budget_monthly_warn" in alert.event_types
    assert not any(e.key == "alert_budget_monthly_warn" for e in entities)


def test_window_ends() -> None:
    assert Window.DAY.end(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert Window.WEEK.end(datetime(2026, 12, 28, tzinfo=UTC)) == datetime(2027, 1, 4, tzinfo=UTC)
    assert Window.MONTH.end(datetime(2026, 1, 31, 12, tzinfo=UTC)) == datetime(
        2026, 2, 1, tzinfo=UTC
    )
    assert Window.MONTH.end(datetime(2026, 12, 1, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)


def test_the_readme_example_is_what_the_rules_send() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("the 24th sends:\n\n```text\n", 1)[1].split("```", 1)[0]
    acc = Account({"budget": {"monthly": "30.00", "warn_at": [50, 80], "forecast": True}})
    for day, spend in ((13, 16_800_000), (20, 25 * USD), (24, 31 * USD)):
        at = datetime(2026, 12, day, tzinfo=UTC)
        acc.step(at=at, spend_micro={"monthly": spend}, usage_at=at)
    assert block.splitlines() == [n.message for n in acc.notices]
