"""`crmsync rejects list|retry`: look at the rejects ledger and put records back on their apply topics.

Kept apart from crmsync/cli.py so it imports only what it needs; mount it with
``app.add_typer(rejects_app, name="rejects")``. It finds the broker and database through the configuration
(``--config``, else the one given to the main command, else $CRMSYNC_CONFIG / ./crmsync.yaml).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from crmsync import config, infra, pg, rejects
from crmsync.config import ConfigError

rejects_app = typer.Typer(help="Records a stage could not process: list them, retry them.", no_args_is_help=True)


def _console() -> Console:
    """A console per command, so the terminal width (or $COLUMNS) is read when the command runs."""
    return Console()

ConfigOption = typer.Option(None, "--config", "-c", help="crmsync.yaml to use")


def _endpoints(ctx: typer.Context, config_file: Optional[Path]) -> infra.Endpoints:
    root = ctx.find_root().obj if ctx.find_root().obj else {}
    path = config_file or (root.get("config_file") if isinstance(root, dict) else None)
    try:
        settings = config.load(path)
    except ConfigError as exc:
        _console().print(f"[red]configuration error[/red]\n{exc}", highlight=False)
        raise typer.Exit(2)
    found = infra.up(settings)
    pg.migrate(found.campaign_dsn)
    return found


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def rejects_table(rows: list[dict]) -> Table:
    table = Table(title=f"{len(rows)} rejects (newest first)")
    for column in ("id", "stage", "object", "error_code", "reason", "attempts", "status", "next retry"):
        table.add_column(column, overflow="fold")
    for row in rows:
        retry = row["next_retry_at"].strftime("%Y-%m-%d %H:%M:%S") if row["next_retry_at"] else "-"
        table.add_row(row["id"], row["stage"], row["object"], row["error_code"] or "", _short(row["reason"], 80),
                      str(row["attempts"]), row["status"], retry)
    return table


@rejects_app.command("list")
def list_command(ctx: typer.Context,
                 status: Optional[str] = typer.Option(None, help=f"only this status: {', '.join(rejects.STATUSES)}"),
                 limit: int = typer.Option(50, min=1, help="at most this many rows"),
                 config_file: Optional[Path] = ConfigOption) -> None:
    """Show the rejects ledger: what failed, why, and when it is retried."""
    console = _console()
    if status is not None and status not in rejects.STATUSES:
        console.print(f"[red]unknown status {status!r}[/red]; choose one of: {', '.join(rejects.STATUSES)}")
        raise typer.Exit(2)
    found = _endpoints(ctx, config_file)
    console.print(rejects_table(rejects.list_rejects(found.campaign_dsn, status=status, limit=limit)))


@rejects_app.command("retry")
def retry_command(ctx: typer.Context,
                  ids: Optional[list[str]] = typer.Argument(None, help="reject ids (see `rejects list`)"),
                  all_: bool = typer.Option(False, "--all", help="every reject that is not resolved"),
                  config_file: Optional[Path] = ConfigOption) -> None:
    """Put rejected commands back on their apply topics now (abandoned ones too)."""
    console = _console()
    if not ids and not all_:
        console.print("[red]name the reject ids to retry, or pass --all[/red]")
        raise typer.Exit(2)
    found = _endpoints(ctx, config_file)
    sent = rejects.retry_now(found.campaign_dsn, found.bootstrap_servers, None if all_ else list(ids or []))
    console.print(f"requeued {len(sent)} reject(s)")
    skipped = sorted(set(ids or []) - set(sent))
    if skipped and not all_:
        console.print(f"[yellow]not requeued[/yellow] (resolved, unknown, or no apply command stored): "
                      f"{', '.join(skipped)}", highlight=False)
