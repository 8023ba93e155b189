"""One readable line for a failed network exchange, without the client library's internals
(no "ssl:default" for a plain http URL, no "Connect call failed" tuples, no "Unknown error -2"
for a host name that does not resolve)."""

from __future__ import annotations

import os
import re
import socket

import aiohttp

# aiomqtt passes on only the text of the OSError; a getaddrinfo failure has a negative errno.
_RESOLVE_RE = re.compile(r"\[Errno -\d+\] (.+)")
_NOT_AUTHORIZED_RE = re.compile(r"(?i)not authori[sz]ed|bad user ?name or password")
CREDENTIALS_HINT = "check MQTT_USERNAME and MQTT_PASSWORD (mqtt.username, mqtt.password)"


def describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate of {exc.host} not accepted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, socket.gaierror):
            # os.strerror() knows no resolver codes: -2 would read "Unknown error -2".
            return f"cannot resolve {exc.host}: {error.strerror or 'no such host'}"
        reason = os.strerror(error.errno) if error.errno else str(error.strerror or error)
        return f"cannot connect to {exc.host}:{exc.port}: {reason or type(error).__name__}"
    return str(exc) or type(exc).__name__


def describe_broker(exc: BaseException, host: str) -> str:
    """An MQTT connection failure (aiomqtt's MqttError) in the same words."""
    text = str(exc) or type(exc).__name__
    if match := _RESOLVE_RE.fullmatch(text):
        return f"cannot resolve {host}: {match.group(1)}"
    if _NOT_AUTHORIZED_RE.search(text):
        return f"{text}: {CREDENTIALS_HINT}"
    return text
