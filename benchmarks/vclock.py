"""A virtual-time clock for the idle-hour benchmark.

Unlike `tests.fakes.FakeClock` (whose `sleep` advances time at once), sleepers here
wait until a driver moves time forward. The driver advances to the next timer only after real
I/O (HTTP to the loopback stand-in, MQTT round trips) has settled, so an hour of the bridge's
life runs in seconds while every poll and publish really happens.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cm_mqtt_bridge.core.clock import SleepClock


class VirtualClock(SleepClock):
    """Implements the bridge's Clock protocol (now / monotonic / sleep) on virtual time."""

    def __init__(self, start: datetime | None = None, monotonic: float = 1000.0) -> None:
        self._wall0 = start or datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
        self._mono0 = monotonic
        self._mono = monotonic
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.changes = 0  # bumped whenever a sleeper starts, wakes or is cancelled

    # ---- the Clock protocol ----------------------------------------------------------------

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=self._mono - self._mono0)

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._mono + seconds, next(self._seq), future))
        self.changes += 1
        try:
            await future
        finally:
            if not future.done():
                future.cancel()
            self.changes += 1

    # ---- the driver's side -----------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return self._mono - self._mono0

    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._timers if not f.done())

    def next_deadline(self) -> float | None:
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)  # cancelled (e.g. wait_event's losing sleeper)
        return self._timers[0][0] if self._timers else None

    def advance_to(self, when: float) -> int:
        """Move time to `when` (never backwards) and wake every sleeper due by then."""
        self._mono = max(self._mono, when)
        woken = 0
        while self._timers and self._timers[0][0] <= self._mono:
            _, _, future = heapq.heappop(self._timers)
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken


async def settle(
    clock: VirtualClock,
    *,
    min_sleepers: int,
    idle: Callable[[], bool] = lambda: True,
    quiet: float = 0.03,
    timeout: float = 15.0,
) -> None:
    """Wait (in real time) until the program is waiting only on the virtual clock: at least
    `min_sleepers` long-lived tasks asleep, `idle()` true, and nothing changed for `quiet` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = clock.changes
    quiet_since = loop.time()
    while True:
        await asyncio.sleep(0.002)
        now = loop.time()
        if clock.changes != seen:
            seen = clock.changes
            quiet_since = now
        elif clock.sleepers() >= min_sleepers and idle() and now - quiet_since >= quiet:
            return
        if now > deadline:
            raise TimeoutError(
                f"virtual clock did not settle: {clock.sleepers()} sleepers "
                f"(want {min_sleepers}), idle={idle()}"
            )


async def run_for(
    clock: VirtualClock,
    seconds: float,
    *,
    min_sleepers: int,
    idle: Callable[[], bool] = lambda: True,
    quiet: float = 0.03,
) -> int:
    """Advance virtual time by `seconds`, timer by timer; returns the number of steps."""
    end = clock.monotonic() + seconds
    steps = 0
    while True:
        await settle(clock, min_sleepers=min_sleepers, idle=idle, quiet=quiet)
        deadline = clock.next_deadline()
        if deadline is None or deadline > end:
            clock.advance_to(end)
            break
        clock.advance_to(deadline)
        steps += 1
    await settle(clock, min_sleepers=min_sleepers, idle=idle, quiet=quiet)
    return steps
