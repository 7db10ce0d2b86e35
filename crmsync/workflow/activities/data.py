"""Data activities: enrich (reconcile), deduplicate, update data, union.

Update data writes through the Campaign writer (`CampaignWriter.apply_batch`), the same code the continuous sync
uses: the same statements (insert-or-update on the CRM link, identity links written in the same transaction),
the same rejects (topic + ledger, retried), the same echo tagging. Only rows that neither name a Campaign key nor
carry a CRM link are inserted directly, since no writer command can address them.
"""
from __future__ import annotations

import uuid
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from crmsync.envelope import ApplyCommand
from crmsync.pg import json_ready
from crmsync.workflow.activities.query import campaign_table, check_columns
from crmsync.workflow.engine import ActivityError, Outputs, Progress, RunContext, Row
from crmsync.workflow.model import DeduplicateActivity, EnrichActivity, UnionActivity, UpdateDataActivity
from crmsync.catalog import Table
from crmsync.values import canonical, match_expression, match_key, parse_timestamp


# -- enrich / reconcile ----------------------------------------------------------------------------------------
def enrich(activity: EnrichActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    """Each row gets the key of the Campaign row it matches (first key that matches wins), else None."""
    table = campaign_table(ctx, activity.table)
    check_columns(table, [k.target for k in activity.keys] + list(activity.columns.values()), "enrich")
    out = [{**row, activity.key_column: None} for row in rows]
    progress.total(len(out))
    for key in activity.keys:
        waiting = [r for r in out if r[activity.key_column] is None and r.get(key.source) not in (None, "")]
        found = _lookup(ctx, table, key.target, key.exact, [r[key.source] for r in waiting], activity.columns)
        for row in waiting:
            hit = found.get(_norm(row[key.source], key.exact))
            if hit:
                row[activity.key_column] = hit[table.primary_key]
                row.update({mine: hit[theirs] for mine, theirs in activity.columns.items()})
    matched = sum(1 for r in out if r[activity.key_column] is not None)
    progress.advance(len(out))
    return Outputs(ok=out, note=f"{matched} of {len(out)} linked to {table.name}")


def _norm(value: Any, exact: bool) -> Any:
    return str(value) if exact else match_key(value)


def _lookup(ctx: RunContext, table: Table, column: str, exact: bool, values: list[Any],
            extra: dict[str, str]) -> dict[Any, Row]:
    """Campaign rows whose `column` equals one of `values` (normalised like the sync's matching); lowest key
    first, so several Campaign rows with one key resolve the same way every time."""
    if not values or table.primary_key is None:
        return {}
    wanted = sorted({_norm(v, exact) for v in values})
    target = (sql.SQL("{}::text").format(sql.Identifier(column)) if exact
              else match_expression(column, alias=""))
    wanted_columns = sorted({table.primary_key, *extra.values()})
    statement = sql.SQL("SELECT {cols}, {target} AS match__ FROM {table} WHERE {target} = ANY(%s) "
                        "ORDER BY {pk}").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, wanted_columns)), target=target, table=table.ident,
        pk=sql.Identifier(table.primary_key))
    found: dict[Any, Row] = {}
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(statement, (wanted,)):
            found.setdefault(row.pop("match__"), {k: json_ready(v) for k, v in row.items()})
    return found


# -- deduplicate -----------------------------------------------------------------------------------------------
def deduplicate(activity: DeduplicateActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    """One row per key (keys compared like the sync's matching keys); the others go to the reject output."""
    groups: dict[tuple, list[Row]] = {}
    kept: list[Row] = []
    for row in rows:
        key = tuple(match_key(row.get(k)) if isinstance(row.get(k), str) else row.get(k) for k in activity.keys)
        if all(part in (None, "") for part in key):
            kept.append(row)  # no key, nothing to compare: kept as it is
            continue
        groups.setdefault(key, []).append(row)
    duplicates: list[Row] = []
    for group in groups.values():
        winner = _keeper(group, activity)
        kept.append(winner)
        duplicates += [r for r in group if r is not winner]
    position = {id(row): i for i, row in enumerate(rows)}
    kept.sort(key=lambda r: position[id(r)])  # kept rows stay in their arrival order
    progress.total(len(rows))
    progress.advance(len(rows))
    return Outputs(ok=kept, reject=duplicates, note=f"{len(duplicates)} duplicate(s) removed")


def _keeper(group: list[Row], activity: DeduplicateActivity) -> Row:
    if activity.keep == "last":
        return group[-1]
    if activity.keep == "most-recent":
        return max(group, key=lambda r: _epoch(r.get(activity.by or "")))  # max keeps the first of equals
    if activity.keep == "non-empty":
        return max(group, key=lambda r: sum(1 for v in r.values() if v not in (None, "")))  # first of the fullest
    return group[0]


def _epoch(value: Any) -> float:
    """A date column as seconds; empty or unreadable values sort first (never 'most recent')."""
    try:
        moment = parse_timestamp(value)
    except (TypeError, ValueError):
        return float("-inf")
    return moment.timestamp() if moment else float("-inf")


# -- union -------------------------------------------------------------------------------------------------------
def union(activity: UnionActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    """Everything its inbound transitions sent, optionally once per `distinct_on` key."""
    if not activity.distinct_on:
        return Outputs(ok=list(rows), note=f"{len(rows)} row(s)")
    seen: set[tuple] = set()
    out = []
    for row in rows:
        key = tuple(str(row.get(k)) for k in activity.distinct_on)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return Outputs(ok=out, note=f"{len(out)} distinct of {len(rows)}")


# -- update data -------------------------------------------------------------------------------------------------
def update_data(activity: UpdateDataActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    from services.campaign_writer.service import CampaignWriter, sibling_tables

    table = campaign_table(ctx, activity.table)
    if table.primary_key is None:
        raise ActivityError(f"table {table.name} has no single-column primary key", "CRMSYNC_BAD_TABLE")
    columns = activity.columns
    if columns is None:  # the rows' columns the table has, but never its key, CRM link or timestamps
        skip = {table.primary_key, "crm_account", "crm_id", "created_at", "updated_at"}
        columns = {c: c for c in _row_columns(rows) if c in table.columns and c not in skip}
    check_columns(table, list(columns), "columns")
    keys = _resolve_keys(ctx, activity, table, rows)
    progress.total(len(rows))
    writer = CampaignWriter(ctx.endpoints.campaign_dsn, ctx.endpoints.bootstrap_servers, ctx.settings.campaign.name,
                            partitions=ctx.settings.kafka.partitions,
                            replication_factor=ctx.settings.kafka.replication_factor,
                            sibling_tables=sibling_tables(ctx.settings))
    outputs, counts = Outputs(), {"unchanged": 0, "not found": 0, "exists": 0, "inserted": 0}
    token = uuid.uuid4().hex[:8]  # command ids are new for every execution (the ledger skips settled ids)
    try:
        for start in range(0, len(rows), activity.batch_size):
            batch = list(enumerate(rows[start:start + activity.batch_size], start))
            _apply(activity, ctx, table, columns, keys, batch, writer, outputs, counts, token)
            progress.advance(len(batch))
    finally:
        writer.close()
    done = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    outputs.note = f"{len(outputs.ok)} applied" + (f", {done}" if done else "")
    return outputs


def _row_columns(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def _resolve_keys(ctx: RunContext, activity: UpdateDataActivity, table: Table, rows: list[Row]) -> list[Any]:
    """Each row's Campaign key: from the `key` column, else found through its CRM link."""
    keys = [row.get(activity.key) if activity.key else None for row in rows]
    link = activity.crm_link
    if link is None or not table.has_crm_link:
        return keys
    account = link.account or ctx.workflow.account
    ids = [row.get(link.id) for row, key in zip(rows, keys) if key is None and row.get(link.id)]
    if ids:
        statement = sql.SQL("SELECT crm_id, {} FROM {} WHERE crm_account = %s AND crm_id = ANY(%s)").format(
            sql.Identifier(table.primary_key), table.ident)
        by_id = dict(ctx.conn.execute(statement, (account, ids)).fetchall())
        keys = [key if key is not None else by_id.get(row.get(link.id)) for row, key in zip(rows, keys)]
    return keys


def _action(operation: str, key: Any, match: dict[str, Any] | None) -> str:
    """What one row needs: a writer command ('upsert', 'delete'), a plain 'insert', or why it is skipped
    ('not found', 'exists') or rejected ('no key')."""
    if operation == "delete":
        return "delete" if key is not None or match else "no key"
    if key is None:
        return "not found" if operation == "update" else "upsert" if match else "insert"
    return "exists" if operation == "insert" else "upsert"


def _apply(activity: UpdateDataActivity, ctx: RunContext, table: Table, columns: dict[str, str], keys: list[Any],
           batch: list[tuple[int, Row]], writer: Any, outputs: Outputs, counts: dict[str, int], token: str) -> None:
    """One batch: writer commands in one Campaign writer transaction, then the plain inserts."""
    current = _current(ctx, table, columns, [keys[i] for i, _ in batch]) if activity.only_if_different else {}
    commands: dict[str, tuple[Row, ApplyCommand]] = {}
    inserts: list[Row] = []
    for i, row in batch:
        key, values, match = keys[i], {col: row.get(src) for col, src in columns.items()}, _match(activity, ctx, row)
        action = _action(activity.operation, key, match)
        if action in ("not found", "exists"):
            counts[action] += 1
        elif action == "no key":
            outputs.reject.append(_reject(row, "CRMSYNC_NO_KEY", "no Campaign key and no CRM link to delete by"))
        elif action == "insert":
            inserts.append(row)
        elif action == "upsert" and key in current and _same(current[key], values, match):
            counts["unchanged"] += 1
            outputs.ok.append({**row, activity.key or "id": key})
        else:
            command = ApplyCommand(id=f"workflow:{ctx.workflow.name}:{ctx.run_id}:{activity.name}:{token}:{i}",
                                   side="campaign", target=ctx.settings.campaign.name, object=table.name,
                                   action=action, key={table.primary_key: key} if key is not None else None,
                                   values={} if action == "delete" else values, match=match,
                                   cause=f"workflow:{ctx.workflow.name}:{ctx.run_id}")
            commands[command.id] = (row, command)
    if commands:
        _settle(writer.apply_batch([c for _, c in commands.values()]), commands, activity, outputs)
    if inserts:
        outputs.ok += _insert(ctx, table, columns, inserts, activity.key or "id")
        counts["inserted"] += len(inserts)


def _match(activity: UpdateDataActivity, ctx: RunContext, row: Row) -> dict[str, Any] | None:
    link = activity.crm_link
    if link is None or not row.get(link.id):
        return None
    return {"crm_account": link.account or ctx.workflow.account, "crm_object": link.object, "crm_id": row[link.id]}


def _current(ctx: RunContext, table: Table, columns: dict[str, str], keys: list[Any]) -> dict[Any, Row]:
    wanted = [k for k in keys if k is not None]
    if not wanted:
        return {}
    names = sorted({table.primary_key, *columns, *(c for c in ("crm_account", "crm_id") if c in table.columns)})
    statement = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), table.ident, sql.Identifier(table.primary_key))
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        return {r[table.primary_key]: r for r in cur.execute(statement, (wanted,))}


def _same(current: Row, values: Row, match: dict[str, Any] | None) -> bool:
    """'Update only if at least one difference': compared in the sync's canonical form."""
    if match and (current.get("crm_id"), current.get("crm_account")) != (match["crm_id"], match["crm_account"]):
        return False
    return all(canonical(json_ready(current.get(col))) == canonical(value) for col, value in values.items())


def _settle(result: Any, commands: dict[str, tuple[Row, ApplyCommand]], activity: UpdateDataActivity,
            outputs: Outputs) -> None:
    for applied in result.applied:
        row, _ = commands[applied.command.id]
        outputs.ok.append({**row, activity.key or "id": applied.campaign_key})
    for reject in [*result.rejects, *result.waiting]:
        command_id = (reject.record or {}).get("id")
        row = commands[command_id][0] if command_id in commands else reject.record
        outputs.reject.append(_reject(row, reject.error_code, reject.reason))


def _insert(ctx: RunContext, table: Table, columns: dict[str, str], rows: list[Row], key_column: str) -> list[Row]:
    """Rows with no Campaign key and no CRM link: plain inserts (no writer command can address them)."""
    names = list(columns)
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
        table.ident, sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(table.columns[n])) for n in names),
        sql.Identifier(table.primary_key))
    out = []
    with ctx.conn.transaction():
        for row in rows:
            new_key = ctx.conn.execute(statement, [row.get(columns[n]) for n in names]).fetchone()[0]
            out.append({**row, key_column: new_key})
    return out


def _reject(row: Row, code: str | None, message: str) -> Row:
    return {**row, "errorSymbol": code, "errorCode": code, "errorMessage": message}
