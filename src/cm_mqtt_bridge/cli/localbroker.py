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
        self.err = workdir / "mosquitto.err"
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
        # Mosquitto reports a bad config on stderr, before it opens its log file.
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(  # noqa: S603 - our binary, our config file
                [self.binary, "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=die_with_parent,
                preexec_fn=_dies_with(os.getpid()) if die_with_parent and linux else None,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self._said()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def _said(self) -> str:
        said = [f.read_text(errors="replace").strip() for f in (self.log, self.err) if f.exists()]
        return (
            "\n".join(t for t in said if t) or f"exit status {self.proc and self.proc.returncode}"
        )

    def owns_port(self) -> bool:
        """Whether this broker's process holds the listening socket on its port, waiting until
        it does or has exited. `free_port` hands its port back before Mosquitto binds it, so
        another process can take it in between, and `start()`'s probe may then reach that
        process's listener. Linux (/proc); elsewhere the probe is trusted."""
        if not Path("/proc/net/tcp").exists() or self.proc is None:
            return True
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            if _listener(self.port) in _sockets(self.proc.pid):
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def start_private(
    workdir: Path, listener_options: str = "", *, die_with_parent: bool = False
) -> Mosquitto:
    """A running Mosquitto on a free loopback port; started again on a new port when another
    process took the first one before Mosquitto could bind it."""
    for _ in range(4):
        broker = Mosquitto(workdir, listener_options=listener_options)
        try:
            broker.start(die_with_parent=die_with_parent)
        except RuntimeError as exc:  # what Mosquitto said, in the message
            if "Address already in use" not in str(exc):
                raise
            continue
        if broker.owns_port():
            return broker
        broker.stop()
    raise RuntimeError("mosquitto lost its port to another process four times")


LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


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
