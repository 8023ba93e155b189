"""Alert rules and notification channels as they appear in the config file."""

from __future__ import annotations

import importlib.util
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from ..money import parse_amount

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """'15m', '12h', '1d', '30s' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 15m, 12h or 1d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError("expected a duration like 30s, 15m, 12h or 1d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


def _micro(value: Any) -> int:
    return parse_amount(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
# Amounts in the account's currency, as decimals in the file; integer micro units inside.
Amount = Annotated[int, BeforeValidator(_micro), Field(ge=0, le=10**15)]


class StrictModel(BaseModel):
    """Every config section: frozen, and unknown (misspelt) options are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RuleCommon(StrictModel):
    repeat_every: Duration | None = None
    notify_recovered: bool = False
    priority: Literal["min", "low", "default", "high", "urgent"] | None = None
    tags: tuple[str, ...] = ()


class LowBalanceRule(RuleCommon):
    below: Amount
    # Default: 10 % of `below`. Holds swing with running requests, so "available" wobbles;
    # without a margin every wobble across the threshold would notify again.
    margin: Amount | None = None


class RunwayRule(RuleCommon):
    below_days: Annotated[Decimal, Field(ge=0, le=365)]
    margin_days: Annotated[Decimal, Field(ge=0, le=365)] = Decimal(1)


class BudgetRule(RuleCommon):
    daily: Amount | None = None
    weekly: Amount | None = None
    monthly: Amount | None = None


class ApiDownRule(RuleCommon):
    after: Duration = 900.0


class SimpleRule(RuleCommon):
    """auth_failed / topup: `true` in the file, or a mapping for priority and tags."""


class TopupRule(RuleCommon):
    min_amount: Amount = 10_000  # 0.01 units: below that it is rounding, not a top-up


def _flag(value: Any) -> Any:
    if value is True:
        return {}
    if value is False:
        return None
    return value


class AlertsConfig(StrictModel):
    low_balance: Annotated[LowBalanceRule | None, BeforeValidator(_flag)] = None
    runway: Annotated[RunwayRule | None, BeforeValidator(_flag)] = None
    budget: Annotated[BudgetRule | None, BeforeValidator(_flag)] = None
    api_down: Annotated[ApiDownRule | None, BeforeValidator(_flag)] = None
    auth_failed: Annotated[SimpleRule | None, BeforeValidator(_flag)] = None
    topup: Annotated[TopupRule | None, BeforeValidator(_flag)] = None

    def rule_names(self) -> tuple[str, ...]:
        names: list[str] = []
        if self.low_balance:
            names.append("low_balance")
        if self.runway:
            names.append("runway")
        if self.budget:
            names += [
                f"budget_{w}"
                for w in ("daily", "weekly", "monthly")
                if getattr(self.budget, w) is not None  # a budget of 0 means "any spend"
            ]
        if self.api_down:
            names.append("api_down")
        if self.auth_failed:
            names.append("auth_failed")
        if self.topup:
            names.append("topup")
        return tuple(names)

    def common(self, rule: str) -> RuleCommon:
        found = getattr(self, rule.split("_")[0] if rule.startswith("budget_") else rule)
        assert isinstance(found, RuleCommon)
        return found


def _secret_from(inline: SecretStr | None, path: Path | None, where: str) -> SecretStr | None:
    if inline is not None and path is not None:
        raise ValueError(f"give {where} or {where}_file, not both")
    if path is None:
        return inline
    try:
        return SecretStr(path.expanduser().read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"cannot read {where}_file {path} ({exc.strerror})") from None


def _check_http_url(url: str) -> str:
    if not re.match(r"^https?://[^\s/@]+(/[^\s]*)?$", url):
        raise ValueError("must be an http(s) URL without credentials or spaces")
    return url.rstrip("/")


class NtfyConfig(StrictModel):
    url: str = "https://ntfy.sh"
    topic: str
    token: SecretStr | None = None
    token_file: Path | None = None
    priority: Literal["min", "low", "default", "high", "urgent"] = "high"
    tags: tuple[str, ...] = ("moneybag",)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_http_url(v)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]{1,64}$", v):
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
