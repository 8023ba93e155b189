"""Notification channels (and how per-account alert rules merge with the defaults) as they
appear in the config file. The rules' own config sections live in the rule registry."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from ..core.configbase import Duration, StrictModel
from .file import FileProblem, read_secret


def _secret_from(inline: SecretStr | None, path: Path | None, where: str) -> SecretStr | None:
    if inline is not None and path is not None:
        raise ValueError(f"give {where} or {where}_file, not both")
    if path is None:
        return inline
    try:
        return SecretStr(read_secret(path, f"{where}_file").strip())
    except FileProblem as exc:
        raise ValueError(str(exc)) from None


# Long enough that a receiver stalling 20 s still answers the first request: a timeout and
# retry would deliver a second copy to a receiver that did get the first.
DeliveryTimeout = Annotated[Duration, Field(le=300)]


def _check_http_url(url: str) -> str:
    if not re.fullmatch(r"https?://[^\s/@]+(/[^\s]*)?", url):
        raise ValueError("must be an http(s) URL without credentials or spaces")
    return url.rstrip("/")


class NtfyConfig(StrictModel):
    url: str = "https://ntfy.sh"
    topic: str
    token: SecretStr | None = None
    token_file: Path | None = None
    priority: Literal["min", "low", "default", "high", "urgent"] = "high"
    tags: tuple[str, ...] = ("moneybag",)
    timeout: DeliveryTimeout = 30.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_http_url(v)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v):
            raise ValueError("ntfy topics use letters, digits, '_' and '-' (1-64)")
        return v

    @model_validator(mode="after")
    def _secret(self) -> Self:
        object.__setattr__(self, "token", _secret_from(self.token, self.token_file, "token"))
        return self


class WebhookConfig(StrictModel):
    url: str
    secret: SecretStr | None = None
    secret_file: Path | None = None
    timeout: DeliveryTimeout = 30.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_http_url(v)

    @model_validator(mode="after")
    def _secret(self) -> Self:
        object.__setattr__(self, "secret", _secret_from(self.secret, self.secret_file, "secret"))
        return self


class NotifyConfig(StrictModel):
    ntfy: NtfyConfig | None = None
    webhook: WebhookConfig | None = None
    apprise: tuple[SecretStr, ...] = ()  # Apprise URLs carry tokens: treat them as secrets

    @field_validator("apprise")
    @classmethod
    def _apprise_installed(cls, v: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if v and importlib.util.find_spec("apprise") is None:
            raise ValueError(
                "Apprise URLs need the optional extra: pip install 'cm-mqtt-bridge[apprise]'"
            )
        return v

    def channel_names(self) -> list[str]:
        """Every channel a notice goes to: MQTT (Home Assistant) always, then these."""
        names = ["mqtt"]
        names += [n for n in ("ntfy", "webhook") if getattr(self, n) is not None]
        return names + (["apprise"] if self.apprise else [])

    def secrets(self) -> list[str]:
        out = [s.get_secret_value() for s in self.apprise]
        if self.ntfy and self.ntfy.token:
            out.append(self.ntfy.token.get_secret_value())
        if self.webhook and self.webhook.secret:
            out.append(self.webhook.secret.get_secret_value())
        return out


def merge_alerts(defaults: dict[str, Any] | None, own: dict[str, Any] | None) -> dict[str, Any]:
    """Per-account `alerts` over the top-level defaults, rule by rule (a rule set to false or
    null in the account switches the default off)."""
    out = dict(defaults or {})
    for rule, value in (own or {}).items():
        if isinstance(value, dict) and isinstance(out.get(rule), dict):
            out[rule] = {**out[rule], **value}
        else:
            out[rule] = value
    return out
