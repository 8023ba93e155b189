"""Rule evaluation: pure functions from (inputs, previous state) to (new state, notices).

Each rule fires once per crossing. Hysteresis: a firing rule re-arms only after the value has
recovered past the threshold by the margin (budgets: at the next window start), so a value
wobbling around a threshold notifies once. Optional reminders while firing, and an optional
"recovered" notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from .forecast import Burn
from .notice import Notice, NoticeKind
from .rules import AlertsBase, Check, Inputs, RuleSpec


@dataclass(frozen=True, slots=True)
class RuleState:
    firing: bool = False
    since: datetime | None = None
    last_notified: datetime | None = None
    window: str | None = None  # budgets: start of the window the rule fired in
    seq: int = 0  # notices issued so far: gives every notice a stable id
    # `last_notified` on the monotonic clock (reminders are measured on it). Not stored: it
    # means nothing in another process; it changes only with `last_notified`.
    notified_mono: float | None = field(default=None, compare=False)
    step: int | None = None  # budget warnings: the highest step passed in `window`


@dataclass(frozen=True, slots=True)
class AlertStatus:
    """What Home Assistant shows of an account's alerts (the state document reads it)."""

    rules: tuple[str, ...] = ()
    active: Mapping[str, datetime] = field(default_factory=dict)  # firing rule -> since
    burn: Burn | None = None
    runway_days: Decimal | None = None
    thresholds: Mapping[str, Decimal] = field(default_factory=dict)  # in force, by key
    # Budget rule -> the highest `warn_at` step passed in its current window.
    steps: Mapping[str, int] = field(default_factory=dict)
    spend_total_micro: int | None = None  # lifetime spend (core/lifetime.py); None: no poll yet


def _notice(
    rule: RuleSpec, kind: NoticeKind, text: str, check: Check, cfg: AlertsBase, i: Inputs, seq: int
) -> Notice:
    common = cfg.common(rule.name)
    title = f"CrossModel {i.account_name}"
    if kind == "recovered":
        title += " (recovered)"
    elif kind == "reminder":
        title += " (reminder)"
    return Notice(
        # `seq` keeps the id stable when the same evaluation is retried; the install id
        # keeps it unique across databases (a new volume, a reset, a second bridge).
        id=f"{i.account_id}.{rule.name}.{seq}" + (f".{i.install_id}" if i.install_id else ""),
        account_id=i.account_id,
        rule=rule.name,
        kind=kind,
        title=title,
        message=f"{title}: {text}",
        value=check.value,
        threshold=check.threshold,
        at=i.now,
        priority="default" if kind == "recovered" else common.priority,
        tags=common.tags,
        step=check.step,
        resets_at=check.resets_at,
    )


def warn_steps(
    rules: tuple[RuleSpec, ...], states: Mapping[str, RuleState], now: datetime
) -> dict[str, int]:
    """Budget rule -> the highest warning step passed in the window `now` is in."""
    out: dict[str, int] = {}
    for rule in rules:
        state = states.get(f"{rule.name}_warn")
        if rule.window is None or rule.event or state is None or not state.step:
            continue
        if state.window == rule.window.start(now).isoformat():
            out[rule.name] = state.step
    return out


def evaluate(
    cfg: AlertsBase, i: Inputs, states: Mapping[str, RuleState]
) -> tuple[dict[str, RuleState], list[Notice]]:
    """Run every enabled rule once; return the changed states and the notices to send."""
    changed: dict[str, RuleState] = {}
    notices: list[Notice] = []
    for rule in cfg.rules():
        state = states.get(rule.name, RuleState())
        section = cfg.section(rule.section)
        if rule.event:
            new, out = _event(rule, section, cfg, i, state)
        else:
            new, out = _step(rule, section, cfg, i, state)
        if new != state:
            changed[rule.name] = new
        notices += out
    return changed, notices


def _event(
    rule: RuleSpec, section: object, cfg: AlertsBase, i: Inputs, state: RuleState
) -> tuple[RuleState, list[Notice]]:
    check = rule.check(section, i, state)
    if check.window is not None:
        # Once-per-window events (budget warnings) remember the window and step, also when
        # silent, so a step passed while over budget never comes late.
        state = replace(state, window=check.window, step=check.step)
    if not check.active:
        return state, []
    seq = state.seq + 1
    notice = _notice(rule, "event", check.fired, check, cfg, i, seq)
    return replace(state, seq=seq, last_notified=i.now, notified_mono=i.monotonic), [notice]


def _step(
    rule: RuleSpec, section: object, cfg: AlertsBase, i: Inputs, state: RuleState
) -> tuple[RuleState, list[Notice]]:
    check = rule.check(section, i, state)
    common = cfg.common(rule.name)
    if not state.firing:
        if check.active:
            seq = state.seq + 1
            notice = _notice(rule, "fired", check.fired, check, cfg, i, seq)
            return RuleState(True, i.now, i.now, check.window, seq, i.monotonic), [notice]
        return state, []
    if check.rearm:
        new = replace(state, firing=False, since=None, window=None)
        out: list[Notice] = []
        if common.notify_recovered:
            seq = state.seq + 1
            out.append(_notice(rule, "recovered", check.recovered, check, cfg, i, seq))
            new = replace(new, seq=seq, last_notified=i.now, notified_mono=i.monotonic)
        if check.window is not None and check.active:
            # A budget re-armed by a new window may already be over again in that window.
            again, more = _step(rule, section, cfg, i, new)
            return again, out + more
        return new, out
    elapsed = _since_notified(state, i)
    if (
        common.repeat_every
        and check.active
        and elapsed is not None
        and elapsed >= common.repeat_every
    ):
        seq = state.seq + 1
        notice = _notice(rule, "reminder", check.fired, check, cfg, i, seq)
        new = replace(state, last_notified=i.now, notified_mono=i.monotonic, seq=seq)
        return new, [notice]
    return state, []


def _since_notified(state: RuleState, i: Inputs) -> float | None:
    """Seconds since the rule's last notice, on the monotonic clock when it is known (the
    engine anchors restored states at start), so a step of the wall clock neither hurries
    nor holds back a reminder. Wall time only for a state no engine anchored."""
    if state.notified_mono is not None and i.monotonic is not None:
        return i.monotonic - state.notified_mono
    if state.last_notified is None:
        return None
    return (i.now - state.last_notified).total_seconds()
