"""One account at run time: its scheduler, its view and what it publishes.

The poller fetches; every outcome goes through the pure reducer (view.py), then the alert
engine, then `render` into the publisher (`AccountOutput`). Staleness and retries of alert
bookkeeping run on their own timer (`watch`), whatever a poll is doing. When it may poll and
when owed bookkeeping is retried are pure pieces (schedule.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..config.settings import AccountConfig, PollConfig
from ..core.clock import Clock, Flag, format_until, spawn
from ..core.model import Snapshot
from ..core.money import format_money
from ..core.timings import Timings
from ..core.view import AccountView, AlertsEvaluated, Event, Polled, PollFailed, WentStale, reduce
from ..crossmodel.client import ApiError, CrossModelClient
from ..crossmodel.fetch import fetch_snapshot
from ..ha.discovery import Announced, device_payload
from ..ha.entities import Entity, entities_for
from ..ha.render import Rendered, document_values, dumps, render
from ..ha.topics import Kind, Topics
from ..store.db import StoreError
from .alerting import AlertEngine
from .metrics import Metrics
from .publisher import Publisher
from .schedule import AlertRetry, PollSchedule

log = logging.getLogger(__name__)


class Retained(Protocol):
    """Where the retained topics go (the Publisher; a list in tests)."""

    def set(
        self,
        topic: str,
        payload: str | bytes,
        kind: Kind,
        *,
        once: bool = False,
        source: Callable[[], str | bytes] | None = None,
    ) -> None: ...


class AccountOutput:
    """What one account shows: its retained topics (rendered from the view; the publisher
    sends only what differs) and its discovery payload."""

    def __init__(
        self,
        cfg: AccountConfig,
        entities: Sequence[Entity],
        *,
        topics: Topics,
        publisher: Retained,
        qos: int,
        alerts: bool,
    ) -> None:
        self.id = cfg.id
        self._name = cfg.name
        self.entities = entities
        self._topics = topics
        self._publisher = publisher
        self._qos = qos
        self._alerts = alerts
        self._values = document_values(tuple(entities))
        self._availability = topics.availability(cfg.id)
        self._alerts_active = topics.alerts_active(cfg.id)
        self.rendered: Rendered | None = None  # what was published last
        self.currency: str | None = None
        # Components removed in the discovery payload now published (sent once: the next
        # payload leaves them out); kept so that the payload can be built again to resend it.
        self._removed: dict[str, str] = {}
        # Discovery waits for the first poll (it brings the currency the money entities need):
        # Home Assistant 2024.11-2025.4 can drop a component of a device message that comes
        # while it still handles the one before. The runtime announces it anyway when the
        # first poll fails or `Timings.discovery_grace` passes without an answer.
        self.announced_discovery = False

    def publish(self, view: AccountView) -> None:
        # No key of what render reads: render is cheap, and the publisher sends a topic only
        # when its payload differs (an unchanged poll publishes nothing).
        previous = self.rendered
        rendered = render(
            self.id,
            view,
            self.entities,
            self._topics,
            previous=previous,
            alerts=self._alerts,
            values=self._values,
        )
        self.rendered = rendered
        publisher = self._publisher
        publisher.set(self._availability, rendered.availability, Kind.AVAILABILITY)
        # The same values as last time (most polls): the publisher already holds them.
        if previous is None or rendered.values is not previous.values:
            for topic, payload in rendered.values.items():
                publisher.set(topic, payload, Kind.STATE)
        if rendered.alerts is not None:
            publisher.set(self._alerts_active, rendered.alerts, Kind.STATE)

    def discovery(self) -> dict[str, Any]:
        return device_payload(
            account_id=self.id,
            account_name=self._name,
            topics=self._topics,
            currency=self.currency,
            qos=self._qos,
            entities=self.entities,
            removed=self._removed,
        )

    def discovery_payload(self) -> str:
        """The device message as published: the publisher keeps only its digest and calls
        this again when it must resend it (a broker or Home Assistant restart)."""
        return dumps(self.discovery())

    def announce(self) -> None:
        """Announce the device, unless it is already."""
        if not self.announced_discovery:
            self.set_discovery()

    def announce_when(self, now: float, due: float) -> bool:
        """Announce the device when `due` has come; True once it is announced."""
        if now >= due:
            self.announce()
        return self.announced_discovery

    def set_discovery(self, removed: dict[str, str] | None = None) -> None:
        """Publish the device message, with `removed` components ({"p": …}) in it once."""
        self.announced_discovery = True
        self._removed = removed or {}
        self._publisher.set(
            self._topics.device(self.id),
            self.discovery_payload(),
            Kind.DISCOVERY,
            source=self.discovery_payload,
        )

    def announced(self, found: Announced) -> None:
        """What an earlier run announced: keep its currency, remove what is gone since."""
        if self.currency is None:
            self.currency = found.currency
        self._removed = {}
        current = set(self.discovery()["cmps"])
        self.set_discovery({k: p for k, p in found.components.items() if k not in current})

    def currency_seen(self, currency: str) -> None:
        if currency == self.currency:
            return
        if self.currency is not None:
            log.warning(
                "%s: currency changed from %s to %s; discovery republished with the new unit",
                self.id,
                self.currency,
                currency,
            )
        self.currency = currency
        self.set_discovery()


@dataclass(frozen=True, slots=True)
class Shared:
    """What every account of a bridge runs with: one object, not a dozen references each."""

    # Polling: its settings, how many accounts poll at once, on what time.
    poll: PollConfig
    concurrency: asyncio.Semaphore
    clock: Clock
    rng: random.Random
    timings: Timings
    # Where the values go.
    topics: Topics
    publisher: Publisher
    qos: int
    metrics: Metrics
    # The alert engine, and what wakes the delivery of its notices.
    engine: AlertEngine
    on_notices: Callable[[], None] = lambda: None
    spread: bool = False  # several accounts: spread their first polls


class AccountRuntime:
    def __init__(self, cfg: AccountConfig, client: CrossModelClient, shared: Shared) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.client = client
        self.engine = shared.engine
        self._s = shared
        self.rules = cfg.alerts.rules()
        self.output = AccountOutput(
            cfg,
            entities_for(self.rules),
            topics=shared.topics,
            publisher=shared.publisher,
            qos=shared.qos,
            alerts=bool(self.rules),
        )
        self.view = AccountView(alerts=self.engine.status(cfg.id))
        self.schedule = PollSchedule(shared.poll.interval, shared.poll.min_refresh_interval)
        self.alert_retry = AlertRetry(shared.timings.retry_backoff)
        self.polls = 0
        self.last_success: float | None = None  # monotonic time of the last good /credits
        self.refresh_requested = Flag()
        self._announce = True
        self._changed = Flag()  # wakes `watch`
        self._eval_lock = asyncio.Lock()
        self._retrying: asyncio.Task[None] | None = None

    # ---- scheduling ------------------------------------------------------------------------

    def refresh(self, *, announce: bool = True) -> None:
        """Poll as soon as allowed; `announce`: log a deferral (bridge-wide: logged once)."""
        self._announce = announce
        self.refresh_requested.set()

    def deferred(self) -> tuple[float, str] | None:
        """How long a refresh asked for now waits, and why; None when it runs at once."""
        return self.schedule.deferred(self._s.clock.monotonic())

    async def run(self) -> None:
        """Poll every interval, or on a refresh, within the refresh spacing and Retry-After."""
        p = self._s.poll
        if self._s.spread and p.jitter and self.schedule.last_start is None:
            # Several accounts: spread them so they do not poll in lockstep.
            await self._s.clock.sleep(self._s.rng.uniform(0, p.jitter))
        while True:
            await self._wait_until_allowed()
            self.refresh_requested.clear()
            self.schedule.started(self._s.clock.monotonic())
            await self.poll_once()
            next_at = self.schedule.next_due(self._s.rng.uniform(0, p.jitter))
            timeout = max(0.0, next_at - self._s.clock.monotonic())
            await self._s.clock.wait(self.refresh_requested, timeout)

    async def _wait_until_allowed(self) -> None:
        # A refresh inside the spacing or Retry-After waits for its end; several make one.
        deferred = self.deferred()
        if deferred is None:
            return
        wait, why = deferred
        if self.refresh_requested.is_set() and self._announce:
            log.info(
                "%s: refresh deferred until %s (in %.0f s: %s)",
                self.id,
                format_until(self._s.clock, wait),
                wait,
                why,
            )
        await self._s.clock.sleep(wait)

    async def watch(self) -> None:
        """Staleness and owed alert bookkeeping, on a timer of their own."""
        try:
            await self._watch()
        finally:
            if self._retrying is not None:
                self._retrying.cancel()

    async def _watch(self) -> None:
        discovery_due = self._s.clock.monotonic() + self._s.timings.discovery_grace
        while True:
            self._changed.clear()
            now = self._s.clock.monotonic()
            deadlines: list[float] = []
            if not self.output.announce_when(now, discovery_due):
                deadlines.append(discovery_due)
            if self.view.fresh and self.last_success is not None:
                stale_at = self.last_success + self._s.poll.stale_after_s
                if now >= stale_at:
                    self._went_stale()
                    continue
                deadlines.append(stale_at)
            due = self.alert_retry.due(now)
            if due:
                # In a task of its own: a database that makes the retry wait must not
                # hold back the staleness deadline.
                self._retrying = spawn(self._retry_alerts(), f"{self.id}: the alert retry")
                continue
            if due is False and self.alert_retry.retry_at is not None:
                deadlines.append(self.alert_retry.retry_at)
            timeout = min(deadlines) - now if deadlines else 3600.0
            await self._s.clock.wait(self._changed, timeout)

    def _went_stale(self) -> None:
        stale_after = self._s.poll.stale_after_s
        log.warning("%s: no good data for %d s; values now unavailable", self.id, stale_after)
        self._apply(WentStale())
        self.publish()

    # ---- one poll --------------------------------------------------------------------------

    async def poll_once(self) -> None:
        self.polls += 1
        started = self._s.clock.monotonic()
        usage_wait = self.schedule.usage_wait(started)
        try:
            # Only the requests count against the concurrency limit: the alert bookkeeping
            # after them (which may wait for the database) must not hold other accounts back.
            async with self._s.concurrency:
                snap = await fetch_snapshot(
                    self.id,
                    self.client,
                    self._s.clock,
                    usage_deadline=self._s.poll.usage_timeout,
                    on_balance=self._on_balance,
                    usage_wait=usage_wait,
                    grace=self._s.timings.partial_grace,
                )
        except ApiError as exc:
            self._s.metrics.poll(self.id, exc.status, self._s.clock.monotonic() - started)
            await self._failed(exc)
            return
        except Exception as exc:
            # Never let a surprise end polling; the next poll tries again.
            log.exception("%s: unexpected error while polling", self.id)
            self._s.metrics.poll(self.id, "internal_error", self._s.clock.monotonic() - started)
            await self._failed(ApiError(f"internal error: {type(exc).__name__}"))
            return
        took = self._s.clock.monotonic() - started
        self.schedule.usage_answered(self._s.clock.monotonic(), snap.usage_retry_after, usage_wait)
        self._s.metrics.poll(self.id, "ok", took)
        self._s.metrics.snapshot(snap)
        _log_poll(snap, took)
        self._succeeded(snap, partial=False)
        await self._evaluate_and_publish(record=True)

    def _on_balance(self, snap: Snapshot) -> None:
        # The balance is known while /usage is still running: publish it now.
        self._succeeded(snap, partial=True)
        self.publish()

    def _succeeded(self, snap: Snapshot, *, partial: bool) -> None:
        self.last_success = self._s.clock.monotonic()
        self.schedule.succeeded()
        self._apply(Polled(snap, partial))
        self.output.currency_seen(snap.currency)

    async def _failed(self, exc: ApiError) -> None:
        log.warning("%s: poll failed (%s): %s", self.id, exc.status, exc)
        # Honour Retry-After, but an absurd one must not stop polling (and alerts).
        self.schedule.failed(self._s.clock.monotonic(), exc.retry_after)
        self._apply(PollFailed(exc.status, str(exc)))
        self.output.announce()  # no currency to wait for: the device with its API status now
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
        early = self._s.clock.call_later(self._s.timings.evaluation_grace, self.publish)
        try:
            await self._evaluate(record=record)
        finally:
            early.cancel()
        self.publish()

    async def _evaluate(self, *, record: bool) -> bool:
        """Run the rules on the current view; on a store failure, owe it (retried by
        `watch`), so nothing is lost while the database is locked or read-only."""
        async with self._eval_lock:
            record = record or bool(self.alert_retry.record)
            try:
                status, notices = await self.engine.observe(
                    self.id, self.view, self.last_success, record=record
                )
            except StoreError:
                self._owe_alerts(record)
                return False
        recovered = self.alert_retry.settled()
        self._apply(AlertsEvaluated(status))
        if notices or recovered:
            # After a failed commit, too: one that timed out may have landed after all (a
            # disk that thawed), its notices already in the outbox.
            self._s.on_notices()
        return True

    def _owe_alerts(self, record: bool) -> None:
        delay = self.alert_retry.owe(self._s.clock.monotonic(), record)
        log.warning("%s: alert state not saved; retrying in %.0f s", self.id, delay)
        self._changed.set()

    async def _retry_alerts(self) -> None:
        try:
            if await self._evaluate(record=bool(self.alert_retry.record)):
                self.publish()
        except Exception:
            log.exception("%s: retrying the alert bookkeeping failed", self.id)
            self._owe_alerts(bool(self.alert_retry.record))

    async def thresholds_changed(self) -> None:
        """A threshold was saved (a command from Home Assistant): evaluate and show it."""
        await self._evaluate(record=False)
        self.publish()

    # ---- publishing ------------------------------------------------------------------------

    def publish(self) -> None:
        self.output.publish(self.view)


def _log_poll(snap: Snapshot, took: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s: poll ok in %.0f ms: balance %s, available %s",
            snap.account_id,
            took * 1000,
            format_money(snap.balance_micro, snap.currency),
            format_money(snap.available_micro, snap.currency),
        )
