"""A private Mosquitto (the Debian binary) on a free loopback port: used by `demo` and the tests."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def _dies_with(parent: int) -> Callable[[], None]:
    """A `preexec_fn` asking Linux to SIGTERM the child when its parent dies, whatever kills
    the parent (SIGKILL included)."""

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None, listener_options: str = "") -> None:
        """`listener_options`: extra lines for the listener (TLS files, password_file, …)."""
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # No persistence: a restart loses retained messages, so tests see the bridge republish.
        options = listener_options or "allow_anonymous true\n"
        # Started as root, mosquitto would switch to user "mosquitto" and could not read our
        # private temp files (log, certificates, password file): keep the caller's user.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}per_listener_settings true\nlistener {self.port} 127.0.0.1\n{options}"
            f"persistence false\nlog_dest file {self.log}\nlog_type error\nlog_type warning\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, die_with_parent: bool = False) -> None:
        """`die_with_parent` (the demo): the broker stops when this process dies, even by
        SIGKILL (Linux), and a Ctrl-C at the terminal does not reach it (its own session), so
        the process can still say offline through it. Call it on the main thread: Linux ties
        the death signal to the thread that started the child."""
        linux = sys.platform.startswith("linux")
        self.proc = subprocess.Popen(  # noqa: S603 - our binary, our config file
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=die_with_parent,
            preexec_fn=_dies_with(os.getpid()) if die_with_parent and linux else None,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
