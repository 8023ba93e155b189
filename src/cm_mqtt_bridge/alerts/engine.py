"""Glue between a poll and the alert rules: history samples, burn rate, thresholds set from
Home Assistant, and the atomic rule-state + outbox commit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation

from ..clock import Clock
from ..config import AccountConfig
from ..money import MICRO_PER_UNIT, parse_amount
from ..snapshot import WINDOWS, UsageState
from ..state import AccountView
from .burn import WINDOW, Sample, burn_rate, runway_days, spent_since
from .rules import AlertStatus, Inputs, Notice, RuleState, evaluate
from .store import Store

log = logging.getLogger(__name__)

# Thresholds Home Assistant may change (number entities): key -> (min, max) in their unit.
SETTABLE = {
    "low_balance_below": (Decimal(0), Decimal(1_000_000)),
    "runway_below_days": (Decimal(0), Decimal(365)),
}


class ThresholdError(ValueError):
    pass


class AlertEngine:
    def __init__(
        self, store: Store, accounts: Sequence[AccountConfig], clock: Clock, channels: list[str]
    ) -> None:
        self.store = store
        self.clock = clock
        self.channels = channels
        self.started_at = clock.now()
        self._accounts = {a.id: a for a in accounts}
        self._states: dict[str, dict[str, RuleState]] = {}
        self._last: dict[str, Sample | None] = {}
        self._thresholds: dict[str, dict[str, Decimal]] = {}
        for acc in accounts:
            self._states[acc.id] = store.rule_states(acc.id)
            self._last[acc.id] = store.latest_sample(acc.id)
            self._thresholds[acc.id] = self._load_overrides(acc)

    # ---- thresholds ----------------------------------------------------------------------

    @staticmethod
    def _config_value(acc: AccountConfig, key: str) -> Decimal | None:
        if key == "low_balance_below" and acc.alerts.low_balance:
            return Decimal(acc.alerts.low_balance.below) / MICRO_PER_UNIT
        if key == "runway_below_days" and acc.alerts.runway:
            return acc.alerts.runway.below_days
        return None

    def _load_overrides(self, acc: AccountConfig) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for key, (value, config_value) in self.store.overrides(acc.id).items():
            current = self._config_value(acc, key)
            if current is None or config_value != str(current):
                # The file changed since HA set this: the file is the newer word.
                self.store.drop_override(acc.id, key)
                continue
            out[key] = Decimal(value)
        return out

    def threshold(self, account_id: str, key: str) -> Decimal | None:
        acc = self._accounts[account_id]
        return self._thresholds[account_id].get(key, self._config_value(acc, key))

    def set_threshold(self, account_id: str, key: str, raw: bytes) -> Decimal:
        """Validate and persist a threshold sent from HA; raises ThresholdError, changing
        nothing, when the payload is not acceptable."""
        acc = self._accounts[account_id]
        if key not in SETTABLE:
            raise ThresholdError(f"{key} cannot be set")
        config_value = self._config_value(acc, key)
        if config_value is None:
            raise ThresholdError(f"{key}: the rule is not enabled for account {account_id}")
        text = raw.decode("utf-8", "replace").strip()
        if len(text) > 40:
            raise ThresholdError(f"{key}: payload too long ({len(text)} characters)")
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ThresholdError(f"{key}: {text!r} is not a number") from None
        low, high = SETTABLE[key]
        if not value.is_finite() or not low <= value <= high:
            raise ThresholdError(f"{key}: {text!r} is outside {low}..{high}")
        if key == "low_balance_below":
            try:
                value = Decimal(parse_amount(value)) / MICRO_PER_UNIT
            except ValueError as exc:
                raise ThresholdError(f"{key}: {exc}") from None
        self.store.set_override(account_id, key, str(value), str(config_value))
        self._thresholds[account_id][key] = value
        return value

    # ---- evaluation ----------------------------------------------------------------------

    def observe(
        self,
        account_id: str,
        view: AccountView,
        *,
        last_success: datetime | None,
        record: bool,
    ) -> tuple[AlertStatus, list[Notice]]:
        """Evaluate the account's rules after a poll; `record` adds a history sample (a full
        poll with fresh usage). Notices are already in the outbox when this returns."""
        acc = self._accounts[account_id]
        now = self.clock.now()
        prev = self._last[account_id]
        snap = view.snapshot
        sample: Sample | None = None
        if (
            record
            and snap is not None
            and view.usage is not None
            and view.usage_at == (snap.fetched_at)
            and view.usage_state == UsageState.OK
        ):
            month = view.usage.monthly.cost_micro
            total = (prev.spent_total_micro if prev else 0) + spent_since(
                prev, snap.fetched_at, month
            )
            sample = Sample(
                snap.fetched_at,
                snap.balance_micro,
                snap.holds_micro,
                view.usage.daily.cost_micro,
                view.usage.weekly.cost_micro,
                month,
                total,
            )
            if prev is not None and _same_figures(prev, sample):
                sample = None  # nothing moved: history keeps one row per change
        latest = sample or prev
        burn = burn_rate(latest, self.store.latest_sample(account_id, now - WINDOW), now)
        available = snap.available_micro if snap else None
        runway = runway_days(available, burn) if available is not None else None
        low_below = self.threshold(account_id, "low_balance_below")
        runway_below = self.threshold(account_id, "runway_below_days")
        usage = view.usage
        inputs = Inputs(
            account_id=account_id,
            account_name=acc.name,
            now=now,
            currency=snap.currency if snap else None,
            balance_micro=snap.balance_micro if snap else None,
            available_micro=available,
            spend_micro={w: getattr(usage, w).cost_micro for w in WINDOWS} if usage else {},
            usage_at=view.usage_at,
            api_status=view.api_status,
            last_success=last_success,
            started_at=self.started_at,
            burn=burn,
            runway_days=runway,
            prev_balance_micro=prev.balance_micro if sample and prev else None,
            spend_since_prev_micro=sample.spent_total_micro - prev.spent_total_micro
            if sample and prev
            else None,
            low_balance_below=parse_amount(low_below) if low_below is not None else None,
            runway_below_days=runway_below,
        )
        states = self._states[account_id]
        changed, notices = evaluate(acc.alerts, inputs, states)
        self.store.commit(account_id, changed, notices, self.channels, now, sample)
        states.update(changed)
        if sample is not None:
            self._last[account_id] = sample
        for n in notices:
            log.info("%s: alert %s %s: %s", account_id, n.rule, n.kind, n.message)
        status = AlertStatus(
            rules=acc.alerts.rule_names(),
            active={r: s.since or now for r, s in states.items() if s.firing},
            burn=burn,
            runway_days=runway,
            low_balance_below=parse_amount(low_below) if low_below is not None else None,
            runway_below_days=runway_below,
        )
        return status, notices


def _same_figures(a: Sample, b: Sample) -> bool:
    return (
        a.balance_micro,
        a.holds_micro,
        a.spend_day_micro,
        a.spend_week_micro,
        a.spend_month_micro,
    ) == (
        b.balance_micro,
        b.holds_micro,
        b.spend_day_micro,
        b.spend_week_micro,
        b.spend_month_micro,
    )
