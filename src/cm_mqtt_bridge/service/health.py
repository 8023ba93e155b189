"""Optional HTTP endpoint: /healthz (JSON, 200 healthy / 503 not) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any

from ..config.settings import PollConfig
from ..core.clock import Clock
from ..crossmodel.client import retry_budget
from .metrics import Metrics

if TYPE_CHECKING:
    from aiohttp import web

    from .runtime import AccountRuntime

log = logging.getLogger(__name__)


def poll_budget(poll: PollConfig) -> float:
    """Seconds within which a healthy account has a good poll: two intervals plus what the
    retries of one poll may take."""
    return 2 * poll.interval + poll.jitter + retry_budget(poll.retries, poll.credits_timeout)


def accounts_report(
    accounts: Iterable[AccountRuntime], poll: PollConfig, clock: Clock
) -> dict[str, dict[str, Any]]:
    now = clock.monotonic()
    budget = poll_budget(poll)
    out: dict[str, dict[str, Any]] = {}
    for acc in accounts:
        last = acc.view.last_success_at
        out[acc.id] = {
            "ok": acc.last_success is not None and now - acc.last_success <= budget,
            "fresh": acc.view.fresh,
            "api_status": acc.view.api_status,
            "last_success": last.isoformat() if last else None,
            "last_error": acc.view.error,
            "polls": acc.polls,
        }
    return out


def build_report(
    *,
    version: str,
    connected: bool,
    in_sync: bool,
    accounts: dict[str, dict[str, Any]],
    tasks: dict[str, str],
    store_problem: str | None,
    alerts_pending: int,
) -> dict[str, Any]:
    """/healthz: healthy when connected, every account polled within its budget, every task
    running (or settled after a restart) and the alert store working."""
    return {
        "healthy": connected
        and all(a["ok"] for a in accounts.values())
        and not tasks
        and store_problem is None,
        "broker_connected": connected,
        # Every retained topic on the broker holds what it should (False while a burst of
        # changes or a republish is still going out).
        "mqtt_in_sync": in_sync,
        "alerts_pending": alerts_pending,
        "alert_store": "ok" if store_problem is None else f"failing: {store_problem}",
        "tasks": tasks,  # empty while every task runs
        "version": version,
        "accounts": accounts,
    }


# Requests answered at once per endpoint; more get a 503 at once. A burst (a scraper gone
# wild) then costs neither the event loop nor memory: each answer in flight holds a copy of
# its unsent body.
MAX_REQUESTS = 8
# /metrics is rendered at most this often (500 accounts take ~50 ms and ~600 kB); requests in
# between get the text of the last render.
RENDER_EVERY = 1.0


@dataclass(eq=False)
class HealthServer:
    host: str
    port: int  # as configured (0: any free port); after start(), the one bound
    report: Callable[[], dict[str, Any]]
    metrics: Metrics
    clock: Clock
    _: KW_ONLY
    max_requests: int = MAX_REQUESTS
    render_every: float = RENDER_EVERY
    renders: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        self._busy = {"healthz": 0, "metrics": 0}
        self._text: bytes | None = None
        self._text_at = 0.0
        self._rendering: asyncio.Future[bytes] | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # Imported here: aiohttp.web costs about 4 MiB of RSS, paid only with the endpoint on.
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        # Port 0 asks the OS for a free one (tests); report the one we got.
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("health endpoint on http://%s:%d/healthz", self.host, self.port)

    async def serve(self) -> None:
        """Keep the endpoint up (a supervised task): start it again if it is not running."""
        if self._runner is None:
            await self.start()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        async def answer() -> web.Response:
            # Built fresh each time (about 1 ms for 500 accounts), so it never lags the state.
            from aiohttp import web

            report = self.report()
            return web.json_response(report, status=200 if report["healthy"] else 503)

        return await self._limited("healthz", request, answer)

    async def _metrics_handler(self, request: web.Request) -> web.StreamResponse:
        async def answer() -> web.Response:
            # CONTENT_TYPE_LATEST carries a charset parameter, which aiohttp wants separately.
            from aiohttp import web

            ctype, _, charset = self.metrics.content_type.partition("; charset=")
            body = await self._metrics_text()
            return web.Response(body=body, content_type=ctype, charset=charset or None)

        return await self._limited("metrics", request, answer)

    async def _limited(
        self,
        endpoint: str,
        request: web.Request,
        answer: Callable[[], Awaitable[web.Response]],
    ) -> web.StreamResponse:
        from aiohttp import web

        if self._busy[endpoint] >= self.max_requests:
            self.refused += 1
            return web.Response(
                status=503, text="busy: too many requests at once\n", headers={"Retry-After": "1"}
            )
        self._busy[endpoint] += 1
        try:
            response = await answer()
            # Sent before the slot is given back, so a slow reader keeps holding it (and the
            # part of the body it has not read yet) until it has taken the body.
            await response.prepare(request)
            await response.write_eof()
            return response
        finally:
            self._busy[endpoint] -= 1

    async def _metrics_text(self) -> bytes:
        if self._text is not None and self.clock.monotonic() - self._text_at < self.render_every:
            return self._text
        if self._rendering is None:
            self._rendering = asyncio.ensure_future(self._render())
        # Shielded: a client that goes away must not cancel the render others wait for.
        return await asyncio.shield(self._rendering)

    async def _render(self) -> bytes:
        self.renders += 1
        started = self.clock.monotonic()
        try:
            # On a thread: polling and publishing must not wait for it.
            text = await asyncio.to_thread(self.metrics.render)
        finally:
            self._rendering = None
        self._text, self._text_at = text, started
        return text
