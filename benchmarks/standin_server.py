"""A fast loopback CrossModel stand-in for the benchmark, run as its own process.

    .venv/bin/python -m benchmarks.standin_server      # prints "PORT <n>" and serves

A bare asyncio HTTP/1.1 keep-alive server (no framework), so that the server is never what the
benchmark measures: the bridge and the raw-aiohttp baseline both talk to this same process.

- `/static/v1/credits`, `/static/v1/usage`: the same answer every time (an idle account).
- `/moving/v1/credits`, `/moving/v1/usage`: every answer differs from the previous one (balance
  falls and spend grows by one micro unit per request), so every poll has something to publish.
- `/ctl/freeze`, `/ctl/move`: the moving endpoints keep repeating their last answer / move again.
- `/ctl/count`: how many requests it has answered (the outside benchmark waits on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

CREDITS: dict[str, Any] = {
    "currency": "USD",
    "balance_micro": 8_059_489,
    "uncollected_micro": 125_000,
}
USAGE_WINDOWS: dict[str, tuple[int, int, int, int]] = {
    # cost_micro, prompt, completion, requests
    "daily": (10_250, 9_100, 2_900, 41),
    "weekly": (670_000, 401_000, 128_000, 529),
    "monthly": (5_370_000, 2_500_000, 700_000, 3_200),
}


def credits_body(step: int) -> bytes:
    return json.dumps({**CREDITS, "balance_micro": CREDITS["balance_micro"] - step}).encode()


def usage_body(step: int) -> bytes:
    doc: dict[str, Any] = {"currency": "USD"}
    for window, (cost, prompt, completion, requests) in USAGE_WINDOWS.items():
        doc[window] = {
            "cost_micro": cost + step,
            "prompt_tokens": prompt + step,
            "completion_tokens": completion,
            "total_tokens": prompt + step + completion,
            "request_count": requests + step,
            "success_count": requests + step - 1,
        }
    return json.dumps(doc).encode()


def response(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class Standin:
    def __init__(self) -> None:
        self.requests = 0
        self.moving_credits = 0
        self.moving_usage = 0
        self.frozen = False
        self.static = {
            b"/static/v1/credits": response("200 OK", credits_body(0)),
            b"/static/v1/usage": response("200 OK", usage_body(0)),
        }
        self.not_found = response("404 Not Found", b'{"error":"not found"}')

    def answer(self, path: bytes) -> bytes:
        self.requests += 1
        cached = self.static.get(path)
        if cached is not None:
            return cached
        if path == b"/moving/v1/credits":
            self.moving_credits += 0 if self.frozen else 1
            return response("200 OK", credits_body(self.moving_credits))
        if path == b"/moving/v1/usage":
            self.moving_usage += 0 if self.frozen else 1
            return response("200 OK", usage_body(self.moving_usage))
        if path == b"/ctl/count":
            self.requests -= 1  # the count of API requests, not of this one
            return response("200 OK", str(self.requests).encode())
        if path in (b"/ctl/freeze", b"/ctl/move"):
            self.frozen = path == b"/ctl/freeze"
            return response("200 OK", b"{}")
        return self.not_found


class HttpProtocol(asyncio.Protocol):
    def __init__(self, standin: Standin) -> None:
        self.standin = standin
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # GET requests only: a request ends at the blank line after its headers.
        self.buffer += data
        out: list[bytes] = []
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b"/"
            out.append(self.standin.answer(path))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(port: int = 0) -> None:
    standin = Standin()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(standin), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
