"""The test broker: the same private Mosquitto launcher the `demo` command uses."""

from cm_mqtt_bridge.cli.localbroker import Mosquitto, free_port

__all__ = ["Mosquitto", "discard", "free_port"]


def discard(broker: Mosquitto) -> None:
    """End a test's broker at once. It keeps nothing (no persistence), and once any client has
    connected, a SIGTERM'd Mosquitto takes ~0.1 s to exit: a SIGKILL does not wait for that.
    A test that stops the broker to see the bridge react uses `broker.stop()`."""
    if broker.proc is not None and broker.proc.poll() is None:
        broker.proc.kill()
        broker.proc.wait(5)
    broker.stop()
