"""Script hooks of 02-incremental-users.yaml. A hook receives the rows and the run context and returns rows."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("crmsync.workflow.examples")


def select_folder(rows: list[dict[str, Any]], ctx: Any) -> list[dict[str, Any]]:
    """The seed's "Select folder": active users go to their department's folder, the others to Inactive."""
    return [{**row, "folder": (row.get("Department") or "Users") if row.get("IsActive") else "Inactive"}
            for row in rows]


def report_window(rows: list[dict[str, Any]], ctx: Any) -> None:
    """The window this run imported (vars.crmStartImport inclusive, vars.crmEndDate exclusive)."""
    log.info("option %s: imported %d user(s) modified in [%s, %s)", ctx.vars.get("crmOptionName"), len(rows),
             ctx.vars.get("crmStartImport") or "the beginning", ctx.vars.get("crmEndDate"))
