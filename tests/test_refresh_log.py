"""What a refresh command says in the log: an account's refresh that has to wait (the refresh
spacing, the API's Retry-After) says until when and why; the bridge-wide refresh is one line,
however many accounts there are. A real bridge on Mosquitto and the stand-in API, every timer
on a clock the test drives."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.fakes import ManualClock
from tests.helpers import until
from tests.mosquitto import Mosquitto
from tests.mqtt_helpers import make_config, publish
from tests.standin import CrossModelStandin
from tests.test_clock_steps import T0, running


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_a_deferred_refresh_says_until_when_and_a_bridge_wide_one_is_one_line(
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "cm_mqtt_bridge")
    cfg = make_config(
        standin.url, mosquitto.port, data_dir=str(tmp_path), poll={"min_refresh_interval": 60}
    )
    clock = ManualClock(T0)  # 12:00:00 UTC; nothing moves unless the test advances it
    async with running(cfg, clock):
        await until(lambda: standin.count("credits") == 1, 5, "the first poll")
        clock.advance(20)
        await publish(mosquitto.port, "cm_mqtt_bridge/main/refresh/set", "PRESS")
        await until(lambda: lines(caplog, "refresh deferred"), 5, "the deferral")
        assert lines(caplog, "refresh deferred") == [
            "main: refresh deferred until 12:01:00 UTC (in 40 s: poll.min_refresh_interval 60 s)"
        ]
        clock.advance(40)
        await until(lambda: standin.count("credits") == 2, 5, "the deferred poll")

        clock.advance(10)
        await publish(mosquitto.port, "cm_mqtt_bridge/refresh/set", "PRESS")
        await until(lambda: lines(caplog, "every account"), 5, "the bridge-wide line")
        assert lines(caplog, "every account") == [
            "refresh requested for every account (1); 1 deferred (refresh spacing, "
            "Retry-After), the last until 12:02:00 UTC"
        ]
        clock.advance(50)
        await until(lambda: standin.count("credits") == 3, 5, "the bridge-wide poll")
    assert len(lines(caplog, "refresh deferred")) == 1  # none per account for the bridge-wide
