"""The test broker: the same private Mosquitto launcher the `demo` command uses."""

from __future__ import annotations

from pathlib import Path

from cm_mqtt_bridge.cli.localbroker import Mosquitto, free_port, start_private

__all__ = ["Mosquitto", "discard", "free_port", "started"]


def started(workdir: Path, listener_options: str = "") -> Mosquitto:
    """A running broker on a free port (started again on another if a pytest-xdist worker or
    another test run took the first)."""
    return start_private(workdir, listener_options)


def discard(broker: Mosquitto) -> None:
    """End a test's broker at once. It keeps nothing (no persistence), and once any client has
    connected, a SIGTERM'd Mosquitto takes ~0.1 s to exit: a SIGKILL does not wait for that.
    A test that stops the broker to see the bridge react uses `broker.stop()`."""
    if broker.proc is not None and broker.proc.poll() is None:
        broker.proc.kill()
        broker.proc.wait(5)
    broker.stop()
