"""CrossModel HTTP client: GET /credits and /usage with retries, caps and key hygiene.

Knows nothing of MQTT. Every failure becomes an `ApiError` whose `status` is one of the
API-status values shown in Home Assistant, and whose message is redacted and short.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from .. import __version__
from ..core.clock import Clock, backoff
from ..core.model import ApiStatus
from ..core.neterror import describe
from ..core.redact import redact, shorten
from .wire import CreditsWire, UsageWire

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_REDIRECTS = 3
# Backoff cap: a Retry-After longer than this ends the attempt; the poller waits it out instead.
MAX_RETRY_WAIT = 60.0

W = TypeVar("W", bound=BaseModel)


def retry_wait(attempt: int) -> float:
    """Longest wait before retry `attempt` + 1 (1, 2, 4 … s, capped); jitter scales it down."""
    return backoff(1.0, MAX_RETRY_WAIT, attempt - 1)


def retry_budget(retries: int, timeout: float) -> float:
    """The longest one request with its retries may take (Retry-After aside)."""
    return (retries + 1) * timeout + sum(retry_wait(i) for i in range(1, retries + 1))


class ApiError(Exception):
    status: ApiStatus = "invalid_response"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(ApiError):
    status: ApiStatus = "auth_failed"


class InvalidResponse(ApiError):
    status: ApiStatus = "invalid_response"


class TransientError(ApiError):
    status: ApiStatus = "unreachable"


class ServerError(TransientError):
    """The server answered, with HTTP 5xx: retried like a network failure, but not called
    "unreachable" (the user should look at the server, not at their network)."""

    status: ApiStatus = "server_error"


class RateLimited(TransientError):
    status: ApiStatus = "rate_limited"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (relative to `now`).

    None for anything else: junk from the server means "no advice", never an error."""
    if not value:
        return None
    value = value.strip()
    # ASCII digits only: str.isdigit() also accepts "²" and other digits float() refuses.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def redirect_target(url: str, location: str) -> str:
    """The URL a redirect from `url` leads to; InvalidResponse unless it is a plain URL on the
    same origin: another origin would receive the key, and a malformed one (a bad port, user
    info, control characters) must be an invalid answer, never an exception from the client."""
    endpoint = urlsplit(url).path.rsplit("/", 1)[-1]
    malformed = InvalidResponse(f"/{endpoint}: refused a redirect to a malformed location")
    if not location or any(ord(c) < 33 or ord(c) == 127 for c in location):
        raise malformed
    try:
        target = urljoin(url, location)
        parts = urlsplit(target)
        same = _origin(target) == _origin(url)
    except ValueError:
        raise malformed from None
    if "@" in parts.netloc or parts.fragment:
        raise malformed
    if not same:
        raise InvalidResponse(f"/{endpoint}: refused redirect to another host or scheme")
    return target


class CrossModelClient:
    """One account's view of the API; the aiohttp session is shared by the whole process."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        account: str,
        base_url: str,
        api_key: str,
        clock: Clock,
        credits_timeout: float = 15.0,
        usage_timeout: float = 5.0,
        retries: int = 3,
        max_body: int = MAX_BODY,
        rng: Callable[[], float] = random.random,
        retry_log_level: int = logging.INFO,
    ) -> None:
        """`retry_log_level`: one-shot commands log retries at DEBUG and only the final
        error in one line."""
        self._session = session
        self._account = account  # names the account in log lines
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._clock = clock
        self._timeouts = {"credits": credits_timeout, "usage": usage_timeout}
        self._retries = retries
        self._max_body = max_body
        self._rng = rng
        self._retry_log_level = retry_log_level
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": f"cm-mqtt-bridge/{__version__}",
        }
        # The failure that made the current request of each endpoint retry, so a caller that
        # gives up on it (a deadline) can say why, not just that it took too long.
        self.retrying: dict[str, ApiError] = {}

    async def get_credits(self) -> CreditsWire:
        return await self._get("credits", CreditsWire)

    async def get_usage(self) -> UsageWire:
        return await self._get("usage", UsageWire)

    def _redact(self, text: str) -> str:
        return redact(text, (self._key,))

    def _wait(self, state: RetryCallState) -> float:
        # Full-jitter exponential backoff (1, 2, 4 … s, capped), never shorter than Retry-After.
        wait = retry_wait(state.attempt_number) * (0.5 + self._rng() / 2)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, ApiError) else None
        return max(wait, retry_after or 0.0)

    def _stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiError) and (exc.retry_after or 0.0) > MAX_RETRY_WAIT:
            return True
        return stop_after_attempt(self._retries + 1)(state)

    async def _get(self, endpoint: str, model: type[W]) -> W:
        # Most requests succeed at once; tenacity's setup costs more than the request's own
        # parsing, so it is entered only after a transient failure, which it then replays as
        # its first attempt (same waits, same limits, same logs).
        self.retrying.pop(endpoint, None)
        try:
            return await self._get_once(endpoint, model)
        except TransientError as exc:
            first: TransientError | None = exc
            self.retrying[endpoint] = exc

        async def attempt() -> W:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            try:
                return await self._get_once(endpoint, model)
            except TransientError as exc:
                self.retrying[endpoint] = exc
                raise

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=self._wait,
            stop=self._stop,
            sleep=self._clock.sleep,
            reraise=True,
            before_sleep=lambda s: log.log(
                self._retry_log_level,
                "%s: attempt %d failed (%s), retrying in %.1f s",
                self._account,
                s.attempt_number,
                s.outcome.exception() if s.outcome else "?",
                s.next_action.sleep if s.next_action else 0.0,
            ),
        )
        return await retrying(attempt)

    async def _get_once(self, endpoint: str, model: type[W]) -> W:
        limit = self._timeouts[endpoint]
        try:
            # One deadline for the whole exchange, so a server trickling bytes cannot hold us.
            async with asyncio.timeout(limit):
                body, content_type = await self._fetch(endpoint)
        except TimeoutError:
            raise TransientError(f"/{endpoint}: no complete answer within {limit:g} s") from None
        except aiohttp.ClientError as exc:
            raise TransientError(
                f"/{endpoint}: connection failed: {self._redact(describe(exc))}"
            ) from None
        except ValueError:  # a URL the HTTP client cannot use, after a redirect
            raise InvalidResponse(f"/{endpoint}: refused a redirect to an unusable URL") from None
        return self._parse(endpoint, model, body, content_type)

    async def _fetch(self, endpoint: str) -> tuple[bytes, str]:
        url = f"{self._base}/{endpoint}"
        for _ in range(MAX_REDIRECTS + 1):
            async with self._session.get(url, headers=self._headers, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308):
                    # Following to another origin would hand it the key: refused.
                    url = redirect_target(url, resp.headers.get("Location", ""))
                    continue
                self._check_status(endpoint, resp)
                body = await self._read_capped(endpoint, resp)
                return body, resp.headers.get("Content-Type", "")
        raise InvalidResponse(f"/{endpoint}: too many redirects")

    def _check_status(self, endpoint: str, resp: aiohttp.ClientResponse) -> None:
        if resp.status == 200:
            return
        if resp.status in (401, 403):
            raise AuthError(f"/{endpoint}: HTTP {resp.status}: the API key was rejected")
        retry_after = parse_retry_after(
            resp.headers.get("Retry-After"), self._clock.now().timestamp()
        )
        if resp.status == 429:
            raise RateLimited(f"/{endpoint}: HTTP 429 rate limited", retry_after=retry_after)
        if resp.status >= 500:
            raise ServerError(f"/{endpoint}: HTTP {resp.status}", retry_after=retry_after)
        if resp.status == 404:
            raise InvalidResponse(
                f"/{endpoint}: HTTP 404 not found at {self._base}/{endpoint}; "
                "check that the API URL ends with /v1"
            )
        raise InvalidResponse(f"/{endpoint}: unexpected HTTP {resp.status}")

    async def _read_capped(self, endpoint: str, resp: aiohttp.ClientResponse) -> bytes:
        too_big = InvalidResponse(f"/{endpoint}: body larger than {self._max_body} bytes")
        length = resp.content_length
        if length is not None and length > self._max_body:
            raise too_big
        if length is not None and "Content-Encoding" not in resp.headers:
            # The usual answer: small, sized and not compressed, so its size is the cap's.
            return await resp.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_body:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, endpoint: str, model: type[W], body: bytes, content_type: str) -> W:
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError):
            excerpt = shorten(self._redact(body[:300].decode("utf-8", "replace")), 120)
            ctype = content_type.split(";")[0] or "no content type"
            raise InvalidResponse(f"/{endpoint}: not JSON ({ctype}): {excerpt!r}") from None
        if not isinstance(data, dict):
            raise InvalidResponse(f"/{endpoint}: expected a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                ".".join(str(p) for p in e["loc"]) + ": " + e["msg"].removeprefix("Value error, ")
                for e in exc.errors(include_input=False, include_url=False)[:5]
            )
            raise InvalidResponse(f"/{endpoint}: {self._redact(problems)}") from None
