"""Delivers the outbox, one loop per channel: a channel that is down delays only itself.

A channel's retry waits on the monotonic clock, here: the outbox's retry times are wall-clock
dates, which a step of the clock (NTP on a Pi without a clock chip) would move by an hour.
They are only stored; a new process sends everything owed at once anyway.

Every loop survives a failing database: a store call that fails is retried with backoff, and a
notice whose delivery could not be recorded is remembered here, so it is recorded later and
never sent twice by this process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..core.clock import Clock, backoff
from ..core.notice import Notice
from ..core.timings import DEFAULTS, Timings
from ..store.db import AsyncStore, OutboxItem, Store, StoreError
from .channels import Channel, DeliveryError, RefusedError

log = logging.getLogger(__name__)
# `Store.due`'s cut-off that makes every owed notice due: this loop times the retries.
EVERYTHING = datetime.max.replace(tzinfo=UTC)


class Dispatcher:
    def __init__(
        self,
        store: AsyncStore,
        channels: Sequence[Channel],
        clock: Clock,
        *,
        attempts: int = 3,
        timings: Timings = DEFAULTS,
        on_refused: Callable[[str], None] = lambda channel: None,
    ) -> None:
        self.store = store
        self.channels = list(channels)
        self._clock = clock
        self._attempts = attempts
        self._backoff = timings.dispatch_backoff
        self._retry_wait = timings.delivery_retry_wait  # between attempts of one delivery
        self._store_retry = timings.retry_backoff
        self._on_refused = on_refused
        self._wake = {c.name: asyncio.Event() for c in self.channels}
        self._resume = {c.name: True for c in self.channels}
        # Monotonic time until which the channel's oldest notice waits for its retry (the
        # others wait behind it, to keep the order); None: not waiting.
        self._retry_at: dict[str, float | None] = {c.name: None for c in self.channels}
        # Sent, but the database did not take the record yet: (channel) -> items.
        self._unrecorded: dict[str, list[OutboxItem]] = {c.name: [] for c in self.channels}
        self.pending: dict[str, int] = {c.name: 0 for c in self.channels}  # for /healthz
        # Stopping: no delivery starts; the rounds under way may finish (see drain).
        self._stopping = asyncio.Event()
        self._busy: set[str] = set()  # channels inside a round
        self._idle = asyncio.Event()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    def wake(self, channel: str | None = None) -> None:
        for name, event in self._wake.items():
            if channel is None or name == channel:
                event.set()

    def resume(self, channel: str) -> None:
        """The channel is back (e.g. the broker reconnected): send what it owes now, not
        after its backoff."""
        if channel in self._resume:
            self._resume[channel] = True
            self.wake(channel)

    async def run_channel(self, channel: Channel) -> None:
        """Deliver for one channel until cancelled."""
        wake = self._wake[channel.name]
        # A new process (or a restarted loop) is a new chance: what waited out a backoff
        # before goes now.
        self._resume[channel.name] = True
        failures = 0
        while True:
            wake.clear()
            try:
                timeout = await self._tracked_round(channel)
            except StoreError:
                # Logged by the store; the notices stay in the outbox (or in _unrecorded).
                timeout = backoff(*self._store_retry, failures)
                failures += 1
            else:
                failures = 0
            await self._clock.wait(wake, timeout)

    async def drain(self, seconds: float) -> None:
        """Start no more deliveries and give those in flight `seconds` to finish and be
        recorded: cancelled, they would be sent a second time after the restart."""
        self._stopping.set()
        if not self._busy:
            return
        busy = ", ".join(sorted(self._busy))
        log.info("waiting up to %g s for alert deliveries in flight (%s)", seconds, busy)
        self._idle.clear()
        if not await self._clock.wait(self._idle, seconds):
            log.warning(
                "alert deliveries still in flight after %g s (%s): they are sent again after "
                "the restart",
                seconds,
                ", ".join(sorted(self._busy)),
            )

    async def _tracked_round(self, channel: Channel) -> float:
        self._busy.add(channel.name)
        try:
            return await self._round(channel)
        finally:
            self._busy.discard(channel.name)
            if not self._busy:
                self._idle.set()

    async def _stop_aware_sleep(self, seconds: float) -> None:
        # The wait between attempts ends when the bridge stops; the next attempt then gives up.
        await self._clock.wait(self._stopping, seconds)

    async def _round(self, channel: Channel) -> float:
        """Record what was sent, send what is due; return how long to wait."""
        name = channel.name
        await self._record_pending(name)
        if self._resume[name]:
            # Cleared first: a resume that arrives during the round is kept for the next one.
            self._resume[name] = False
            self._retry_at[name] = None
        retry_at = self._retry_at[name]
        if retry_at is None or retry_at <= self._clock.monotonic():
            self._retry_at[name] = None
            await self.flush(channel)
        self.pending[name] = await self.store.call(Store.pending, name)
        retry_at = self._retry_at[name]
        if retry_at is not None:
            return max(0.0, retry_at - self._clock.monotonic())
        # Still owed after a flush without a failure: more than one batch, or new notices.
        return 0.05 if self.pending[name] else 3600.0

    async def _record_pending(self, name: str) -> None:
        pending = self._unrecorded[name]
        while pending:
            item = pending[0]
            now = self._clock.now()
            await self.store.call(Store.delivered, item, now)
            pending.pop(0)

    async def flush(self, channel: Channel) -> int:
        """Deliver what is due, oldest first; stop at the first failure to keep the order.
        A notice the receiver refused for good is marked failed and skipped."""
        name = channel.name
        delivered = 0
        # Only a read: a locked database does not hold back what can be sent.
        due = await self.store.call(Store.due, name, EVERYTHING)
        for item in due:
            if self._stopping.is_set():
                break  # stays in the outbox for the next start
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(_retryable),
                    stop=stop_after_attempt(self._attempts),
                    wait=wait_exponential(multiplier=self._retry_wait[0], max=self._retry_wait[1]),
                    sleep=self._stop_aware_sleep,
                    reraise=True,
                ):
                    with attempt:
                        if self._stopping.is_set() and attempt.retry_state.attempt_number > 1:
                            raise _Stopping("not retried: the bridge is stopping")
                        await _deliver(channel, item.notice)
            except RefusedError as exc:
                log.error(
                    "%s: alert %s refused by the receiver (%s); not retried", name, item.id, exc
                )
                self._on_refused(name)
                await self.store.call(Store.gave_up, item, self._clock.now(), str(exc))
                continue
            except DeliveryError as exc:
                delay = backoff(*self._backoff, item.attempts)
                self._retry_at[name] = self._clock.monotonic() + delay
                retry_at = self._clock.now() + timedelta(seconds=delay)  # stored as a date
                log.warning(
                    "%s: could not deliver alert %s (%s); kept, next try in %.3g s",
                    name,
                    item.id,
                    exc,
                    delay,
                )
                error = str(exc) or type(exc).__name__
                await self.store.call(Store.failed, item, retry_at, error)
                return delivered
            log.info("%s: delivered alert %s", name, item.id)
            delivered += 1
            # Until the database has it, the record lives here: a failure now must not
            # turn into a second copy.
            self._unrecorded[name].append(item)
            await self._record_pending(name)
        return delivered


class _Stopping(DeliveryError):
    pass


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, DeliveryError) and not isinstance(exc, RefusedError | _Stopping)


async def _deliver(channel: Channel, notice: Notice) -> None:
    """One attempt. A failure a channel did not foresee is logged with its traceback and
    retried like any other, so one odd notice cannot stall its channel for good."""
    try:
        await channel.deliver(notice)
    except DeliveryError:
        raise
    except Exception as exc:
        log.exception("%s: unexpected failure delivering an alert", channel.name)
        raise DeliveryError(f"unexpected {type(exc).__name__}") from None
