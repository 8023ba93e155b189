"""A built-in CrossModel simulator for `demo`: a loopback HTTP server whose values move.

Spend grows steadily, the available balance crosses the demo's low-balance threshold after about
30 s, and a top-up arrives after about 45 s, so a newcomer sees every kind of change quickly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

USAGE_BASE = {"daily": 310_000, "weekly": 2_450_000, "monthly": 9_870_000}
MICRO_PER_TOKEN = 2  # about 2 USD per million tokens


@dataclass
class Simulator:
    """`elapsed`: seconds of demo time so far (the demo may run it faster than real time)."""

    elapsed: Callable[[], float]
    currency: str = "USD"
    start_balance: int = 5_600_000  # micro units
    rate: int = 20_000  # micro units spent per second
    topup_at: float = 45.0
    topup: int = 10_000_000
    url: str = ""
    _runner: web.AppRunner | None = field(default=None, repr=False)

    def spent(self) -> int:
        return int(self.elapsed() * self.rate)

    def credits(self) -> dict[str, Any]:
        topped = self.topup if self.elapsed() >= self.topup_at else 0
        balance = self.start_balance - self.spent() + topped
        return {
            "currency": self.currency,
            "balance_micro": balance,
            "uncollected_micro": 40_000,  # a request or two in flight
        }

    def usage(self) -> dict[str, Any]:
        out: dict[str, Any] = {"currency": self.currency}
        for window, base in USAGE_BASE.items():
            cost = base + self.spent()
            tokens = cost // MICRO_PER_TOKEN
            requests = tokens // 900
            out[window] = {
                "cost_micro": cost,
                "prompt_tokens": tokens * 3 // 4,
                "completion_tokens": tokens - tokens * 3 // 4,
                "total_tokens": tokens,
                "request_count": requests,
                "success_count": requests - requests // 50,
            }
        return out

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/v1/credits", self._credits)
        app.router.add_get("/v1/usage", self._usage)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        self.url = f"http://{host}:{bound}/v1"
        return self.url

    async def _credits(self, _request: web.Request) -> web.Response:
        return web.json_response(self.credits())

    async def _usage(self, _request: web.Request) -> web.Response:
        return web.json_response(self.usage())

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
