"""Home Assistant device-based discovery payloads, generated from the entity table."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import __version__
from .entities import Entity, entities_for

ORIGIN_NAME = "cm-mqtt-bridge"
SUPPORT_URL = "https://github.com/crossmodel/cm-mqtt-bridge"
CONSOLE_URL = "https://crossmodel.ai/console"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the bridge uses; the one place topic strings are built."""

    base: str
    prefix: str

    @property
    def bridge_status(self) -> str:
        return f"{self.base}/status"

    @property
    def ha_status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def refresh_all(self) -> str:
        return f"{self.base}/refresh/set"

    @property
    def device_wildcard(self) -> str:
        return f"{self.prefix}/device/+/config"

    def account(self, account_id: str) -> str:
        return f"{self.base}/{account_id}"

    def state(self, account_id: str) -> str:
        return f"{self.base}/{account_id}/state"

    def availability(self, account_id: str) -> str:
        return f"{self.base}/{account_id}/availability"

    def value(self, account_id: str, key: str) -> str:
        return f"{self.base}/{account_id}/{key}"

    def alerts(self, account_id: str) -> str:
        return f"{self.base}/{account_id}/alerts"

    def alerts_active(self, account_id: str) -> str:
        return f"{self.base}/{account_id}/alerts/active"

    def device(self, account_id: str) -> str:
        return f"{self.prefix}/device/{device_id(account_id)}/config"


def device_id(account_id: str) -> str:
    return f"cm_{account_id}"


def unique_id(account_id: str, key: str) -> str:
    return f"cm_{account_id}_{key}"


def entity_slug(account_id: str) -> str:
    """The account id as HA entity ids allow it: [a-z0-9_], no '__', no '_' at either end."""
    return re.sub("_+", "_", account_id.replace("-", "_")).strip("_") or "account"


def default_entity_id(platform: str, account_id: str, key: str) -> str:
    return f"{platform}.crossmodel_{entity_slug(account_id)}_{key}"


def _attributes_template(attributes: Iterable[tuple[str, str]]) -> str:
    pairs = ", ".join(f"{name!r}: value_json.{key}" for name, key in attributes)
    return "{{ {" + pairs + "} | tojson }}"


def component(
    entity: Entity, account_id: str, topics: Topics, currency: str | None, qos: int
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "p": entity.platform,
        "name": entity.name,
        "unique_id": unique_id(account_id, entity.key),
        "default_entity_id": default_entity_id(entity.platform, account_id, entity.key),
        "qos": qos,
    }
    gates = [topics.bridge_status]
    if entity.gate == "values":
        gates.append(topics.availability(account_id))
    cfg["availability"] = [{"topic": t} for t in gates]
    cfg["availability_mode"] = "all"
    if entity.platform == "event":
        cfg["state_topic"] = topics.alerts(account_id)
        cfg["event_types"] = list(entity.event_types)
    elif entity.value is not None:
        cfg["state_topic"] = topics.state(account_id)
        if entity.platform == "binary_sensor":
            cfg["value_template"] = f"{{{{ 'ON' if value_json.{entity.value} else 'OFF' }}}}"
        else:
            cfg["value_template"] = f"{{{{ value_json.{entity.value} }}}}"
    if entity.command is not None:
        cfg["command_topic"] = f"{topics.account(account_id)}/{entity.command}"
    if entity.platform == "button":
        cfg["payload_press"] = "PRESS"
    for key, val in (
        ("device_class", entity.device_class),
        ("state_class", entity.state_class),
        ("entity_category", entity.category),
        ("icon", entity.icon),
        ("suggested_display_precision", entity.precision),
    ):
        if val is not None:
            cfg[key] = val
    unit = entity.unit_for(currency)
    if unit is not None:
        cfg["unit_of_measurement"] = unit
    if entity.number is not None:
        cfg["min"], cfg["max"], cfg["step"] = entity.number
        cfg["mode"] = "box"
    if entity.options:
        cfg["options"] = list(entity.options)
    if entity.attributes:
        cfg["json_attributes_topic"] = topics.state(account_id)
        cfg["json_attributes_template"] = _attributes_template(entity.attributes)
    if entity.last_reset is not None:
        # '' when unknown: HA ignores an empty last_reset instead of logging an invalid date.
        cfg["last_reset_value_template"] = f"{{{{ value_json.{entity.last_reset} or '' }}}}"
    return cfg


def device_payload(
    *,
    account_id: str,
    account_name: str,
    topics: Topics,
    currency: str | None,
    qos: int,
    entities: Iterable[Entity] | None = None,
    removed: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The retained device message for one account.

    Entities with a currency unit are left out until the currency is known (a monetary sensor
    without its ISO code is rejected by HA). `removed` maps component ids that an earlier
    payload announced to their platform: each is sent once as {"p": platform}, which is how HA
    removes a single component from a device.
    """
    cmps: dict[str, Any] = {}
    for entity in entities_for(()) if entities is None else entities:
        if entity.needs_currency and not currency:
            continue
        cmps[entity.key] = component(entity, account_id, topics, currency, qos)
    for key, platform in (removed or {}).items():
        if key not in cmps:
            cmps[key] = {"p": platform}
    return {
        "dev": {
            "identifiers": [device_id(account_id)],
            "name": f"CrossModel {account_name}",
            "manufacturer": "CrossModel",
            "model": "Prepaid wallet",
            "sw_version": __version__,
            "configuration_url": CONSOLE_URL,
        },
        "o": {"name": ORIGIN_NAME, "sw_version": __version__, "support_url": SUPPORT_URL},
        "cmps": cmps,
        "qos": qos,
    }


def announced_components(payload: Mapping[str, Any]) -> dict[str, str] | None:
    """From a retained device message read back at start: {component id: platform} of live
    components, or None when the message is not one of ours."""
    origin = payload.get("o")
    cmps = payload.get("cmps")
    if not isinstance(origin, Mapping) or origin.get("name") != ORIGIN_NAME:
        return None
    if not isinstance(cmps, Mapping):
        return None
    out: dict[str, str] = {}
    for key, cfg in cmps.items():
        # A bare {"p": …} is a removal we already sent; it needs no second one.
        if isinstance(cfg, Mapping) and isinstance(cfg.get("p"), str) and len(cfg) > 1:
            out[str(key)] = cfg["p"]
    return out


def announced_currency(payload: Mapping[str, Any]) -> str | None:
    """The currency a retained device message used, so units survive a restart."""
    cmps = payload.get("cmps")
    if isinstance(cmps, Mapping):
        balance = cmps.get("balance")
        if isinstance(balance, Mapping) and isinstance(balance.get("unit_of_measurement"), str):
            return str(balance["unit_of_measurement"])
    return None
