"""fetch_snapshot against the stand-in: concurrency, usage deadline, usage failure modes."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from cm_mqtt_bridge.core.model import Snapshot, Usage, UsageState, Window, WindowUsage
from cm_mqtt_bridge.crossmodel.client import (
    AuthError,
    CrossModelClient,
    InvalidResponse,
    ServerError,
)
from cm_mqtt_bridge.crossmodel.fetch import fetch_snapshot
from tests.conftest import KEY
from tests.fakes import FakeClock
from tests.standin import CrossModelStandin, Reply

DAILY = WindowUsage(10250, 9100, 2900, 12000, 41, 40)
WEEKLY = WindowUsage(670000, 401000, 128000, 529000, 529, 521)
MONTHLY = WindowUsage(5370000, 2500000, 700000, 3200000, 3200, 3150)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(standin: CrossModelStandin, clock: FakeClock) -> AsyncIterator[CrossModelClient]:
    async with aiohttp.ClientSession() as session:
        yield CrossModelClient(
            session,
            account="main",
            base_url=standin.url,
            api_key=KEY,
            clock=clock,
            credits_timeout=2.0,
            usage_timeout=2.0,
            retries=2,
            rng=lambda: 0.0,
        )


class Recorder:
    """An on_balance callback that notes what it got and when."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls: list[tuple[float, Snapshot]] = []

    def __call__(self, snap: Snapshot) -> None:
        self.calls.append((time.monotonic() - self.started, snap))


async def test_full_snapshot(
    client: CrossModelClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    snap = await fetch_snapshot("main", client, clock, usage_deadline=1.0)
    assert snap == Snapshot(
        account_id="main",
        fetched_at=datetime(2026, 1, 5, 12, 0, tzinfo=UTC),
        currency="USD",
        balance_micro=8059489,
        holds_micro=125000,
        usage=Usage(DAILY, WEEKLY, MONTHLY),
        usage_state=UsageState.OK,
        usage_error=None,
    )
    assert snap.available_micro == 7934489
    assert standin.count("credits") == 1
    assert standin.count("usage") == 1


async def test_snapshot_is_immutable(client: CrossModelClient, clock: FakeClock) -> None:
    snap = await fetch_snapshot("main", client, clock, usage_deadline=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.balance_micro = 0  # type: ignore[misc]
    assert snap.usage is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.usage.daily.cost_micro = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("balance", "holds", "available"),
    [(8059489, 125000, 7934489), (100, 0, 100), (100, 500, -400), (-2000, 1000, -3000)],
)
async def test_available_is_balance_minus_holds(
    client: CrossModelClient,
    standin: CrossModelStandin,
    clock: FakeClock,
    balance: int,
    holds: int,
    available: int,
) -> None:
    standin.credits.update(balance_micro=balance, uncollected_micro=holds)
    snap = await fetch_snapshot("main", client, clock, usage_deadline=1.0)
    assert (snap.balance_micro, snap.holds_micro, snap.available_micro) == (
        balance,
        holds,
        available,
    )


async def test_credits_and_usage_are_fetched_concurrently(
    client: CrossModelClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.queue("credits", Reply(json=standin.credits, delay=0.5))
    standin.queue("usage", Reply(json=standin.usage, delay=0.5))
    started = time.monotonic()
    snap = await fetch_snapshot("main", client, clock, usage_deadline=2.0)
    elapsed = time.monotonic() - started
    assert snap.usage_state is UsageState.OK
    assert 0.45 < elapsed < 0.9, f"took {elapsed:.2f} s: the two requests ran one after the other"
    # Both requests reached the server before either answered.
    assert sorted(s.path for s in standin.seen) == ["/v1/credits", "/v1/usage"]


async def test_slow_usage_never_delays_the_balance(
    client: CrossModelClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.queue("usage", Reply(json=standin.usage, delay=3.0))
    on_balance = Recorder()
    started = time.monotonic()
    snap = await fetch_snapshot("main", client, clock, usage_deadline=0.5, on_balance=on_balance)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert snap.usage_state is UsageState.TIMED_OUT
    assert snap.usage is None
    assert snap.usage_error == "/usage: no answer within 0.5 s"
    assert snap.balance_micro == 8059489
    assert snap.available_micro == 7934489
    # The balance was handed over at once, before the usage deadline.
    assert len(on_balance.calls) == 1
    at, early = on_balance.calls[0]
    assert at < 0.4
    assert early.usage_state is UsageState.PENDING
    assert early.usage is None
    assert early.balance_micro == 8059489
    assert early.currency == "USD"
    assert standin.count("usage") == 1


async def test_on_balance_not_called_when_usage_is_already_done(
    client: CrossModelClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.queue("credits", Reply(json=standin.credits, delay=0.3))
    on_balance = Recorder()
    snap = await fetch_snapshot("main", client, clock, usage_deadline=2.0, on_balance=on_balance)
    assert snap.usage_state is UsageState.OK
    assert on_balance.calls == []


async def test_usage_500_is_failed_and_balance_kept(
    client: CrossModelClient,
    standin: CrossModelStandin,
    clock: FakeClock,
    caplog_all: pytest.LogCaptureFixture,
) -> None:
    standin.always["usage"] = Reply(status=500, json={})
    snap = await fetch_snapshot("main", client, clock, usage_deadline=2.0)
    assert snap.usage_state is UsageState.FAILED
    assert snap.usage is None
    assert snap.usage_error == "/usage: HTTP 500"
    assert snap.balance_micro == 8059489
    assert snap.holds_micro == 125000
    assert standin.count("usage") == 3  # retried like any transient failure
    assert "main: /usage: HTTP 500; balance kept" in caplog_all.messages


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(body=b"<html>oops</html>"),
         "/usage: not JSON (application/json): '<html>oops</html>'"),
        (Reply(status=401, json={}), "/usage: HTTP 401: the API key was rejected"),
        (Reply(json={"currency": "USD"}), "/usage: daily: Field required; weekly: Field required; "
         "monthly: Field required"),
    ],
)  # fmt: skip
async def test_usage_broken_is_failed_and_balance_kept(
    client: CrossModelClient,
    standin: CrossModelStandin,
    clock: FakeClock,
    reply: Reply,
    error: str,
) -> None:
    standin.always["usage"] = reply
    snap = await fetch_snapshot("main", client, clock, usage_deadline=2.0)
    assert snap.usage_state is UsageState.FAILED
    assert snap.usage_error == error
    assert snap.usage is None
    assert snap.balance_micro == 8059489


@pytest.mark.parametrize("usage_currency", ["EUR", " eur ", "GBP"])
async def test_currency_mismatch_drops_the_windows(
    client: CrossModelClient,
    standin: CrossModelStandin,
    clock: FakeClock,
    caplog_all: pytest.LogCaptureFixture,
    usage_currency: str,
) -> None:
    standin.usage["currency"] = usage_currency
    snap = await fetch_snapshot("main", client, clock, usage_deadline=2.0)
    code = usage_currency.strip().upper()
    assert snap.usage_state is UsageState.CURRENCY_MISMATCH
    assert snap.usage is None
    assert snap.usage_error == f"/usage currency {code} differs from balance currency USD"
    assert snap.currency == "USD"
    assert snap.balance_micro == 8059489
    assert (
        f"main: /usage currency {code} differs from balance currency USD; "
        "usage dropped for this poll"
    ) in caplog_all.messages


async def test_currency_compared_after_normalising(
    client: CrossModelClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.credits["currency"] = "eur"
    standin.usage["currency"] = " EUR\n"
    snap = await fetch_snapshot("main", client, clock, usage_deadline=2.0)
    assert snap.usage_state is UsageState.OK
    assert snap.currency == "EUR"
    assert snap.usage == Usage(DAILY, WEEKLY, MONTHLY)


async def test_empty_usage_currency_drops_the_windows(
    client: CrossModelClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.usage["currency"] = ""
    snap = await fetch_snapshot("main", client, clock, usage_deadline=2.0)
    assert snap.usage_state is UsageState.FAILED
    assert snap.usage is None
    assert snap.usage_error == "/usage: currency: currency is empty"


@pytest.mark.parametrize(
    ("reply", "error_type", "message"),
    [
        (Reply(status=401, json={}), AuthError, "/credits: HTTP 401: the API key was rejected"),
        (Reply(status=503, json={}), ServerError, "/credits: HTTP 503"),
        (Reply(body=b"<html>"), InvalidResponse, "/credits: not JSON (application/json): '<html>'"),
    ],
)
async def test_credits_failure_raises(
    client: CrossModelClient,
    standin: CrossModelStandin,
    clock: FakeClock,
    reply: Reply,
    error_type: type[Exception],
    message: str,
) -> None:
    standin.always["credits"] = reply
    on_balance = Recorder()
    with pytest.raises(error_type) as info:
        await fetch_snapshot("main", client, clock, usage_deadline=2.0, on_balance=on_balance)
    assert type(info.value) is error_type
    assert str(info.value) == message
    assert on_balance.calls == []


async def test_credits_failure_cancels_a_slow_usage(
    client: CrossModelClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.always["credits"] = Reply(status=403, json={})
    standin.queue("usage", Reply(json=standin.usage, delay=0.6))
    started = time.monotonic()
    with pytest.raises(AuthError):
        await fetch_snapshot("main", client, clock, usage_deadline=5.0)
    assert time.monotonic() - started < 0.5
    await asyncio.sleep(0)
    # Only the stand-in's own handler tasks may remain: the /usage request was cancelled.
    pending = [
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and not t.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]
    ]
    assert pending == []


async def test_fetched_at_comes_from_the_clock(client: CrossModelClient, clock: FakeClock) -> None:
    clock.advance(3600)
    snap = await fetch_snapshot("main", client, clock, usage_deadline=1.0)
    assert snap.fetched_at == datetime(2026, 1, 5, 13, 0, tzinfo=UTC)


# ---- windows ------------------------------------------------------------------------------


def test_window_success_rate() -> None:
    assert DAILY.success_rate == 97.6
    assert MONTHLY.success_rate == 98.4
    assert WindowUsage(0, 0, 0, 0, 0, 0).success_rate is None
    assert WindowUsage(1, 1, 1, 2, 5, None).success_rate is None
    assert WindowUsage(1, 1, 1, 2, 3, 3).success_rate == 100.0


def test_usage_get_and_window_names() -> None:
    usage = Usage(DAILY, WEEKLY, MONTHLY)
    assert [usage.get(w) for w in Window] == [DAILY, WEEKLY, MONTHLY]
    assert [(w.api, w.suffix, w.label) for w in Window] == [
        ("daily", "today", "today"),
        ("weekly", "week", "this week"),
        ("monthly", "month", "this month"),
    ]


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "daily", "weekly", "monthly"),
    [
        # Wednesday mid-month
        (utc(2026, 1, 14, 15, 30, 12, 500), utc(2026, 1, 14), utc(2026, 1, 12), utc(2026, 1, 1)),
        # Monday 00:00:00 exactly starts all of day and week
        (utc(2026, 1, 5), utc(2026, 1, 5), utc(2026, 1, 5), utc(2026, 1, 1)),
        # Sunday, last microsecond of the ISO week
        (utc(2026, 1, 11, 23, 59, 59, 999999), utc(2026, 1, 11), utc(2026, 1, 5), utc(2026, 1, 1)),
        # ISO week straddling New Year: Thursday 1 Jan belongs to the week of Monday 29 Dec
        (utc(2026, 1, 1, 0, 0, 1), utc(2026, 1, 1), utc(2025, 12, 29), utc(2026, 1, 1)),
        # Last second of the year
        (utc(2025, 12, 31, 23, 59, 59), utc(2025, 12, 31), utc(2025, 12, 29), utc(2025, 12, 1)),
        # Leap day, and the week crossing from February into March
        (utc(2024, 2, 29, 8), utc(2024, 2, 29), utc(2024, 2, 26), utc(2024, 2, 1)),
        (utc(2024, 3, 2, 8), utc(2024, 3, 2), utc(2024, 2, 26), utc(2024, 3, 1)),
        # First day of a month is its own month start
        (utc(2026, 3, 1, 0, 0, 0, 1), utc(2026, 3, 1), utc(2026, 2, 23), utc(2026, 3, 1)),
    ],
)
def test_window_start(at: datetime, daily: datetime, weekly: datetime, monthly: datetime) -> None:
    assert Window.DAY.start(at) == daily
    assert Window.WEEK.start(at) == weekly
    assert Window.MONTH.start(at) == monthly
    assert Window.WEEK.start(at).weekday() == 0
    assert Window.DAY.start(at).tzinfo is UTC


def test_window_boundaries_reset_one_microsecond_later() -> None:
    end = utc(2026, 1, 31, 23, 59, 59, 999999)  # Saturday, last instant of January
    after = end + timedelta(microseconds=1)
    assert Window.DAY.start(after) == after
    assert Window.MONTH.start(after) == utc(2026, 2, 1)
    assert Window.MONTH.start(end) == utc(2026, 1, 1)
    assert Window.WEEK.start(after) == Window.WEEK.start(end) == utc(2026, 1, 26)


def test_fake_clock_starts_on_a_utc_monday() -> None:
    now = FakeClock().now()
    assert now.tzinfo is UTC
    assert now.utcoffset() == timedelta(0)
    assert Window.WEEK.start(now) == utc(2026, 1, 5)
