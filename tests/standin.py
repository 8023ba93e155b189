"""A real aiohttp server on loopback standing in for CrossModel, with scenario control."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SAMPLE_USAGE: dict[str, Any] = {
    "currency": "USD",
    "daily": {
        "cost_micro": 10250,
        "prompt_tokens": 9100,
        "completion_tokens": 2900,
        "total_tokens": 12000,
        "request_count": 41,
        "success_count": 40,
    },
    "weekly": {
        "cost_micro": 670000,
        "prompt_tokens": 401000,
        "completion_tokens": 128000,
        "total_tokens": 529000,
        "request_count": 529,
        "success_count": 521,
    },
    "monthly": {
        "cost_micro": 5370000,
        "prompt_tokens": 2500000,
        "completion_tokens": 700000,
        "total_tokens": 3200000,
        "request_count": 3200,
        "success_count": 3150,
    },
}


@dataclass
class Reply:
    """One scripted answer; `body` (raw bytes) wins over `json`."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: bool = False  # send the body a byte at a time, slowly


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when the request arrived


class CrossModelStandin:
    """Scenario knobs: `credits`/`usage` dicts are served unless a scripted Reply is queued."""

    def __init__(self) -> None:
        self.credits: dict[str, Any] = {
            "currency": "USD",
            "balance_micro": 8059489,
            "uncollected_micro": 125000,
        }
        self.usage: dict[str, Any] = copy.deepcopy(SAMPLE_USAGE)
        self.script: dict[str, list[Reply]] = {"credits": [], "usage": []}
        self.always: dict[str, Reply | None] = {"credits": None, "usage": None}
        self.seen: list[Seen] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def queue(self, endpoint: str, *replies: Reply) -> None:
        self.script[endpoint].extend(replies)

    def count(self, endpoint: str) -> int:
        return sum(1 for s in self.seen if s.path.endswith("/" + endpoint))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        self.seen.append(Seen(request.path, dict(request.headers)))
        if endpoint not in self.script:
            return web.Response(status=404)
        reply = (
            self.script[endpoint].pop(0)
            if self.script[endpoint]
            else self.always[endpoint] or Reply(json=getattr(self, endpoint))
        )
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body if reply.body is not None else json.dumps(reply.json).encode()
        headers = {"Content-Type": "application/json", **reply.headers}
        if not reply.trickle:
            return web.Response(status=reply.status, body=body, headers=headers)
        resp = web.StreamResponse(status=reply.status, headers=headers)
        await resp.prepare(request)
        for i in range(len(body)):
            await resp.write(body[i : i + 1])
            await asyncio.sleep(0.2)
        await resp.write_eof()
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/{endpoint}", self._handle)
        app.router.add_get("/other/v1/{endpoint}", self._handle)
        # A scripted hang must not hold the test's teardown: in-flight answers are dropped.
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
