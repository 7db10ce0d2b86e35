"""Export to the CRM: insert-or-update by the mapped key, restart-safe through a journal.

Per record (keyed by its Campaign key, e.g. recipients.id):

- a CRM id in the row (`crm_id:` column) → update that record (the seed: the remote key is mapped);
- otherwise → upsert by the external id (`external_id:`, default the connector's Campaign-key field) = the Campaign key, exactly as the two-way sync
  creates records, so a retried or repeated create lands on the same CRM record.

Journal (crmsync.workflow_journal, one row per run × activity × record):

    (none) ──chunk marked──▶ sent ──CRM answered──▶ done (crm_id) | rejected (code, message)

A chunk is marked `sent` *before* the call and settled in one transaction with the write-back of the new CRM
ids *after* it. After a crash (kill -9 anywhere), the next run of the workflow resumes the same run id
(engine.start_run): `done` and `rejected` records are not sent again; `sent` records, whose answer was lost,
are sent again — as upserts by external id or updates by Id, which cannot create a second record. So a rerun
neither loses nor doubles a record.
"""
from __future__ import annotations

from typing import Any

from psycopg import sql

from crmsync.envelope import ApplyCommand
from crmsync.values import Kind, canonical
from crmsync.workflow.activities.crm import crm_writer, describe_fields, reject_row, settle
from crmsync.workflow.engine import ActivityError, Outputs, Progress, RunContext, Row
from crmsync.workflow.model import CrmActivity

BULK_CHUNK = 10_000  # records per Bulk API 2.0 job in batch mode


class Journal:
    """The export journal of one activity in one run."""

    def __init__(self, ctx: RunContext, activity: str) -> None:
        self.conn, self.run_id, self.activity = ctx.conn, ctx.run_id, activity

    def load(self) -> dict[str, tuple]:
        rows = self.conn.execute("SELECT record_key, state, crm_id, created, error_code, error_message "
                                 "FROM crmsync.workflow_journal WHERE run_id = %s AND activity = %s",
                                 (self.run_id, self.activity)).fetchall()
        return {r[0]: r[1:] for r in rows}

    def mark_sent(self, keys: list[str]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany("INSERT INTO crmsync.workflow_journal (run_id, activity, record_key, state) "
                            "VALUES (%s, %s, %s, 'sent') ON CONFLICT (run_id, activity, record_key) DO UPDATE "
                            "SET state = 'sent', updated_at = now()",
                            [(self.run_id, self.activity, k) for k in keys])

    def settle(self, done: list[tuple[str, str, bool]], rejected: list[tuple[str, str | None, str]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany("UPDATE crmsync.workflow_journal SET state = 'done', crm_id = %s, created = %s, "
                            "updated_at = now() WHERE run_id = %s AND activity = %s AND record_key = %s",
                            [(crm_id, created, self.run_id, self.activity, k) for k, crm_id, created in done])
            cur.executemany("UPDATE crmsync.workflow_journal SET state = 'rejected', error_code = %s, "
                            "error_message = %s, updated_at = now() WHERE run_id = %s AND activity = %s "
                            "AND record_key = %s",
                            [(code, message, self.run_id, self.activity, k) for k, code, message in rejected])


def export(activity: CrmActivity, rows: list[Row], ctx: RunContext, progress: Progress, client: Any) -> Outputs:
    """Send the inbound rows to the CRM in chunks; every chunk is journaled before and settled after."""
    journal = Journal(ctx, activity.name)
    known = journal.load()
    outputs = Outputs()
    todo: list[Row] = []
    seen: set[str] = set()  # a record listed twice (e.g. a union without distinct_on) is sent once
    replayed = 0
    for row in rows:
        key = "" if row.get(activity.key) is None else str(row[activity.key])
        if not key:
            outputs.reject.append(reject_row(row, "CRMSYNC_NO_KEY", f"no Campaign key in column {activity.key!r}"))
        elif key not in seen:
            seen.add(key)
            if _replay(activity, row, known.get(key), outputs):
                replayed += 1
            else:
                todo.append(row)
    progress.total(len(rows))
    progress.advance(len(rows) - len(todo))
    chunk = BULK_CHUNK if activity.batch else activity.batch_size
    kinds = {name: spec.kind for name, spec in describe_fields(ctx, activity).items()}
    results: dict[str, tuple[str, bool]] = {}  # command id -> (CRM id, created), from the writer's hook
    writer = crm_writer(ctx, client, activity,
                               lambda command, crm_id, created: results.__setitem__(command.id, (crm_id, created)))
    try:
        for start in range(0, len(todo), chunk):
            results.clear()
            _export_chunk(activity, ctx, journal, writer, todo[start:start + chunk], outputs, results, kinds)
            progress.advance(len(todo[start:start + chunk]))
    finally:
        writer.close()
    created = sum(1 for r in outputs.ok if r.get("exportStatus") == "created")
    outputs.note = (f"{created} created, {len(outputs.ok) - created} updated, {len(outputs.reject)} rejected"
                    + (f" ({replayed} already done before a restart)" if replayed else ""))
    return outputs


def _replay(activity: CrmActivity, row: Row, entry: tuple | None, outputs: Outputs) -> bool:
    """A record this run already settled before a restart: hand on its recorded outcome, do not send it again."""
    if entry is None or entry[0] == "sent":
        return False
    state, crm_id, created, code, message = entry
    if state == "done":
        outputs.ok.append(_ok_row(activity, row, crm_id, bool(created)))
    else:
        outputs.reject.append(reject_row(row, code, message or ""))
    return True


def _export_chunk(activity: CrmActivity, ctx: RunContext, journal: Journal, writer: Any, rows: list[Row],
                  outputs: Outputs, results: dict[str, tuple[str, bool]], kinds: dict[str, Kind]) -> None:
    commands = {}
    sendable = []
    for row in rows:
        try:
            command = _command(activity, ctx, row, kinds)
        except ValueError as exc:  # a value the CRM field cannot take: this record is refused, the rest go
            outputs.reject.append(reject_row(row, "CRMSYNC_INVALID_VALUE", str(exc)))
            continue
        commands[command.id] = (row, command)
        sendable.append(row)
    rows = sendable
    journal.mark_sent([str(row[activity.key]) for row in rows])
    result = writer.process([c for _, c in commands.values()])
    chunk_out = Outputs()
    settle(commands, set(results), result.rejects, chunk_out)
    done = []
    for command_id, (row, _) in commands.items():
        if command_id in results:
            crm_id, created = results[command_id]
            done.append((str(row[activity.key]), crm_id, created))
            outputs.ok.append(_ok_row(activity, row, crm_id, created))
    rejected = [(str(r[activity.key]), r["errorCode"], r["errorMessage"]) for r in chunk_out.reject]
    outputs.reject += chunk_out.reject
    with ctx.conn.transaction():
        journal.settle(done, rejected)
        if activity.write_back:
            _write_back(ctx, activity, done)


def _command(activity: CrmActivity, ctx: RunContext, row: Row, kinds: dict[str, Kind]) -> ApplyCommand:
    """Update by Id when the CRM id is mapped, else upsert by the external id (the Campaign key). Values are
    converted by the CRM field's declared kind (a text field gets the column's text byte for byte)."""
    key, crm_id = str(row[activity.key]), row.get(activity.crm_id)
    external_id = activity.external_id or ctx.connector(ctx.workflow.account_of(activity)).default_external_id
    if not external_id:
        raise ActivityError(f"{activity.object}: the CRM has no default field for the Campaign key; set "
                            "external_id:", "INVALID_ACTIVITY")
    values = {}
    for f in activity.mapping:
        try:
            values[f.crm] = canonical(row.get(f.campaign), kinds.get(f.crm), f.conversion)
        except ValueError as exc:
            raise ValueError(f"{f.campaign} → {f.crm}: {exc}") from None
    if crm_id:
        values[external_id] = key  # the CRM record points back to us, as in the two-way sync
    return ApplyCommand(id=f"workflow:{ctx.workflow.name}:{ctx.run_id}:{activity.name}:{key}", side="crm",
                        target=ctx.workflow.account_of(activity), object=activity.object, action="upsert",
                        key={"id": crm_id} if crm_id else None, values=values,
                        match=None if crm_id else {external_id: key},
                        cause=f"workflow:{ctx.workflow.name}:{ctx.run_id}")


def _ok_row(activity: CrmActivity, row: Row, crm_id: str, created: bool) -> Row:
    return {**row, activity.crm_id: crm_id, "exportStatus": "created" if created else "updated"}


def _write_back(ctx: RunContext, activity: CrmActivity, done: list[tuple[str, str, bool]]) -> None:
    """New CRM ids onto the Campaign rows, plus the identity link (linked_by 'workflow'), with the journal."""
    from crmsync.workflow.activities.query import campaign_table

    table = campaign_table(ctx, activity.write_back or "")
    if not table.has_crm_link or table.primary_key is None:
        raise ActivityError(f"write_back: {table.name} has no crm_account / crm_id columns", "CRMSYNC_BAD_TABLE")
    account = ctx.workflow.account_of(activity)
    update = sql.SQL("UPDATE {} SET crm_account = %s, crm_id = %s WHERE {} = %s "
                     "AND (crm_account, crm_id) IS DISTINCT FROM (%s, %s)").format(
        table.ident, sql.Identifier(table.primary_key))
    with ctx.conn.cursor() as cur:
        cur.executemany(update, [(account, crm_id, int(key), account, crm_id) for key, crm_id, _ in done])
        cur.executemany("SELECT crmsync.link_identity(%s, %s, %s, %s, %s, 'workflow')",
                        [(account, activity.object, crm_id, table.name, int(key)) for key, crm_id, _ in done])
