"""The tests' broker survives losing its free port to another process (a pytest-xdist worker, a
second test run on the machine) between `free_port()` and Mosquitto's bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cm_mqtt_bridge.cli import localbroker
from cm_mqtt_bridge.cli.localbroker import _listener, _sockets
from tests.mosquitto import discard, free_port, started


@pytest.mark.parametrize("listening", [True, False], ids=["listener", "bound only"])
def test_a_broker_whose_port_was_taken_starts_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listening: bool
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        if listening:  # start()'s probe reaches this listener, not Mosquitto
            other.listen()
        taken = other.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(localbroker, "free_port", lambda: next(ports))
        broker = started(tmp_path)
        try:
            assert broker.port != taken
            assert broker.proc is not None
            assert _listener(broker.port) in _sockets(broker.proc.pid)
        finally:
            discard(broker)


def test_a_broker_that_fails_on_its_own_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports: list[int] = []

    def counted() -> int:
        ports.append(free_port())
        return ports[-1]

    monkeypatch.setattr(localbroker, "free_port", counted)
    # A bad option: Mosquitto exits before it opens its log, saying why on stderr.
    with pytest.raises(RuntimeError, match=r"mosquitto exited: .*no_such_option"):
        started(tmp_path, listener_options="no_such_option true\n")
    assert len(ports) == 1
