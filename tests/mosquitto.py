"""The test broker: the same private Mosquitto launcher the `demo` command uses."""

from cm_mqtt_bridge.localbroker import Mosquitto, free_port

__all__ = ["Mosquitto", "free_port"]
