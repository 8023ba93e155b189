"""Delivery against stalling and refusing receivers (issue 11, findings 5 and 6): a receiver
that stalls less than the channel timeout gets one copy; a retry after a timeout carries the
same notice id; a 4xx refusal is final; one channel's notices arrive in the order written.

The stalling receiver is a real aiohttp server in a subprocess, stopped with SIGSTOP. The issue
speaks of a 20 s stall against the 30 s default; that would take 20 s here, so the tests scale
it: a 1.0 s stall against a 1.5 s timeout (same ratio), and a 1.0 s stall against 0.3 s to show
that the retry reuses the id. The default itself is checked on the config."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cm_mqtt_bridge.core.clock import SystemClock
from cm_mqtt_bridge.core.notice import Notice, NoticeKind
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.notify.channels import (
    Channel,
    NtfyChannel,
    NtfyConfig,
    WebhookChannel,
    WebhookConfig,
)
from cm_mqtt_bridge.notify.dispatch import Dispatcher
from cm_mqtt_bridge.service.metrics import Metrics
from cm_mqtt_bridge.store.db import DB_NAME, AsyncStore, Store
from tests.helpers import db_rows, until
from tests.receivers import Receivers

STALL = 1.0

_RECEIVER = """
import asyncio, json, sys
from aiohttp import web
posts = []
async def post(request):
    posts.append([request.path, request.headers.get("X-Message-Id")
                  or request.headers.get("X-CM-Bridge-Id")])
    await request.read()
    return web.Response(text="ok")
async def seen(request):
    return web.json_response(posts)
async def main():
    app = web.Application()
    app.router.add_post("/{path}", post)
    app.router.add_get("/_posts", seen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Stallable:
    """The recording receiver in its own process, so it can be stopped and continued."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    async def posts(self) -> list[tuple[str, str]]:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/_posts") as resp:
            return [(p, i) for p, i in await resp.json()]

    @contextlib.contextmanager
    def stopped(self) -> Any:
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
async def stallable() -> AsyncIterator[Stallable]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RECEIVER, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 10))
        yield Stallable(proc, port)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        await proc.wait()


class Watched:
    """A real channel that also says when it started sending (to stall the receiver then)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.name = channel.name
        self.calls = 0

    async def deliver(self, notice: Notice) -> None:
        self.calls += 1
        await self.channel.deliver(notice)


def notice(n: int, kind: NoticeKind = "fired") -> Notice:
    return Notice(
        f"n{n}-{kind}",
        "main",
        "low_balance",
        kind,
        "Low balance",
        f"notice {n}",
        "1",
        "2",
        datetime.now(UTC),
    )


@contextlib.asynccontextmanager
async def dispatching(
    data: Path, channels: list[Channel], backoff_base: float = 5.0, **kwargs: Any
) -> AsyncIterator[tuple[Dispatcher, AsyncStore]]:
    store = AsyncStore(Store(data / DB_NAME))
    timings = Timings(
        delivery_retry_wait=(0.05, 0.05),
        retry_backoff=(0.05, 0.1),
        dispatch_backoff=(backoff_base, 300.0),
    )
    dispatcher = Dispatcher(store, channels, SystemClock(), timings=timings, **kwargs)
    tasks = [asyncio.create_task(dispatcher.run_channel(c)) for c in channels]
    try:
        yield dispatcher, store
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()


async def commit(store: AsyncStore, dispatcher: Dispatcher, *notices: Notice) -> None:
    now = datetime.now(UTC)
    await store.call(Store.commit, "main", {}, notices, dispatcher.names, now)
    dispatcher.wake()


def delivered(data: Path) -> list[tuple[str, str, bool, bool]]:
    return [
        (i, c, d is not None, f is not None)
        for i, c, d, f in db_rows(data, "SELECT id, channel, delivered, failed FROM outbox")
    ]


def test_the_default_delivery_timeout_outlasts_a_20_s_stall() -> None:
    assert NtfyConfig(topic="t").timeout == 30.0
    assert WebhookConfig(url="http://127.0.0.1:9/hook").timeout == 30.0
    assert NtfyConfig(topic="t", timeout="45s").timeout == 45.0


async def test_a_receiver_stalling_within_the_timeout_gets_exactly_one_copy(
    stallable: Stallable, tmp_path: Path
) -> None:
    timeout = 1.5 * STALL  # the 30 s default against a 20 s stall, scaled
    async with aiohttp.ClientSession() as session:
        ntfy = Watched(
            NtfyChannel(session, NtfyConfig(url=stallable.url, topic="wallet", timeout=timeout))
        )
        hook = Watched(
            WebhookChannel(session, WebhookConfig(url=stallable.url + "/hook", timeout=timeout))
        )
        async with dispatching(tmp_path, [ntfy, hook]) as (dispatcher, store):
            with stallable.stopped():
                await commit(store, dispatcher, notice(1))
                await until(lambda: ntfy.calls and hook.calls, 5, "both channels sending")
                await asyncio.sleep(STALL)  # the stall itself, not an ordering
            await until(lambda: all(r[2] for r in delivered(tmp_path)), 5, "delivered")
    assert sorted(await stallable.posts()) == [("/hook", "n1-fired"), ("/wallet", "n1-fired")]
    assert (ntfy.calls, hook.calls) == (1, 1)


async def test_a_retry_after_a_timeout_carries_the_same_notice_id(
    stallable: Stallable, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        ntfy = Watched(
            NtfyChannel(session, NtfyConfig(url=stallable.url, topic="wallet", timeout=0.3))
        )
        async with dispatching(tmp_path, [ntfy], backoff_base=0.1) as (dispatcher, store):
            with stallable.stopped():
                await commit(store, dispatcher, notice(1))
                await until(lambda: ntfy.calls >= 2, 5, "a retry after a timeout")
                await asyncio.sleep(STALL - 0.3)
            await until(lambda: all(r[2] for r in delivered(tmp_path)), 5, "delivered")
            # The stalled receiver processes every request it got, the timed-out ones too.
            for _ in range(100):
                if len(await stallable.posts()) >= ntfy.calls:
                    break
                await asyncio.sleep(0.02)
    posts = await stallable.posts()
    assert len(posts) >= 2
    assert {i for _, i in posts} == {"n1-fired"}  # a receiver can de-duplicate on it


@pytest.fixture
def receivers(ntfy: Receivers) -> Receivers:
    return ntfy


@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_a_4xx_refusal_is_final_one_error_line_and_a_metric(
    receivers: Receivers, tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    receivers.fail(status)
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        hook = WebhookChannel(session, WebhookConfig(url=receivers.webhook_url))
        async with dispatching(
            tmp_path,
            [hook],
            backoff_base=0.05,
            on_refused=lambda c: metrics.alert_failed.labels(c).inc(),
        ) as (dispatcher, store):
            await commit(store, dispatcher, notice(1), notice(1, "recovered"))
            await until(lambda: all(r[3] for r in delivered(tmp_path)), 5, "marked failed")
            assert await store.call(Store.pending, "webhook") == 0
            assert await store.call(Store.next_due, "webhook") is None  # nothing to retry
    assert [p.json()["id"] for p in receivers.webhook()] == ["n1-fired", "n1-recovered"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        f"webhook: alert n1-{kind} refused by the receiver (HTTP {status}: receiver "
        "unavailable); not retried"
        for kind in ("fired", "recovered")
    ]
    assert 'cm_bridge_alert_failed_total{channel="webhook"} 2.0' in metrics.render().decode()


@pytest.mark.parametrize("status", [408, 429, 503])
async def test_408_429_and_5xx_are_retried(
    receivers: Receivers, tmp_path: Path, status: int
) -> None:
    receivers.fail(status)
    async with aiohttp.ClientSession() as session:
        hook = WebhookChannel(session, WebhookConfig(url=receivers.webhook_url))
        async with dispatching(tmp_path, [hook], backoff_base=0.05) as (dispatcher, store):
            await commit(store, dispatcher, notice(1))
            await receivers.wait_for(lambda r: len(r.webhook()) >= 4, what="retries")
            receivers.recover()
            await until(lambda: all(r[2] for r in delivered(tmp_path)), 5, "delivered")


async def test_a_recovered_never_overtakes_its_fired_waiting_out_a_backoff(
    receivers: Receivers, tmp_path: Path
) -> None:
    receivers.fail(503)
    async with aiohttp.ClientSession() as session:
        ntfy = NtfyChannel(session, NtfyConfig(url=receivers.url, topic="wallet"))
        async with dispatching(tmp_path, [ntfy], attempts=1, backoff_base=0.5) as (
            dispatcher,
            store,
        ):
            await commit(store, dispatcher, notice(1))
            # `fired` failed once and now waits out its backoff ...
            await receivers.wait_for(lambda r: r.ntfy("wallet"), what="the first attempt")
            await until(
                lambda: db_rows(tmp_path, "SELECT attempts FROM outbox")[0][0] == 1, 5, "backoff"
            )
            receivers.recover()
            # ... when the rule recovers: its notice is due at once, but must wait behind.
            await commit(store, dispatcher, notice(1, "recovered"))
            await receivers.wait_for(lambda r: len(r.ntfy("wallet", ok_only=True)) == 2)
    ok = [p.header("X-Message-Id") for p in receivers.ntfy("wallet", ok_only=True)]
    assert ok == ["n1-fired", "n1-recovered"]


class Odd:
    """A channel that fails in a way no channel foresaw, once, on the first notice."""

    name = "odd"

    def __init__(self) -> None:
        self.got: list[str] = []
        self.failed = False

    async def deliver(self, notice: Notice) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("surprise")
        self.got.append(notice.id)


async def test_an_unforeseen_failure_is_retried_and_stalls_nothing(tmp_path: Path) -> None:
    odd = Odd()
    async with dispatching(tmp_path, [odd], backoff_base=0.05) as (dispatcher, store):
        await commit(store, dispatcher, notice(1), notice(2))
        await until(lambda: odd.got == ["n1-fired", "n2-fired"], 5, "both, in order")
    assert odd.failed


def test_the_outbox_keeps_the_order_notices_were_written_whatever_the_clock(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / DB_NAME)
    try:
        later = datetime.now(UTC)
        earlier = later - timedelta(hours=1)  # the wall clock stepped back (NTP) in between
        store.commit("main", {}, [notice(1)], ["ntfy"], later)
        store.commit("main", {}, [notice(1, "recovered")], ["ntfy"], earlier)
        due = store.due("ntfy", later + timedelta(seconds=1))
        assert [item.id for item in due] == ["n1-fired", "n1-recovered"]
    finally:
        store.close()
