"""Reading the files a config names, bounded: the YAML config and key, token or secret files.

Every read is capped and never blocks (a FIFO or a device is refused by its file type), and
the YAML loader accepts only what this config needs: no aliases (an anchor bomb expands
exponentially), no duplicate keys (the last one would silently win), no deep nesting. Every
problem is a `FileProblem` with one readable line, never a traceback.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 4096
MAX_DEPTH = 20  # the config nests about 4 levels; anything deeper is not a config

log = logging.getLogger(__name__)
# Secret files already warned about in this process: one warning each, as ssh does.
_warned_open: set[Path] = set()


class FileProblem(Exception):
    """A file could not be used; the message is one line and names the file."""


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; FileProblem holds the reason.

    Opened non-blocking, so a FIFO never hangs the start, and checked by type on the open
    descriptor, so a device (`/dev/zero`) is never read at all."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise FileProblem(exc.strerror or type(exc).__name__) from None
    too_big = FileProblem(f"larger than the limit of {limit:,} bytes")
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileProblem("a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem("not a regular file; a FIFO, socket or device is refused")
        if info.st_size > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 64 * 1024):
            size += len(chunk)
            if size > limit:  # it grew while we read it
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise FileProblem(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)


def read_text(path: Path, cap: int, what: str, *, secret: bool = False) -> str:
    """At most `cap` bytes of UTF-8 text; FileProblem naming `what`, and where a bad byte is
    (and its value, unless the file is a secret: no byte of a key or password is shown)."""
    try:
        data = read_bounded(path, cap)
    except FileProblem as exc:
        raise FileProblem(f"{what}: cannot read {path} ({exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = "" if secret else f" (byte 0x{data[exc.start]:02x})"
        raise FileProblem(
            f"{what}: {path} is not UTF-8 at line {line}, column {column}{byte}; save it as UTF-8"
        ) from None


def read_secret(path: Path, what: str) -> str:
    """A key, token or secret file (at most 4 KB of UTF-8); FileProblem naming `what`."""
    path = path.expanduser()
    text = read_text(path, MAX_SECRET_BYTES, what, secret=True)
    warn_if_open(path, what)
    return text


# Where container runtimes mount secrets (Docker, Compose, Kubernetes' convention): often 0444
# and root-owned by design, inside a container nobody else logs into, so no warning there.
SECRET_MOUNTS: tuple[Path, ...] = (Path("/run/secrets"),)


def warn_if_open(path: Path, what: str) -> None:
    """One warning per file and process when other users may read (or write) a secret file.
    A group is left alone: 0640 with a service group is a deliberate setup."""
    if any(path.absolute().is_relative_to(mount) for mount in SECRET_MOUNTS):
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # it was just read; a race with a rename is not worth a message
    if not mode & (stat.S_IROTH | stat.S_IWOTH) or path in _warned_open:
        return
    _warned_open.add(path)
    log.warning(
        "%s: %s is accessible by other users (mode %04o); restrict it with: chmod 600 %s",
        what,
        path,
        mode,
        path,
    )


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys or deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not supported in this config", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.MarkedYAMLError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                break
            if duplicate:
                raise yaml.MarkedYAMLError(
                    None, None, f"duplicate key {str(key)[:40]!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(path: Path) -> Any:
    """The parsed config file; FileProblem with the file, line and column otherwise."""
    if not path.exists():
        raise FileProblem(f"config file {path}: not found")
    text = read_text(path, MAX_CONFIG_BYTES, "config file")
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise FileProblem(f"config file {path}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise FileProblem(f"config file {path}: invalid YAML: {exc}") from None
    except RecursionError:
        raise FileProblem(f"config file {path}: nested too deeply") from None
    finally:
        loader.dispose()
