"""Optional HTTP endpoint: /healthz (JSON, 200 healthy / 503 not) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .api import retry_budget
from .clock import Clock
from .config import PollConfig
from .metrics import Metrics

if TYPE_CHECKING:
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
        "alerts_pending": alerts_pending,
        "alert_store": "ok" if store_problem is None else f"failing: {store_problem}",
        "tasks": tasks,  # empty while every task runs
        "version": version,
        "accounts": accounts,
    }


class HealthServer:
    def __init__(
        self, host: str, port: int, report: Callable[[], dict[str, Any]], metrics: Metrics
    ) -> None:
        self._host = host
        self._port = port
        self._report = report
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        # Port 0 asks the OS for a free one (tests); report the one we got.
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("health endpoint on http://%s:%d/healthz", self._host, self.port)

    async def serve(self) -> None:
        """Keep the endpoint up (a supervised task): start it again if it is not running."""
        if self._runner is None:
            await self.start()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        report = self._report()
        return web.json_response(report, status=200 if report["healthy"] else 503)

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        # CONTENT_TYPE_LATEST carries a charset parameter, which aiohttp wants separately.
        ctype, _, charset = CONTENT_TYPE_LATEST.partition("; charset=")
        return web.Response(
            body=self._metrics.render(), content_type=ctype, charset=charset or None
        )
