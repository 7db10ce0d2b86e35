"""`crmsync workflow run|validate|list-watermarks`: workflows from the command line.

Exit status: 0 when every activity succeeded (errors sent to an `error` branch count as handled), 1 when an
activity failed, 2 when the workflow file (or crmsync.yaml) is invalid — with a message naming the file, the
key and what to fix.
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crmsync.workflow import engine, model

workflow_app = typer.Typer(help="Workflows: CRM imports and exports as YAML graphs of activities.",
                           no_args_is_help=True)
console = Console()


def _load(file: Path) -> model.Workflow:
    try:
        return model.load(file)
    except model.WorkflowError as exc:
        console.print("[red]invalid workflow[/red]")
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)


@workflow_app.command("validate")
def validate(file: Path = typer.Argument(..., help="workflow YAML file")) -> None:
    """Check a workflow file without running it."""
    workflow = _load(file)
    console.print(f"{file}: ok — {len(workflow.activities)} activities, order: {' → '.join(model.order(workflow))}"
                  + (f", schedule: {workflow.schedule}" if workflow.schedule else ""))


@workflow_app.command("run")
def run(ctx: typer.Context, file: Path = typer.Argument(..., help="workflow YAML file"),
        log_level: str = typer.Option("WARNING", help="log level of the messages under the progress bars")) -> None:
    """Run a workflow once: progress bars per activity, a summary table, exit 0 only on success."""
    from crmsync import cli, logs
    from crmsync.run import effective_settings

    workflow = _load(file)
    logs.setup("workflow", log_level, json_output=False)
    current, found = cli.settings(ctx), cli.endpoints(ctx)
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bars:
        def progress(name: str, kind: str) -> engine.Progress:
            task = bars.add_task(f"{name} ({kind})", total=None)
            return engine.Progress(lambda **kwargs: bars.update(task, **kwargs))

        try:
            result = engine.run(workflow, effective_settings(current, None), found, file=file, progress=progress)
        except engine.WorkflowBusy as exc:
            console.print(f"[red]{exc}[/red]", highlight=False)
            raise typer.Exit(1)
    console.print(summary(result))
    raise typer.Exit(0 if result.ok else 1)


def summary(result: engine.RunResult) -> Table:
    table = Table(title=f"workflow {result.workflow} (run {result.run_id}{', resumed' if result.resumed else ''})")
    for column in ("activity", "type", "status", "in", "ok", "reject", "error", "seconds", "details"):
        table.add_column(column, justify="right" if column in ("in", "ok", "reject", "error", "seconds") else "left")
    colours = {"ok": "green", "error": "red", "error (handled)": "yellow", "skipped": "dim"}
    for a in result.activities:
        out = a.outputs
        table.add_row(a.name, a.type, f"[{colours[a.status]}]{a.status}[/]", str(a.rows_in), str(len(out.ok)),
                      str(len(out.reject)), str(len(out.error)), f"{a.seconds:.1f}", a.message or out.note)
    return table


@workflow_app.command("list-watermarks")
def list_watermarks(ctx: typer.Context) -> None:
    """The automatic-index options (LASTIMPORT_…): where each incremental import starts next time."""
    from crmsync import cli, pg
    from crmsync.workflow import options

    found = cli.endpoints(ctx)
    with pg.connect(found.campaign_dsn, autocommit=True) as conn:
        rows = options.watermarks(conn)
    table = Table(title="watermarks (UTC)")
    for column in ("option", "value", "updated"):
        table.add_column(column)
    for name, value, updated in rows:
        table.add_row(name, value, f"{updated:%Y-%m-%d %H:%M:%S}")
    console.print(table)
