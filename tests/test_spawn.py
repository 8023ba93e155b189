"""A task outside the supervisor (a birth's answer, a threshold's save) never fails silently."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cm_mqtt_bridge.core.clock import spawn


async def test_a_failing_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = spawn(broken(), "saving low_balance_below")
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # the done callback runs on the next loop turn
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == ["saving low_balance_below failed"]
    assert failed[0].exc_info is not None
    assert str(failed[0].exc_info[1]) == "boom"


async def test_a_cancelled_task_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    task = spawn(asyncio.sleep(10), "answering a birth")
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
