"""Keep secrets out of every message: API keys, Authorization values, passwords."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable

_KEY_RE = re.compile(r"\bcm-[A-Za-z0-9._~+/=-]+")
_AUTH_RE = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+")
_BEARER_RE = re.compile(r"(?i)\bbearer\s+[^\s\"',}]+")
REDACTED = "cm-…"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace key-shaped strings, Authorization values and the given secrets."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "…")
    text = _AUTH_RE.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}…", text)
    text = _BEARER_RE.sub("Bearer …", text)
    return _KEY_RE.sub(REDACTED, text)


def shorten(text: str, limit: int = 200) -> str:
    """Bodies from a broken upstream can be huge or hostile: keep a short, one-line excerpt."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


class RedactingFilter(logging.Filter):
    """Applied to every handler, so no log line can carry a secret, whoever wrote it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage(), self.secrets), None
        if record.exc_info and not record.exc_text:
            # Tracebacks print exception args verbatim: format and redact them here, once.
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_text = redact(text, self.secrets)
        return True
