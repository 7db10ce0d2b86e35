"""The CRM connector activity: import, export, import objects deleted in the CRM, delete objects in the CRM.

It never talks to Salesforce on its own terms: reads go through `SalesforceClient` (one retry policy, paging,
queryAll), writes through `SalesforceWriter.process` (collections of 200 or Bulk 2.0, rejects with Salesforce's
statusCode in the shared ledger, the assignment-rule header), and what an import or import-deleted reads is
published to the CRM change topic exactly as the poller would (same change ids): an import is a backfill of
the change topics, so the continuous sync and a one-off workflow can never disagree.

The export lives in crm_export.py (it has a journal); the filter translation in crm_filter.py.
"""
from __future__ import annotations

import csv
import logging
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from simple_salesforce.exceptions import SalesforceError

from crmsync import kafka, topics
from crmsync.envelope import ApplyCommand, Change
from crmsync import filters
from crmsync.workflow import options
from crmsync.workflow.activities.crm_filter import soql_datetime, to_soql
from crmsync.workflow.engine import ActivityError, Outputs, Progress, RunContext, Row
from crmsync.workflow.model import CrmActivity
from crmsync.values import canonical
from services.salesforce.types import kind_of

log = logging.getLogger("crmsync.workflow.crm")
INDEX_FIELDS = {"salesforce": ("SystemModstamp", "LastModifiedDate")}  # tried in this order
IDS_PER_QUERY = 200  # ids per `Id IN (...)` (keeps the SOQL well under Salesforce's 100,000 characters)
ERROR_COLUMNS = ("errorSymbol", "errorMessage", "errorCode")


def run(activity: CrmActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    from crmsync.workflow.activities import crm_export

    operations: dict[str, Callable[..., Outputs]] = {
        "import": import_records, "export": crm_export.export, "import-deleted": import_deleted, "delete": delete}
    account = ctx.workflow.account_of(activity)
    try:
        client = ctx.salesforce(account)
        outputs = operations[activity.operation](activity, rows, ctx, progress, client)
    except SalesforceError as exc:
        from services.salesforce.client import error_code, error_message

        raise ActivityError(f"Salesforce refused {activity.operation} of {activity.object}: "
                            f"{error_message(exc)}", error_code(exc) or f"HTTP_{exc.status}") from None
    except ValueError as exc:  # e.g. an unknown account, a filter that does not fit the object
        raise ActivityError(str(exc), "INVALID_ACTIVITY") from None
    write_rejection_file(activity, ctx, outputs.reject)
    return outputs


# -- import ------------------------------------------------------------------------------------------------------
def describe_types(client: Any, obj: str) -> dict[str, str]:
    return {f["name"]: f["type"] for f in client.describe(obj)["fields"]}


def _canonical_name(name: str, types: dict[str, str], obj: str, what: str) -> str:
    found = next((n for n in types if n.lower() == name.lower()), None)
    if found is None:
        raise ActivityError(f"{what}: {name!r} is not a field of {obj}", "INVALID_FIELD")
    return found


def import_records(activity: CrmActivity, rows: list[Row], ctx: RunContext, progress: Progress,
                   client: Any) -> Outputs:
    """SELECT the fields (the Id always), filtered, ordered, incremental or by upstream ids."""
    types = describe_types(client, activity.object)
    wanted = [("Id", "Id", "copy")] + [(_canonical_name(f.name, types, activity.object, "fields"),
                                        f.column or f.name, f.conversion) for f in activity.fields
                                       if f.name.lower() != "id"]
    where = [to_soql(filters.parse(activity.filter), types)] if activity.filter is not None else []
    where += _index_window(activity, ctx, types)
    select = list(dict.fromkeys([name for name, _, _ in wanted] + _bookkeeping(types)))
    order = ", ".join(f"{_canonical_name(o.field, types, activity.object, 'order_by')}"
                      f"{' DESC' if o.descending else ''}" for o in activity.order_by)
    base = f"SELECT {', '.join(select)} FROM {activity.object}"
    records: list[dict[str, Any]] = []
    for clause in _id_clauses(activity, rows) if activity.ids_from else [None]:
        parts = where + ([clause] if clause else [])
        soql = base + (f" WHERE {' AND '.join(parts)}" if parts else "") + (f" ORDER BY {order}" if order else "")
        for page in client.query_all_pages(soql, include_deleted=activity.query_all):
            records += [{k: v for k, v in r.items() if k != "attributes"} for r in page]
            progress.update(completed=len(records), total=max(len(records), 1))
    if activity.publish and records:
        publish(ctx, ctx.workflow.account_of(activity), activity.object, [_change(ctx, activity, r) for r in records])
    kinds = {name: kind_of(crm_type) for name, crm_type in types.items()}
    out = [{column: _converted(r.get(name), kinds.get(name), conversion) for name, column, conversion in wanted}
           for r in records]
    window = f" in [{ctx.vars.get('crmStartImport') or '-∞'}, {ctx.vars.get('crmEndDate')})" \
        if activity.automatic_index and activity.automatic_index.enabled else ""
    return Outputs(ok=out, note=f"{len(out)} {activity.object} record(s){window}")


def _converted(value: Any, kind: Any, conversion: Any) -> Any:
    """A CRM value converted by its field's declared kind; one the CRM itself sent in another form is kept as
    the CRM sent it (the Campaign write of that row then says what is wrong with it, in the rejects)."""
    try:
        return canonical(value, kind, conversion)
    except ValueError:
        return value


def _bookkeeping(types: dict[str, str]) -> list[str]:
    """Fields read for the change-topic backfill (position, deletes) even when the rows do not carry them."""
    return [name for name in ("SystemModstamp", "IsDeleted") if name in types]


def _id_clauses(activity: CrmActivity, rows: list[Row]) -> list[str]:
    """`Id IN (...)` per chunk of the ids computed upstream (the seed's 'population calculated upstream')."""
    from crmsync.workflow.activities.crm_filter import quote

    ids = list(dict.fromkeys(str(r[activity.ids_from]) for r in rows if r.get(activity.ids_from)))
    if not ids:
        return []
    chunks = [ids[s:s + IDS_PER_QUERY] for s in range(0, len(ids), IDS_PER_QUERY)]
    return [f"Id IN ({', '.join(quote(i) for i in chunk)})" for chunk in chunks]


def _index_window(activity: CrmActivity, ctx: RunContext, types: dict[str, str]) -> list[str]:
    """Automatic index: [last end, now). The option moves to `now` only when the whole run succeeded."""
    index = activity.automatic_index
    if index is None or not index.enabled:
        return []
    account = ctx.workflow.account_of(activity)
    name = index.option or options.lastimport_name(account, activity.name)
    field = (_canonical_name(index.field, types, activity.object, "automatic_index.field") if index.field else
             next((f for f in INDEX_FIELDS["salesforce"] if f in types), None))
    if field is None:
        raise ActivityError(f"{activity.object} has no modification date field; set automatic_index.field",
                            "INVALID_FIELD")
    start = options.read_moment(ctx.conn, name)
    end = datetime.now(timezone.utc)
    # The option keeps whole seconds (the seed's format) and is rounded *down*: the next window starts a
    # fraction of a second early, so a record can be read twice (harmless: upserts), never skipped.
    ctx.vars.update(crmOptionName=name, crmStartImport=options.format_moment(start) if start else None,
                    crmEndDate=options.format_moment(end), crmIndexField=field)
    ctx.on_success(lambda: options.write_moment(ctx.conn, name, end))
    clauses = [f"{field} < {soql_datetime(end)}"]
    if start is not None:
        clauses.insert(0, f"{field} >= {soql_datetime(start)}")
    return clauses


def _change(ctx: RunContext, activity: CrmActivity, record: dict[str, Any]) -> Change:
    """The record as the poller publishes it: same id and position, so the streams see one change, not two."""
    account, rid = ctx.workflow.account_of(activity), record["Id"]
    stamp = record.get("SystemModstamp") or ""
    deleted = bool(record.get("IsDeleted"))
    return Change(id=f"crm:{account}:{activity.object}:{rid}:{stamp}", side="crm", source=account,
                  object=activity.object, op="d" if deleted else "r", key={"Id": rid},
                  after=None if deleted else record, before=record if deleted else None,
                  position={"modstamp": stamp, "id": rid}, source_ts=stamp or None)


def publish(ctx: RunContext, account: str, obj: str, changes: list[Change]) -> None:
    """Backfill the CRM change topic (batch envelopes, acknowledged before the activity ends)."""
    topic = topics.changes("crm", account, obj)
    kafka.ensure_topics(ctx.endpoints.bootstrap_servers, [topic], ctx.settings.kafka.partitions,
                        ctx.settings.kafka.replication_factor)
    producer, tracker = kafka.producer(ctx.endpoints.bootstrap_servers), kafka.DeliveryTracker()
    kafka.produce_batches(producer, tracker, topic, changes)
    kafka.flush_all(producer, tracker)


# -- import deleted ----------------------------------------------------------------------------------------------
def import_deleted(activity: CrmActivity, rows: list[Row], ctx: RunContext, progress: Progress,
                   client: Any) -> Outputs:
    """Ids deleted in [start, end] (both inclusive) from the `deleted` resource, inside the CRM's retention."""
    start = filters.start_of(filters.parse_moment(activity.start))
    end = filters.end_of(filters.parse_moment(activity.end))
    now = datetime.now(timezone.utc)
    oldest = now - timedelta(days=activity.retention_days)
    if start < oldest:
        raise ActivityError(f"start {start:%Y-%m-%d %H:%M:%S} UTC is {(now - start).days} days ago: Salesforce "
                            f"returns deleted records for the last {activity.retention_days} days only (from "
                            f"{oldest:%Y-%m-%d %H:%M} UTC); move start: later", "INVALID_REPLICATION_DATE")
    if end < start:
        raise ActivityError(f"end ({activity.end}) is before start ({activity.start})", "INVALID_REPLICATION_DATE")
    ctx.vars.update(crmStartDate=options.format_moment(start), crmEndDate=options.format_moment(end))
    # The resource works in whole minutes, wants at least one, and covers up to its latestDateCovered (the
    # last whole minute): deletes of the current minute come with the next run.
    answer = client.get_deleted(activity.object, start, max(end, start + timedelta(minutes=1)))
    found = [e for e in answer.get("deletedRecords", [])
             if start <= filters.parse_moment(e["deletedDate"].replace("+0000", "+00:00")) <= end]
    ctx.vars["crmLatestCovered"] = answer.get("latestDateCovered")
    out = [{"Id": e["id"], "deletedDate": e["deletedDate"]} for e in found]
    progress.update(completed=len(out), total=max(len(out), 1))
    if activity.publish and found:
        account = ctx.workflow.account_of(activity)
        publish(ctx, account, activity.object, [
            Change(id=f"crm:{account}:{activity.object}:{e['id']}:{e['deletedDate']}", side="crm", source=account,
                   object=activity.object, op="d", key={"Id": e["id"]}, after=None,
                   position={"modstamp": e["deletedDate"], "id": e["id"]}, source_ts=e["deletedDate"])
            for e in found])
    return Outputs(ok=out, note=f"{len(out)} deleted {activity.object} record(s), covered up to "
                                f"{answer.get('latestDateCovered')}")


# -- delete --------------------------------------------------------------------------------------------------------
def remote_id(expression: str, row: Row) -> str | None:
    """The seed's "field containing the identifier": a column name, or a template such as "{crm_id}"."""
    if "{" in expression:
        try:
            value = expression.format_map(row)
        except (KeyError, IndexError, ValueError):
            return None
        return value or None
    value = row.get(expression)
    return str(value) if value not in (None, "") else None


def delete(activity: CrmActivity, rows: list[Row], ctx: RunContext, progress: Progress, client: Any) -> Outputs:
    """Delete (to the recycle bin) the records whose ids `remote_id` yields, through the Salesforce writer."""
    outputs = Outputs()
    commands: dict[str, tuple[Row, ApplyCommand]] = {}
    token = uuid.uuid4().hex[:8]
    for i, row in enumerate(rows):
        rid = remote_id(activity.remote_id or "", row)
        if rid is None:
            outputs.reject.append(reject_row(row, "CRMSYNC_NO_KEY", f"{activity.remote_id!r} gives no CRM id"))
            continue
        command = ApplyCommand(id=f"workflow:{ctx.workflow.name}:{ctx.run_id}:{activity.name}:{token}:{i}",
                               side="crm", target=client.account_name, object=activity.object, action="delete",
                               key={"Id": rid}, values={}, cause=f"workflow:{ctx.workflow.name}:{ctx.run_id}")
        commands[command.id] = (row, command)
    progress.total(len(rows))
    applied: set[str] = set()
    writer = salesforce_writer(ctx, client, activity, lambda command, crm_id, created: applied.add(command.id))
    try:
        result = writer.process([c for _, c in commands.values()])
    finally:
        writer.close()
    settle(commands, applied, result.rejects, outputs)
    progress.advance(len(rows))
    outputs.note = f"{len(outputs.ok)} deleted, {len(outputs.reject)} rejected"
    return outputs


# -- shared by the writing operations -------------------------------------------------------------------------------
AUTO_ASSIGN = {"none": "FALSE", "default": "TRUE"}


def salesforce_writer(ctx: RunContext, client: Any, activity: CrmActivity, on_applied: Callable) -> Any:
    """The connector's writer, used in-process: its plan, batching, rejects ledger and assignment header."""
    from services.salesforce.writer import SalesforceWriter, WriterOptions

    writer_options = WriterOptions(auto_assign=AUTO_ASSIGN.get(activity.assignment_rule, activity.assignment_rule),
                                   bulk_threshold=1 if activity.batch else 10 ** 9)
    return SalesforceWriter(client, ctx.endpoints.bootstrap_servers, ctx.endpoints.campaign_dsn,
                            options=writer_options, on_applied=on_applied, objects=[],
                            partitions=ctx.settings.kafka.partitions,
                            replication_factor=ctx.settings.kafka.replication_factor)


def settle(commands: dict[str, tuple[Row, ApplyCommand]], applied: set[str], rejects: list[Any],
           outputs: Outputs) -> None:
    """Applied commands' rows to ok, refused ones to reject with Salesforce's statusCode and message."""
    by_command = {(r.record or {}).get("id"): r for r in rejects}
    for command_id, (row, _) in commands.items():
        if command_id in applied:
            outputs.ok.append(row)
        elif command_id in by_command:
            outputs.reject.append(reject_row(row, by_command[command_id].error_code, by_command[command_id].reason))
        else:
            outputs.reject.append(reject_row(row, "CRMSYNC_NO_RESULT", "the CRM gave no result for this record"))


def reject_row(row: Row, code: str | None, message: str) -> Row:
    """A rejected record: the row plus errorSymbol (Salesforce's statusCode), errorMessage and errorCode."""
    return {**row, "errorSymbol": code, "errorMessage": message, "errorCode": code}


def write_rejection_file(activity: CrmActivity, ctx: RunContext, rejects: list[Row]) -> Path | None:
    """'Keep the rejections in a file': CSV, every row column plus the error columns."""
    if not activity.rejection_file or not rejects:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = Path(activity.rejection_file.format(activity=activity.name, workflow=ctx.workflow.name, date=stamp))
    if not path.is_absolute():  # like the seed's <instance var dir>/upload/…
        path = ctx.settings.state_dir / path
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys([k for r in rejects for k in r if k not in ERROR_COLUMNS] + list(ERROR_COLUMNS)))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rejects)
    log.info("activity %s: %d rejection(s) kept in %s", activity.name, len(rejects), path)
    return path
