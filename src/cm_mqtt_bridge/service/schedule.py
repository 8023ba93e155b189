"""Pure pieces of an account's timing: when it may poll, and when owed alert bookkeeping is
retried. They hold monotonic times and are told `now`; no I/O, so tests drive them directly."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.clock import backoff
from ..core.timings import Backoff

MAX_RETRY_AFTER = 3600.0  # an absurd Retry-After must not stop polling (and alerts)


@dataclass
class PollSchedule:
    """Retry-After windows (of /credits, and of /usage alone), the refresh spacing and when
    the next poll is due."""

    interval: float
    min_refresh_interval: float
    last_start: float | None = None
    not_before: float | None = None  # Retry-After: no request before this
    usage_not_before: float | None = None  # Retry-After of /usage alone

    def deferred(self, now: float) -> tuple[float, str] | None:
        """How long a poll asked for now waits, and why; None when it may run at once."""
        spacing = retry_after = 0.0
        if self.last_start is not None:
            spacing = self.last_start + self.min_refresh_interval - now
        if self.not_before is not None:
            retry_after = self.not_before - now
        if max(spacing, retry_after) <= 0:
            return None
        if retry_after >= spacing:
            return retry_after, "the API's Retry-After"
        return spacing, f"poll.min_refresh_interval {self.min_refresh_interval:g} s"

    def started(self, now: float) -> None:
        self.last_start = now

    def next_due(self, jitter: float) -> float:
        """When the next regular poll is due: an interval (plus `jitter`) after this one."""
        assert self.last_start is not None
        return self.last_start + self.interval + jitter

    def usage_wait(self, now: float) -> float | None:
        """Seconds /usage asked not to be called for any more (≤ 0: may be called again)."""
        return None if self.usage_not_before is None else self.usage_not_before - now

    def usage_answered(self, now: float, retry_after: float | None, waited: float | None) -> None:
        """After a good poll: /usage's own Retry-After (None if it sent none); `waited` is
        what `usage_wait` said before the poll (a window still open stays)."""
        if retry_after is not None:
            self.usage_not_before = now + min(retry_after, MAX_RETRY_AFTER)
        elif waited is None or waited <= 0:
            self.usage_not_before = None

    def succeeded(self) -> None:
        self.not_before = None

    def failed(self, now: float, retry_after: float | None) -> None:
        if retry_after is not None:
            self.not_before = now + min(retry_after, MAX_RETRY_AFTER)


@dataclass
class AlertRetry:
    """An alert evaluation the store did not take, owed and retried with backoff."""

    backoff: Backoff
    record: bool | None = None  # owed (its `record` flag), or None: nothing owed
    retry_at: float | None = None
    failures: int = 0

    @property
    def owed(self) -> bool:
        return self.record is not None

    def owe(self, now: float, record: bool) -> float:
        """The store failed: owe the evaluation; returns the delay until its retry."""
        delay = backoff(*self.backoff, self.failures)
        self.failures += 1
        self.record = record
        self.retry_at = now + delay
        return delay

    def due(self, now: float) -> bool | None:
        """True: retry now (taken: not due again until owed again); False: not yet; None:
        nothing is waiting for a retry."""
        if self.record is None or self.retry_at is None:
            return None
        if now < self.retry_at:
            return False
        self.retry_at = None
        return True

    def settled(self) -> bool:
        """The evaluation went through; True if one was owed."""
        was = self.record is not None
        self.record, self.retry_at, self.failures = None, None, 0
        return was
