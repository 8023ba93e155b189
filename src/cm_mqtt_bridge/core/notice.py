"""A notice: what a rule (or `test-alert`) tells the user, and its one stored and sent form.

`Notice.to_json` is the JSON object the outbox stores, MQTT publishes and the webhook posts;
`Notice.from_json` reads it back, or says what is wrong with a stored row. Nothing else
builds or reads that object, so the channels see a typed `Notice`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

# "test": a `test-alert` notice, never stored.
NoticeKind = Literal["fired", "reminder", "recovered", "event", "test"]
KINDS = frozenset(get_args(NoticeKind))

_TEXT_FIELDS = ("id", "account", "rule", "kind", "title", "message", "at")


@dataclass(frozen=True, slots=True)
class Notice:
    id: str
    account_id: str
    rule: str
    kind: NoticeKind
    title: str
    message: str
    value: str | None
    threshold: str | None
    at: datetime
    priority: str | None = None
    tags: tuple[str, ...] = ()
    step: int | None = None  # budget warnings: the step (percent of the budget)
    resets_at: str | None = None  # budget notices: when the budget window ends

    def to_json(self) -> dict[str, object]:
        """The stored and sent form (key order kept: MQTT publishes it as it is)."""
        extra: dict[str, object] = {}
        if self.step is not None:
            extra["step"] = self.step
        if self.resets_at is not None:
            extra["resets_at"] = self.resets_at
        return {
            "id": self.id,
            "account": self.account_id,
            # Home Assistant's event entity reads the event type here.
            "event_type": self.rule,
            "rule": self.rule,
            "kind": self.kind,
            "title": self.title,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
            "at": self.at.isoformat(),
            "priority": self.priority,
            "tags": list(self.tags),
            **extra,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object) -> Notice | str:
        """A stored notice (JSON text), or what is wrong with it."""
        if not isinstance(raw, str | bytes):
            return f"payload is {type(raw).__name__}, not JSON text"
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            return f"payload is not JSON ({exc})"
        if not isinstance(doc, dict):
            return "payload is not a JSON object"
        for key in _TEXT_FIELDS:
            if not isinstance(doc.get(key), str):
                return f"payload field {key!r} is missing or not text"
        for key in ("priority", "value", "threshold", "resets_at"):
            if doc.get(key) is not None and not isinstance(doc[key], str):
                return f"payload field {key!r} is not text"
        tags = doc.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return "payload field 'tags' is not a list of text"
        step = doc.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            return "payload field 'step' is not a whole number"
        kind = doc["kind"]
        if kind not in KINDS:
            return f"payload field 'kind' is not one of {', '.join(sorted(KINDS))}"
        try:
            at = datetime.fromisoformat(doc["at"])
        except ValueError:
            return "payload field 'at' is not a date"
        return cls(
            id=doc["id"],
            account_id=doc["account"],
            rule=doc["rule"],
            kind=kind,
            title=doc["title"],
            message=doc["message"],
            value=doc.get("value"),
            threshold=doc.get("threshold"),
            at=at,
            priority=doc.get("priority"),
            tags=tuple(tags),
            step=step,
            resets_at=doc.get("resets_at"),
        )
