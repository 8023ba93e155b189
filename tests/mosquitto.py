"""The test broker: the same private Mosquitto launcher the `demo` command uses."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cm_mqtt_bridge.cli.localbroker import Mosquitto, free_port

__all__ = ["Mosquitto", "discard", "free_port", "started"]

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def started(workdir: Path, listener_options: str = "") -> Mosquitto:
    """A running broker on a free port. `free_port` hands its port back before Mosquitto binds
    it, so another process (a pytest-xdist worker, another test run on the machine) can take it
    in between: Mosquitto then exits, or `start()` even takes the other listener for ours. A
    broker that does not hold its own port is discarded and started again on a new one."""
    for _ in range(4):
        broker = Mosquitto(workdir, listener_options=listener_options)
        try:
            broker.start()
        except RuntimeError as exc:  # its log, in the message, says why it exited
            if "Address already in use" not in str(exc):
                raise
            continue
        if _owns_port(broker):
            return broker
        discard(broker)
    raise RuntimeError("mosquitto lost its port to another process four times")


def _owns_port(broker: Mosquitto) -> bool:
    """Whether the broker's process holds the listening socket on its port, once it either does
    or has exited (Linux: /proc), so a foreign listener on a lost port is not taken for it."""
    assert broker.proc is not None
    deadline = time.monotonic() + 10
    while broker.proc.poll() is None and time.monotonic() < deadline:
        if _listener(broker.port) in _sockets(broker.proc.pid):
            return True
        time.sleep(0.01)
    return False


def _listener(port: int) -> str | None:
    """The loopback listening socket on `port`, as /proc/PID/fd names it."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()  # sl, local address, remote address, state, ..., inode
        if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return f"socket:[{fields[9]}]"
    return None


def _sockets(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return {os.readlink(fds / fd) for fd in os.listdir(fds)}
    except (FileNotFoundError, ProcessLookupError):
        return set()


def discard(broker: Mosquitto) -> None:
    """End a test's broker at once. It keeps nothing (no persistence), and once any client has
    connected, a SIGTERM'd Mosquitto takes ~0.1 s to exit: a SIGKILL does not wait for that.
    A test that stops the broker to see the bridge react uses `broker.stop()`."""
    if broker.proc is not None and broker.proc.poll() is None:
        broker.proc.kill()
        broker.proc.wait(5)
    broker.stop()
