"""The pure timing pieces of an account: when it may poll, and when owed alert bookkeeping is
retried. Driven with a FakeClock's monotonic time; no loop, no I/O."""

from __future__ import annotations

from cm_mqtt_bridge.service.schedule import MAX_RETRY_AFTER, AlertRetry, PollSchedule
from tests.fakes import FakeClock


def test_a_refresh_waits_out_the_spacing_then_runs() -> None:
    clock = FakeClock()
    s = PollSchedule(interval=300, min_refresh_interval=60)
    assert s.deferred(clock.monotonic()) is None
    s.started(clock.monotonic())
    clock.advance(20)
    assert s.deferred(clock.monotonic()) == (40, "poll.min_refresh_interval 60 s")
    clock.advance(40)
    assert s.deferred(clock.monotonic()) is None
    assert s.next_due(jitter=5) == clock.monotonic() - 60 + 305


def test_retry_after_wins_over_the_spacing_and_is_capped() -> None:
    clock = FakeClock()
    s = PollSchedule(interval=300, min_refresh_interval=60)
    s.started(clock.monotonic())
    s.failed(clock.monotonic(), retry_after=120)
    assert s.deferred(clock.monotonic()) == (120, "the API's Retry-After")
    s.failed(clock.monotonic(), retry_after=10**9)
    assert s.deferred(clock.monotonic()) == (MAX_RETRY_AFTER, "the API's Retry-After")
    s.failed(clock.monotonic(), retry_after=None)  # no header: the window stays
    assert s.deferred(clock.monotonic()) is not None
    s.succeeded()
    clock.advance(60)
    assert s.deferred(clock.monotonic()) is None


def test_usage_retry_after_skips_usage_until_it_ends() -> None:
    clock = FakeClock()
    s = PollSchedule(interval=300, min_refresh_interval=60)
    assert s.usage_wait(clock.monotonic()) is None
    s.usage_answered(clock.monotonic(), retry_after=90, waited=None)
    clock.advance(30)
    waited = s.usage_wait(clock.monotonic())
    assert waited == 60
    s.usage_answered(clock.monotonic(), retry_after=None, waited=waited)
    assert s.usage_wait(clock.monotonic()) == 60  # a window still open stays
    clock.advance(60)
    waited = s.usage_wait(clock.monotonic())
    assert waited == 0
    s.usage_answered(clock.monotonic(), retry_after=None, waited=waited)
    assert s.usage_wait(clock.monotonic()) is None


def test_owed_alerts_back_off_and_settle() -> None:
    clock = FakeClock()
    r = AlertRetry((1.0, 4.0))
    assert r.due(clock.monotonic()) is None
    assert not r.owed
    assert [r.owe(clock.monotonic(), record=True) for _ in range(4)] == [1, 2, 4, 4]
    assert r.due(clock.monotonic()) is False
    clock.advance(4)
    assert r.due(clock.monotonic()) is True
    assert r.due(clock.monotonic()) is None  # taken: not due again until owed again
    assert r.record is True
    assert r.settled() is True
    assert not r.owed
    assert r.failures == 0
    assert r.settled() is False
