"""CrossModelClient against the real stand-in server: parsing, retries, caps, redirects, hygiene."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from cm_mqtt_bridge import __version__
from cm_mqtt_bridge.crossmodel.client import (
    MAX_BODY,
    ApiError,
    AuthError,
    CrossModelClient,
    InvalidResponse,
    RateLimited,
    ServerError,
    TransientError,
    parse_retry_after,
)
from cm_mqtt_bridge.crossmodel.wire import CreditsWire, UsageWire
from tests.conftest import KEY
from tests.fakes import FakeClock
from tests.standin import SAMPLE_USAGE, CrossModelStandin, Reply

MakeClient = Callable[..., CrossModelClient]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(
    session: aiohttp.ClientSession, standin: CrossModelStandin, clock: FakeClock
) -> MakeClient:
    def make(**kw: Any) -> CrossModelClient:
        args: dict[str, Any] = {
            "account": "main",
            "base_url": standin.url,
            "api_key": KEY,
            "clock": clock,
            "credits_timeout": 2.0,
            "usage_timeout": 2.0,
            "retries": 3,
            "rng": lambda: 0.0,  # backoff = 0.5 * 2^(n-1): 0.5, 1, 2 …
        }
        args.update(kw)
        return CrossModelClient(session, **args)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def credits_error(client: CrossModelClient) -> ApiError:
    with pytest.raises(ApiError) as info:
        await client.get_credits()
    assert KEY not in str(info.value)
    return info.value


# ---- good answers -------------------------------------------------------------------------


async def test_credits_parse_into_exact_ints(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    credits = await make_client().get_credits()
    assert credits == CreditsWire(currency="USD", balance_micro=8059489, uncollected_micro=125000)
    assert type(credits.balance_micro) is int
    assert type(credits.uncollected_micro) is int
    assert standin.count("credits") == 1


async def test_usage_parses_into_exact_ints(make_client: MakeClient) -> None:
    usage = await make_client().get_usage()
    assert usage.currency == "USD"
    assert usage.daily.cost_micro == 10250
    assert usage.daily.total_tokens == 12000
    assert usage.daily.request_count == 41
    assert usage.daily.success_count == 40
    assert usage.weekly.cost_micro == 670000
    assert usage.weekly.prompt_tokens == 401000
    assert usage.monthly.completion_tokens == 700000
    assert usage.monthly.request_count == 3200
    assert usage.monthly.success_count == 3150
    assert usage == UsageWire.model_validate(SAMPLE_USAGE)


async def test_big_and_negative_balances_stay_exact(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    standin.credits = {
        "currency": "usd",
        "balance_micro": 999_999_999_999_999,
        "uncollected_micro": 0,
    }
    credits = await make_client().get_credits()
    assert credits.balance_micro == 999_999_999_999_999
    standin.credits = {"currency": "USD", "balance_micro": -1500, "uncollected_micro": 1}
    assert (await make_client().get_credits()).balance_micro == -1500


async def test_headers_sent(make_client: MakeClient, standin: CrossModelStandin) -> None:
    await make_client().get_credits()
    await make_client().get_usage()
    assert [s.path for s in standin.seen] == ["/v1/credits", "/v1/usage"]
    for seen in standin.seen:
        assert seen.headers["Authorization"] == f"Bearer {KEY}"
        assert seen.headers["Accept"] == "application/json"
        assert seen.headers["User-Agent"] == f"cm-mqtt-bridge/{__version__}"


async def test_base_url_trailing_slash(make_client: MakeClient, standin: CrossModelStandin) -> None:
    await make_client(base_url=standin.url + "/").get_credits()
    assert [s.path for s in standin.seen] == ["/v1/credits"]


@pytest.mark.parametrize(
    ("raw", "code"), [(" usd ", "USD"), ("eur", "EUR"), ("\tGbp\n", "GBP"), ("USD", "USD")]
)
async def test_currency_trimmed_and_upper_cased(
    make_client: MakeClient, standin: CrossModelStandin, raw: str, code: str
) -> None:
    standin.credits["currency"] = raw
    standin.usage["currency"] = raw
    assert (await make_client().get_credits()).currency == code
    assert (await make_client().get_usage()).currency == code


async def test_success_count_is_optional(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    for window in ("daily", "weekly", "monthly"):
        del standin.usage[window]["success_count"]
    standin.usage["weekly"]["success_count"] = None
    usage = await make_client().get_usage()
    assert usage.daily.success_count is None
    assert usage.weekly.success_count is None
    assert usage.monthly.success_count is None
    assert usage.daily.request_count == 41


async def test_unknown_fields_ignored(make_client: MakeClient, standin: CrossModelStandin) -> None:
    standin.credits.update(bonus_micro="lots", tier={"name": "gold"}, notes=None)
    standin.usage.update(hourly={"cost_micro": "x"}, schema=2)
    standin.usage["daily"]["cached_tokens"] = 5.5
    credits = await make_client().get_credits()
    assert credits.model_dump() == {
        "currency": "USD",
        "balance_micro": 8059489,
        "uncollected_micro": 125000,
    }
    usage = await make_client().get_usage()
    assert usage.daily.cost_micro == 10250
    assert "cached_tokens" not in usage.daily.model_dump()


# ---- broken answers -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["balance_micro", "uncollected_micro"])
@pytest.mark.parametrize("value", ["12", 12.0, 12.5, True, False, None, [12], {"v": 12}])
async def test_credits_wrong_types_refused(
    make_client: MakeClient, standin: CrossModelStandin, field: str, value: Any
) -> None:
    standin.credits[field] = value
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert err.status == "invalid_response"
    assert str(err).startswith(f"/credits: {field}: ")
    assert standin.count("credits") == 1  # a broken answer is not retried


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (field, value)
        for field in ("cost_micro", "total_tokens", "request_count", "success_count")
        for value in ("41", 41.0, True, None)
        if (field, value) != ("success_count", None)  # optional: null means absent
    ],
)
async def test_usage_wrong_types_refused(
    make_client: MakeClient, standin: CrossModelStandin, field: str, value: Any
) -> None:
    standin.usage["weekly"][field] = value
    with pytest.raises(InvalidResponse) as info:
        await make_client().get_usage()
    assert str(info.value).startswith(f"/usage: weekly.{field}: ")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("balance_micro", 10**15 + 1),
        ("balance_micro", -(10**15) - 1),
        ("balance_micro", 10**40),
        ("uncollected_micro", -1),
    ],
)
async def test_absurd_numbers_refused(
    make_client: MakeClient, standin: CrossModelStandin, field: str, value: int
) -> None:
    standin.credits[field] = value
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err).startswith(f"/credits: {field}: Input should be ")


@pytest.mark.parametrize("field", ["currency", "balance_micro", "uncollected_micro"])
async def test_credits_missing_field(
    make_client: MakeClient, standin: CrossModelStandin, field: str
) -> None:
    del standin.credits[field]
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err) == f"/credits: {field}: Field required"


@pytest.mark.parametrize("field", ["daily", "weekly", "monthly", "currency"])
async def test_usage_missing_field(
    make_client: MakeClient, standin: CrossModelStandin, field: str
) -> None:
    del standin.usage[field]
    with pytest.raises(InvalidResponse) as info:
        await make_client().get_usage()
    assert str(info.value) == f"/usage: {field}: Field required"


async def test_usage_window_missing_field(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    del standin.usage["monthly"]["prompt_tokens"]
    with pytest.raises(InvalidResponse) as info:
        await make_client().get_usage()
    assert str(info.value) == "/usage: monthly.prompt_tokens: Field required"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "currency is empty"),
        ("   ", "currency is empty"),
        (None, "currency must be a string"),
        (840, "currency must be a string"),
        ("US D", "currency is not a currency code"),
        ("$", "currency is not a currency code"),
    ],
)
async def test_bad_currency_refused(
    make_client: MakeClient, standin: CrossModelStandin, value: Any, message: str
) -> None:
    standin.credits["currency"] = value
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err) == f"/credits: currency: {message}"


async def test_html_with_status_200(make_client: MakeClient, standin: CrossModelStandin) -> None:
    page = b"<!DOCTYPE html>\n<html><body><h1>Down for maintenance</h1></body></html>"
    standin.queue("credits", Reply(body=page, headers={"Content-Type": "text/html; charset=utf-8"}))
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err) == (
        "/credits: not JSON (text/html): "
        "'<!DOCTYPE html> <html><body><h1>Down for maintenance</h1></body></html>'"
    )
    assert standin.count("credits") == 1


async def test_truncated_json(make_client: MakeClient, standin: CrossModelStandin) -> None:
    standin.queue("credits", Reply(body=b'{"currency": "USD", "balance_micro": 80594'))
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err) == (
        '/credits: not JSON (application/json): \'{"currency": "USD", "balance_micro": 80594\''
    )


@pytest.mark.parametrize("body", [b"", b"null", b"[1, 2]", b'"8.06"', b"8059489"])
async def test_json_that_is_not_an_object(
    make_client: MakeClient, standin: CrossModelStandin, body: bytes
) -> None:
    standin.queue("credits", Reply(body=body))
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    expected = "/credits: not JSON" if body == b"" else "/credits: expected a JSON object"
    assert str(err).startswith(expected)


async def test_long_error_body_is_cut_short(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    standin.queue("credits", Reply(body=b"E" * 5000, headers={"Content-Type": "text/plain"}))
    err = await credits_error(make_client())
    assert str(err) == "/credits: not JSON (text/plain): '" + "E" * 120 + "…'"


async def test_20_mb_body_refused_naming_the_cap(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    standin.queue("credits", Reply(body=b"x" * (20 * 1024 * 1024)))
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err) == f"/credits: body larger than {MAX_BODY} bytes"
    assert MAX_BODY == 1024 * 1024
    assert standin.count("credits") == 1


async def test_declared_huge_body_refused_before_reading(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    # 20 MB announced, then sent a byte every 0.2 s: only a refusal on the Content-Length
    # header, before reading, names the cap (reading would end in the timeout's error).
    size = 20 * 1024 * 1024
    standin.queue(
        "credits",
        Reply(body=b"x" * size, trickle=True, headers={"Content-Length": str(size)}),
    )
    err = await credits_error(make_client(credits_timeout=1.0, retries=0))
    assert str(err) == f"/credits: body larger than {MAX_BODY} bytes"


async def test_streamed_body_over_the_cap_stops_reading(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    # Chunked, no Content-Length: the cap must hold while reading, not after. The stand-in
    # trickles one byte per 0.2 s, so reading this whole body would end in the timeout's error.
    standin.queue("credits", Reply(json=standin.credits, trickle=True))
    err = await credits_error(make_client(max_body=1, credits_timeout=5.0))
    assert str(err) == "/credits: body larger than 1 bytes"


async def test_body_at_the_cap_is_read(make_client: MakeClient, standin: CrossModelStandin) -> None:
    body = json.dumps(standin.credits).encode()
    standin.queue("credits", Reply(body=body))
    credits = await make_client(max_body=len(body)).get_credits()
    assert credits.balance_micro == 8059489


# ---- status codes and retries -------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_is_not_retried(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock, status: int
) -> None:
    standin.always["credits"] = Reply(status=status, json={"error": "invalid key"})
    err = await credits_error(make_client())
    assert type(err) is AuthError
    assert err.status == "auth_failed"
    assert str(err) == f"/credits: HTTP {status}: the API key was rejected"
    assert standin.count("credits") == 1
    assert clock.slept == []


@pytest.mark.parametrize("status", [400, 404, 418])
async def test_other_client_errors_are_not_retried(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock, status: int
) -> None:
    standin.always["credits"] = Reply(status=status, json={})
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    if status == 404:
        assert str(err) == (
            f"/credits: HTTP 404 not found at {standin.url}/credits; "
            "check that the API URL ends with /v1"
        )
    else:
        assert str(err) == f"/credits: unexpected HTTP {status}"
    assert standin.count("credits") == 1
    assert clock.slept == []


async def test_429_retry_after_seconds_then_200(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.queue("credits", Reply(status=429, json={}, headers={"Retry-After": "7"}))
    credits = await make_client().get_credits()
    assert credits.balance_micro == 8059489
    assert standin.count("credits") == 2
    assert clock.slept == [7.0]


async def test_429_retry_after_http_date(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    # FakeClock starts at Monday 2026-01-05 12:00:00 UTC.
    when = "Mon, 05 Jan 2026 12:00:20 GMT"
    standin.queue("credits", Reply(status=429, json={}, headers={"Retry-After": when}))
    credits = await make_client().get_credits()
    assert credits.balance_micro == 8059489
    assert clock.slept == [20.0]


@pytest.mark.parametrize("junk", ["²", "١٢"])
async def test_junk_retry_after_is_rate_limited_with_normal_backoff(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock, junk: str
) -> None:
    # "²" and "١٢" pass str.isdigit(); "²" then broke float() and was reported as "refused a
    # redirect to an unusable URL", not retried. The stand-in sends the header as UTF-8.
    standin.queue("credits", Reply(status=429, json={}, headers={"Retry-After": junk}))
    credits = await make_client().get_credits()
    assert credits.balance_micro == 8059489
    assert clock.slept == [0.5]  # the first backoff, as without a Retry-After
    standin.always["credits"] = Reply(status=429, json={}, headers={"Retry-After": junk})
    err = await credits_error(make_client(retries=1))
    assert type(err) is RateLimited
    assert str(err) == "/credits: HTTP 429 rate limited"
    assert err.retry_after is None


async def test_short_retry_after_never_shortens_the_backoff(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.queue(
        "credits",
        Reply(status=429, json={}, headers={"Retry-After": "0"}),
        Reply(status=503, json={}, headers={"Retry-After": "Mon, 05 Jan 2026 11:00:00 GMT"}),
    )
    await make_client().get_credits()
    assert clock.slept == [0.5, 1.0]


async def test_retry_after_beyond_the_cap_stops_retrying(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.always["credits"] = Reply(status=429, json={}, headers={"Retry-After": "3600"})
    err = await credits_error(make_client())
    assert type(err) is RateLimited
    assert err.status == "rate_limited"
    assert err.retry_after == 3600.0
    assert standin.count("credits") == 1
    assert clock.slept == []


async def test_429_exhausted_is_rate_limited(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.always["credits"] = Reply(status=429, json={}, headers={"Retry-After": "2"})
    err = await credits_error(make_client(retries=2))
    assert type(err) is RateLimited
    assert str(err) == "/credits: HTTP 429 rate limited"
    assert standin.count("credits") == 3
    assert clock.slept == [2.0, 2.0]


async def test_500_retried_then_success(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.queue("credits", Reply(status=500, json={}), Reply(status=502, body=b"<html>"))
    credits = await make_client().get_credits()
    assert credits.balance_micro == 8059489
    assert standin.count("credits") == 3
    assert clock.slept == [0.5, 1.0]


async def test_backoff_is_exponential_jittered_and_capped(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.always["credits"] = Reply(status=503, json={})
    await credits_error(make_client(retries=8, rng=lambda: 0.999))
    assert len(clock.slept) == 8
    assert clock.slept == pytest.approx([1, 2, 4, 8, 16, 32, 60, 60], rel=1e-3)
    clock.slept.clear()
    standin.seen.clear()
    await credits_error(make_client(retries=3, rng=lambda: 0.5))
    assert clock.slept == [0.75, 1.5, 3.0]


async def test_retries_exhausted_on_http_500_is_a_server_error(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    # The server answered: not "unreachable", which sends the user to check their network.
    standin.always["credits"] = Reply(status=500, json={})
    err = await credits_error(make_client(retries=3))
    assert type(err) is ServerError
    assert err.status == "server_error"
    assert str(err) == "/credits: HTTP 500"
    assert standin.count("credits") == 4
    assert clock.slept == [0.5, 1.0, 2.0]


async def test_no_retries_configured(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.always["credits"] = Reply(status=500, json={})
    err = await credits_error(make_client(retries=0))
    assert type(err) is ServerError
    assert standin.count("credits") == 1
    assert clock.slept == []


async def test_connection_refused_is_transient(clock: FakeClock) -> None:
    port = free_port()
    async with aiohttp.ClientSession() as session:
        client = CrossModelClient(
            session,
            account="main",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=KEY,
            clock=clock,
            retries=2,
            rng=lambda: 0.0,
        )
        err = await credits_error(client)
    assert type(err) is TransientError
    assert err.status == "unreachable"
    assert str(err).startswith("/credits: connection failed: ")
    assert clock.slept == [0.5, 1.0]


# ---- timeouts -----------------------------------------------------------------------------


async def test_slow_answer_times_out(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.queue("credits", Reply(json=standin.credits, delay=0.8))
    err = await credits_error(make_client(credits_timeout=0.3, retries=0))
    assert type(err) is TransientError
    assert str(err) == "/credits: no complete answer within 0.3 s"


async def test_trickling_answer_times_out(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    # The headers arrive at once, then a byte every 0.2 s: one deadline covers the whole body.
    standin.queue("usage", Reply(json=standin.usage, trickle=True))
    with pytest.raises(TransientError) as info:
        await make_client(usage_timeout=0.3, retries=0).get_usage()
    assert str(info.value) == "/usage: no complete answer within 0.3 s"


async def test_timeout_then_success_is_retried(
    make_client: MakeClient, standin: CrossModelStandin, clock: FakeClock
) -> None:
    standin.queue("credits", Reply(json=standin.credits, delay=0.6))
    credits = await make_client(credits_timeout=0.3, retries=1).get_credits()
    assert credits.balance_micro == 8059489
    assert standin.count("credits") == 2
    assert clock.slept == [0.5]


async def test_each_endpoint_has_its_own_timeout(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    standin.queue("credits", Reply(json=standin.credits, delay=0.3))
    standin.queue("usage", Reply(json=standin.usage, delay=0.3))
    client = make_client(credits_timeout=0.6, usage_timeout=0.15, retries=0)
    assert (await client.get_credits()).balance_micro == 8059489
    with pytest.raises(TransientError, match=r"^/usage: no complete answer within 0.15 s$"):
        await client.get_usage()


# ---- redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_same_origin_redirect_followed(
    make_client: MakeClient, standin: CrossModelStandin, status: int
) -> None:
    standin.queue("credits", Reply(status=status, headers={"Location": "/other/v1/credits"}))
    credits = await make_client().get_credits()
    assert credits.balance_micro == 8059489
    assert [s.path for s in standin.seen] == ["/v1/credits", "/other/v1/credits"]
    assert all(s.headers["Authorization"] == f"Bearer {KEY}" for s in standin.seen)


async def test_same_origin_absolute_redirect_followed(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    target = f"http://127.0.0.1:{standin.port}/other/v1/usage"
    standin.queue("usage", Reply(status=302, headers={"Location": target}))
    usage = await make_client().get_usage()
    assert usage.daily.cost_micro == 10250
    assert [s.path for s in standin.seen] == ["/v1/usage", "/other/v1/usage"]


async def test_cross_host_redirect_refused_and_key_not_sent(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    # localhost is a different host name for the same server: if the client followed it, the
    # stand-in would see a second request, with Host: localhost.
    target = f"http://localhost:{standin.port}/other/v1/credits"
    standin.queue("credits", Reply(status=302, headers={"Location": target}))
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err) == "/credits: refused redirect to another host or scheme"
    assert [s.path for s in standin.seen] == ["/v1/credits"]
    assert [s.headers["Host"] for s in standin.seen] == [f"127.0.0.1:{standin.port}"]


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_redirect_to_another_port_or_scheme_refused(
    make_client: MakeClient, standin: CrossModelStandin, scheme: str
) -> None:
    other = CrossModelStandin()
    await other.start()
    try:
        port = other.port if scheme == "http" else standin.port
        location = f"{scheme}://127.0.0.1:{port}/v1/credits"
        standin.queue("credits", Reply(status=307, headers={"Location": location}))
        err = await credits_error(make_client())
        assert str(err) == "/credits: refused redirect to another host or scheme"
        assert other.seen == []
        assert standin.count("credits") == 1
    finally:
        await other.stop()


async def test_redirect_loop_is_cut(make_client: MakeClient, standin: CrossModelStandin) -> None:
    standin.always["credits"] = Reply(status=302, headers={"Location": "/other/v1/credits"})
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err) == "/credits: too many redirects"
    assert standin.count("credits") == 4


# ---- key hygiene --------------------------------------------------------------------------


async def test_key_redacted_from_errors_and_logs(
    make_client: MakeClient,
    standin: CrossModelStandin,
    caplog_all: pytest.LogCaptureFixture,
) -> None:
    echo = f"<html>bad key {KEY} (Authorization: Bearer {KEY})</html>".encode()
    standin.queue(
        "credits",
        Reply(status=500, body=echo, headers={"X-Echo": KEY}),
        Reply(status=429, body=echo, headers={"Retry-After": "1"}),
        Reply(body=echo, headers={"Content-Type": "text/html"}),
    )
    err = await credits_error(make_client())
    assert type(err) is InvalidResponse
    assert str(err) == (
        # The Authorization pattern eats up to the next quote or blank: over-redaction is fine.
        "/credits: not JSON (text/html): '<html>bad key … (Authorization: Bearer …'"
    )
    messages = [r.getMessage() for r in caplog_all.records]
    assert messages == [
        "main: attempt 1 failed (/credits: HTTP 500), retrying in 0.5 s",
        "main: attempt 2 failed (/credits: HTTP 429 rate limited), retrying in 1.0 s",
    ]
    assert KEY not in caplog_all.text
    assert "cm-test" not in caplog_all.text


async def test_other_key_shaped_strings_redacted(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    other_key = "cm-someone-elses-key-42"
    standin.queue("credits", Reply(body=f"token={other_key}".encode()))
    err = await credits_error(make_client())
    assert other_key not in str(err)
    assert str(err) == "/credits: not JSON (application/json): 'token=cm-…'"


async def test_key_redacted_from_wire_errors(
    make_client: MakeClient, standin: CrossModelStandin
) -> None:
    standin.credits["currency"] = KEY
    standin.credits[KEY] = KEY
    err = await credits_error(make_client())
    assert str(err) == "/credits: currency: currency is not a currency code"


# ---- parse_retry_after --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Mon, 05 Jan 2026 12:01:00 GMT", 60.0),
        ("Mon, 05 Jan 2026 11:00:00 GMT", 0.0),  # in the past
        ("-5", None),
        ("1.5", None),
        ("soon", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    now = FakeClock().now().timestamp()
    assert parse_retry_after(value, now) == seconds
