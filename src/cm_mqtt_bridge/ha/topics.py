"""Every MQTT topic and Home Assistant id the bridge uses, built and parsed in one place."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ..config.settings import entity_slug

REFRESH = "refresh"  # the command that polls now (per account, or every account)


class Kind(IntEnum):
    """What a retained topic holds; also the publish order on (re)connect, and what a Home
    Assistant birth message asks to resend."""

    STATUS = 0
    DISCOVERY = 1
    AVAILABILITY = 2
    STATE = 3


@dataclass(frozen=True, slots=True)
class Command:
    """A message on a `…/set` topic: `account` None for the bridge-wide refresh."""

    account: str | None
    name: str


@dataclass(frozen=True, slots=True)
class Topics:
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
        return f"{self.base}/{REFRESH}/set"

    @property
    def device_wildcard(self) -> str:
        return f"{self.prefix}/device/+/config"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """What the bridge listens to: HA's birth message and every command topic."""
        return (self.ha_status, f"{self.base}/+/+/set", self.refresh_all)

    def readback(self, marker: str) -> str:
        return f"{self.base}/_readback/{marker}"

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

    def command(self, account_id: str, name: str) -> str:
        return f"{self.base}/{account_id}/{name}/set"

    def device(self, account_id: str) -> str:
        return f"{self.prefix}/device/{device_id(account_id)}/config"

    def parse_command(self, topic: str) -> Command | None:
        """`<base>/<account>/<name>/set` or `<base>/refresh/set`; None for anything else."""
        if topic == self.refresh_all:
            return Command(None, REFRESH)
        head = self.base + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 3 or parts[2] != "set":
            return None
        return Command(parts[0], parts[1])


def device_id(account_id: str) -> str:
    return f"cm_{account_id}"


def unique_id(account_id: str, key: str) -> str:
    return f"cm_{account_id}_{key}"


def object_id(account_id: str, key: str) -> str:
    """An entity id without its domain: `crossmodel_<account>_<key>`."""
    return f"crossmodel_{entity_slug(account_id)}_{key}"


def default_entity_id(platform: str, account_id: str, key: str) -> str:
    return f"{platform}.{object_id(account_id, key)}"
