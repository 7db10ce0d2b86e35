"""Run a workflow: activities in graph order, rows flowing along the ok / error / reject transitions.

Data between activities is a list of dict rows per transition. Why not temporary tables: the workflows this
serves move thousands of records, not millions (the continuous sync handles volume), and rows in memory keep
every activity a plain function that a newcomer can read and test; anything durable (watermarks, the export
journal, Campaign rows, rejects) is written to PostgreSQL by the activity that owns it.

Rules of the road:
- an activity runs when at least one transition into it fired (a root always runs); its input is every row
  sent to it, in the order the senders ran;
- `ok` always fires when the activity succeeded (even with no rows), `reject` fires when it has rejects,
  `error` fires when it failed (one row describing the error);
- an error with no `error` transition fails the run (exit 1); rejects with no `reject` transition are logged as
  warnings, one per record;
- what must only happen once the whole run succeeded (moving an import watermark) is registered with
  `RunContext.on_success` and done at the end.
- one row in crmsync.workflow_runs per run; a run that did not succeed is resumed by the next run of the same
  workflow (the export journal uses its id), a new one starts after a success.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg

from crmsync import pg
from crmsync.connectors import close_clients
from crmsync.config import Settings
from crmsync.infra import Endpoints
from crmsync.workflow.model import Workflow, order

log = logging.getLogger("crmsync.workflow")
Row = dict[str, Any]


class ActivityError(Exception):
    """An activity could not do its work; `code` is a stable symbol for the error output."""

    def __init__(self, message: str, code: str = "ACTIVITY_FAILED") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Outputs:
    """What an activity hands on: rows per output, and a short note for the summary."""

    ok: list[Row] = field(default_factory=list)
    reject: list[Row] = field(default_factory=list)
    error: list[Row] = field(default_factory=list)
    note: str = ""


@dataclass
class Progress:
    """The activity's progress bar (a no-op without a console)."""

    update: Callable[..., None] = lambda **kwargs: None

    def total(self, total: int) -> None:
        self.update(total=total)

    def advance(self, count: int = 1) -> None:
        self.update(advance=count)


@dataclass
class RunContext:
    """Everything an activity may use. `vars` are the workflow variables (e.g. crmStartImport)."""

    workflow: Workflow
    settings: Settings
    endpoints: Endpoints
    conn: psycopg.Connection  # autocommit
    run_id: int
    file: Path | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    clients: dict[str, Any] = field(default_factory=dict)
    success_hooks: list[Callable[[], None]] = field(default_factory=list)
    connected: dict[str, set[str]] = field(default_factory=dict)  # activity -> its outputs that have targets

    def on_success(self, hook: Callable[[], None]) -> None:
        self.success_hooks.append(hook)

    def reject_connected(self, activity: str) -> bool:
        return "reject" in self.connected.get(activity, set())

    def connector(self, account_name: str) -> Any:
        """The connector of the account's CRM type."""
        from crmsync import connectors

        if account_name not in self.settings.accounts:
            raise ValueError(f"no account {account_name!r} in the configuration (accounts: "
                             f"{', '.join(self.settings.accounts) or 'none'})")
        return connectors.for_account(self.settings.accounts[account_name])

    def client(self, account_name: str) -> Any:
        """One logged-in client per account for the whole run."""
        if account_name not in self.clients:
            self.clients[account_name] = self.connector(account_name).client(account_name,
                                                                              self.settings.accounts[account_name])
        return self.clients[account_name]


@dataclass
class ActivityResult:
    name: str
    type: str
    status: str = "skipped"  # skipped | ok | error | error (handled)
    rows_in: int = 0
    outputs: Outputs = field(default_factory=Outputs)
    seconds: float = 0.0
    message: str = ""


@dataclass
class RunResult:
    workflow: str
    run_id: int
    activities: list[ActivityResult]
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return all(a.status in ("ok", "skipped", "error (handled)") for a in self.activities)


class WorkflowBusy(Exception):
    """The same workflow is running elsewhere (another `crmsync workflow run`, or the scheduler)."""


RUN_LOCK_CLASS = 7_400_552  # advisory-lock class of workflow runs (crmsync.pg uses 7_400_551 for migrations)
Runner = Callable[[Any, list[Row], RunContext, Progress], Outputs]
ProgressFactory = Callable[[str, str], Progress]


def start_run(conn: psycopg.Connection, workflow: Workflow, file: Path | None) -> tuple[int, bool]:
    """Resume the last run of this workflow if it did not succeed (its journal is still valid), else start one."""
    row = conn.execute("SELECT id, status FROM crmsync.workflow_runs WHERE workflow = %s ORDER BY id DESC LIMIT 1",
                       (workflow.name,)).fetchone()
    if row and row[1] != "succeeded":
        conn.execute("UPDATE crmsync.workflow_runs SET status = 'running', finished_at = NULL WHERE id = %s",
                     (row[0],))
        return row[0], True
    new = conn.execute("INSERT INTO crmsync.workflow_runs (workflow, file) VALUES (%s, %s) RETURNING id",
                       (workflow.name, str(file) if file else None)).fetchone()
    return new[0], False


def finish_run(conn: psycopg.Connection, run_id: int, ok: bool) -> None:
    conn.execute("UPDATE crmsync.workflow_runs SET status = %s, finished_at = now() WHERE id = %s",
                 ("succeeded" if ok else "failed", run_id))


def run(workflow: Workflow, settings: Settings, endpoints: Endpoints, *, file: Path | None = None,
        progress: ProgressFactory | None = None, stop: threading.Event | None = None) -> RunResult:
    """Run `workflow` once, front to back, and return what every activity did."""
    from crmsync.workflow.activities import RUNNERS

    pg.migrate(endpoints.campaign_dsn)
    with pg.connect(endpoints.campaign_dsn, autocommit=True, application="crmsync-workflow") as conn:
        # One run of a workflow at a time: two would share its journal. The lock ends with the connection,
        # so a killed run never leaves it behind.
        lock = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (RUN_LOCK_CLASS, workflow.name))
        if not lock.fetchone()[0]:
            raise WorkflowBusy(f"workflow {workflow.name} is already running (another crmsync workflow run, or "
                               "the scheduler of crmsync run); try again when it has finished")
        run_id, resumed = start_run(conn, workflow, file)
        ctx = RunContext(workflow, settings, endpoints, conn, run_id, file=file, stop=stop or threading.Event())
        ctx.connected = {a.name: {out for out, _ in a.then.targets()} for a in workflow.activities}
        if resumed:
            log.info("resuming run %s of workflow %s (the previous one did not finish)", run_id, workflow.name)
        try:
            results = _run_activities(workflow, ctx, RUNNERS, progress or (lambda name, kind: Progress()))
        finally:
            close_clients(ctx.clients)  # log the CRM sessions off (some CRMs cap how many a company holds)
        result = RunResult(workflow.name, run_id, results, resumed)
        if result.ok:
            for hook in ctx.success_hooks:
                hook()
        finish_run(conn, run_id, result.ok)
        return result


def _run_activities(workflow: Workflow, ctx: RunContext, runners: dict[str, Runner],
                    progress: ProgressFactory) -> list[ActivityResult]:
    inbox: dict[str, list[Row]] = {a.name: [] for a in workflow.activities}
    fired: set[str] = set()
    roots = {a.name for a in workflow.activities} - {t for a in workflow.activities for _, t in a.then.targets()}
    results: list[ActivityResult] = []
    failed = False
    for name in order(workflow):
        activity = workflow.activity(name)
        result = ActivityResult(name, activity.type)
        results.append(result)
        if failed or (name not in roots and name not in fired):
            continue
        result.rows_in = len(inbox[name])
        started = time.monotonic()
        bar = progress(name, activity.type)
        try:
            result.outputs = runners[activity.type](activity, inbox[name], ctx, bar)
            result.status = "ok"
            handled = max(result.rows_in, len(result.outputs.ok) + len(result.outputs.reject))
            bar.update(total=handled, completed=handled)
        except Exception as exc:  # noqa: BLE001 - becomes the error output, or fails the run
            result.message = str(exc)
            code = getattr(exc, "code", None) or type(exc).__name__
            result.outputs = Outputs(error=[{"activity": name, "errorCode": code, "errorSymbol": code,
                                             "errorMessage": str(exc)}])
            handled = "error" in ctx.connected[name]
            result.status = "error (handled)" if handled else "error"
            log.log(logging.WARNING if handled else logging.ERROR, "activity %s failed: %s", name, exc)
            failed = not handled
        result.seconds = time.monotonic() - started
        _warn_unprocessed_rejects(name, result.outputs, ctx)
        for output, target in activity.then.targets():
            rows = getattr(result.outputs, output)
            if output == "ok" and result.status == "ok" or output != "ok" and rows:
                inbox[target].extend(rows)
                fired.add(target)
    return results


def _warn_unprocessed_rejects(name: str, outputs: Outputs, ctx: RunContext) -> None:
    """The seed's rule: without reject processing, every rejected record is still logged (code + message)."""
    if outputs.reject and not ctx.reject_connected(name):
        for row in (r for r in outputs.reject if "errorCode" in r):  # deduplicate's duplicates are no errors
            log.warning("activity %s rejected a record (%s): %s %s", name, _row_label(row), row.get("errorCode"),
                        row.get("errorMessage"))


def _row_label(row: Row) -> str:
    for key in ("id", "Id", "key", "email", "Email"):
        if row.get(key) is not None:
            return f"{key}={row[key]}"
    return "row"
