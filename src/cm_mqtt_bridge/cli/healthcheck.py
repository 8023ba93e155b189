"""`cm-mqtt-bridge healthcheck`: ask a running bridge's /healthz (the container HEALTHCHECK)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from ..config.settings import (
    CONFIG_ENV,
    ConfigError,
    HealthConfig,
    env_layer,
    file_layer,
    format_validation_error,
    merge,
)
from ..core.neterror import describe
from ..exits import EXIT_OK, EXIT_UPSTREAM


async def cmd_healthcheck(url: str) -> int:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as session,
            session.get(url) as resp,
        ):
            body = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"unhealthy: {url}: {describe(exc)}")
        return EXIT_UPSTREAM
    print(body)
    return EXIT_OK if resp.status == 200 else EXIT_UPSTREAM


def health_url(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """--url, else /healthz on the port the config (file, then environment) gives; no key is
    needed, so a container's HEALTHCHECK never depends on secrets."""
    if args.url:
        return str(args.url)
    path = getattr(args, "config", None)
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    layer = merge(file_layer(path), env_layer(env)).get("health")
    try:
        health = HealthConfig.model_validate(layer if isinstance(layer, dict) else {})
    except ValidationError as exc:
        raise ConfigError([f"health.{p}" for p in format_validation_error(exc)]) from None
    host = health.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a listening address, not a bind
        host = "127.0.0.1"  # listening everywhere: ask over loopback
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{health.port}/healthz"
