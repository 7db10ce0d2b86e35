"""The CRM connector activity: import, export, import objects deleted in the CRM, delete objects in the CRM.

It never talks to a CRM on its own terms: reads go through the account connector's RecordQuery (filters rendered
in the CRM's language, paging, deleted records), writes through the CRM writer with the connector's sink
(batches, rejects with the CRM's error code in the shared ledger, the assignment rule), and what an import or
import-deleted reads is published to the CRM change topic exactly as the change source would (same change ids,
crmsync.envelope.crm_change): an import is a backfill of the change topics, so the continuous sync and a
one-off workflow can never disagree.

The export lives in crm_export.py (it has a journal); filter rendering in each connector (e.g.
connectors/salesforce/query.py).
"""
from __future__ import annotations

import csv
import logging
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from crmsync import filters, kafka, pg, rejects, topics
from crmsync.connectors import FieldSpec
from crmsync.envelope import ApplyCommand, Change, crm_change
from crmsync.values import canonical, iso_utc, parse_timestamp
from crmsync.workflow import options
from crmsync.workflow.engine import ActivityError, Outputs, Progress, RunContext, Row
from crmsync.workflow.model import CrmActivity

log = logging.getLogger("crmsync.workflow.crm")
ERROR_COLUMNS = ("errorSymbol", "errorMessage", "errorCode")


def run(activity: CrmActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    from crmsync.workflow.activities import crm_export

    operations: dict[str, Callable[..., Outputs]] = {
        "import": import_records, "export": crm_export.export, "import-deleted": import_deleted, "delete": delete}
    account = ctx.workflow.account_of(activity)
    try:
        connector, client = ctx.connector(account), ctx.client(account)
        outputs = operations[activity.operation](activity, rows, ctx, progress, client)
    except ValueError as exc:  # e.g. an unknown account, a filter that does not fit the object
        raise ActivityError(str(exc), "INVALID_ACTIVITY") from None
    except Exception as exc:
        refused = connector.api_error(exc)
        if refused is None:
            raise
        raise ActivityError(f"{connector.label} refused {activity.operation} of {activity.object}: {refused[1]}",
                            refused[0]) from None
    write_rejection_file(activity, ctx, outputs.reject)
    return outputs


# -- import ------------------------------------------------------------------------------------------------------
def describe_fields(ctx: RunContext, activity: CrmActivity) -> dict[str, FieldSpec]:
    """The object's fields as its connector describes them (names, CRM types, kinds)."""
    account = ctx.workflow.account_of(activity)
    spec = ctx.connector(account).discovery(ctx.client(account)).describe_table(activity.object)
    return {f.name: f for f in spec.fields}


def _canonical_name(name: str, fields: dict[str, Any], obj: str, what: str) -> str:
    found = next((n for n in fields if n.lower() == name.lower()), None)
    if found is None:
        raise ActivityError(f"{what}: {name!r} is not a field of {obj}", "INVALID_FIELD")
    return found


def import_records(activity: CrmActivity, rows: list[Row], ctx: RunContext, progress: Progress,
                   client: Any) -> Outputs:
    """The fields (the id always), filtered, ordered, incremental or by upstream ids — through the connector's
    RecordQuery, which renders the filter in the CRM's own language."""
    connector = ctx.connector(ctx.workflow.account_of(activity))
    fields = describe_fields(ctx, activity)
    wanted = [(_canonical_name(f.name, fields, activity.object, "fields"), f.column or f.name, f.conversion)
              for f in activity.fields if f.name.lower() != "id"]
    conditions = [filters.parse(activity.filter)] if activity.filter is not None else []
    conditions += _index_window(activity, ctx, fields, connector.index_fields)
    where = conditions[0] if len(conditions) == 1 else filters.Group("and", tuple(conditions)) if conditions else None
    order = [(_canonical_name(o.field, fields, activity.object, "order_by"), o.descending) for o in activity.order_by]
    select = list(dict.fromkeys([name for name, _, _ in wanted] + _bookkeeping(fields, connector)))
    ids = _upstream_ids(activity, rows) if activity.ids_from else None
    records: list[dict[str, Any]] = []
    for page in connector.query(client).records(activity.object, select, where=where, order_by=order,
                                                include_deleted=activity.query_all, ids=ids):
        records += page
        progress.update(completed=len(records), total=max(len(records), 1))
    if activity.publish and records:
        publish(ctx, ctx.workflow.account_of(activity), activity.object,
                [_change(ctx, activity, connector, r) for r in records])
    kinds = {name: spec.kind for name, spec in fields.items()}
    out = [{"Id": r["id"], **{column: _converted(r.get(name), kinds.get(name), conversion)
                              for name, column, conversion in wanted}} for r in records]
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


def _bookkeeping(fields: dict[str, FieldSpec], connector: Any) -> list[str]:
    """Fields read for the change-topic backfill (version, deletes) even when the rows do not carry them."""
    wanted = [*connector.index_fields[:1], *([connector.deleted_flag] if connector.deleted_flag else [])]
    return [name for name in wanted if name in fields]


def _upstream_ids(activity: CrmActivity, rows: list[Row]) -> list[str]:
    """The ids computed upstream (the seed's 'population calculated upstream'), each once."""
    return list(dict.fromkeys(str(r[activity.ids_from]) for r in rows if r.get(activity.ids_from)))


def _index_window(activity: CrmActivity, ctx: RunContext, fields: dict[str, FieldSpec],
                  index_fields: tuple[str, ...]) -> list[filters.Node]:
    """Automatic index: [last end, now). The option moves to `now` only when the whole run succeeded."""
    index = activity.automatic_index
    if index is None or not index.enabled:
        return []
    account = ctx.workflow.account_of(activity)
    name = index.option or options.lastimport_name(account, activity.name)
    field = (_canonical_name(index.field, fields, activity.object, "automatic_index.field") if index.field else
             next((f for f in index_fields if f in fields), None))
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
    window = [filters.Condition(field, "<", iso_utc(end))]
    if start is not None:
        window.insert(0, filters.Condition(field, ">=", iso_utc(start)))
    return window


def _change(ctx: RunContext, activity: CrmActivity, connector: Any, record: dict[str, Any]) -> Change:
    """The record as the change source publishes it: same id and position, so the streams see one change."""
    account, rid = ctx.workflow.account_of(activity), record["id"]
    stamp = str(record.get(connector.index_fields[0]) or "") if connector.index_fields else ""
    deleted = bool(connector.deleted_flag and record.get(connector.deleted_flag))
    return crm_change(account, activity.object, "d" if deleted else "r", rid, stamp, _iso(stamp),
                      after=None if deleted else record, before=record if deleted else None, modstamp=stamp)


def _iso(stamp: str) -> str:
    return iso_utc(parse_timestamp(stamp)) if stamp else ""


def publish(ctx: RunContext, account: str, obj: str, changes: list[Change]) -> None:
    """Backfill the CRM change topic (one keyed message per change, acknowledged before the activity ends; a
    change too large for a Kafka message goes to the rejects ledger)."""
    topic = topics.changes("crm", account, obj)
    kafka.ensure_topics(ctx.endpoints.bootstrap_servers, [topic], ctx.settings.kafka.partitions,
                        ctx.settings.kafka.replication_factor)
    producer, tracker = kafka.producer(ctx.endpoints.bootstrap_servers), kafka.DeliveryTracker()
    refused = kafka.produce_changes(producer, tracker, topic, changes)
    kafka.flush_all(producer, tracker)
    with pg.connect(ctx.endpoints.campaign_dsn, autocommit=True, application="crmsync-workflow") as conn:
        rejects.record_oversized(conn, producer, tracker, "workflow", refused)


# -- import deleted ----------------------------------------------------------------------------------------------
def import_deleted(activity: CrmActivity, rows: list[Row], ctx: RunContext, progress: Progress,
                   client: Any) -> Outputs:
    """Ids deleted in [start, end] (both inclusive), inside the CRM's retention, from its RecordQuery."""
    connector = ctx.connector(ctx.workflow.account_of(activity))
    start = filters.start_of(filters.parse_moment(activity.start))
    end = filters.end_of(filters.parse_moment(activity.end))
    now = datetime.now(timezone.utc)
    oldest = now - timedelta(days=activity.retention_days)
    if start < oldest:
        raise ActivityError(f"start {start:%Y-%m-%d %H:%M:%S} UTC is {(now - start).days} days ago: {connector.label} "
                            f"returns deleted records for the last {activity.retention_days} days only (from "
                            f"{oldest:%Y-%m-%d %H:%M} UTC); move start: later", "INVALID_REPLICATION_DATE")
    if end < start:
        raise ActivityError(f"end ({activity.end}) is before start ({activity.start})", "INVALID_REPLICATION_DATE")
    ctx.vars.update(crmStartDate=options.format_moment(start), crmEndDate=options.format_moment(end))
    deleted = connector.query(client).deleted(activity.object, iso_utc(start), iso_utc(end))
    found = [d for d in deleted if start <= parse_timestamp(d.deleted_at) <= end]
    latest = max((d.deleted_at for d in deleted), default=None)
    ctx.vars["crmLatestCovered"] = latest
    out = [{"Id": d.id, "deletedDate": d.deleted_at} for d in found]
    progress.update(completed=len(out), total=max(len(out), 1))
    if activity.publish and found:
        account = ctx.workflow.account_of(activity)
        publish(ctx, account, activity.object, [
            crm_change(account, activity.object, "d", d.id, d.deleted_at, _iso(d.deleted_at), after=None,
                       modstamp=d.deleted_at) for d in found])
    return Outputs(ok=out, note=f"{len(out)} deleted {activity.object} record(s)")


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
    """Delete the records whose ids `remote_id` yields (Salesforce: to the recycle bin), through the CRM writer."""
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
                               key={"id": rid}, values={}, cause=f"workflow:{ctx.workflow.name}:{ctx.run_id}")
        commands[command.id] = (row, command)
    progress.total(len(rows))
    applied: set[str] = set()
    writer = crm_writer(ctx, client, activity, lambda command, crm_id, created: applied.add(command.id))
    try:
        result = writer.process([c for _, c in commands.values()])
    finally:
        writer.close()
    settle(commands, applied, result.rejects, outputs)
    progress.advance(len(rows))
    outputs.note = f"{len(outputs.ok)} deleted, {len(outputs.reject)} rejected"
    return outputs


# -- shared by the writing operations -------------------------------------------------------------------------------
def crm_writer(ctx: RunContext, client: Any, activity: CrmActivity, on_applied: Callable) -> Any:
    """The account's CRM writer, used in-process: its sink's batching, the rejects ledger, the assignment rule."""
    from services.crm_writer.service import CrmWriter

    account = ctx.workflow.account_of(activity)
    connector = ctx.connector(account)
    sink = connector.sink(client, assignment_rule=activity.assignment_rule, bulk=activity.batch)
    return CrmWriter(connector, sink, account, ctx.endpoints.bootstrap_servers, ctx.endpoints.campaign_dsn,
                     objects=[], on_applied=on_applied, partitions=ctx.settings.kafka.partitions,
                     replication_factor=ctx.settings.kafka.replication_factor, client=client)


def settle(commands: dict[str, tuple[Row, ApplyCommand]], applied: set[str], rejects: list[Any],
           outputs: Outputs) -> None:
    """Applied commands' rows to ok, refused ones to reject with the CRM's error code and message."""
    by_command = {(r.record or {}).get("id"): r for r in rejects}
    for command_id, (row, _) in commands.items():
        if command_id in applied:
            outputs.ok.append(row)
        elif command_id in by_command:
            outputs.reject.append(reject_row(row, by_command[command_id].error_code, by_command[command_id].reason))
        else:
            outputs.reject.append(reject_row(row, "CRMSYNC_NO_RESULT", "the CRM gave no result for this record"))


def reject_row(row: Row, code: str | None, message: str) -> Row:
    """A rejected record: the row plus errorSymbol (the CRM's error code), errorMessage and errorCode."""
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
