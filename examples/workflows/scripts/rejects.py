"""Script hook of 05-export-with-branches.yaml: report what the CRM refused, one line per record."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("crmsync.workflow.examples")


def report(rows: list[dict[str, Any]], ctx: Any) -> list[dict[str, Any]]:
    for row in rows:
        log.warning("recipient %s not exported: %s %s", row.get("id"), row.get("errorSymbol"), row.get("errorMessage"))
    return rows
