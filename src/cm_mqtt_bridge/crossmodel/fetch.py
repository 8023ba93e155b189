"""One poll of an account: /credits and /usage concurrently, the balance first.

Sits on top of the API client and turns wire answers into the `model` types. /usage has its
own deadline and can only mark its own part failed; a /credits failure raises ApiError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

import aiohttp

from ..config.settings import AccountConfig, PollConfig
from ..core.clock import Cancellable, Clock
from ..core.model import Snapshot, Usage, UsageState, WindowUsage
from ..core.timings import DEFAULTS
from .client import ApiError, CrossModelClient
from .wire import CreditsWire, UsageWire, WindowWire

log = logging.getLogger(__name__)


def make_client(
    session: aiohttp.ClientSession,
    acc: AccountConfig,
    poll: PollConfig,
    clock: Clock,
    *,
    retry_log_level: int = logging.INFO,
) -> CrossModelClient:
    return CrossModelClient(
        session,
        account=acc.id,
        base_url=acc.api_url,
        api_key=acc.api_key.get_secret_value(),
        clock=clock,
        credits_timeout=poll.credits_timeout,
        usage_timeout=poll.usage_timeout,
        retries=poll.retries,
        retry_log_level=retry_log_level,
    )


def window_usage(w: WindowWire) -> WindowUsage:
    return WindowUsage(
        w.cost_micro,
        w.prompt_tokens,
        w.completion_tokens,
        w.total_tokens,
        w.request_count,
        w.success_count,
    )


def usage_from_wire(u: UsageWire) -> Usage:
    return Usage(window_usage(u.daily), window_usage(u.weekly), window_usage(u.monthly))


def balance_only(account_id: str, credits: CreditsWire, clock: Clock) -> Snapshot:
    """The snapshot as soon as the balance is known (usage PENDING)."""
    return Snapshot(
        account_id=account_id,
        fetched_at=clock.now(),
        currency=credits.currency,
        balance_micro=credits.balance_micro,
        holds_micro=credits.uncollected_micro,
        usage=None,
        usage_state=UsageState.PENDING,
    )


async def fetch_snapshot(
    account_id: str,
    client: CrossModelClient,
    clock: Clock,
    *,
    usage_deadline: float,
    on_balance: Callable[[Snapshot], None] | None = None,
    usage_wait: float | None = None,
    grace: float = DEFAULTS.partial_grace,
) -> Snapshot:
    """`on_balance` is called with a PENDING snapshot as soon as the balance is known while
    /usage is still running, so a slow /usage never delays the balance. `usage_wait`: /usage
    asked (Retry-After) not to be called for this many more seconds; only the balance is
    fetched. `grace`: how long the balance waits for /usage before `on_balance`."""
    if usage_wait is not None and usage_wait > 0:
        return replace(
            balance_only(account_id, await client.get_credits(), clock),
            usage_state=UsageState.FAILED,
            usage_error=f"/usage: rate limited; next try in {usage_wait:.0f} s",
        )

    async def usage_within_deadline() -> UsageWire:
        async with asyncio.timeout(usage_deadline):
            return await client.get_usage()

    usage_task = asyncio.create_task(usage_within_deadline())
    try:
        credits = await client.get_credits()
    except BaseException:
        usage_task.cancel()
        await asyncio.gather(usage_task, return_exceptions=True)
        raise
    snap = balance_only(account_id, credits, clock)
    early: Cancellable | None = None
    if on_balance is not None and not usage_task.done():
        # Usually /usage answers at about the same time: wait a moment before publishing
        # the balance alone, so a normal poll publishes one state, not two.
        def balance_first() -> None:
            if not usage_task.done():
                on_balance(snap)

        early = clock.call_later(grace, balance_first)
    try:
        usage_wire = await _settled(usage_task, early)
    except TimeoutError:
        failure = client.retrying.get("usage")
        if failure is not None:
            # It did answer (429, 5xx …), retried until the deadline: say what it answered.
            msg = f"{failure}; gave up after {usage_deadline:g} s of retries"
            log.warning("%s: %s; balance kept", account_id, msg)
            return replace(snap, usage_state=UsageState.FAILED, usage_error=msg)
        msg = f"/usage: no answer within {usage_deadline:g} s"
        log.warning("%s: %s; balance kept", account_id, msg)
        return replace(snap, usage_state=UsageState.TIMED_OUT, usage_error=msg)
    except ApiError as exc:
        log.warning("%s: %s; balance kept", account_id, exc)
        return replace(
            snap,
            usage_state=UsageState.FAILED,
            usage_error=str(exc),
            usage_retry_after=exc.retry_after,
        )
    if usage_wire.currency != credits.currency:
        msg = (
            f"/usage currency {usage_wire.currency} differs from "
            f"balance currency {credits.currency}"
        )
        log.warning("%s: %s; usage dropped for this poll", account_id, msg)
        return replace(snap, usage_state=UsageState.CURRENCY_MISMATCH, usage_error=msg)
    return replace(snap, usage=usage_from_wire(usage_wire), usage_state=UsageState.OK)


async def _settled(task: asyncio.Task[UsageWire], early: Cancellable | None) -> UsageWire:
    try:
        return await task
    finally:
        if early is not None:
            early.cancel()
