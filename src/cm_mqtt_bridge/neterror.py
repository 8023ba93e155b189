"""One readable line for a failed HTTP exchange, without the client library's internals
(no "ssl:default" for a plain http URL, no "Connect call failed" tuples)."""

from __future__ import annotations

import os

import aiohttp


def describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate of {exc.host} not accepted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        reason = os.strerror(error.errno) if error.errno else str(error.strerror or error)
        return f"cannot connect to {exc.host}:{exc.port}: {reason or type(error).__name__}"
    return str(exc) or type(exc).__name__
