"""Flag: the asyncio.Event the account runtimes wait on, without the Event's deque."""

from __future__ import annotations

import asyncio

from cm_mqtt_bridge.core.clock import Flag, SystemClock


async def test_set_wakes_every_waiter_and_a_set_flag_does_not_wait() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    flag.clear()  # cleared before the waiters ran: they were woken all the same
    assert await asyncio.gather(*waiters) == [False, False, False]
    flag.set()
    assert await flag.wait() is True
    assert await SystemClock().wait(flag, 3600) is True


async def test_a_timeout_ends_the_wait_unset_and_leaves_no_waiter_behind() -> None:
    flag = Flag()
    assert await SystemClock().wait(flag, 0.01) is False
    cancelled = asyncio.create_task(flag.wait(3600))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert flag._waiters == []
    woken = asyncio.create_task(SystemClock().wait(flag, 3600))
    await asyncio.sleep(0)
    flag.set()
    assert await woken is True
    assert flag._waiters == []
