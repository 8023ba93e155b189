"""`cm-mqtt-bridge config set-api-key`: store an API key in a file only its owner can read."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from ..config.settings import normalize_api_key
from ..exits import EXIT_OK
from .errors import fail


def default_key_file(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "cm-mqtt-bridge" / "api_key"


def write_secret_file(path: Path, secret: str) -> None:
    """Write atomically, mode 0600 from the first byte (no window where others can read it).

    The temporary file is created exclusively and never through a symlink, and removed if
    anything fails, so the key is never left behind elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.write(fd, (secret + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cmd_set_api_key(args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO) -> int:
    if args.stdin or not stdin.isatty():
        raw = stdin.read()
    else:
        import getpass  # only this command reads from a terminal

        raw = getpass.getpass("CrossModel API key (input hidden): ")
    try:
        key = normalize_api_key(raw)
    except ValueError as exc:
        return fail(str(exc))
    path = args.file or default_key_file(env)
    try:
        write_secret_file(path, key)
    except OSError as exc:
        return fail(f"cannot write {path}: {exc.strerror or exc}")
    print(f"API key stored in {path} (mode 0600). Point api_key_file at it, or leave it there.")
    return EXIT_OK
