"""`crmsync wizard <account>` (and `wizard export|load|refresh-formulas <account>`).

Interactive by default (a rich table of the CRM's tables, then a prompt), scriptable with `--all`,
`--tables Contact,Account` and `--yes`; `--yes` alone on a configured account re-runs with the tables chosen last
time, which is how schema drift is picked up.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from crmsync.accounts_cli import context, fail, stored
from crmsync.mirrors import data, schema
from crmsync.wizard.discovery import UnsafeName, discovery_for

log = logging.getLogger("crmsync.wizard")


class _AccountFirst(TyperGroup):
    """`wizard ACCOUNT …` runs the wizard; `wizard export|load|refresh-formulas ACCOUNT` the other steps."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


wizard_app = typer.Typer(cls=_AccountFirst, no_args_is_help=True,
                         help="Discover CRM tables, generate the schema, mirror tables and enumerations.\n\n"
                              "`crmsync wizard ACCOUNT [--all | --tables Contact,Account] [--yes]` runs the wizard "
                              "(interactive without flags); the commands below are its follow-up steps.")


def _discovery(ctx: typer.Context, account: str):  # type: ignore[no-untyped-def]
    settings, dsn, found = stored(ctx, account)
    try:
        return dsn, discovery_for(account, found.account, ctx.call_on_close)
    except Exception as exc:  # noqa: BLE001 - reported, scrubbed of secrets
        fail(f"cannot log in to account {account!r}: {found.account.scrub(str(exc))}")
        raise


def _choose(console: Console, tables, previous: list[str], all_: bool, names: Optional[str], yes: bool) -> list[str]:
    by_name = {t.name.lower(): t.name for t in tables}
    if all_:
        return [t.name for t in tables]
    if names:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n.lower() not in by_name]
        if unknown:
            fail(f"unknown table(s): {', '.join(unknown)}", 2)
        return [by_name[n.lower()] for n in chosen]
    if yes and previous:
        return previous
    if yes:
        fail("name the tables with --tables or --all", 2)
    grid = Table(title="CRM tables")
    for column in ("#", "Table label", "Table internal name", "Selected"):
        grid.add_column(column)
    for i, t in enumerate(tables, 1):
        grid.add_row(str(i), t.label, t.name, "Yes" if t.name in previous else "No")
    console.print(grid)
    answer = typer.prompt("Tables to mirror (numbers or names, comma separated, or 'all')",
                          default=",".join(previous) or "all")
    if answer.strip().lower() == "all":
        return [t.name for t in tables]
    picked = []
    for item in (a.strip() for a in answer.split(",") if a.strip()):
        name = tables[int(item) - 1].name if item.isdigit() and 0 < int(item) <= len(tables) else by_name.get(item.lower())
        if name is None:
            fail(f"unknown table {item!r}", 2)
        picked.append(name)
    return picked


@wizard_app.command("run", hidden=True)
def run(ctx: typer.Context, account: str,
        all_: bool = typer.Option(False, "--all", help="select every table"),
        tables: Optional[str] = typer.Option(None, help="comma-separated API names, e.g. Contact,Account"),
        yes: bool = typer.Option(False, "--yes", "-y", help="no questions (re-run: same tables as last time)")) -> None:
    """Run the configuration wizard for ACCOUNT."""
    console = Console()
    dsn, discovery = _discovery(ctx, account)
    previous = schema.load_document(dsn, account)
    listed = discovery.list_tables()
    chosen = _choose(console, listed, [e["name"] for e in previous["elements"]] if previous else [], all_, tables, yes)
    if not yes and not typer.confirm(f"Generate the schema for {len(chosen)} table(s)?", default=True):
        raise typer.Exit(1)
    started = time.monotonic()

    def say(line: str) -> None:
        log.info(line)
        style = "yellow" if line.startswith("warning") else None
        console.print(f"[{time.monotonic() - started:6.1f}s] {line}", style=style, highlight=False, markup=False)

    try:
        document = schema.generate(discovery, dsn, account, chosen, say)
    except UnsafeName as exc:
        fail(f"{exc}; nothing was generated", 2)
    console.print(f"{len(document['elements'])} table(s) in {document['mirrorSchema']}, "
                  f"{len(document['enumerations'])} enumeration(s); account {account!r} is configured. "
                  f"Next: `crmsync wizard load {account}`, `crmsync enums sync {account}`.", highlight=False)


@wizard_app.command("export")
def export(ctx: typer.Context, account: str) -> None:
    """Print the generated schema description as YAML."""
    _, dsn = context(ctx)
    document = schema.load_document(dsn, account)
    if document is None:
        fail(f"account {account!r} is not configured: run `crmsync wizard {account}` first", 2)
    typer.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)


@wizard_app.command("load")
def load(ctx: typer.Context, account: str,
         tables: Optional[str] = typer.Option(None, help="only these objects (comma separated)")) -> None:
    """Copy the CRM's current rows into the mirror tables (insert or update by id)."""
    dsn, discovery = _discovery(ctx, account)
    counts = data.load(discovery, dsn, account, tables.split(",") if tables else None)
    Console().print(", ".join(f"{n}: {c} rows" for n, c in counts.items()) or "nothing to load", highlight=False)


@wizard_app.command("refresh-formulas")
def refresh_formulas(ctx: typer.Context, account: str,
                     interval: Optional[float] = typer.Option(None, min=1, help="repeat every SECONDS until Ctrl-C"),
                     tables: Optional[str] = typer.Option(None, help="only these objects (comma separated)")) -> None:
    """Re-read formula fields and update the mirror rows whose formula values changed."""
    dsn, discovery = _discovery(ctx, account)
    console = Console()
    try:
        while True:
            changed = data.refresh_formulas(discovery, dsn, account, tables.split(",") if tables else None)
            console.print("formula refresh: " + (", ".join(f"{n}: {c} changed" for n, c in changed.items())
                                                 or "no formula fields mirrored"), highlight=False)
            if not interval:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        pass

