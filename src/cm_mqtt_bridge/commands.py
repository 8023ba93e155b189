"""What arrives over MQTT: Home Assistant's birth message and the `…/set` commands."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping

from .alerts.rules import THRESHOLDS
from .clock import Clock
from .runtime import AccountRuntime
from .topics import Topics

log = logging.getLogger(__name__)


class Births:
    """Home Assistant announces itself `online` after a restart and has then lost every
    entity: resend after a short random delay (spreading many bridges' load). Births that
    arrive meanwhile push the resend back a little, up to `cap`, so a storm is one resend."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        resend: Callable[[], None],
        *,
        delay: tuple[float, float] = (0.5, 3.0),
        cap: float = 10.0,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._resend = resend
        self._delay = delay
        self._cap = cap
        self._last = 0.0
        self._pending: asyncio.Task[None] | None = None
        self.resends = 0

    def birth(self) -> None:
        self._last = self._clock.monotonic()
        if self._pending is None:
            self._pending = asyncio.create_task(self._later())

    async def _later(self) -> None:
        first = self._clock.monotonic()
        delay = self._rng.uniform(*self._delay)
        try:
            while True:
                due = min(self._last + delay, first + self._cap)
                wait = due - self._clock.monotonic()
                if wait <= 0:
                    break
                await self._clock.sleep(wait)
        finally:
            self._pending = None
        log.info("Home Assistant restarted: resending discovery and state")
        self.resends += 1
        self._resend()

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()


class LimitedWarning:
    """A warning anyone on the broker can trigger at will: the first is logged, then at most
    one line a minute with the count of those suppressed meanwhile, so a flood of commands
    cannot flood the log."""

    def __init__(self, clock: Clock, what: str, every: float = 60.0) -> None:
        self._clock = clock
        self._what = what
        self._every = every
        self._last: float | None = None
        self._suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < self._every:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} more {self._what} ignored in the last minute)"
        log.warning(message, *args)
        self._last, self._suppressed = now, 0


class Commands:
    def __init__(
        self,
        topics: Topics,
        accounts: Mapping[str, AccountRuntime],
        births: Births,
        clock: Clock,
    ) -> None:
        self._topics = topics
        self._accounts = accounts
        self._births = births
        self._running: set[asyncio.Task[None]] = set()
        self._unknown_account = LimitedWarning(clock, "commands for unknown accounts")
        self._unknown_command = LimitedWarning(clock, "unknown commands")

    async def handle(self, topic: str, payload: bytes) -> None:
        if topic == self._topics.ha_status:
            if payload.strip().lower() == b"online":
                self._births.birth()
            return
        command = self._topics.parse_command(topic)
        if command is None:
            return
        if command.account is None:
            for each in self._accounts.values():
                each.refresh()
            return
        acc = self._accounts.get(command.account)
        if acc is None:
            self._unknown_account.warn(
                "command for unknown account %r ignored", command.account[:40]
            )
        elif command.name == "refresh":
            log.info("%s: refresh requested", acc.id)
            acc.refresh()
        elif command.name in THRESHOLDS:
            # Saving it waits for the alert store: off the receive loop, in arrival order
            # (the account's evaluation lock is fair).
            task = asyncio.create_task(acc.set_threshold(command.name, payload))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        else:
            self._unknown_command.warn("%s: unknown command %r ignored", acc.id, command.name[:40])

    async def drain(self) -> None:
        """Let threshold changes in progress finish (tests, shutdown)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
