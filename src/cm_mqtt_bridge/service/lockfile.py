"""One `run` per data directory: an advisory lock on a file in it.

Two copies on one data directory (a shell and a service, started by mistake) would kick each
other off the broker with the same client id, and every entity in Home Assistant would flap.
The kernel drops the lock when the process ends, however it ends (kill -9 included), so a
stale lock file never keeps the next start from running.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = "cm_mqtt_bridge.lock"


class AlreadyRunning(Exception):
    pass


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the directory and the process."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").split()
            os.close(fd)
            # A pid alone means nothing in another container or on another host: name both.
            who = "another process"
            if holder and holder[0].isdigit():
                who = f"process {holder[0]}"
                if len(holder) > 1:
                    who += f" on {holder[1][:253]}"
            raise AlreadyRunning(
                f"another cm-mqtt-bridge ({who}) is already running with the data directory "
                f"{self.path.parent}; stop it first, or give this one its own --data-dir"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass  # the pid only helps the message; the lock itself is held (a full disk)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None
