"""Injected time, so rollovers, backoff and staleness are testable without sleeping."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Flag:
    """What `asyncio.Event` does for the few tasks that wait on it, at a fraction of its memory:
    an Event holds a deque (about 600 bytes) from birth, and every account has two. A waiter
    costs a future while it waits; with a timeout, one timer handle too (SystemClock.wait)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float | None = None) -> bool:
        """Until set or `timeout` seconds have passed; whether it is set then."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)
            if timer is not None:
                timer.cancel()
        return self._set


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


Waitable = asyncio.Event | Flag


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: Waitable, timeout: float) -> bool:
        """Wait for `event` or `timeout` seconds; True if the event fired."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        """Call `callback` after `seconds` (unless cancelled first)."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


class SleepClock:
    """`wait` and `call_later` built on `sleep` alone: for clocks whose time moves only when
    a test (or the benchmark) says so. Subclasses give now, monotonic and sleep."""

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    async def wait(self, event: Waitable, timeout: float) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(timeout))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)
        return event.is_set()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        async def later() -> None:
            await self.sleep(seconds)
            callback()

        return spawn(later(), "a timer")


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: Waitable, timeout: float) -> bool:
        # Every poll waits here: a deadline on the loop, no extra tasks.
        if event.is_set():
            return True
        if isinstance(event, Flag):
            return await event.wait(max(0.0, timeout))
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
        except TimeoutError:
            pass
        return event.is_set()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)


def spawn(work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
    """A task outside the supervisor: a failure is logged (with `what`), never lost."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: _log_failure(done, what))
    return task


def _log_failure(task: asyncio.Task[None], what: str) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", what, exc_info=exc)


def backoff(first: float, cap: float, failures: int) -> float:
    """Exponential backoff: `first`, doubled per failure so far, at most `cap`."""
    return min(cap, first * 2.0 ** min(failures, 30))


def format_until(clock: Clock, seconds: float) -> str:
    """The wall time `seconds` from now, for a log line: `14:05:09 UTC`."""
    return (clock.now() + timedelta(seconds=seconds)).astimezone(UTC).strftime("%H:%M:%S UTC")
