"""The typed, immutable result of one poll, and the concurrent fetch that produces it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from .api import ApiError, CrossModelClient
from .clock import Clock
from .wire import UsageWire, WindowWire

log = logging.getLogger(__name__)
PARTIAL_GRACE = 0.25  # seconds


class UsageState(StrEnum):
    OK = "ok"
    PENDING = "pending"  # balance known, /usage still in flight
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CURRENCY_MISMATCH = "currency_mismatch"


@dataclass(frozen=True, slots=True)
class Window:
    cost_micro: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    request_count: int
    success_count: int | None

    @classmethod
    def from_wire(cls, w: WindowWire) -> Window:
        return cls(
            w.cost_micro,
            w.prompt_tokens,
            w.completion_tokens,
            w.total_tokens,
            w.request_count,
            w.success_count,
        )

    @property
    def success_rate(self) -> float | None:
        if self.success_count is None or self.request_count == 0:
            return None
        return round(100.0 * self.success_count / self.request_count, 1)


@dataclass(frozen=True, slots=True)
class Usage:
    daily: Window
    weekly: Window
    monthly: Window

    @classmethod
    def from_wire(cls, u: UsageWire) -> Usage:
        return cls(
            Window.from_wire(u.daily), Window.from_wire(u.weekly), Window.from_wire(u.monthly)
        )


WINDOWS = ("daily", "weekly", "monthly")  # the /usage windows, in API order


def window_start(window: str, at: datetime) -> datetime:
    """Start of the UTC day, ISO week (Monday) or calendar month that contains `at`."""
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "daily":
        return day
    if window == "weekly":
        return day - timedelta(days=day.weekday())
    if window == "monthly":
        return day.replace(day=1)
    raise ValueError(window)


@dataclass(frozen=True, slots=True)
class Snapshot:
    account_id: str
    fetched_at: datetime
    currency: str
    balance_micro: int
    holds_micro: int
    usage: Usage | None
    usage_state: UsageState
    usage_error: str | None = None

    @property
    def available_micro(self) -> int:
        return self.balance_micro - self.holds_micro


async def fetch_snapshot(
    account_id: str,
    client: CrossModelClient,
    clock: Clock,
    *,
    usage_deadline: float,
    on_balance: Callable[[Snapshot], Awaitable[None]] | None = None,
) -> Snapshot:
    """Fetch /credits and /usage concurrently.

    /usage has its own deadline and its failure only marks the usage part; a /credits failure
    raises ApiError. `on_balance` is called with a PENDING snapshot as soon as the balance is
    known while /usage is still running, so a slow /usage never delays the balance.
    """
    usage_task = asyncio.create_task(asyncio.wait_for(client.get_usage(), usage_deadline))
    try:
        credits = await client.get_credits()
    except BaseException:
        usage_task.cancel()
        await asyncio.gather(usage_task, return_exceptions=True)
        raise
    snap = Snapshot(
        account_id=account_id,
        fetched_at=clock.now(),
        currency=credits.currency,
        balance_micro=credits.balance_micro,
        holds_micro=credits.uncollected_micro,
        usage=None,
        usage_state=UsageState.PENDING,
    )
    if on_balance is not None and not usage_task.done():
        # Usually /usage answers at about the same time: wait a moment before publishing
        # the balance alone, so a normal poll publishes one state, not two.
        await asyncio.wait({usage_task}, timeout=PARTIAL_GRACE)
        if not usage_task.done():
            await on_balance(snap)
    try:
        usage_wire = await usage_task
    except TimeoutError:
        msg = f"/usage: no answer within {usage_deadline:g} s"
        log.warning("%s: %s; balance kept", account_id, msg)
        return replace(snap, usage_state=UsageState.TIMED_OUT, usage_error=msg)
    except ApiError as exc:
        log.warning("%s: %s; balance kept", account_id, exc)
        return replace(snap, usage_state=UsageState.FAILED, usage_error=str(exc))
    if usage_wire.currency != credits.currency:
        msg = (
            f"/usage currency {usage_wire.currency} differs from "
            f"balance currency {credits.currency}"
        )
        log.warning("%s: %s; usage dropped for this poll", account_id, msg)
        return replace(snap, usage_state=UsageState.CURRENCY_MISMATCH, usage_error=msg)
    return replace(snap, usage=Usage.from_wire(usage_wire), usage_state=UsageState.OK)
