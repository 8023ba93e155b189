"""Injected time, so rollovers, backoff and staleness are testable without sleeping."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def wait_event(clock: Clock, event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` or `timeout` seconds on the injected clock; True if the event fired."""
    if event.is_set():
        return True
    if type(clock) is SystemClock:
        # The real clock (every poll waits here): a deadline on the loop, no extra tasks.
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
        except TimeoutError:
            pass
        return event.is_set()
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, sleeper):
            task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()


def backoff(first: float, cap: float, failures: int) -> float:
    """Exponential backoff: `first`, doubled per failure so far, at most `cap`."""
    return min(cap, first * 2.0 ** min(failures, 30))


def format_until(clock: Clock, seconds: float) -> str:
    """The wall time `seconds` from now, for a log line: `14:05:09 UTC`."""
    return (clock.now() + timedelta(seconds=seconds)).astimezone(UTC).strftime("%H:%M:%S UTC")
