"""`crmsync enums sync <account>`: map CRM picklists to Campaign enumerations, preview, apply, report."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from crmsync import enums
from crmsync.accounts_cli import context, fail

enums_app = typer.Typer(help="Synchronize CRM picklists with Campaign enumerations.", no_args_is_help=True)


def _values(values: list[dict], limit: int = 6) -> str:
    names = [str(v["value"]) for v in values]
    return ", ".join(names[:limit]) + (f" … (+{len(names) - limit})" if len(names) > limit else "")


def plan_table(plans: list[enums.EnumPlan], title: str) -> Table:
    table = Table(title=title)
    for column in ("CRM enumeration", "Campaign enumeration", "Replace", "added", "removed", "kept"):
        table.add_column(column, overflow="fold")
    for p in plans:
        table.add_row(f"{p.crm_label} ({p.crm_enumeration})", p.campaign + (" (new)" if p.new else ""),
                      "Yes" if p.replace else "No", f"{len(p.added)}: {_values(p.added)}" if p.added else "0",
                      f"{len(p.removed)}: {_values(p.removed)}" if p.removed else "0", str(len(p.kept)))
    return table


@enums_app.command("sync")
def sync(ctx: typer.Context, account: str,
         map_: Optional[list[str]] = typer.Option(None, "--map", help="CRM=campaign, e.g. Account_Industry=industry"),
         only: Optional[list[str]] = typer.Option(None, help="only these CRM enumerations (default: all)"),
         replace: Optional[list[str]] = typer.Option(None, help="Replace=yes for this CRM enumeration"),
         replace_all: bool = typer.Option(False, help="Replace=yes for every enumeration"),
         preview: bool = typer.Option(False, help="show what would change, change nothing")) -> None:
    """Add the CRM's values to Campaign enumerations (Replace=no) or make them equal (Replace=yes)."""
    _, dsn = context(ctx)
    maps = {}
    for item in map_ or []:
        crm, sep, campaign = item.partition("=")
        if not sep or not crm or not campaign:
            fail(f"--map expects CRM_ENUM=campaign_enum, got {item!r}", 2)
        maps[crm] = campaign
    selected = set(only or []) | set(maps) or None
    try:
        plans = enums.plan(dsn, account, maps, set(replace or []), replace_all, selected)
    except ValueError as exc:
        fail(str(exc), 2)
    console = Console()
    if preview:
        console.print(plan_table(plans, "preview: nothing changed yet"))
        return
    enums.apply(dsn, account, plans)
    console.print(plan_table(plans, "enumerations synchronized"))
    console.print(f"{len(plans)} enumeration(s): {sum(len(p.added) for p in plans)} value(s) added, "
                  f"{sum(len(p.removed) for p in plans)} removed, {sum(len(p.kept) for p in plans)} kept",
                  highlight=False)
