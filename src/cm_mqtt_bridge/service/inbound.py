"""What arrives over MQTT: Home Assistant's birth message and the `…/set` commands."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from ..core.clock import Clock, format_until, spawn
from ..core.rules import THRESHOLDS
from ..core.timings import DEFAULTS
from ..ha.topics import REFRESH, Topics
from ..store.db import StoreError
from .alerting import ThresholdError
from .runtime import AccountRuntime

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
        delay: tuple[float, float] = DEFAULTS.birth_delay,
        cap: float = 10.0,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._resend = resend
        self._delay = delay
        self._cap = cap
        self._last = 0.0
        self._pending: asyncio.Task[None] | None = None

    def birth(self) -> None:
        self._last = self._clock.monotonic()
        if self._pending is None:
            self._pending = spawn(self._later(), "answering a Home Assistant birth")

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
        self._resend()

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()


class LimitedWarning:
    """A warning anyone on the broker can trigger at will: at most `burst` lines a minute,
    then one line with the count of those suppressed meanwhile, so a flood of commands
    cannot flood the log."""

    def __init__(self, clock: Clock, what: str, every: float = 60.0, burst: int = 1) -> None:
        self._clock = clock
        self._what = what
        self._every = every
        self._burst = burst
        self._window: float | None = None
        self._logged = 0
        self._suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        now = self._clock.monotonic()
        if self._window is None or now - self._window >= self._every:
            if self._suppressed:
                message += f" ({self._suppressed} more {self._what} ignored in the last minute)"
            self._window, self._logged, self._suppressed = now, 0, 0
        if self._logged >= self._burst:
            self._suppressed += 1
            return
        self._logged += 1
        log.warning(message, *args)


@dataclass(frozen=True, slots=True)
class SetThreshold:
    """A threshold from Home Assistant, parsed and valid."""

    account: AccountRuntime
    key: str
    value: Decimal


async def _set_threshold(command: SetThreshold) -> None:
    acc, key, value = command.account, command.key, command.value
    try:
        await acc.engine.set_threshold(acc.id, key, value)
    except StoreError:
        log.error("%s: %s not saved (alert store unavailable); send it again", acc.id, key)
        return
    log.info("%s: %s set to %s from Home Assistant", acc.id, key, value)
    await acc.thresholds_changed()


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
        self._clock = clock
        self._running: set[asyncio.Task[None]] = set()
        self._latest: dict[tuple[str, str], SetThreshold] = {}
        self._rejected = LimitedWarning(clock, "rejected thresholds", burst=10)
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
            # One line for the whole bridge, not one per account (there may be hundreds).
            waits = [d[0] for each in self._accounts.values() if (d := each.deferred())]
            for each in self._accounts.values():
                each.refresh(announce=False)
            deferred = ""
            if waits:
                until = format_until(self._clock, max(waits))
                deferred = (
                    f"; {len(waits)} deferred (refresh spacing, Retry-After), the last "
                    f"until {until}"
                )
            log.info("refresh requested for every account (%d)%s", len(self._accounts), deferred)
            return
        acc = self._accounts.get(command.account)
        if acc is None:
            self._unknown_account.warn(
                "command for unknown account %r ignored", command.account[:40]
            )
        elif command.name == REFRESH:
            log.info("%s: refresh requested", acc.id)
            acc.refresh()
        elif command.name in THRESHOLDS:
            try:
                # Parsed here, at the edge: only a typed, valid value goes on.
                value = acc.engine.parse_threshold(acc.id, command.name, payload)
            except ThresholdError as exc:
                self._rejected.warn("%s: rejected threshold from MQTT: %s", acc.id, exc)
                return
            self._save(SetThreshold(acc, command.name, value))
        else:
            self._unknown_command.warn("%s: unknown command %r ignored", acc.id, command.name[:40])

    def _save(self, command: SetThreshold) -> None:
        """Saving waits for the alert store, so it runs off the receive loop; values that
        arrive meanwhile replace each other (only the latest one counts), so a flood of
        commands is one save at a time, not one task each."""
        slot = (command.account.id, command.key)
        first = slot not in self._latest
        self._latest[slot] = command
        if first:
            task = spawn(self._save_latest(slot), f"{command.account.id}: saving {command.key}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _save_latest(self, slot: tuple[str, str]) -> None:
        try:
            while True:
                command = self._latest[slot]
                await _set_threshold(command)
                if self._latest[slot] is command:
                    return
        finally:
            del self._latest[slot]

    async def close(self) -> None:
        """Stop saving (shutdown): what was not saved yet is dropped, as if never sent."""
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
