"""Discovery payloads: golden values, Home Assistant's rules, removal, read-back round trip."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from cm_mqtt_bridge import __version__
from cm_mqtt_bridge.config.settings import AccountConfig, Config
from cm_mqtt_bridge.core.evaluate import AlertStatus
from cm_mqtt_bridge.core.forecast import Burn
from cm_mqtt_bridge.core.model import Snapshot, Usage, UsageState, WindowUsage
from cm_mqtt_bridge.core.rules import RULES, RuleSpec
from cm_mqtt_bridge.core.timings import Timings
from cm_mqtt_bridge.core.view import AccountView
from cm_mqtt_bridge.ha.discovery import (
    announced_components,
    announced_currency,
    device_payload,
)
from cm_mqtt_bridge.ha.entities import entities_for
from cm_mqtt_bridge.ha.render import state_document
from cm_mqtt_bridge.ha.topics import Topics
from cm_mqtt_bridge.service.bridge import Bridge
from tests.helpers import until
from tests.mqtt_helpers import Got, make_config

TOPICS = Topics(base="cm_mqtt_bridge", prefix="homeassistant")
ALL_RULES: tuple[RuleSpec, ...] = RULES


def payload(
    account_id: str = "main",
    name: str = "Main",
    currency: str | None = "USD",
    topics: Topics = TOPICS,
    removed: dict[str, str] | None = None,
    rules: tuple[RuleSpec, ...] = (),
) -> dict[str, Any]:
    return device_payload(
        account_id=account_id,
        account_name=name,
        topics=topics,
        currency=currency,
        qos=1,
        entities=entities_for(rules) if rules else None,
        removed=removed,
    )


# ---- golden -------------------------------------------------------------------------------

VALUES_GATE = [
    {"topic": "cm_mqtt_bridge/status"},
    {"topic": "cm_mqtt_bridge/main/availability"},
]
BRIDGE_GATE = [{"topic": "cm_mqtt_bridge/status"}]

BALANCE = {
    "p": "sensor",
    "name": "Balance",
    "unique_id": "cm_main_balance",
    "default_entity_id": "sensor.crossmodel_main_balance",
    "object_id": "crossmodel_main_balance",
    "qos": 1,
    "availability": VALUES_GATE,
    "availability_mode": "all",
    "state_topic": "cm_mqtt_bridge/main/state",
    "value_template": "{{ value_json.balance }}",
    "device_class": "monetary",
    "state_class": "total",
    "icon": "mdi:wallet",
    "suggested_display_precision": 2,
    "unit_of_measurement": "USD",
}
SPEND_TODAY = {
    "p": "sensor",
    "name": "Spend today",
    "unique_id": "cm_main_spend_today",
    "default_entity_id": "sensor.crossmodel_main_spend_today",
    "object_id": "crossmodel_main_spend_today",
    "qos": 1,
    "availability": VALUES_GATE,
    "availability_mode": "all",
    "state_topic": "cm_mqtt_bridge/main/state",
    "value_template": "{{ value_json.spend_today }}",
    "device_class": "monetary",
    "state_class": "total",
    "icon": "mdi:cash-minus",
    "suggested_display_precision": 2,
    "unit_of_measurement": "USD",
    "last_reset_value_template": "{{ value_json.reset_today or '' }}",
}
TOKENS_TODAY = {
    "p": "sensor",
    "name": "Tokens today",
    "unique_id": "cm_main_tokens_today",
    "default_entity_id": "sensor.crossmodel_main_tokens_today",
    "object_id": "crossmodel_main_tokens_today",
    "qos": 1,
    "availability": VALUES_GATE,
    "availability_mode": "all",
    "state_topic": "cm_mqtt_bridge/main/state",
    "value_template": "{{ value_json.tokens_today }}",
    "state_class": "total_increasing",
    "icon": "mdi:counter",
    "unit_of_measurement": "tokens",
    "json_attributes_topic": "cm_mqtt_bridge/main/state",
    "json_attributes_template": "{{ {'prompt_tokens': value_json.prompt_tokens_today, "
    "'completion_tokens': value_json.completion_tokens_today} | tojson }}",
}
REQUESTS_TODAY = {
    "p": "sensor",
    "name": "Requests today",
    "unique_id": "cm_main_requests_today",
    "default_entity_id": "sensor.crossmodel_main_requests_today",
    "object_id": "crossmodel_main_requests_today",
    "qos": 1,
    "availability": VALUES_GATE,
    "availability_mode": "all",
    "state_topic": "cm_mqtt_bridge/main/state",
    "value_template": "{{ value_json.requests_today }}",
    "state_class": "total_increasing",
    "icon": "mdi:swap-horizontal",
    "unit_of_measurement": "requests",
    "json_attributes_topic": "cm_mqtt_bridge/main/state",
    "json_attributes_template": "{{ {'success_rate': value_json.success_rate_today} | tojson }}",
}
LAST_UPDATE = {
    "p": "sensor",
    "name": "Last update",
    "unique_id": "cm_main_last_update",
    "default_entity_id": "sensor.crossmodel_main_last_update",
    "object_id": "crossmodel_main_last_update",
    "qos": 1,
    "availability": VALUES_GATE,
    "availability_mode": "all",
    "state_topic": "cm_mqtt_bridge/main/state",
    "value_template": "{{ value_json.last_update }}",
    "device_class": "timestamp",
    "entity_category": "diagnostic",
}
API_STATUS = {
    "p": "sensor",
    "name": "API status",
    "unique_id": "cm_main_api_status",
    "default_entity_id": "sensor.crossmodel_main_api_status",
    "object_id": "crossmodel_main_api_status",
    "qos": 1,
    "availability": BRIDGE_GATE,
    "availability_mode": "all",
    "state_topic": "cm_mqtt_bridge/main/state",
    "value_template": "{{ value_json.api_status }}",
    "device_class": "enum",
    "entity_category": "diagnostic",
    "icon": "mdi:api",
    "options": [
        "ok",
        "auth_failed",
        "rate_limited",
        "unreachable",
        "server_error",
        "invalid_response",
    ],
    "json_attributes_topic": "cm_mqtt_bridge/main/state",
    "json_attributes_template": "{{ {'error': value_json.error, "
    "'usage': value_json.usage_state} | tojson }}",
}
CONNECTED = {
    "p": "binary_sensor",
    "name": "Connected",
    "unique_id": "cm_main_connected",
    "default_entity_id": "binary_sensor.crossmodel_main_connected",
    "object_id": "crossmodel_main_connected",
    "qos": 1,
    "availability": BRIDGE_GATE,
    "availability_mode": "all",
    "state_topic": "cm_mqtt_bridge/main/state",
    "value_template": "{{ 'ON' if value_json.connected else 'OFF' }}",
    "device_class": "connectivity",
    "entity_category": "diagnostic",
}
REFRESH = {
    "p": "button",
    "name": "Refresh",
    "unique_id": "cm_main_refresh",
    "default_entity_id": "button.crossmodel_main_refresh",
    "object_id": "crossmodel_main_refresh",
    "qos": 1,
    "availability": BRIDGE_GATE,
    "availability_mode": "all",
    "command_topic": "cm_mqtt_bridge/main/refresh/set",
    "payload_press": "PRESS",
    "icon": "mdi:refresh",
}


def _sibling(base: dict[str, Any], key: str, name: str, **changes: Any) -> dict[str, Any]:
    """The same entity for another value or window: ids, name and templates follow the key."""
    platform = base["p"]
    out = {
        **base,
        "name": name,
        "unique_id": f"cm_main_{key}",
        "default_entity_id": f"{platform}.crossmodel_main_{key}",
        "object_id": f"crossmodel_main_{key}",
        "value_template": f"{{{{ value_json.{key} }}}}",
    }
    out.update(changes)
    return out


def _attrs(*pairs: tuple[str, str]) -> str:
    return "{{ {" + ", ".join(f"'{n}': value_json.{k}" for n, k in pairs) + "} | tojson }}"


EXPECTED_CMPS: dict[str, dict[str, Any]] = {
    "balance": BALANCE,
    "holds": _sibling(BALANCE, "holds", "Holds"),
    "available": _sibling(BALANCE, "available", "Available"),
    "spend_today": SPEND_TODAY,
    "spend_week": _sibling(
        SPEND_TODAY,
        "spend_week",
        "Spend this week",
        last_reset_value_template="{{ value_json.reset_week or '' }}",
    ),
    "spend_month": _sibling(
        SPEND_TODAY,
        "spend_month",
        "Spend this month",
        last_reset_value_template="{{ value_json.reset_month or '' }}",
    ),
    # Lifetime spend: monetary, total, and no last_reset (it never resets).
    "total_spend": {
        "p": "sensor",
        "name": "Total spend",
        "unique_id": "cm_main_total_spend",
        "default_entity_id": "sensor.crossmodel_main_total_spend",
        "object_id": "crossmodel_main_total_spend",
        "qos": 1,
        "availability": VALUES_GATE,
        "availability_mode": "all",
        "state_topic": "cm_mqtt_bridge/main/state",
        "value_template": "{{ value_json.total_spend }}",
        "device_class": "monetary",
        "state_class": "total",
        "icon": "mdi:cash-multiple",
        "suggested_display_precision": 2,
        "unit_of_measurement": "USD",
    },
    "tokens_today": TOKENS_TODAY,
    "tokens_week": _sibling(
        TOKENS_TODAY,
        "tokens_week",
        "Tokens this week",
        json_attributes_template=_attrs(
            ("prompt_tokens", "prompt_tokens_week"),
            ("completion_tokens", "completion_tokens_week"),
        ),
    ),
    "tokens_month": _sibling(
        TOKENS_TODAY,
        "tokens_month",
        "Tokens this month",
        json_attributes_template=_attrs(
            ("prompt_tokens", "prompt_tokens_month"),
            ("completion_tokens", "completion_tokens_month"),
        ),
    ),
    "requests_today": REQUESTS_TODAY,
    "requests_week": _sibling(
        REQUESTS_TODAY,
        "requests_week",
        "Requests this week",
        json_attributes_template=_attrs(("success_rate", "success_rate_week")),
    ),
    "requests_month": _sibling(
        REQUESTS_TODAY,
        "requests_month",
        "Requests this month",
        json_attributes_template=_attrs(("success_rate", "success_rate_month")),
    ),
    "last_update": LAST_UPDATE,
    "api_status": API_STATUS,
    "connected": CONNECTED,
    "refresh": REFRESH,
    "burn_rate": {
        "p": "sensor",
        "name": "Burn rate",
        "unique_id": "cm_main_burn_rate",
        "default_entity_id": "sensor.crossmodel_main_burn_rate",
        "object_id": "crossmodel_main_burn_rate",
        "qos": 1,
        "availability": VALUES_GATE,
        "availability_mode": "all",
        "state_topic": "cm_mqtt_bridge/main/state",
        "value_template": "{{ value_json.burn_rate }}",
        "state_class": "measurement",
        "icon": "mdi:fire",
        "suggested_display_precision": 2,
        "unit_of_measurement": "USD/d",
        "json_attributes_topic": "cm_mqtt_bridge/main/state",
        "json_attributes_template": "{{ {'source': value_json.burn_rate_source} | tojson }}",
    },
    "runway": {
        "p": "sensor",
        "name": "Runway",
        "unique_id": "cm_main_runway",
        "default_entity_id": "sensor.crossmodel_main_runway",
        "object_id": "crossmodel_main_runway",
        "qos": 1,
        "availability": VALUES_GATE,
        "availability_mode": "all",
        "state_topic": "cm_mqtt_bridge/main/state",
        "value_template": "{{ value_json.runway_days }}",
        "device_class": "duration",
        "state_class": "measurement",
        "icon": "mdi:timer-sand",
        "suggested_display_precision": 1,
        "unit_of_measurement": "d",
    },
}

EXPECTED_DEV = {
    "identifiers": ["cm_main"],
    "name": "CrossModel Main",
    "manufacturer": "CrossModel",
    "model": "Prepaid wallet",
    "sw_version": __version__,
    "configuration_url": "https://crossmodel.ai/console",
}
EXPECTED_ORIGIN = {
    "name": "cm-mqtt-bridge",
    "sw_version": __version__,
    "support_url": "https://github.com/crossmodel/cm-mqtt-bridge",
}


def test_device_topic_for_one_account():
    assert TOPICS.device("main") == "homeassistant/device/cm_main/config"
    custom = Topics(base="home/cm", prefix="ha")
    assert custom.device("team-b") == "ha/device/cm_team-b/config"


def test_golden_device_payload_for_one_account():
    got = payload()
    assert __version__
    assert list(got) == ["dev", "o", "cmps", "qos"]
    assert got["dev"] == EXPECTED_DEV
    assert got["o"] == EXPECTED_ORIGIN
    assert got["qos"] == 1
    assert list(got["cmps"]) == list(EXPECTED_CMPS)
    for key, expected in EXPECTED_CMPS.items():
        assert got["cmps"][key] == expected, key
    # What goes on the wire is plain JSON: the round trip changes nothing.
    assert json.loads(json.dumps(got)) == got


def test_golden_payload_follows_base_topic_and_qos():
    topics = Topics(base="home/cm", prefix="ha")
    got = device_payload(
        account_id="main", account_name="Main", topics=topics, currency="USD", qos=2
    )
    balance = got["cmps"]["balance"]
    assert got["qos"] == 2
    assert balance["qos"] == 2
    assert balance["availability"] == [
        {"topic": "home/cm/status"},
        {"topic": "home/cm/main/availability"},
    ]
    assert balance["state_topic"] == "home/cm/main/state"
    assert got["cmps"]["refresh"]["command_topic"] == "home/cm/main/refresh/set"


# ---- Home Assistant's rules ---------------------------------------------------------------

# Keys Home Assistant's MQTT integration accepts (core homeassistant/components/mqtt:
# schemas.py MQTT_ENTITY_COMMON_SCHEMA + MQTT_AVAILABILITY_SCHEMA, config.py MQTT_BASE/RO/RW
# schemas, and each platform's _PLATFORM_SCHEMA_BASE). The entity id needs two keys: HA up to
# 2025.9 reads only `object_id`, 2025.10 and later read `default_entity_id` (and do not warn
# about `object_id` next to it); 2026.4 and later drop `object_id` without a word.
COMMON_KEYS = frozenset(
    {
        "p",
        "name",
        "unique_id",
        "default_entity_id",
        "object_id",
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        "device",
        "origin",
        "enabled_by_default",
        "entity_category",
        "entity_picture",
        "icon",
        "json_attributes_topic",
        "json_attributes_template",
        "qos",
        "encoding",
    }
)
PLATFORM_KEYS: dict[str, frozenset[str]] = {
    "sensor": COMMON_KEYS
    | {
        "state_topic",
        "value_template",
        "device_class",
        "expire_after",
        "force_update",
        "last_reset_value_template",
        "options",
        "suggested_display_precision",
        "state_class",
        "unit_of_measurement",
    },
    "binary_sensor": COMMON_KEYS
    | {
        "state_topic",
        "value_template",
        "device_class",
        "expire_after",
        "force_update",
        "off_delay",
        "payload_on",
        "payload_off",
    },
    "button": COMMON_KEYS
    | {"command_topic", "command_template", "device_class", "payload_press", "retain"},
    "number": COMMON_KEYS
    | {
        "command_topic",
        "command_template",
        "state_topic",
        "value_template",
        "device_class",
        "min",
        "max",
        "step",
        "mode",
        "payload_reset",
        "retain",
        "unit_of_measurement",
    },
    "event": COMMON_KEYS | {"state_topic", "value_template", "event_types", "device_class"},
}
DEVICE_TOP_KEYS = frozenset(
    {
        "dev",
        "o",
        "cmps",
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        "state_topic",
        "command_topic",
        "qos",
        "encoding",
    }
)
DEV_KEYS = frozenset(
    {
        "identifiers",
        "connections",
        "manufacturer",
        "model",
        "model_id",
        "name",
        "hw_version",
        "serial_number",
        "sw_version",
        "via_device",
        "suggested_area",
        "configuration_url",
    }
)
ORIGIN_KEYS = frozenset({"name", "sw_version", "support_url"})

ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# homeassistant/core.py VALID_ENTITY_ID
ENTITY_ID_RE = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")
ISO_4217_RE = re.compile(r"^[A-Z]{3}$")
PLAIN_VALUE_TEMPLATE_RE = re.compile(r"^\{\{ value_json\.(\w+) \}\}$")
VALUE_JSON_RE = re.compile(r"value_json\.(\w+)")
ATTRIBUTE_NAME_RE = re.compile(r"'(\w+)': value_json\.")


def _full_state_document() -> dict[str, Any]:
    """A state document with every key an entity may read, alert rules included."""
    window = WindowUsage(10250, 9100, 2900, 12000, 41, 40)
    snap = Snapshot(
        account_id="main",
        fetched_at=datetime(2026, 1, 7, 12, tzinfo=UTC),
        currency="USD",
        balance_micro=8_059_489,
        holds_micro=125_000,
        usage=None,
        usage_state=UsageState.PENDING,
    )
    view = AccountView(
        snapshot=snap,
        usage=Usage(window, window, window),
        usage_at=snap.fetched_at,
        usage_state=UsageState.OK,
        api_status="ok",
        connected=True,
        alerts=AlertStatus(
            rules=tuple(r.name for r in ALL_RULES),
            burn=Burn(Decimal("215736.5"), "month_to_date"),
            runway_days=Decimal("36.78"),
            thresholds={"low_balance_below": Decimal(5), "runway_below_days": Decimal("7")},
        ),
    )
    return state_document(view, entities_for(ALL_RULES))


def _is_number(value: Any) -> bool:
    if value is None:  # unknown: HA shows "unknown", no error
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        Decimal(str(value))
    except InvalidOperation:
        return False
    return bool(re.fullmatch(r"-?\d+(\.\d+)?", str(value)))


def rule_violations(
    topic: str, doc: dict[str, Any], *, account_id: str, currency: str | None, prefix: str
) -> list[str]:
    """Every mechanically checkable rule of shared/home-assistant.md, as a list of problems."""
    bad: list[str] = []
    state = _full_state_document()

    m = re.fullmatch(rf"{re.escape(prefix)}/device/([^/]+)/config", topic)
    if not m or not ID_RE.match(m.group(1)):
        bad.append(f"device topic {topic!r}")
    if set(doc) - DEVICE_TOP_KEYS:
        bad.append(f"unknown device keys {set(doc) - DEVICE_TOP_KEYS}")
    if "availability_topic" in doc:
        bad.append("availability_topic at device level")
    dev, origin = doc.get("dev"), doc.get("o")
    if not isinstance(dev, dict) or set(dev) - DEV_KEYS:
        bad.append(f"dev {dev!r}")
    else:
        for key in ("name", "identifiers", "manufacturer", "model", "sw_version"):
            if not dev.get(key):
                bad.append(f"dev.{key} missing")
    if not isinstance(origin, dict) or not origin.get("name") or set(origin) - ORIGIN_KEYS:
        bad.append(f"o {origin!r}")
    cmps = doc.get("cmps")
    if not isinstance(cmps, dict) or not cmps:
        return [*bad, "cmps missing"]

    for key, cfg in cmps.items():
        where = f"{key}:"
        p = cfg.get("p")
        if not ID_RE.match(key):
            bad.append(f"{where} component id charset")
        if p not in PLATFORM_KEYS:
            bad.append(f"{where} platform {p!r}")
            continue
        if unknown := set(cfg) - PLATFORM_KEYS[p]:
            bad.append(f"{where} unknown keys {sorted(unknown)}")
        if not isinstance(cfg.get("unique_id"), str) or not cfg["unique_id"]:
            bad.append(f"{where} unique_id missing")
        entity_id = cfg.get("default_entity_id")
        if not isinstance(entity_id, str) or not ENTITY_ID_RE.match(entity_id):
            bad.append(f"{where} default_entity_id {entity_id!r}")
        elif entity_id.split(".")[0] != p:
            bad.append(f"{where} default_entity_id domain {entity_id!r} for {p}")
        elif cfg.get("object_id") != entity_id.split(".")[1]:
            # Without it, HA before 2025.10 derives another id from the names.
            bad.append(f"{where} object_id {cfg.get('object_id')!r} for {entity_id}")
        if not cfg.get("name"):
            bad.append(f"{where} name missing")

        device_class = cfg.get("device_class")
        state_class = cfg.get("state_class")
        unit = cfg.get("unit_of_measurement")
        if device_class == "monetary":
            if state_class not in (None, "total"):
                bad.append(f"{where} monetary with state_class {state_class}")
            if not isinstance(unit, str) or not ISO_4217_RE.match(unit) or unit != currency:
                bad.append(f"{where} monetary unit {unit!r} (currency {currency!r})")
        if unit is not None and device_class in ("timestamp", "enum", "date"):
            bad.append(f"{where} unit {unit!r} with device_class {device_class}")
        if "last_reset_value_template" in cfg and state_class != "total":
            bad.append(f"{where} last_reset_value_template with state_class {state_class}")
        if "options" in cfg:
            options = cfg["options"]
            if device_class != "enum" or state_class is not None or unit is not None:
                bad.append(f"{where} options without enum, or with state_class/unit")
            if not options or not all(isinstance(o, str) for o in options):
                bad.append(f"{where} options {options!r}")
        elif device_class == "enum":
            bad.append(f"{where} enum without options")

        category = cfg.get("entity_category")
        if category not in (None, "diagnostic", "config"):
            bad.append(f"{where} entity_category {category!r}")
        if category == "diagnostic" and p not in ("sensor", "binary_sensor"):
            bad.append(f"{where} diagnostic on {p}")
        if category == "config" and p not in ("number", "button"):
            bad.append(f"{where} config on {p}")

        availability = cfg.get("availability", doc.get("availability"))
        mode = cfg.get("availability_mode", doc.get("availability_mode"))
        if "availability_topic" in cfg:
            bad.append(f"{where} availability_topic")
        if (
            not isinstance(availability, list)
            or not availability
            or not all(isinstance(a, dict) and a.get("topic") for a in availability)
        ):
            bad.append(f"{where} availability {availability!r}")
        if mode != "all":
            bad.append(f"{where} availability_mode {mode!r}")

        state_topic = cfg.get("state_topic", doc.get("state_topic"))
        command_topic = cfg.get("command_topic", doc.get("command_topic"))
        if p in ("sensor", "binary_sensor", "event") and not state_topic:
            bad.append(f"{where} {p} without state_topic")
        if p in ("button", "number") and not command_topic:
            bad.append(f"{where} {p} without command_topic")
        if command_topic and ("+" in command_topic or "#" in command_topic):
            bad.append(f"{where} wildcard in command_topic")
        if p == "event" and not cfg.get("event_types"):
            bad.append(f"{where} event without event_types")

        # Templates read keys the state document has; numeric sensors get numbers.
        for tkey in ("value_template", "json_attributes_template", "last_reset_value_template"):
            for ref in VALUE_JSON_RE.findall(str(cfg.get(tkey, ""))):
                if ref not in state:
                    bad.append(f"{where} {tkey} reads missing {ref!r}")
        if p == "sensor" and (unit is not None or state_class is not None):
            m = PLAIN_VALUE_TEMPLATE_RE.match(str(cfg.get("value_template", "")))
            if not m or not _is_number(state.get(m.group(1))):
                bad.append(f"{where} numeric sensor reads a non-number")
        attr_names = ATTRIBUTE_NAME_RE.findall(str(cfg.get("json_attributes_template", "")))
        if {"last_reset", "state_class"} & set(attr_names):
            bad.append(f"{where} forbidden attribute")
        if "json_attributes_template" in cfg and "json_attributes_topic" not in cfg:
            bad.append(f"{where} attributes template without topic")
    return bad


# (id, name, currency, alert rules): currency known and unknown, '-' in an id, and the
# alert entities (event, number, problem binary_sensor) with every rule enabled.
ACCOUNTS: list[tuple[str, str, str | None, tuple[RuleSpec, ...]]] = [
    ("main", "Main", "USD", ()),
    ("team-b", "Team B", "EUR", ()),
    ("new-1", "Not polled yet", None, ()),
    ("x_9", "Yen", "JPY", ALL_RULES),
    ("ops-2", "Ops", None, ALL_RULES),
]


def test_every_discovery_payload_follows_home_assistant_rules():
    unique_ids: list[str] = []
    device_ids: list[str] = []
    entity_ids: list[str] = []
    for topics in (TOPICS, Topics(base="home/cm", prefix="ha")):
        for account_id, name, currency, rules in ACCOUNTS:
            doc = json.loads(json.dumps(payload(account_id, name, currency, topics, rules=rules)))
            topic = topics.device(account_id)
            assert (
                rule_violations(
                    topic, doc, account_id=account_id, currency=currency, prefix=topics.prefix
                )
                == []
            ), (account_id, currency)
            if topics is TOPICS:
                unique_ids += [c["unique_id"] for c in doc["cmps"].values()]
                entity_ids += [c["default_entity_id"] for c in doc["cmps"].values()]
                device_ids += doc["dev"]["identifiers"]
    assert len(unique_ids) == len(set(unique_ids))
    assert len(entity_ids) == len(set(entity_ids))
    assert len(device_ids) == len(set(device_ids)) == len(ACCOUNTS)
    platforms = {c["p"] for c in payload("x_9", "Yen", "JPY", rules=ALL_RULES)["cmps"].values()}
    assert platforms == {"sensor", "binary_sensor", "button", "number", "event"}


def test_rule_checker_catches_broken_payloads():
    """The checker itself must be able to fail: every mutation below is caught."""
    good = payload(rules=ALL_RULES)
    assert (
        rule_violations(
            TOPICS.device("main"), good, account_id="main", currency="USD", prefix="homeassistant"
        )
        == []
    )

    def broken(key: str, **changes: Any) -> list[str]:
        doc = json.loads(json.dumps(good))
        doc["cmps"][key].update(changes)
        for k, v in list(doc["cmps"][key].items()):
            if v is None:
                del doc["cmps"][key][k]
        return rule_violations(
            TOPICS.device("main"), doc, account_id="main", currency="USD", prefix="homeassistant"
        )

    assert broken("balance", state_class="measurement")
    assert broken("balance", unit_of_measurement="$")
    assert broken("balance", unit_of_measurement="EUR")
    assert broken("tokens_today", last_reset_value_template="{{ 1 }}")
    assert broken("api_status", state_class="total")
    assert broken("balance", options=["a"])
    assert broken("connected", entity_category="config")
    assert broken("refresh", entity_category="diagnostic")
    assert broken("balance", availability_topic="x/y")
    assert broken("balance", availability_mode="any")
    assert broken("balance", unique_id=None)
    assert broken("balance", default_entity_id=None)
    assert broken("balance", default_entity_id="sensor.Crossmodel")
    assert broken("balance", default_entity_id="binary_sensor.crossmodel_main_balance")
    assert broken("balance", object_id=None)
    assert broken("balance", object_id="crossmodel_main_balance_2")
    assert broken("alert_low_balance", object_id="crossmodel_main_low_balance_alert")
    assert broken("balance", state_topic=None)
    assert broken("refresh", command_topic=None)
    assert broken("balance", unit_of_measurment="USD")
    assert broken("balance", value_template="{{ value_json.currency }}")
    assert broken("tokens_today", json_attributes_template="{{ {'last_reset': value_json.x} }}")
    assert broken("balance", p="lamp")
    assert broken("alert", event_types=None)
    assert broken("alert", state_topic=None)
    assert broken("low_balance_below", command_topic=None)
    assert broken("low_balance_below", entity_category="diagnostic")
    assert broken("runway", device_class="enum")
    assert broken("burn_rate", value_template="{{ value_json.burn_rate_source }}")
    doc = json.loads(json.dumps(good))
    doc["o"] = {"sw_version": "1"}
    assert rule_violations(
        TOPICS.device("main"), doc, account_id="main", currency="USD", prefix="homeassistant"
    )
    assert rule_violations(
        "homeassistant/device/cm.main/config",
        good,
        account_id="main",
        currency="USD",
        prefix="homeassistant",
    )


EDGE_IDS = ["a--b", "team_", "-lead", "x", "0", "a" * 40]


def test_default_entity_id_is_valid_for_every_accepted_account_id():
    for account_id in EDGE_IDS:
        AccountConfig(id=account_id, api_key="cm-test-key")  # the config accepts each of them
        for key, cfg in payload(account_id, account_id)["cmps"].items():
            assert ENTITY_ID_RE.match(cfg["default_entity_id"]), cfg["default_entity_id"]
            assert cfg["unique_id"] == f"cm_{account_id}_{key}"


@pytest.mark.parametrize(("first", "second"), [("a-b", "a_b"), ("-lead", "lead")])
def test_account_ids_that_would_share_entity_ids_are_refused(first, second):
    # The slug folds '-' into '_': the config refuses a pair that would collide in HA.
    with pytest.raises(ValidationError, match="give the same Home Assistant entity ids"):
        Config.model_validate(
            {
                "accounts": [
                    {"id": first, "api_key": "cm-test-key"},
                    {"id": second, "api_key": "cm-test-key"},
                ]
            }
        )


# ---- currency, removal, read-back ---------------------------------------------------------

MONETARY = {
    "balance",
    "holds",
    "available",
    "spend_today",
    "spend_week",
    "spend_month",
    "total_spend",
}
# Entities whose unit holds the currency: left out until it is known.
CURRENCY_UNIT = MONETARY | {"burn_rate"}


def test_monetary_entities_are_left_out_while_currency_is_unknown():
    unknown = payload(currency=None)
    assert set(unknown["cmps"]) == set(EXPECTED_CMPS) - CURRENCY_UNIT
    units = {c.get("unit_of_measurement") for c in unknown["cmps"].values()}
    assert units == {None, "tokens", "requests", "d"}
    known = payload(currency="EUR")
    assert set(known["cmps"]) == set(EXPECTED_CMPS)
    assert {known["cmps"][k]["unit_of_measurement"] for k in MONETARY} == {"EUR"}
    assert known["cmps"]["burn_rate"]["unit_of_measurement"] == "EUR/d"


def test_removed_components_are_sent_as_bare_platform():
    got = payload(removed={"old_gauge": "sensor", "old_flag": "binary_sensor", "balance": "sensor"})
    assert got["cmps"]["old_gauge"] == {"p": "sensor"}
    assert got["cmps"]["old_flag"] == {"p": "binary_sensor"}
    # A removal never overrides a live component of the same id.
    assert got["cmps"]["balance"] == BALANCE
    assert list(got["cmps"]) == [*EXPECTED_CMPS, "old_gauge", "old_flag"]


def test_announced_components_and_currency_round_trip():
    sent = json.loads(json.dumps(payload(currency="EUR", removed={"gone": "sensor"})))
    platforms = {key: cfg["p"] for key, cfg in EXPECTED_CMPS.items()}
    # The bare {"p": …} removal was already sent: it is not announced any more.
    assert announced_components(sent) == platforms
    assert announced_currency(sent) == "EUR"

    unknown = json.loads(json.dumps(payload(currency=None)))
    assert announced_components(unknown) == {
        k: p for k, p in platforms.items() if k not in CURRENCY_UNIT
    }
    assert announced_currency(unknown) is None


def test_announced_components_ignores_foreign_messages():
    sent = payload()
    assert announced_components({**sent, "o": {"name": "zigbee2mqtt"}}) is None
    assert announced_components({k: v for k, v in sent.items() if k != "o"}) is None
    assert announced_components({**sent, "cmps": ["balance"]}) is None
    assert announced_currency({"cmps": {"balance": {"p": "sensor"}}}) is None
    assert announced_currency({}) is None


# ---- on a real broker: retained, QoS 1 ----------------------------------------------------


@contextlib.asynccontextmanager
async def qos2_recording(port: int) -> AsyncIterator[list[Got]]:
    """Subscribed at QoS 2, so each message arrives at exactly the QoS it was published with."""
    got: list[Got] = []
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=f"qos2-recorder-{id(got)}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe("#", options=SubscribeOptions(qos=2, retainAsPublished=True))

        async def pump() -> None:
            async for m in client.messages:
                data = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                got.append(Got(str(m.topic), data, m.retain, m.qos))

        task = asyncio.create_task(pump())
        try:
            yield got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_discovery_and_state_are_retained_at_qos_1_on_the_broker(
    standin, mosquitto, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the bridge keeps its history under ./data
    config = make_config(standin.url, mosquitto.port)
    stop = asyncio.Event()
    device_topic = "homeassistant/device/cm_main/config"
    async with qos2_recording(mosquitto.port) as live:
        task = asyncio.create_task(Bridge(config, timings=Timings(readback_seconds=0.1)).run(stop))
        await until(lambda: any(m.topic == "cm_mqtt_bridge/main/balance" for m in live))
        await until(lambda: any(m.topic == device_topic and b'"USD"' in m.payload for m in live))
        # A client that connects later gets the same, retained.
        async with qos2_recording(mosquitto.port) as late:
            await until(lambda: any(m.topic == "cm_mqtt_bridge/main/balance" for m in late))
            await until(lambda: any(m.topic == device_topic for m in late))
        stop.set()
        await asyncio.wait_for(task, 5)

    # The topics the bridge owns (a non-retained read-back marker may come and go).
    ours = [
        m
        for m in live
        if m.topic.startswith("cm_mqtt_bridge/main/")
        or m.topic in ("cm_mqtt_bridge/status", device_topic)
    ]
    assert ours
    for m in ours:
        assert (m.topic, m.retain, m.qos) == (m.topic, True, 1)
    device = [m for m in live if m.topic == device_topic]
    assert json.loads(device[-1].payload) == payload()
    retained = [m for m in late if m.topic == device_topic]
    assert len(retained) == 1
    assert (retained[0].retain, retained[0].qos) == (True, 1)
    assert json.loads(retained[0].payload) == payload()
    assert {m.topic for m in ours} >= {
        "cm_mqtt_bridge/status",
        device_topic,
        "cm_mqtt_bridge/main/availability",
        "cm_mqtt_bridge/main/state",
        "cm_mqtt_bridge/main/balance",
    }
