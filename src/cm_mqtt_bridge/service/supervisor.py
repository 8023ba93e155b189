"""Keeps every long-running task alive: a task that fails is logged with its traceback and
restarted with backoff, counted, and reported as a problem until it has run well again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..core.clock import Clock, backoff
from ..core.timings import DEFAULTS, Backoff

log = logging.getLogger(__name__)
TaskFactory = Callable[[], Coroutine[Any, Any, None]]
RECANCEL_AFTER = 0.5  # seconds (real time) a cancelled task may take before it is cancelled again


@dataclass(slots=True)
class TaskState:
    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    last_failure: float | None = None  # monotonic


class Supervisor:
    def __init__(
        self,
        clock: Clock,
        *,
        backoff: Backoff = DEFAULTS.restart_backoff,
        settle: float = 60.0,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        """`settle`: a task that has run this long without failing counts as healthy again,
        and its next failure restarts it after the shortest backoff."""
        self._clock = clock
        self._backoff = backoff
        self._settle = settle
        self._on_restart = on_restart
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.states: dict[str, TaskState] = {}

    def start(self, name: str, factory: TaskFactory) -> None:
        self.states[name] = TaskState()
        self._tasks[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def _keep(self, name: str, factory: TaskFactory) -> None:
        state = self.states[name]
        failures = 0  # in a row, without a settled run between them
        while True:
            state.running = True
            started = self._clock.monotonic()
            try:
                await factory()
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception as exc:
                error: str = f"{type(exc).__name__}: {exc}"
                if self._clock.monotonic() - started >= self._settle:
                    failures = 0
                delay = backoff(*self._backoff, failures)
                log.exception("task %s failed; restarting in %.0f s", name, delay)
            else:
                error = "ended unexpectedly"
                delay = backoff(*self._backoff, failures)
                log.error("task %s %s; restarting in %.0f s", name, error, delay)
            state.running = False
            state.restarts += 1
            state.last_error = error[:300]
            state.last_failure = self._clock.monotonic()
            if self._on_restart is not None:
                self._on_restart(name)
            await self._clock.sleep(delay)
            failures += 1

    def problems(self) -> dict[str, str]:
        """Tasks that are down, or failed less than `settle` seconds ago: name -> reason."""
        now = self._clock.monotonic()
        out: dict[str, str] = {}
        for name, state in self.states.items():
            if not state.running:
                out[name] = f"down ({state.last_error or 'not started'})"
            elif state.last_failure is not None and now - state.last_failure < self._settle:
                out[name] = f"restarted after: {state.last_error}"
        return out

    async def stop(self) -> None:
        pending = set(self._tasks.values())
        while pending:
            # Again for a task that outlives a cancel: Python 3.11's asyncio.wait_for (ours
            # and aiomqtt's) drops a cancellation that arrives as its future completes, which
            # left a stop during the MQTT read-back hanging for good.
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
