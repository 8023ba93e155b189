"""Glue between a poll and the alert rules: history samples, burn rate, thresholds set from
Home Assistant, and the atomic rule-state + outbox commit.

In-memory state changes only after the database has committed, so a failed commit (a locked
database) loses nothing: the same observation, evaluated again, gives the same notices. A
commit that timed out may still land later (a stalled disk that thaws): the account's state
is then read back from the database before its next evaluation, so it is not fired twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from ..core.clock import Clock
from ..core.evaluate import AlertStatus, RuleState, evaluate, warn_steps
from ..core.forecast import WINDOW, burn_rate, runway_days
from ..core.lifetime import SpendTotal, advance
from ..core.model import Window
from ..core.money import MICRO_PER_UNIT, parse_amount
from ..core.notice import Notice
from ..core.rules import THRESHOLDS, AlertsBase, Inputs, RuleSpec, SpikeRule
from ..core.samples import Sample, next_sample
from ..core.spike import BASELINE, SpikeFigures, spike_figures
from ..core.view import AccountView
from ..store.db import AsyncStore, Store, StoreError

log = logging.getLogger(__name__)


_Loaded = tuple[dict[str, RuleState], Sample | None, dict[str, Decimal]]


class ThresholdError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AlertAccount:
    id: str
    name: str
    alerts: AlertsBase
    # Looked up once: each evaluation shows them.
    rules: tuple[RuleSpec, ...] = field(init=False)
    rule_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", self.alerts.rules())
        object.__setattr__(self, "rule_names", tuple(r.name for r in self.rules))


class Anchors:
    """The history samples the rules measure from, cached. An anchor (the last sample at or
    before a time: the burn rate's `now - 7 d`, the spike rule's window and baseline starts)
    changes only when that time passes the next sample: cached with that time, it costs no
    database call on most polls. The oldest sample changes only when history is thinned."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        # By account, then by anchor (e.g. "burn"): a new sample touches its account's only.
        self._anchors: dict[str, dict[str, tuple[Sample | None, datetime | None]]] = {}
        self._oldest: dict[str, Sample | None] = {}

    async def anchor(self, account_id: str, which: str, at: datetime) -> Sample | None:
        cached = self._anchors.get(account_id, {}).get(which)
        if (
            cached is not None
            and (cached[1] is None or at < cached[1])
            and (cached[0] is None or cached[0].at <= at)
        ):
            return cached[0]
        found = await self._store.call(Store.anchor, account_id, at)
        self._anchors.setdefault(account_id, {})[which] = found
        return found[0]

    async def oldest(self, account_id: str) -> Sample | None:
        if account_id not in self._oldest:
            self._oldest[account_id] = await self._store.call(Store.oldest_sample, account_id)
        return self._oldest[account_id]

    def added(self, account_id: str, sample: Sample) -> None:
        """A new sample: the anchors with no next sample yet have one now."""
        if self._oldest.get(account_id, sample) is None:
            self._oldest[account_id] = sample  # the first sample ever
        anchors = self._anchors.get(account_id, {})
        for which, (found, next_at) in anchors.items():
            if next_at is None:
                anchors[which] = (found, sample.at)

    def forget(self, account_id: str) -> None:
        self._oldest.pop(account_id, None)
        self._anchors.pop(account_id, None)

    def clear(self) -> None:
        self._anchors.clear()
        self._oldest.clear()


class AlertEngine:
    def __init__(
        self, store: AsyncStore, accounts: Sequence[AlertAccount], clock: Clock, channels: list[str]
    ) -> None:
        self.store = store
        self.clock = clock
        self.channels = channels
        self.started_at = clock.now()  # shown as "since" of a restored alert
        # The api_down grace after a start, on the monotonic clock.
        self.started_mono = clock.monotonic()
        self._accounts = {a.id: a for a in accounts}
        self._states: dict[str, dict[str, RuleState]] = {a.id: {} for a in accounts}
        self._last: dict[str, Sample | None] = {a.id: None for a in accounts}
        self._thresholds: dict[str, dict[str, Decimal]] = {a.id: {} for a in accounts}
        self._history = Anchors(store)
        self._totals: dict[str, SpendTotal | None] = {a.id: None for a in accounts}
        # Accounts whose state must be read from the database before they are evaluated:
        # all at start, and one whose commit failed (it may have landed after all).
        self._unloaded: set[str] = set(self._accounts)
        self.install_id = ""

    async def load(self) -> bool:
        """Rule states, the last sample and thresholds set from HA, from the database. False
        when the store does not answer (locked): each account then loads before it is evaluated."""
        for acc in self._accounts.values():
            try:
                await self._load_account(acc.id)
            except StoreError:
                return False
        return True

    async def _load_account(self, account_id: str) -> None:
        loaded = await self.store.call(self._load, self._accounts[account_id])
        states, self._last[account_id], self._thresholds[account_id] = loaded
        known = self._states[account_id]
        self._states[account_id] = {r: self._kept(known.get(r), s) for r, s in states.items()}
        self._history.forget(account_id)
        self._totals[account_id] = await self.store.call(Store.spend_total, account_id)
        self._unloaded.discard(account_id)

    def _kept(self, known: RuleState | None, state: RuleState) -> RuleState:
        """A reload after a failed commit: a last notice this process already knows keeps
        its monotonic time; only one it has not seen (the commit landed after all, or the
        first load) is anchored on the wall clock."""
        if (
            known is not None
            and known.notified_mono is not None
            and known.last_notified == state.last_notified
        ):
            return replace(state, notified_mono=known.notified_mono)
        return self._anchored(state)

    def _anchored(self, state: RuleState) -> RuleState:
        """A restored state's last notice on this process's monotonic clock. Only its wall
        time was stored, so the wall clock is read once, now, and never again: a reminder
        overdue by that reading goes at once, and a last notice the clock puts in the future
        (a Pi booted with an old time) counts as just sent, so the reminder comes at most
        `repeat_every` after the start, whatever NTP does to the clock later."""
        if state.last_notified is None:
            return state
        elapsed = max(0.0, (self.clock.now() - state.last_notified).total_seconds())
        return replace(state, notified_mono=self.clock.monotonic() - elapsed)

    def _load(self, store: Store, acc: AlertAccount) -> _Loaded:
        self.install_id = store.install_id
        overrides: dict[str, Decimal] = {}
        for key, (value, config_value) in store.overrides(acc.id).items():
            current = self._configured(acc, key)
            try:
                parsed = Decimal(value)
            except (InvalidOperation, TypeError):
                parsed = None
            if current is None or config_value != str(current) or parsed is None:
                # The file changed since HA set this: the file is the newer word. (Or the row
                # is not one we wrote: the file's value is the one we can trust.)
                store.drop_override(acc.id, key)
                continue
            overrides[key] = parsed
        return store.rule_states(acc.id), store.latest_sample(acc.id), overrides

    # ---- thresholds ----------------------------------------------------------------------

    @staticmethod
    def _configured(acc: AlertAccount, key: str) -> Decimal | None:
        rule, threshold = THRESHOLDS[key]
        section = acc.alerts.section(rule.section)
        return None if section is None else threshold.configured(section)

    def thresholds(self, account_id: str) -> dict[str, Decimal]:
        """Every threshold in force for the account's enabled rules."""
        acc = self._accounts[account_id]
        out: dict[str, Decimal] = {}
        for key in THRESHOLDS:
            configured = self._configured(acc, key)
            if configured is not None:
                out[key] = self._thresholds[account_id].get(key, configured)
        return out

    def parse_threshold(self, account_id: str, key: str, raw: bytes) -> Decimal:
        """A threshold sent from HA, validated; ThresholdError (nothing changes) if not."""
        acc = self._accounts[account_id]
        if key not in THRESHOLDS:
            raise ThresholdError(f"{key} cannot be set")
        _rule, spec = THRESHOLDS[key]
        configured = self._configured(acc, key)
        if configured is None:
            raise ThresholdError(f"{key}: the rule is not enabled for account {account_id}")
        text = raw.decode("utf-8", "replace").strip()
        if len(text) > 40:
            raise ThresholdError(f"{key}: payload too long ({len(text)} characters)")
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ThresholdError(f"{key}: {text!r} is not a number") from None
        if not value.is_finite() or not spec.low <= value <= spec.high:
            raise ThresholdError(f"{key}: {text!r} is outside {spec.low}..{spec.high}")
        if spec.money:
            try:
                value = Decimal(parse_amount(value)) / MICRO_PER_UNIT
            except ValueError as exc:
                raise ThresholdError(f"{key}: {exc}") from None
        return value

    async def set_threshold(self, account_id: str, key: str, value: Decimal) -> None:
        """Persist and apply a parsed threshold; StoreError changes nothing."""
        configured = self._configured(self._accounts[account_id], key)
        try:
            await self.store.call(Store.set_override, account_id, key, str(value), str(configured))
        except StoreError:
            # A save that timed out may still land: read the account back before its next
            # evaluation, so the bridge acts on what the database holds.
            self._unloaded.add(account_id)
            raise
        self._thresholds[account_id][key] = value

    # ---- evaluation ----------------------------------------------------------------------

    def history_changed(self) -> None:
        """History was thinned: anchors are read again."""
        self._history.clear()

    async def _spike(
        self, acc: AlertAccount, latest: Sample | None, now: datetime
    ) -> SpikeFigures | None:
        """The spike rule's figures from history; None when the rule is off."""
        cfg = acc.alerts.get(SpikeRule)
        if cfg is None or latest is None:
            return None
        start = now - timedelta(seconds=cfg.over)
        at_start = await self._history.anchor(acc.id, "window", start)
        base = await self._history.anchor(acc.id, "baseline", start - BASELINE)
        if base is None:
            base = await self._history.oldest(acc.id)
        return spike_figures(latest, at_start, base, start)

    def status(self, account_id: str) -> AlertStatus:
        """What is known without evaluating (at start, from the database)."""
        acc = self._accounts[account_id]
        states = self._states[account_id]
        return AlertStatus(
            rules=acc.rule_names,
            active={r: s.since or self.started_at for r, s in states.items() if s.firing},
            thresholds=self.thresholds(account_id),
            steps=warn_steps(acc.rules, states, self.clock.now()),
            spend_total_micro=self._spend_total(account_id),
        )

    def _spend_total(self, account_id: str) -> int | None:
        total = self._totals[account_id]
        return None if total is None else total.total_micro

    async def observe(
        self, account_id: str, seen: AccountView, last_success: float | None, *, record: bool
    ) -> tuple[AlertStatus, list[Notice]]:
        """Evaluate the rules on the view (`last_success`: monotonic, this process); `record`
        adds a history sample. Notices are in the outbox when this returns, or StoreError."""
        acc = self._accounts[account_id]
        if account_id in self._unloaded:
            await self._load_account(account_id)
        now = self.clock.now()
        mono = self.clock.monotonic()
        # No good poll in this process yet (a restart): the outage counts from the start.
        since = self.started_mono if last_success is None else last_success
        prev = self._last[account_id]
        snap = seen.snapshot
        sample: Sample | None = None
        total: SpendTotal | None = None
        if record and snap is not None and seen.usage is not None and seen.usage_current:
            sample = next_sample(prev, snap, seen.usage)
            total = advance(
                self._totals[account_id], snap.fetched_at, seen.usage.monthly.cost_micro
            )
        latest = sample or prev
        anchor = await self._history.anchor(account_id, "burn", now - WINDOW)
        burn = burn_rate(latest, anchor, now)
        available = snap.available_micro if snap else None
        runway = runway_days(available, burn) if available is not None else None
        thresholds = self.thresholds(account_id)
        usage = seen.usage
        inputs = Inputs(
            account_id=account_id,
            account_name=acc.name,
            now=now,
            currency=snap.currency if snap else None,
            balance_micro=snap.balance_micro if snap else None,
            available_micro=available,
            spend_micro={w.api: usage.get(w).cost_micro for w in Window} if usage else {},
            usage_at=seen.usage_at,
            api_status=seen.api_status,
            down_for=max(0.0, mono - since),
            monotonic=mono,
            burn=burn,
            runway_days=runway,
            prev_balance_micro=prev.balance_micro if sample and prev else None,
            spend_since_prev_micro=sample.spent_total_micro - prev.spent_total_micro
            if sample and prev
            else None,
            thresholds=thresholds,
            install_id=self.install_id,
            spike=await self._spike(acc, latest, now),
        )
        states = self._states[account_id]
        changed, notices = evaluate(acc.alerts, inputs, states)
        if changed or notices or sample is not None or total is not None:
            channels = self.channels
            try:
                await self.store.call(
                    Store.commit, account_id, changed, notices, channels, now, sample, total
                )
            except StoreError:
                self._unloaded.add(account_id)
                raise
        states.update(changed)
        if total is not None:
            self._totals[account_id] = total
        if sample is not None:
            self._last[account_id] = sample
            self._history.added(account_id, sample)
        for n in notices:
            log.info("%s: alert %s %s: %s", account_id, n.rule, n.kind, n.message)
        status = AlertStatus(
            rules=acc.rule_names,
            active={r: s.since or now for r, s in states.items() if s.firing},
            burn=burn,
            runway_days=runway,
            thresholds=thresholds,
            steps=warn_steps(acc.rules, states, now),
            spend_total_micro=self._spend_total(account_id),
        )
        return status, notices
