"""`python -m cm_mqtt_bridge`: the same command line as `cm-mqtt-bridge`."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
