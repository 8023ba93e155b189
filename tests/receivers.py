"""A real aiohttp server on loopback standing in for ntfy and a webhook receiver.

Records every POST (path, headers, body, the status it answered), and every GET/HEAD apart
(`gets`: what `check` asks without sending a notice). It can answer an error
status instead of 200 (`fail()` / `recover()`), or be stopped and started again on the SAME
port, so a test can play "the receiver is down, then back".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

WEBHOOK_PATH = "/hook"


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]  # header names lower-cased
    body: bytes
    status: int  # what the receiver answered

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return self.status < 300


class Receivers:
    """ntfy (`POST /<topic>`) and a webhook (`POST /hook`) on one loopback port."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.gets: list[Post] = []
        # An ntfy access token: when set, an ntfy request without it is answered 401.
        self.token: str | None = None
        self.status = 200  # what the next POST is answered with
        self.delay = 0.0  # seconds to hold each answer (a slow receiver)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None

    # ---- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    @property
    def running(self) -> bool:
        return self._runner is not None

    # ---- what was received -----------------------------------------------------------------

    def ntfy(self, topic: str, *, ok_only: bool = False) -> list[Post]:
        return [p for p in self.posts if p.path == f"/{topic}" and (p.ok or not ok_only)]

    def webhook(self, *, ok_only: bool = False) -> list[Post]:
        return [p for p in self.posts if p.path == WEBHOOK_PATH and (p.ok or not ok_only)]

    async def wait_for(
        self, predicate: Callable[[Receivers], Any], timeout: float = 5.0, what: str = ""
    ) -> Any:
        assert self._changed is not None, "start() the receivers first"
        changed = self._changed

        async def _wait() -> Any:
            async with changed:
                while not (result := predicate(self)):
                    await changed.wait()
                return result

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            seen = [(p.path, p.status, p.header("X-Message-Id")) for p in self.posts]
            raise AssertionError(f"timed out waiting for {what or predicate}; got {seen}") from None

    # ---- behaviour -------------------------------------------------------------------------

    def fail(self, status: int = 503, delay: float = 0.0) -> None:
        """Answer `status` from now on, each answer held back `delay` seconds."""
        self.status = status
        self.delay = delay

    def recover(self) -> None:
        self.status = 200
        self.delay = 0.0

    def _unauthorized(self, request: web.Request) -> bool:
        return (
            self.token is not None
            and request.path != WEBHOOK_PATH
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        )

    async def _handle_get(self, request: web.Request) -> web.Response:
        status = 401 if self._unauthorized(request) else self.status
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.gets.append(Post(request.path, headers, b"", status))
        if status >= 300:
            return web.Response(status=status, text="receiver unavailable")
        # ntfy's health and account endpoints answer JSON; anything else a plain "ok".
        if request.path == "/v1/health":
            return web.json_response({"healthy": True})
        return web.Response(text="ok")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, delay = self.status, self.delay
        if self._unauthorized(request):
            status = 401
        post = Post(request.path, {k.lower(): v for k, v in request.headers.items()}, body, status)
        assert self._changed is not None
        async with self._changed:
            self.posts.append(post)
            self._changed.notify_all()
        if delay:
            await asyncio.sleep(delay)
        if status >= 300:
            return web.Response(status=status, text="receiver unavailable")
        return web.Response(status=status, text="ok")

    async def start(self) -> None:
        """Start listening; after a stop() it listens on the same port again."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/{path}", self._handle)
        app.router.add_get("/{path:.*}", self._handle_get)  # HEAD too
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening (connections are refused) but keep the port for start()."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
