"""The rule registry: every alert rule declared once.

A rule is its name, its label, the config section it reads (with that section's model), its
check, and the threshold Home Assistant may change (range, step, unit). The config schema,
the alert entities, the number entities and the settable thresholds are all derived from
`RULES`. A rule over the existing `Inputs` is added in this source file only; one that needs
data no rule reads yet also fills it in where `service/alerting.py` builds the `Inputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, Field, create_model, field_validator

from .configbase import Amount, Duration, StrictModel
from .forecast import Burn
from .model import Window
from .money import CURRENCY, MICRO_PER_UNIT, format_money, parse_amount
from .spike import SpikeFigures

WINDOW_GRACE = timedelta(seconds=90)
Priority = Literal["min", "low", "default", "high", "urgent"]

# ---- config sections ---------------------------------------------------------------------------


class RuleCommon(StrictModel):
    repeat_every: Duration | None = None
    notify_recovered: bool = False
    priority: Priority | None = None
    tags: tuple[str, ...] = ()


class LowBalanceRule(RuleCommon):
    below: Amount
    # Default: 10 % of `below`. Holds swing with running requests, so "available" wobbles;
    # without a margin every wobble across the threshold would notify again.
    margin: Amount | None = None


RUNWAY_MAX_DAYS = Decimal(365)


class RunwayRule(RuleCommon):
    below_days: Annotated[Decimal, Field(ge=0, le=RUNWAY_MAX_DAYS)]
    margin_days: Annotated[Decimal, Field(ge=0, le=RUNWAY_MAX_DAYS)] = Decimal(1)


def _percent_steps(value: Any) -> tuple[int, ...]:
    """`warn_at`: whole percentages of a budget, 1 to 99 (100 % is the budget alert itself)."""
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of percentages of the budget, e.g. [50, 80]")
    for step in value:
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 99:
            raise ValueError(f"{step!r} is not a whole percentage from 1 to 99, e.g. [50, 80]")
    return tuple(sorted(set(value)))


class BudgetRule(RuleCommon):
    daily: Amount | None = None
    weekly: Amount | None = None
    monthly: Amount | None = None
    # Early warnings in percent of each budget: each step notifies once per window.
    warn_at: Annotated[tuple[int, ...], BeforeValidator(_percent_steps)] = ()
    # Once per window: a push when the window's own pace projects past the budget.
    forecast: bool = False


class ApiDownRule(RuleCommon):
    after: Duration = 900.0


class SimpleRule(RuleCommon):
    """auth_failed: `true` in the file, or a mapping for priority and tags."""


class TopupRule(RuleCommon):
    min_amount: Amount = 10_000  # 0.01 units: below that it is rounding, not a top-up


SPIKE_MAX_FACTOR = Decimal(100)
SPIKE_OVER = (300.0, 86400.0)  # the window: 5 min (a few polls) .. 1 day (a 7-day baseline)


class SpikeRule(RuleCommon):
    factor: Annotated[Decimal, Field(ge=1, le=SPIKE_MAX_FACTOR)] = Decimal(3)
    over: Duration = 3600.0
    min_spend: Amount = 0  # the window's spend must also be above this

    @field_validator("over")
    @classmethod
    def _over_range(cls, v: float) -> float:
        if not SPIKE_OVER[0] <= v <= SPIKE_OVER[1]:
            raise ValueError("must be between 5m and 1d")
        return v


# ---- what a rule sees, and what its check says -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inputs:
    account_id: str
    account_name: str
    now: datetime
    currency: str | None = None
    balance_micro: int | None = None
    available_micro: int | None = None
    # Window spend (by Window.api) from the last good /usage, with the time it was fetched.
    spend_micro: Mapping[str, int] = field(default_factory=dict)
    usage_at: datetime | None = None
    api_status: str | None = None
    # Seconds without a good poll (since the last one, or since the start), on the monotonic
    # clock: a step of the wall clock is no outage.
    down_for: float | None = None
    # The monotonic clock's reading at `now`: reminders are measured on it.
    monotonic: float | None = None
    burn: Burn | None = None
    runway_days: Decimal | None = None
    # Top-up detection: balance and month-to-date spend at the previous sample.
    prev_balance_micro: int | None = None
    spend_since_prev_micro: int | None = None
    # Thresholds set from Home Assistant (by Threshold.key, in the threshold's unit).
    thresholds: Mapping[str, Decimal] = field(default_factory=dict)
    install_id: str = ""  # the state database's random id, part of every notice id
    spike: SpikeFigures | None = None  # None: spike rule off, or not enough history yet


@dataclass(frozen=True, slots=True)
class Check:
    """What a rule sees now. `active` None means no data: the state is left as it is.
    `event` rules (top-up) notify each time they are active and never stay firing."""

    active: bool | None
    rearm: bool
    value: str | None = None
    threshold: str | None = None
    fired: str = ""
    recovered: str = ""
    window: str | None = None  # budgets: the window this figure belongs to
    step: int | None = None  # budget warnings: the highest step passed in `window`
    resets_at: str | None = None  # budgets: when the window ends (ISO 8601, UTC)


@dataclass(frozen=True, slots=True)
class Threshold:
    """A rule threshold Home Assistant may change (a number entity)."""

    key: str  # state-document key and command name
    name: str
    unit: str  # CURRENCY or a plain unit
    low: Decimal
    high: Decimal
    step: Decimal
    icon: str
    money: bool  # an amount: at most 6 decimals, kept in micro units by the config
    configured: Callable[[Any], Decimal]  # the section's value, in `unit`


@dataclass(frozen=True, slots=True)
class RuleSpec:
    name: str
    label: str
    section: str  # config key under `alerts:`
    check: Callable[[Any, Inputs, Any], Check]
    enabled: Callable[[Any], bool] = lambda _section: True
    event: bool = False  # a top-up is an event, never a lasting problem
    threshold: Threshold | None = None
    window: Window | None = None  # budget rules: the UTC window they watch


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


def threshold_value(rule: RuleSpec, section: Any, i: Inputs) -> Decimal:
    assert rule.threshold is not None
    return i.thresholds.get(rule.threshold.key, rule.threshold.configured(section))


# ---- the checks ------------------------------------------------------------------------------


def _low_balance(cfg: LowBalanceRule, i: Inputs, state: Any) -> Check:
    if i.available_micro is None:
        return Check(None, False)
    cur = i.currency or ""
    below = parse_amount(threshold_value(LOW_BALANCE, cfg, i))
    avail = i.available_micro
    # Default margin: 10 % of the threshold in force (it may have been set from HA).
    margin = below // 10 if cfg.margin is None else cfg.margin
    return Check(
        active=avail < below,
        rearm=avail >= below + margin,
        value=format_money(avail, cur),
        threshold=format_money(below, cur),
        fired="available balance {} is below {}".format(*_distinct(avail, below, cur)),
        recovered=f"available balance is back to {format_money(avail, cur)}",
    )


def _runway(cfg: RunwayRule, i: Inputs, state: Any) -> Check:
    if i.available_micro is None or i.burn is None:
        return Check(None, False)
    below = threshold_value(RUNWAY, cfg, i)
    days = i.runway_days
    rate = format_money(int(i.burn.per_day_micro.to_integral_value()), i.currency or "")
    return Check(
        active=days is not None and days < below,
        rearm=days is None or days >= below + cfg.margin_days,
        value=None if days is None else _days(days),
        threshold=_days(below),
        fired=f"about {_days(days or Decimal(0))} days of credit left at {rate}/day",
        recovered=f"runway is back above {_days(below + cfg.margin_days)} days",
    )


def _window_spend(window: Window, i: Inputs) -> int | None:
    """The window's spend, when the figure belongs to the window `now` is in."""
    spend = i.spend_micro.get(window.api)
    # The API caches answers for up to ~60 s: just after a window starts, a figure stamped
    # with the new window may still be the old window's total. Judge it after the grace.
    fresh = (
        i.usage_at is not None
        and window.start(i.usage_at) == window.start(i.now)
        and i.usage_at - window.start(i.usage_at) >= WINDOW_GRACE
    )
    return spend if fresh else None


def _resets(window: Window, now: datetime) -> str:
    return f"resets {window.end(now):%Y-%m-%d %H:%M} UTC"


def _budget(window: Window) -> Callable[[BudgetRule, Inputs, Any], Check]:
    def check(cfg: BudgetRule, i: Inputs, state: Any) -> Check:
        limit: int = getattr(cfg, window.api)
        current = window.start(i.now).isoformat()
        new_window = state.firing and state.window != current
        spend = _window_spend(window, i)
        if spend is None:
            # Old figures belong to an earlier window: only the re-arm can be decided.
            return Check(None if not new_window else False, new_window, window=current)
        cur = i.currency or ""
        spent_text, limit_text = _distinct(spend, limit, cur)
        return Check(
            active=spend > limit,
            rearm=new_window,
            value=format_money(spend, cur),
            threshold=format_money(limit, cur),
            fired=f"spend {window.label} {spent_text} is over the {window.api} budget "
            f"of {limit_text} ({_resets(window, i.now)})",
            recovered=f"a new {window.api} budget window has started",
            window=current,
            resets_at=window.end(i.now).isoformat(),
        )

    return check


def _budget_warn(window: Window) -> Callable[[BudgetRule, Inputs, Any], Check]:
    """The `warn_at` ladder: each step once per window, only the highest of several passed at
    once, none once the budget itself is over (its own alert says more)."""

    def check(cfg: BudgetRule, i: Inputs, state: Any) -> Check:
        limit: int = getattr(cfg, window.api)
        spend = _window_spend(window, i)
        if spend is None or limit <= 0:
            return Check(None, False)
        current = window.start(i.now).isoformat()
        passed = (state.step or 0) if state.window == current else 0
        reached = max((s for s in cfg.warn_at if spend * 100 >= s * limit), default=0)
        if reached <= passed:
            return Check(None, False)
        cur = i.currency or ""
        limit_text = format_money(limit, cur)
        return Check(
            # Over budget: the step is only recorded, so it never comes late in this window.
            active=spend <= limit,
            rearm=False,
            value=format_money(spend, cur),
            threshold=f"{reached} %",
            fired=f"spend {window.label} {format_money(spend, cur)} is {spend * 100 // limit} % "
            f"of the {limit_text} {window.api} budget (the {reached} % warning; "
            f"{_resets(window, i.now)})",
            window=current,
            step=reached,
            resets_at=window.end(i.now).isoformat(),
        )

    return check


# No forecast from the start of a window: a few early requests, extrapolated over the whole
# window, would predict an overrun nearly every time. The pace counts only after this much.
FORECAST_AFTER: dict[Window, timedelta] = {
    Window.DAY: timedelta(hours=6),
    Window.WEEK: timedelta(days=1),
    Window.MONTH: timedelta(days=1),
}
_END_OF = {Window.DAY: "by midnight UTC", Window.WEEK: "by week end", Window.MONTH: "by month end"}


def _span(window: Window, elapsed: timedelta) -> str:
    """The elapsed part of the window, rounded down: "12 days", "1.5 days", "7.5 hours"."""
    unit, size = ("hour", 3600) if window is Window.DAY else ("day", 86400)
    tenths = int(elapsed.total_seconds() * 10 // size)
    number = str(Decimal(tenths) / 10).removesuffix(".0")
    return f"{number} {unit}{'' if number == '1' else 's'}"


def _budget_forecast(window: Window) -> Callable[[BudgetRule, Inputs, Any], Check]:
    """Once per window: the spend so far, at the window's own pace, passes the budget before
    the window ends."""

    def check(cfg: BudgetRule, i: Inputs, state: Any) -> Check:
        limit: int = getattr(cfg, window.api)
        spend = _window_spend(window, i)
        if spend is None or i.usage_at is None or limit <= 0 or spend > limit:
            return Check(None, False)  # over budget: the budget alert speaks
        start, end = window.start(i.usage_at), window.end(i.usage_at)
        elapsed = i.usage_at - start
        if state.window == start.isoformat() or elapsed < FORECAST_AFTER[window] or not spend:
            return Check(None, False)
        micro = timedelta(microseconds=1)
        elapsed_us, whole_us = elapsed // micro, (end - start) // micro
        projected = spend * whole_us // elapsed_us  # exact integers, rounded down
        if projected <= limit:
            return Check(None, False)
        # At the same pace the spend reaches the budget after elapsed × limit / spend.
        passes = start + timedelta(microseconds=elapsed_us * limit // spend)
        when = f"{passes:%H:%M} UTC" if window is Window.DAY else f"{passes:%Y-%m-%d}"
        cur = i.currency or ""
        return Check(
            active=True,
            rearm=False,
            value=format_money(projected, cur),
            threshold=format_money(limit, cur),
            fired=f"on pace to pass the {format_money(limit, cur)} {window.api} budget around "
            f"{when} (projected {format_money(projected, cur)} {_END_OF[window]} at the pace "
            f"of the first {_span(window, elapsed)}; {_resets(window, i.now)})",
            window=start.isoformat(),
            resets_at=end.isoformat(),
        )

    return check


def _api_down(cfg: ApiDownRule, i: Inputs, state: Any) -> Check:
    if i.down_for is None:
        return Check(None, False)
    minutes = int(i.down_for // 60)
    return Check(
        active=i.down_for >= cfg.after,
        rearm=i.api_status == "ok",
        value=f"{minutes} min",
        threshold=f"{int(cfg.after // 60)} min",
        fired=f"no successful poll for {minutes} min (last error: {i.api_status})",
        recovered="polling works again",
    )


def _auth_failed(cfg: SimpleRule, i: Inputs, state: Any) -> Check:
    if i.api_status is None:
        return Check(None, False)
    return Check(
        active=i.api_status == "auth_failed",
        rearm=i.api_status == "ok",
        value=i.api_status,
        fired="the API key was rejected (revoked or wrong): update it to resume monitoring",
        recovered="the API key works again",
    )


def _topup(cfg: TopupRule, i: Inputs, state: Any) -> Check:
    if i.balance_micro is None or i.prev_balance_micro is None:
        return Check(None, False)
    # Spend only lowers the balance: a rise beyond what was spent meanwhile is money added.
    # The balance itself must rise: /credits and /usage are cached separately, so the spend
    # counter can run ahead of the balance, and a spend-adjusted figure alone would invent
    # top-ups. The spend since the last sample is added back only to report the amount.
    if i.balance_micro - i.prev_balance_micro <= cfg.min_amount:
        return Check(None, False)
    added = i.balance_micro - i.prev_balance_micro + (i.spend_since_prev_micro or 0)
    cur = i.currency or ""
    return Check(
        active=True,
        rearm=False,
        value=format_money(added, cur),
        fired=f"top-up of about {format_money(added, cur)} "
        f"(balance now {format_money(i.balance_micro, cur)})",
    )


# A spike re-arms once the window's spend is at most this share of the level that fires it.
SPIKE_REARM = Decimal("0.8")


def _per(seconds: float) -> str:
    """A spike window in words: 'hour', '30 min', '2 h', 'day'."""
    s = int(seconds)
    if s in (3600, 86400):
        return "hour" if s == 3600 else "day"
    if s % 3600 == 0:
        return f"{s // 3600} h"
    return f"{s // 60} min" if s % 60 == 0 else f"{s} s"


def _baseline(seconds: int) -> str:
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{_days(Decimal(seconds) / 86400).removesuffix('.0')} days"


def _spike(cfg: SpikeRule, i: Inputs, state: Any) -> Check:
    f = i.spike
    if f is None:
        return Check(None, False)
    cur = i.currency or ""
    factor = threshold_value(SPIKE, cfg, i)
    over = Decimal(int(cfg.over))
    # Exact, without dividing: spend per window at the baseline's pace is base × over / seconds,
    # so every side is multiplied by the baseline's seconds.
    recent = Decimal(f.recent_micro) * f.base_seconds
    level = max(factor * f.base_micro * over, Decimal(cfg.min_spend) * f.base_seconds)
    average = Decimal(f.base_micro) * over / f.base_seconds
    per = _per(cfg.over)
    spent = format_money(f.recent_micro, cur)
    if f.base_micro:
        ratio = _days(Decimal(f.recent_micro) / average)
        fired = (
            f"spend in the last {per} {spent} is {ratio} × the average of "
            f"{format_money(int(average.to_integral_value()), cur)} per {per} over the previous "
            f"{_baseline(f.base_seconds)} (alert above {factor} ×)"
        )
    else:
        fired = f"spend in the last {per} {spent} after no spend in the previous " + _baseline(
            f.base_seconds
        )
    return Check(
        active=recent > level,
        rearm=recent <= level * SPIKE_REARM,
        value=spent,
        threshold=format_money(int((level / f.base_seconds).to_integral_value()), cur),
        fired=fired,
        recovered=f"spend in the last {per} is back to {spent}",
    )


# ---- the registry ----------------------------------------------------------------------------

SECTIONS: dict[str, type[RuleCommon]] = {
    "low_balance": LowBalanceRule,
    "runway": RunwayRule,
    "budget": BudgetRule,
    "api_down": ApiDownRule,
    "auth_failed": SimpleRule,
    "topup": TopupRule,
    "spike": SpikeRule,
}

LOW_BALANCE = RuleSpec(
    "low_balance",
    "Low balance",
    "low_balance",
    _low_balance,
    threshold=Threshold(
        key="low_balance_below",
        name="Low balance threshold",
        unit=CURRENCY,
        low=Decimal(0),
        high=Decimal(1_000_000),
        step=Decimal("0.01"),
        icon="mdi:wallet-outline",
        money=True,
        configured=lambda s: Decimal(s.below) / MICRO_PER_UNIT,
    ),
)
RUNWAY = RuleSpec(
    "runway",
    "Runway",
    "runway",
    _runway,
    threshold=Threshold(
        key="runway_below_days",
        name="Runway threshold",
        unit="d",
        low=Decimal(0),
        high=RUNWAY_MAX_DAYS,
        step=Decimal("0.5"),
        icon="mdi:timer-alert-outline",
        money=False,
        configured=lambda s: s.below_days,
    ),
)

SPIKE = RuleSpec(
    "spike",
    "Spend spike",
    "spike",
    _spike,
    threshold=Threshold(
        key="spike_factor",
        name="Spike factor",
        unit="×",
        low=Decimal(1),
        high=SPIKE_MAX_FACTOR,
        step=Decimal("0.1"),
        icon="mdi:chart-bell-curve-cumulative",
        money=False,
        configured=lambda s: s.factor,
    ),
)


def _budget_spec(window: Window, label: str) -> RuleSpec:
    # A budget of 0 means "any spend", so only an absent amount leaves the rule off.
    return RuleSpec(
        f"budget_{window.api}",
        label,
        "budget",
        _budget(window),
        enabled=lambda s: getattr(s, window.api) is not None,
        window=window,
    )


def _budget_extras() -> tuple[RuleSpec, ...]:
    """Per window, the `warn_at` ladder and the overrun forecast: events (a notice each, no
    binary sensor of their own) that notify at most once per step or window."""
    out: list[RuleSpec] = []
    for window, label in (
        (Window.DAY, "Daily"),
        (Window.WEEK, "Weekly"),
        (Window.MONTH, "Monthly"),
    ):

        def warn_on(s: BudgetRule, w: Window = window) -> bool:
            limit = getattr(s, w.api)
            return limit is not None and limit > 0 and bool(s.warn_at)

        def forecast_on(s: BudgetRule, w: Window = window) -> bool:
            limit = getattr(s, w.api)
            return limit is not None and limit > 0 and s.forecast

        out.append(
            RuleSpec(
                f"budget_{window.api}_warn",
                f"{label} budget warning",
                "budget",
                _budget_warn(window),
                enabled=warn_on,
                event=True,
                window=window,
            )
        )
        out.append(
            RuleSpec(
                f"budget_{window.api}_forecast",
                f"{label} budget forecast",
                "budget",
                _budget_forecast(window),
                enabled=forecast_on,
                event=True,
                window=window,
            )
        )
    return tuple(out)


RULES: tuple[RuleSpec, ...] = (
    LOW_BALANCE,
    RUNWAY,
    _budget_spec(Window.DAY, "Daily budget"),
    _budget_spec(Window.WEEK, "Weekly budget"),
    _budget_spec(Window.MONTH, "Monthly budget"),
    RuleSpec("api_down", "API down", "api_down", _api_down),
    RuleSpec("auth_failed", "Key rejected", "auth_failed", _auth_failed),
    RuleSpec("topup", "Top-up", "topup", _topup, event=True),
    *_budget_extras(),
    SPIKE,
)
BY_NAME: dict[str, RuleSpec] = {r.name: r for r in RULES}
THRESHOLDS: dict[str, tuple[RuleSpec, Threshold]] = {
    r.threshold.key: (r, r.threshold) for r in RULES if r.threshold is not None
}


# ---- the `alerts:` config section, generated from the registry ---------------------------------


def _flag(value: Any) -> Any:
    """`true` switches a rule on with its defaults, `false` off."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


S = TypeVar("S", bound=RuleCommon)


class AlertsBase(StrictModel):
    def get(self, model: type[S]) -> S | None:
        """A section by its model, typed: `alerts.get(LowBalanceRule)`."""
        for name, section_model in SECTIONS.items():
            if section_model is model:
                found = getattr(self, name)
                return found if isinstance(found, model) else None
        raise KeyError(model.__name__)

    def section(self, name: str) -> RuleCommon | None:
        found = getattr(self, name)
        assert found is None or isinstance(found, RuleCommon)
        return found

    def rules(self) -> tuple[RuleSpec, ...]:
        """The enabled rules, in registry order."""
        out = []
        for rule in RULES:
            section = self.section(rule.section)
            if section is not None and rule.enabled(section):
                out.append(rule)
        return tuple(out)

    def rule_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules())

    def common(self, rule: str) -> RuleCommon:
        found = self.section(BY_NAME[rule].section)
        assert found is not None
        return found


if TYPE_CHECKING:
    AlertsConfig = AlertsBase
else:
    AlertsConfig = create_model(
        "AlertsConfig",
        __base__=AlertsBase,
        **{
            name: (Annotated[model | None, BeforeValidator(_flag)], None)
            for name, model in SECTIONS.items()
        },
    )
