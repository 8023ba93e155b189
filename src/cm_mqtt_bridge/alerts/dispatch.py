"""Delivers the outbox, one task per channel: a channel that is down delays only itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..clock import Clock, wait_event
from .notifiers import Channel, DeliveryError
from .store import Store

log = logging.getLogger(__name__)
MAX_BACKOFF = 300.0


class Dispatcher:
    def __init__(
        self,
        store: Store,
        channels: Sequence[Channel],
        clock: Clock,
        *,
        attempts: int = 3,
        backoff_base: float = 5.0,
        retry_wait_max: float = 4.0,
    ) -> None:
        self.store = store
        self.channels = list(channels)
        self._clock = clock
        self._attempts = attempts
        self._backoff_base = backoff_base
        self._retry_wait_max = retry_wait_max
        self._wake = {c.name: asyncio.Event() for c in self.channels}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    def wake(self, channel: str | None = None) -> None:
        for name, event in self._wake.items():
            if channel is None or name == channel:
                event.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for channel in self.channels:
                tg.create_task(self._run_channel(channel))

    def resume(self, channel: str) -> None:
        """The channel is back (e.g. the broker reconnected): send what it owes now."""
        self.store.make_due(channel, self._clock.now())
        self.wake(channel)

    async def _run_channel(self, channel: Channel) -> None:
        wake = self._wake[channel.name]
        # A new process is a new chance: what waited out a backoff before a restart goes now.
        self.store.make_due(channel.name, self._clock.now())
        while True:
            wake.clear()
            try:
                await self.flush(channel)
            except Exception:
                # A bug in one channel must not end deliveries: the outbox keeps the notices.
                log.exception("%s: delivery loop failed; retrying in 60 s", channel.name)
                await wait_event(self._clock, wake, 60.0)
                continue
            next_due = self.store.next_due(channel.name)
            timeout = 3600.0
            if next_due is not None:
                timeout = max(0.05, (next_due - self._clock.now()).total_seconds())
            await wait_event(self._clock, wake, timeout)

    async def flush(self, channel: Channel) -> int:
        """Deliver what is due, oldest first; stop at the first failure to keep the order."""
        delivered = 0
        for item in self.store.due(channel.name, self._clock.now()):
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(DeliveryError),
                    stop=stop_after_attempt(self._attempts),
                    wait=wait_exponential(multiplier=0.5, max=self._retry_wait_max),
                    sleep=self._clock.sleep,
                    reraise=True,
                ):
                    with attempt:
                        await channel.deliver(item.payload)
            except DeliveryError as exc:
                delay = min(MAX_BACKOFF, self._backoff_base * 2 ** min(item.attempts, 10))
                retry_at = self._clock.now() + timedelta(seconds=delay)
                log.warning(
                    "%s: could not deliver alert %s (%s); kept, next try in %.3g s",
                    channel.name,
                    item.id,
                    exc,
                    delay,
                )
                self.store.failed(item, retry_at, str(exc))
                return delivered
            self.store.delivered(item, self._clock.now())
            delivered += 1
            log.info("%s: delivered alert %s", channel.name, item.id)
        if delivered and self.store.make_due(channel.name, self._clock.now()):
            # The channel works again: what waited out a backoff goes now, in order.
            return delivered + await self.flush(channel)
        return delivered
