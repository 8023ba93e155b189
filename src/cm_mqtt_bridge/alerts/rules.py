"""Alert rules: pure functions from (inputs, previous state) to (new state, notices).

Each rule fires once per crossing. Hysteresis: a firing rule re-arms only after the value has
recovered past the threshold by the margin (budgets: at the next window start), so a value
wobbling around a threshold notifies once. Optional reminders while firing, and an optional
"recovered" notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

from ..money import format_money
from ..snapshot import window_start
from .burn import Burn
from .config import AlertsConfig

Kind = Literal["fired", "reminder", "recovered", "event"]
BUDGET_WINDOWS = {"budget_daily": "daily", "budget_weekly": "weekly", "budget_monthly": "monthly"}
WINDOW_WORDS = {"daily": "today", "weekly": "this week", "monthly": "this month"}
WINDOW_GRACE = timedelta(seconds=90)


@dataclass(frozen=True, slots=True)
class RuleState:
    firing: bool = False
    since: datetime | None = None
    last_notified: datetime | None = None
    window: str | None = None  # budgets: start of the window the rule fired in
    seq: int = 0  # notices issued so far: gives every notice a stable id


@dataclass(frozen=True, slots=True)
class Notice:
    id: str
    account_id: str
    rule: str
    kind: Kind
    title: str
    message: str
    value: str | None
    threshold: str | None
    at: datetime
    priority: str | None = None
    tags: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "account": self.account_id,
            "event_type": self.rule,
            "rule": self.rule,
            "kind": self.kind,
            "title": self.title,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Inputs:
    account_id: str
    account_name: str
    now: datetime
    currency: str | None = None
    balance_micro: int | None = None
    available_micro: int | None = None
    # Window spend from the last good /usage, with the time it was fetched.
    spend_micro: Mapping[str, int] = field(default_factory=dict)
    usage_at: datetime | None = None
    api_status: str | None = None
    last_success: datetime | None = None
    started_at: datetime | None = None
    burn: Burn | None = None
    runway_days: Decimal | None = None
    # Top-up detection: balance and month-to-date spend at the previous sample.
    prev_balance_micro: int | None = None
    spend_since_prev_micro: int | None = None
    # Effective thresholds (the config, or a value set from Home Assistant).
    low_balance_below: int | None = None
    runway_below_days: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """What a rule sees now. `active` None means no data: the state is left as it is."""

    active: bool | None
    rearm: bool
    value: str | None = None
    threshold: str | None = None
    fired: str = ""
    recovered: str = ""
    window: str | None = None


def _distinct(value: int, threshold: int, currency: str) -> tuple[str, str]:
    """Both amounts to the cent, unless that makes different amounts look equal
    ("5.00 is below 5.00"): then with every decimal they need."""
    a, b = format_money(value, currency), format_money(threshold, currency)
    if a == b and value != threshold:
        return format_money(value, currency, 6, trim=True), format_money(
            threshold, currency, 6, trim=True
        )
    return a, b


def _days(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN))


def _check(rule: str, cfg: AlertsConfig, i: Inputs, state: RuleState) -> Check:
    cur = i.currency or ""

    def money(m: int) -> str:
        return format_money(m, cur)

    if rule == "low_balance":
        assert cfg.low_balance is not None
        below = i.low_balance_below if i.low_balance_below is not None else cfg.low_balance.below
        if i.available_micro is None:
            return Check(None, False)
        avail = i.available_micro
        # Default margin: 10 % of the threshold in force (it may have been set from HA).
        margin = below // 10 if cfg.low_balance.margin is None else cfg.low_balance.margin
        return Check(
            active=avail < below,
            rearm=avail >= below + margin,
            value=money(avail),
            threshold=money(below),
            fired="available balance {} is below {}".format(*_distinct(avail, below, cur)),
            recovered=f"available balance is back to {money(avail)}",
        )
    if rule == "runway":
        assert cfg.runway is not None
        below_d = i.runway_below_days if i.runway_below_days is not None else cfg.runway.below_days
        if i.available_micro is None or i.burn is None:
            return Check(None, False)
        days = i.runway_days
        rate = money(int(i.burn.per_day_micro.to_integral_value()))
        return Check(
            active=days is not None and days < below_d,
            rearm=days is None or days >= below_d + cfg.runway.margin_days,
            value=None if days is None else _days(days),
            threshold=_days(below_d),
            fired=f"about {_days(days or Decimal(0))} days of credit left at {rate}/day",
            recovered=f"runway is back above {_days(below_d + cfg.runway.margin_days)} days",
        )
    if rule in BUDGET_WINDOWS:
        assert cfg.budget is not None
        window = BUDGET_WINDOWS[rule]
        limit = getattr(cfg.budget, window)
        current = window_start(window, i.now).isoformat()
        new_window = state.firing and state.window != current
        spend = i.spend_micro.get(window)
        # The API caches answers for up to ~60 s: just after a window starts, a figure stamped
        # with the new window may still be the old window's total. Judge it after the grace.
        fresh = (
            i.usage_at is not None
            and window_start(window, i.usage_at).isoformat() == current
            and i.usage_at - window_start(window, i.usage_at) >= WINDOW_GRACE
        )
        if spend is None or not fresh:
            # Old figures belong to an earlier window: only the re-arm can be decided.
            return Check(None if not new_window else False, new_window, window=current)
        spent_text, limit_text = _distinct(spend, limit, cur)
        return Check(
            active=spend > limit,
            rearm=new_window,
            value=money(spend),
            threshold=money(limit),
            fired=f"spend {WINDOW_WORDS[window]} {spent_text} is over the {window} budget "
            f"of {limit_text}",
            recovered=f"a new {window} budget window has started",
            window=current,
        )
    if rule == "auth_failed":
        if i.api_status is None:
            return Check(None, False)
        return Check(
            active=i.api_status == "auth_failed",
            rearm=i.api_status == "ok",
            value=i.api_status,
            fired="the API key was rejected (revoked or wrong): update it to resume monitoring",
            recovered="the API key works again",
        )
    if rule == "api_down":
        assert cfg.api_down is not None
        since = i.last_success or i.started_at
        if since is None:
            return Check(None, False)
        down_for = i.now - since
        after = timedelta(seconds=cfg.api_down.after)
        minutes = int(down_for.total_seconds() // 60)
        return Check(
            active=down_for >= after,
            rearm=i.api_status == "ok",
            value=f"{minutes} min",
            threshold=f"{int(after.total_seconds() // 60)} min",
            fired=f"no successful poll for {minutes} min (last error: {i.api_status})",
            recovered="polling works again",
        )
    raise ValueError(f"unknown rule {rule}")


def _notice(
    rule: str, kind: Kind, text: str, check: Check, cfg: AlertsConfig, i: Inputs, seq: int
) -> Notice:
    common = cfg.common(rule)
    title = f"CrossModel {i.account_name}"
    if kind == "recovered":
        title += " (recovered)"
    elif kind == "reminder":
        title += " (reminder)"
    return Notice(
        id=f"{i.account_id}.{rule}.{seq}",
        account_id=i.account_id,
        rule=rule,
        kind=kind,
        title=title,
        message=f"{title}: {text}",
        value=check.value,
        threshold=check.threshold,
        at=i.now,
        priority="default" if kind == "recovered" else common.priority,
        tags=common.tags,
    )


def _topup(cfg: AlertsConfig, i: Inputs, state: RuleState) -> tuple[RuleState, list[Notice]]:
    assert cfg.topup is not None
    if i.balance_micro is None or i.prev_balance_micro is None:
        return state, []
    # Spend only lowers the balance: a rise beyond what was spent meanwhile is money added.
    # The balance itself must rise: /credits and /usage are cached separately, so the spend
    # counter can run ahead of the balance, and a spend-adjusted figure alone would invent
    # top-ups. The spend since the last sample is added back only to report the amount.
    if i.balance_micro - i.prev_balance_micro <= cfg.topup.min_amount:
        return state, []
    added = i.balance_micro - i.prev_balance_micro + (i.spend_since_prev_micro or 0)
    cur = i.currency or ""
    check = Check(
        active=True,
        rearm=False,
        value=format_money(added, cur),
        threshold=None,
    )
    seq = state.seq + 1
    text = (
        f"top-up of about {format_money(added, cur)} "
        f"(balance now {format_money(i.balance_micro, cur)})"
    )
    notice = _notice("topup", "event", text, check, cfg, i, seq)
    return replace(state, seq=seq, last_notified=i.now), [notice]


def evaluate(
    cfg: AlertsConfig, i: Inputs, states: Mapping[str, RuleState]
) -> tuple[dict[str, RuleState], list[Notice]]:
    """Run every enabled rule once; return the changed states and the notices to send."""
    changed: dict[str, RuleState] = {}
    notices: list[Notice] = []
    for rule in cfg.rule_names():
        state = states.get(rule, RuleState())
        if rule == "topup":
            new, out = _topup(cfg, i, state)
        else:
            new, out = _step(rule, cfg, i, state)
        if new != state:
            changed[rule] = new
        notices += out
    return changed, notices


def _step(
    rule: str, cfg: AlertsConfig, i: Inputs, state: RuleState
) -> tuple[RuleState, list[Notice]]:
    check = _check(rule, cfg, i, state)
    common = cfg.common(rule)
    if not state.firing:
        if check.active:
            seq = state.seq + 1
            notice = _notice(rule, "fired", check.fired, check, cfg, i, seq)
            new = RuleState(True, i.now, i.now, check.window, seq)
            return new, [notice]
        return state, []
    if check.rearm:
        new = replace(state, firing=False, since=None, window=None)
        if common.notify_recovered:
            seq = state.seq + 1
            notice = _notice(rule, "recovered", check.recovered, check, cfg, i, seq)
            new = replace(new, seq=seq, last_notified=i.now)
            return _refire(rule, cfg, i, new, check, [notice])
        return _refire(rule, cfg, i, new, check, [])
    if (
        common.repeat_every
        and check.active
        and state.last_notified is not None
        and i.now - state.last_notified >= timedelta(seconds=common.repeat_every)
    ):
        seq = state.seq + 1
        notice = _notice(rule, "reminder", check.fired, check, cfg, i, seq)
        return replace(state, last_notified=i.now, seq=seq), [notice]
    return state, []


def _refire(
    rule: str, cfg: AlertsConfig, i: Inputs, state: RuleState, check: Check, out: list[Notice]
) -> tuple[RuleState, list[Notice]]:
    """A budget re-armed by a new window may already be over again in that window."""
    if rule in BUDGET_WINDOWS and check.active:
        again, more = _step(rule, cfg, i, state)
        return again, out + more
    return state, out


@dataclass(frozen=True, slots=True)
class AlertStatus:
    """What Home Assistant shows of an account's alerts (the state document reads it)."""

    rules: tuple[str, ...] = ()
    active: Mapping[str, datetime] = field(default_factory=dict)  # firing rule -> since
    burn: Burn | None = None
    runway_days: Decimal | None = None
    low_balance_below: int | None = None
    runway_below_days: Decimal | None = None
