"""The one way a command tells the user what went wrong: `cm-mqtt-bridge: <message>` on
stderr, and the exit code that goes with it."""

from __future__ import annotations

import sys

from ..exits import EXIT_CONFIG

PREFIX = "cm-mqtt-bridge: "


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    """Print the message on stderr; return `code` for the command to exit with."""
    print(PREFIX + message, file=sys.stderr)
    return code
