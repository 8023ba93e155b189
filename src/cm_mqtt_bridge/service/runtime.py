"""One account at run time: its scheduler, its view and what it publishes.

The poller fetches; every outcome goes through the pure reducer (view.py), then the alert
engine, then `render` into the publisher. Staleness and retries of alert bookkeeping run on
their own timer (`watch`), whatever a poll is doing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ..config.settings import AccountConfig, PollConfig
from ..core.clock import Clock, backoff, format_until, wait_event
from ..core.model import Snapshot, Window
from ..core.money import format_money
from ..core.timings import DEFAULTS, Timings
from ..core.view import AccountView, AlertsEvaluated, Event, Polled, PollFailed, WentStale, reduce
from ..crossmodel.client import ApiError, CrossModelClient
from ..crossmodel.fetch import fetch_snapshot
from ..ha.discovery import Announced, device_payload
from ..ha.entities import entities_for
from ..ha.render import dumps, render
from ..ha.topics import Kind, Topics
from ..store.db import StoreError
from .alerting import AlertEngine, Observation, ThresholdError
from .metrics import Metrics
from .publisher import Publisher

log = logging.getLogger(__name__)
MAX_RETRY_AFTER = 3600.0
EVALUATION_GRACE = 0.25  # seconds


class AccountRuntime:
    def __init__(
        self,
        cfg: AccountConfig,
        client: CrossModelClient,
        *,
        poll: PollConfig,
        clock: Clock,
        rng: random.Random,
        topics: Topics,
        publisher: Publisher,
        metrics: Metrics,
        engine: AlertEngine | None,
        qos: int,
        concurrency: asyncio.Semaphore,
        on_notices: Callable[[], None] = lambda: None,
        timings: Timings = DEFAULTS,
        spread: bool = False,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.client = client
        self._poll = poll
        self._clock = clock
        self._rng = rng
        self._topics = topics
        self._publisher = publisher
        self._metrics = metrics
        self._engine = engine
        self._qos = qos
        self._sem = concurrency
        self._on_notices = on_notices
        self._alert_retry = timings.retry_backoff
        self._grace = timings.evaluation_grace
        self._spread = spread
        self.rules = cfg.alerts.rules()
        self.entities = entities_for(self.rules)
        self.view = AccountView(alerts=engine.status(cfg.id) if engine else None)
        self.doc: dict[str, Any] | None = None  # the state document published last
        self._rendered_key: tuple[object, ...] | None = None
        self.currency: str | None = None
        self.removed: dict[str, str] = {}  # components to remove in the next discovery
        self.polls = 0
        self.last_success: float | None = None  # monotonic time of the last good /credits
        self.last_poll_start: float | None = None
        self.not_before: float | None = None  # Retry-After: no request before this
        self.usage_not_before: float | None = None  # Retry-After of /usage alone
        self.refresh_requested = asyncio.Event()
        self._announce = True
        self._changed = asyncio.Event()  # wakes `watch`
        self._eval_lock = asyncio.Lock()
        self._alerts_owed: bool | None = None  # an evaluation to retry (its `record` flag)
        self._alerts_retry_at: float | None = None
        self._alerts_failures = 0
        self._retrying: asyncio.Task[None] | None = None

    # ---- scheduling ------------------------------------------------------------------------

    def refresh(self, *, announce: bool = True) -> None:
        """Poll as soon as allowed; `announce` logs when that is later (one account's
        command: the bridge-wide one logs a line of its own)."""
        self._announce = announce
        self.refresh_requested.set()

    def deferred(self) -> tuple[float, str] | None:
        """How long a refresh asked for now waits, and why; None when it runs at once."""
        now = self._clock.monotonic()
        spacing = retry_after = 0.0
        if self.last_poll_start is not None:
            spacing = self.last_poll_start + self._poll.min_refresh_interval - now
        if self.not_before is not None:
            retry_after = self.not_before - now
        if max(spacing, retry_after) <= 0:
            return None
        if retry_after >= spacing:
            return retry_after, "the API's Retry-After"
        return spacing, f"poll.min_refresh_interval {self._poll.min_refresh_interval:g} s"

    async def run(self) -> None:
        """Poll every interval, or sooner on a refresh, never faster than the refresh spacing
        and never inside a Retry-After window."""
        p = self._poll
        if self._spread and p.jitter and self.last_poll_start is None:
            # Several accounts: spread them so they do not poll in lockstep.
            await self._clock.sleep(self._rng.uniform(0, p.jitter))
        while True:
            await self._wait_until_allowed()
            self.refresh_requested.clear()
            self.last_poll_start = self._clock.monotonic()
            await self.poll_once()
            next_at = self.last_poll_start + p.interval + self._rng.uniform(0, p.jitter)
            timeout = max(0.0, next_at - self._clock.monotonic())
            await wait_event(self._clock, self.refresh_requested, timeout)

    async def _wait_until_allowed(self) -> None:
        # A refresh inside the spacing or a Retry-After window is deferred to its end;
        # several collapse into one.
        deferred = self.deferred()
        if deferred is None:
            return
        wait, why = deferred
        if self.refresh_requested.is_set() and self._announce:
            log.info(
                "%s: refresh deferred until %s (in %.0f s: %s)",
                self.id,
                format_until(self._clock, wait),
                wait,
                why,
            )
        await self._clock.sleep(wait)

    async def watch(self) -> None:
        """Staleness and owed alert bookkeeping, on a timer of their own."""
        try:
            await self._watch()
        finally:
            if self._retrying is not None:
                self._retrying.cancel()

    async def _watch(self) -> None:
        while True:
            self._changed.clear()
            now = self._clock.monotonic()
            deadlines: list[float] = []
            stale_at = self._stale_at()
            if self.view.fresh and stale_at is not None:
                if now >= stale_at:
                    self._went_stale()
                    continue
                deadlines.append(stale_at)
            if self._alerts_owed is not None and self._alerts_retry_at is not None:
                if now >= self._alerts_retry_at:
                    # In a task of its own: a database that makes the retry wait must not
                    # hold back the staleness deadline.
                    self._alerts_retry_at = None
                    self._retrying = asyncio.create_task(self._retry_alerts())
                    continue
                deadlines.append(self._alerts_retry_at)
            timeout = min(deadlines) - now if deadlines else 3600.0
            await wait_event(self._clock, self._changed, timeout)

    def _stale_at(self) -> float | None:
        if self.last_success is None:
            return None
        return self.last_success + self._poll.stale_after_s

    def _went_stale(self) -> None:
        log.warning(
            "%s: no good data for %d s; values now unavailable",
            self.id,
            self._poll.stale_after_s,
        )
        self._apply(WentStale())
        self.publish()

    # ---- one poll --------------------------------------------------------------------------

    async def poll_once(self) -> None:
        self.polls += 1
        started = self._clock.monotonic()
        usage_wait = None
        if self.usage_not_before is not None:
            usage_wait = self.usage_not_before - started
        try:
            # Only the requests count against the concurrency limit: the alert bookkeeping
            # after them (which may wait for the database) must not hold other accounts back.
            async with self._sem:
                snap = await fetch_snapshot(
                    self.id,
                    self.client,
                    self._clock,
                    usage_deadline=self._poll.usage_timeout,
                    on_balance=self._on_balance,
                    usage_wait=usage_wait,
                )
        except ApiError as exc:
            self._metrics.poll(self.id, exc.status, self._clock.monotonic() - started)
            await self._failed(exc)
            return
        except Exception as exc:
            # Never let a surprise end polling; the next poll tries again.
            log.exception("%s: unexpected error while polling", self.id)
            self._metrics.poll(self.id, "internal_error", self._clock.monotonic() - started)
            await self._failed(ApiError(f"internal error: {type(exc).__name__}"))
            return
        took = self._clock.monotonic() - started
        if snap.usage_retry_after is not None:
            wait = min(snap.usage_retry_after, MAX_RETRY_AFTER)
            self.usage_not_before = self._clock.monotonic() + wait
        elif usage_wait is None or usage_wait <= 0:
            self.usage_not_before = None
        self._metrics.poll(self.id, "ok", took)
        self._metrics.snapshot(snap)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: poll ok in %.0f ms: balance %s, available %s",
                self.id,
                took * 1000,
                format_money(snap.balance_micro, snap.currency),
                format_money(snap.available_micro, snap.currency),
            )
        self._succeeded(snap, partial=False)
        await self._evaluate_and_publish(record=True)

    def _on_balance(self, snap: Snapshot) -> None:
        # The balance is known while /usage is still running: publish it now.
        self._succeeded(snap, partial=True)
        self.publish()

    def _succeeded(self, snap: Snapshot, *, partial: bool) -> None:
        self.last_success = self._clock.monotonic()
        self.not_before = None
        self._apply(Polled(snap, partial))
        if snap.currency != self.currency:
            if self.currency is not None:
                log.warning(
                    "%s: currency changed from %s to %s; discovery republished with the new unit",
                    self.id,
                    self.currency,
                    snap.currency,
                )
            self.currency = snap.currency
            self.set_discovery()

    async def _failed(self, exc: ApiError) -> None:
        log.warning("%s: poll failed (%s): %s", self.id, exc.status, exc)
        if exc.retry_after is not None:
            # Honour Retry-After, but an absurd one must not stop polling (and alerts).
            wait = min(exc.retry_after, MAX_RETRY_AFTER)
            self.not_before = self._clock.monotonic() + wait
        self._apply(PollFailed(exc.status, str(exc)))
        await self._evaluate_and_publish(record=False)

    def _apply(self, event: Event) -> None:
        was_fresh = self.view.fresh
        self.view = reduce(self.view, event)
        if self.view.fresh and not was_fresh:
            # `watch` has no staleness deadline while values are not fresh: give it one.
            # (A later good poll only moves the deadline on; an early wake-up re-reads it.)
            self._changed.set()

    # ---- alerts ----------------------------------------------------------------------------

    async def _evaluate_and_publish(self, *, record: bool) -> None:
        # Values and alerts go out together; but a slow or locked alert store must not hold
        # the values back: after a moment they go first.
        early = asyncio.get_running_loop().call_later(EVALUATION_GRACE, self.publish)
        try:
            await self._evaluate(record=record)
        finally:
            early.cancel()
        self.publish()

    async def _evaluate(self, *, record: bool) -> bool:
        """Run the rules on the current view; on a store failure, owe it (retried by
        `watch`), so nothing is lost while the database is locked or read-only."""
        if self._engine is None:
            return True
        async with self._eval_lock:
            view = self.view
            seen = Observation(
                snapshot=view.snapshot,
                usage=view.usage,
                usage_at=view.usage_at,
                usage_current=view.usage_current,
                api_status=view.api_status,
                last_success=self.last_success,
            )
            record = record or bool(self._alerts_owed)
            try:
                status, notices = await self._engine.observe(self.id, seen, record=record)
            except StoreError:
                self._owe_alerts(record)
                return False
        recovered = self._alerts_owed is not None
        self._alerts_owed = None
        self._alerts_failures = 0
        self._apply(AlertsEvaluated(status))
        if notices or recovered:
            # After a failed commit, too: one that timed out may have landed after all (a
            # disk that thawed), its notices already in the outbox.
            self._on_notices()
        return True

    def _owe_alerts(self, record: bool) -> None:
        delay = backoff(*self._alert_retry, self._alerts_failures)
        self._alerts_failures += 1
        self._alerts_owed = record
        self._alerts_retry_at = self._clock.monotonic() + delay
        log.warning("%s: alert state not saved; retrying in %.0f s", self.id, delay)
        self._changed.set()

    async def _retry_alerts(self) -> None:
        try:
            if await self._evaluate(record=bool(self._alerts_owed)):
                self.publish()
        except Exception:
            log.exception("%s: retrying the alert bookkeeping failed", self.id)
            self._owe_alerts(bool(self._alerts_owed))

    def parse_threshold(self, key: str, payload: bytes) -> Decimal:
        """Raises ThresholdError for a payload that is not an acceptable value."""
        if self._engine is None:
            raise ThresholdError(f"{key}: alerts are not running")
        return self._engine.parse_threshold(self.id, key, payload)

    async def set_threshold(self, key: str, value: Decimal) -> None:
        assert self._engine is not None
        try:
            await self._engine.set_threshold(self.id, key, value)
        except StoreError:
            log.error("%s: %s not saved (alert store unavailable); send it again", self.id, key)
            return
        log.info("%s: %s set to %s from Home Assistant", self.id, key, value)
        await self._evaluate(record=False)
        self.publish()

    # ---- publishing ------------------------------------------------------------------------

    def publish(self) -> None:
        key = _render_key(self.view)
        if key == self._rendered_key:
            return  # nothing shown changed (only the poll time): render would publish nothing
        self._rendered_key = key
        rendered = render(
            self.id,
            self.view,
            self.entities,
            self._topics,
            published=self.doc,
            alerts=bool(self.rules),
        )
        self.doc = rendered.doc
        for topic, (payload, kind) in rendered.messages.items():
            self._publisher.set(topic, payload, kind)

    def discovery(self) -> dict[str, Any]:
        return device_payload(
            account_id=self.id,
            account_name=self.cfg.name,
            topics=self._topics,
            currency=self.currency,
            qos=self._qos,
            entities=self.entities,
            removed=self.removed,
        )

    def set_discovery(self) -> None:
        self._publisher.set(self._topics.device(self.id), dumps(self.discovery()), Kind.DISCOVERY)
        # A removal ({"p": …}) goes out once, in this payload; later payloads leave it out.
        self.removed = {}

    def announced(self, found: Announced) -> None:
        """What an earlier run announced: keep its currency, remove what is gone since."""
        if self.currency is None:
            self.currency = found.currency
        current = set(self.discovery()["cmps"])
        self.removed = {k: p for k, p in found.components.items() if k not in current}
        self.set_discovery()


def _render_key(view: AccountView) -> tuple[object, ...]:
    """Everything `render` reads, but the poll time: equal keys render equal documents."""
    snap = view.snapshot
    return (
        None if snap is None else (snap.currency, snap.balance_micro, snap.holds_micro),
        view.usage,
        None if view.usage_at is None else tuple(w.start(view.usage_at) for w in Window),
        view.usage_state,
        view.api_status,
        view.connected,
        view.error,
        view.alerts,
        view.fresh,
    )
