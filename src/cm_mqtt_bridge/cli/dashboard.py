"""`cm-mqtt-bridge dashboard [--account ID | --all]`: the Home Assistant dashboard as YAML on
stdout (`ha.dashboard` builds it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from ..config.settings import AccountConfig, unknown_account
from ..exits import EXIT_OK
from ..ha.dashboard import render_yaml
from .errors import fail


def cmd_dashboard(
    accounts: Sequence[AccountConfig], account_id: str | None, overview: bool, out: TextIO
) -> int:
    """0, or 2 for an unknown account."""
    if account_id is not None:
        chosen = [acc for acc in accounts if acc.id == account_id]
        if not chosen:
            return fail(unknown_account(account_id, [acc.id for acc in accounts]))
        accounts = chosen
    out.write(render_yaml(accounts, overview=overview))
    return EXIT_OK
