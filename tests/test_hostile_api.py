"""Malformed redirects and a rate-limited /usage against the CrossModel stand-in: one clear
line, no traceback, the key never sent anywhere (issue 11, findings 4 and 7)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from pathlib import Path

import pytest

from cm_mqtt_bridge.cli.main import main
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.service.bridge import Bridge
from tests.conftest import KEY
from tests.helpers import until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import make_config
from tests.standin import CrossModelStandin, Reply

MALFORMED = "/credits: refused a redirect to a malformed location"


def bad_locations(port: int) -> dict[str, str]:
    return {
        "two ports": f"http://127.0.0.1:{port}:18082/v1/credits",
        "bad port": "http://127.0.0.1:99999999/v1/credits",
        "userinfo": f"http://evil@127.0.0.1:{port}/v1/credits",
        "user and password": f"http://a:b@127.0.0.1:{port}/v1/credits",
        "unparseable": "http://[::1/v1/credits",
        "a space": f"http://127.0.0.1:{port}/v1/cred its",
        "empty": "",
    }


async def status(standin: CrossModelStandin, tmp_path: Path, **poll: str) -> tuple[int, str, str]:
    env = {
        "CROSSMODEL_API_KEY": KEY,
        "CROSSMODEL_API_URL": standin.url,
        "HOME": str(tmp_path),
        **{f"CM_MQTT_BRIDGE__POLL__{k.upper()}": v for k, v in poll.items()},
    }
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["status", "--json"], env)

    # main() runs its own event loop; the stand-in keeps serving on this one.
    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", list(bad_locations(1)))
async def test_a_malformed_redirect_is_invalid_response_in_status(
    standin: CrossModelStandin, tmp_path: Path, case: str
) -> None:
    location = bad_locations(standin.port)[case]
    standin.queue("credits", Reply(status=302, headers={"Location": location}))
    code, out, err = await status(standin, tmp_path, retries="0")
    assert code == 1, err
    account = json.loads(out)["accounts"][0]
    assert account["api_status"] == "invalid_response"
    assert account["error"] == MALFORMED
    assert "Traceback" not in err
    # Only the first request carried the key: nothing followed the redirect.
    assert standin.count("credits") == 1


async def test_run_logs_one_line_per_poll_for_a_malformed_redirect(
    standin: CrossModelStandin, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    standin.always["credits"] = Reply(
        status=302, headers={"Location": f"http://127.0.0.1:{standin.port}:1/v1/credits"}
    )
    config = make_config(standin.url, mosquitto.port, poll={"interval": 0.1, "jitter": 0})
    stop = asyncio.Event()
    task = asyncio.create_task(Bridge(config, timings=Timings(readback_seconds=0.1)).run(stop))
    try:
        await until(lambda: standin.count("credits") >= 3, 10, "three polls")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    polls = standin.count("credits")
    failures = [r for r in caplog.records if "poll failed" in r.getMessage()]
    assert len(failures) in (polls - 1, polls)  # the last may still be in flight
    assert all(
        r.getMessage() == f"main: poll failed (invalid_response): {MALFORMED}" for r in failures
    )
    assert not [r for r in caplog.records if r.exc_info], "no traceback"


async def test_a_rate_limited_usage_is_reported_as_rate_limited(
    standin: CrossModelStandin, tmp_path: Path
) -> None:
    # Retried after Retry-After, which outlasts the /usage deadline: the old code reported
    # "no answer within 0.5 s" although the API had answered 429 at once.
    standin.always["usage"] = Reply(status=429, headers={"Retry-After": "2"})
    code, out, err = await status(standin, tmp_path, usage_timeout="0.5")
    account = json.loads(out)["accounts"][0]
    assert code == 0, err
    assert account["usage_state"] == "failed"
    assert account["usage_error"].startswith("/usage: HTTP 429 rate limited")
    assert "no answer within" not in out + err
