"""Home Assistant device-based discovery payloads, generated from the entity table."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import __version__
from .entities import CURRENCY_PROBE, Entity, Value, entities_for
from .topics import Topics, device_id, object_id, unique_id

log = logging.getLogger(__name__)

ORIGIN_NAME = "cm-mqtt-bridge"
# What we write is about 20 KB and 30 components per account; anything far beyond that was
# not written by us, and acting on it (one removal per component) would amplify it.
MAX_DISCOVERY_BYTES = 256 * 1024
MAX_COMPONENTS = 200
_COMPONENT_KEY_RE = re.compile(r"[a-z0-9_]{1,64}")
SUPPORT_URL = "https://github.com/crossmodel/cm-mqtt-bridge"
CONSOLE_URL = "https://crossmodel.ai/console"


def _attributes_template(attributes: Iterable[tuple[str, Value]]) -> str:
    pairs = ", ".join(f"{name!r}: value_json.{value.key}" for name, value in attributes)
    return "{{ {" + pairs + "} | tojson }}"


def component(
    entity: Entity, account_id: str, topics: Topics, currency: str | None, qos: int
) -> dict[str, Any]:
    oid = object_id(account_id, entity.key)
    cfg: dict[str, Any] = {
        "p": entity.platform,
        "name": entity.name,
        "unique_id": unique_id(account_id, entity.key),
        "default_entity_id": f"{entity.platform}.{oid}",
        # The same id for Home Assistant before 2025.10, which reads only `object_id` (without
        # it, it derives the id from the device and entity names). 2025.10 to 2026.3 use
        # default_entity_id and do not warn about object_id next to it; 2026.4+ drop it unread.
        "object_id": oid,
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
            cfg["value_template"] = f"{{{{ 'ON' if value_json.{entity.value.key} else 'OFF' }}}}"
        else:
            cfg["value_template"] = f"{{{{ value_json.{entity.value.key} }}}}"
    if entity.command is not None:
        cfg["command_topic"] = topics.command(account_id, entity.command)
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
        cfg["last_reset_value_template"] = f"{{{{ value_json.{entity.last_reset.key} or '' }}}}"
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
        balance = cmps.get(CURRENCY_PROBE)
        if isinstance(balance, Mapping) and isinstance(balance.get("unit_of_measurement"), str):
            return str(balance["unit_of_measurement"])
    return None


def is_ours(payload: Mapping[str, Any], topics: Topics) -> bool:
    """Several bridges may share a broker: only devices whose entities read from our base
    topic are ours to change."""
    cmps = payload.get("cmps")
    prefix = topics.base + "/"
    if not isinstance(cmps, Mapping):
        return False
    return any(
        isinstance(c, Mapping) and str(c.get("state_topic", "")).startswith(prefix)
        for c in cmps.values()
    )


@dataclass(frozen=True, slots=True)
class Announced:
    """What an earlier run left retained for one configured account."""

    components: dict[str, str]  # component id -> platform
    currency: str | None


def distrust(doc: Mapping[str, Any], topic: str, topics: Topics) -> str | None:
    """Why a retained device message that claims our origin is not one this bridge wrote
    (None when it is): its device, its components' unique ids and state topics must all be
    ours, and its size within what we ever write."""
    prefix = f"{topics.prefix}/device/"
    device = topic.removeprefix(prefix).removesuffix("/config")
    if not device.startswith("cm_") or f"{prefix}{device}/config" != topic:
        return "not a device id this bridge uses"
    dev = doc.get("dev")
    if not isinstance(dev, Mapping) or dev.get("identifiers") != [device]:
        return "device identifiers do not match the topic"
    cmps = doc.get("cmps")
    if not isinstance(cmps, Mapping) or len(cmps) > MAX_COMPONENTS:
        return f"more than {MAX_COMPONENTS} components"
    for key, cfg in cmps.items():
        if not isinstance(key, str) or not _COMPONENT_KEY_RE.fullmatch(key):
            return "a component id this bridge never writes"
        if not isinstance(cfg, Mapping):
            return "a component that is not a mapping"
        if len(cfg) > 1 and cfg.get("unique_id") != f"{device}_{key}":
            return "a component unique_id this bridge did not write"
    if not is_ours(doc, topics):
        return "state topics outside this bridge's base topic"
    return None


def read_back(
    retained: Mapping[str, bytes], topics: Topics, account_ids: Iterable[str]
) -> tuple[list[str], dict[str, Announced]]:
    """Sort the retained device messages read at start: device topics of accounts no longer
    configured (to be emptied), and what each configured account announced. Only messages
    this bridge wrote count; one that claims our origin but is not ours is logged (one line
    for all of them) and ignored."""
    by_topic = {topics.device(a): a for a in account_ids}
    gone: list[str] = []
    found: dict[str, Announced] = {}
    ignored: list[tuple[str, str]] = []
    for topic, payload in retained.items():
        if not payload:
            continue
        if len(payload) > MAX_DISCOVERY_BYTES:
            if topic in by_topic or b'"cm-mqtt-bridge"' in payload[:4096]:
                ignored.append((topic, f"larger than {MAX_DISCOVERY_BYTES} bytes"))
            continue
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError):  # not ours, maybe hostile: skip it
            continue
        if not isinstance(doc, dict):
            continue
        announced = announced_components(doc)
        if announced is None:
            continue  # another integration's device
        why = distrust(doc, topic, topics)
        if why is not None:
            if is_ours(doc, topics) or topic in by_topic:
                ignored.append((topic, why))
            continue
        account = by_topic.get(topic)
        if account is None:
            gone.append(topic)
        else:
            found[account] = Announced(announced, announced_currency(doc))
    if ignored:
        topic, why = ignored[0]
        more = f" and {len(ignored) - 1} more" if len(ignored) > 1 else ""
        log.warning(
            "ignored retained discovery this bridge did not write: %s (%s)%s",
            topic[:200],
            why,
            more,
        )
    return gone, found
