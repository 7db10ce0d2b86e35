"""Turn ApplyCommands into SQL: check each command against the schema, then run many commands of the same
*shape* (kind, table, columns) as ONE set-based statement.

Why set-based: a statement per record spends most of its time on per-statement overhead. Here a group of
commands travels as one JSON array parameter, unpacked by ``jsonb_to_recordset`` into typed rows, and one
prepared statement applies them all. A group never holds two commands for the same record, so a statement
never touches a row twice. The per-command fallback (after a failure) runs the same statement with a one-row
array, so there is exactly one SQL text per shape to read and trust.

Every statement returns ``(n, campaign_key, created, superseded)`` for the input rows whose target row exists
(``n`` = position in the array) and is idempotent: updates write only when a value differs (``IS DISTINCT
FROM``), so a replay changes nothing, not even ``updated_at``.

Compare-and-set: a command's ``expect`` names, per column, the value the row must still hold for that column
to be written. A column that holds something else (a user edited it after the streams decided) keeps its value
and is reported in ``superseded``; that user edit is a change of its own, which the streams decide. Values are
compared as their column's type, timestamps to the millisecond and numbers as float8 (the precision the
streams' canonical form keeps), so a value written from the canonical form always compares equal to it.

Command semantics (what the stream processors send):

    upsert, key {'id': n}                 UPDATE … WHERE id = n             (no such row: NOT_FOUND)
    upsert, match {crm_account, crm_object, crm_id}
                                          INSERT … ON CONFLICT (crm_account, crm_id) WHERE crm_id IS NOT NULL
                                          DO UPDATE, writing the CRM ids on insert, + identity link ('sync');
                                          with `expect`: UPDATE the linked row (compare-and-set), else INSERT
    upsert, key + match                   UPDATE row n, set its crm_account/crm_id, + identity link ('match')
    create, key + match                   INSERT row n (its key allocated by the streams) with its CRM link,
                                          + identity link ('sync'), noted in crmsync.created_rows; a replay
                                          finds row n and UPDATEs it with compare-and-set (the insert expected
                                          every field empty) — or, row n deleted since, does nothing
    delete, key and/or match              DELETE by key (else by CRM link) and its identity links; a missing
                                          row is a success
    value {"$ref": {"table", "crm_account", "crm_id"}}
                                          the parent's key, looked up in the same statement; a missing parent
                                          raises SQLSTATE CS404 (crmsync.missing_parent) and the command waits
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from psycopg import sql

from crmsync.envelope import ApplyCommand, record_key
from crmsync.catalog import Catalog, Table

LINK_COLUMNS = ("crm_account", "crm_id")


@dataclass
class Planned:
    """A command ready to run: its shape (which statement) and its row in that statement's input array."""

    command: ApplyCommand
    kind: str  # update | upsert | link | create | delete
    table: str
    record_key: str  # the record it addresses: commands with the same record_key keep their order
    identities: tuple[str, ...]  # every way it names its row (key and CRM link): one per statement
    shape: tuple
    row: dict[str, Any]  # keys k (key), a/o/x (CRM link), vI (value I), vIa/vIx (reference I), eI (expected I)
    refused: dict[str, str] = field(default_factory=dict)  # columns left out of `command` (as sent) -> why
    sent: ApplyCommand | None = None  # the command as it came, when `refused` columns were taken out of it


@dataclass
class Invalid:
    """A command that cannot run as sent; it becomes a reject with `code` and `reason`."""

    command: ApplyCommand
    record_key: str
    code: str
    reason: str


def command_record_key(command: ApplyCommand) -> str:
    """The record a command addresses: its CRM link when it has one (the same contact is addressed by `match`
    before its Campaign key is known and by key + match afterwards), else its Campaign key."""
    match = command.match or {}
    if match.get("crm_id") is not None:
        return f"{command.object}|crm|{match.get('crm_account')}|{match.get('crm_id')}"
    return f"{command.object}|key|{record_key(command.key or {}).decode()}"


def describe_value(value: Any) -> str:
    """A value as it appears in a reject reason."""
    return json.dumps(value, default=str, ensure_ascii=False)


class Planner:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._sql: dict[tuple, str] = {}
        self._reloaded: set[str] = set()  # tables re-read from the catalog during this batch
        self._shapes: dict[tuple, tuple] = {}  # a command's shape -> its columns, problem and how to fill its row

    def new_batch(self) -> None:
        self._reloaded.clear()
        self._shapes.clear()  # the catalog may have been read again

    # -- checking a command -------------------------------------------------------------------------------------
    def plan(self, command: ApplyCommand) -> Planned | Invalid:
        rkey = command_record_key(command)

        def invalid(code: str, reason: str) -> Invalid:
            return Invalid(command, rkey, code, reason)

        table = self.catalog.table(command.object)
        if table is None:
            return invalid("undefined_table", f"table {command.object!r} does not exist in the Campaign database")
        if table.primary_key is None:
            return invalid("CRMSYNC_BAD_TABLE", f"table {command.object!r} has no single-column primary key")
        if command.action not in ("upsert", "create", "delete"):
            return invalid("CRMSYNC_BAD_COMMAND", f"action must be 'upsert', 'create' or 'delete', got "
                                                  f"{command.action!r}")
        key, problem = _key(table, command)
        link, problem = (None, problem) if problem else _link(table, command)
        if problem:
            return invalid("CRMSYNC_BAD_COMMAND", problem)
        if key is None and link is None:
            return invalid("CRMSYNC_BAD_COMMAND", "a command needs a key ({'id': n}) or a match on the CRM link "
                                                  "(crm_account, crm_object, crm_id)")
        if command.action == "create" and (key is None or link is None):
            return invalid("CRMSYNC_BAD_COMMAND", "a create needs the new row's key and its CRM link (match)")
        row: dict[str, Any] = {}
        identities = []
        if key is not None:
            row["k"] = key
            identities.append(f"{table.name}|key|{key}")
        if link:
            row["a"], row["o"], row["x"] = link
            identities.append(f"{table.name}|crm|{link[0]}|{link[2]}")
        if command.action == "delete":
            shape = ("delete", table.name, key is not None, link is not None)
            return Planned(command, "delete", table.name, rkey, tuple(identities), shape, row)
        values = command.values or {}
        if link:  # the match decides the row's CRM link columns
            values = {c: v for c, v in values.items() if c not in LINK_COLUMNS}
        columns, problem = self._values(table, values, row, command.expect if isinstance(command.expect, dict) else {})
        if problem:
            if "does not exist" in problem and table.name not in self._reloaded:
                self._reloaded.add(table.name)  # perhaps the column was added since we looked: look again
                self.catalog.forget(table.name)
                return self.plan(command)
            return invalid("undefined_column" if "does not exist" in problem else "CRMSYNC_BAD_COMMAND", problem)
        kind = ("create" if command.action == "create" else "link" if key is not None and link
                else "update" if key is not None else "upsert")
        return Planned(command, kind, table.name, rkey, tuple(identities), (kind, table.name, columns), row)

    def _values(self, table: Table, values: dict[str, Any], row: dict[str, Any],
                expect: dict[str, Any]) -> tuple[tuple, str | None]:
        """Fill `row` with the values (and expected values); return the columns as (name, referenced table or
        None, compare-and-set or not). The checks and names of a command's shape are worked out once per shape
        (a backfill sends thousands of commands of one shape; checking each column of each took a third of the
        writer's time)."""
        signature = (table.name, *((column, _reference_table(value), column in expect)
                                   for column, value in values.items()))
        if None in (part[1] for part in signature[1:]):  # a $ref that is not well formed: said per command
            return self._checked_values(table, values, row, expect)
        shape = self._shapes.get(signature)
        if shape is None:
            if len(self._shapes) > 10_000:
                self._shapes.clear()
            probe: dict[str, Any] = {}
            columns, problem = self._checked_values(table, values, probe, expect)
            shape = self._shapes[signature] = (columns, problem, [
                (column, _NAMES[i], parent is not None, checked) for i, (column, parent, checked) in enumerate(columns)])
        columns, problem, fill = shape
        if problem:
            return (), problem
        for column, (v, e, va, vx), is_reference, checked in fill:
            value = values[column]
            if is_reference:
                ref = value["$ref"]
                row[va], row[vx] = ref["crm_account"], ref["crm_id"]
            else:
                row[v] = None if type(value) is dict and "$ref" in value else value
                if checked:
                    row[e] = expect[column]
        return columns, None

    def _checked_values(self, table: Table, values: dict[str, Any], row: dict[str, Any],
                        expect: dict[str, Any]) -> tuple[tuple, str | None]:
        columns = []
        for i, (column, value) in enumerate(values.items()):
            if column not in table.columns:
                return (), f"column {column!r} does not exist in table {table.name!r}"
            if column == table.primary_key:
                return (), f"column {column!r} is the primary key; address the row with `key` instead"
            if type(value) is dict and "$ref" in value and value["$ref"] is not None:
                ref = value["$ref"]
                parent, problem = self._reference(column, ref)
                if problem:
                    return (), problem
                columns.append((column, parent, False))
                row[f"v{i}a"], row[f"v{i}x"] = ref["crm_account"], ref["crm_id"]
            else:
                checked = column in expect
                columns.append((column, None, checked))
                row[f"v{i}"] = None if type(value) is dict and "$ref" in value else value
                if checked:
                    row[f"e{i}"] = expect[column]
        return tuple(columns), None

    def _reference(self, column: str, ref: Any) -> tuple[str | None, str | None]:
        if not (isinstance(ref, dict) and ref.get("table") and ref.get("crm_account") and ref.get("crm_id")):
            return None, f"column {column!r}: a $ref needs table, crm_account and crm_id, got {ref!r}"
        parent = self.catalog.table(ref["table"])
        if parent is None or not parent.has_crm_link or parent.primary_key is None:
            return None, (f"column {column!r}: referenced table {ref['table']!r} does not exist or has no "
                          "CRM link columns")
        return parent.name, None

    # -- SQL ------------------------------------------------------------------------------------------------
    def sql(self, planned: Planned) -> str:
        """The statement for a shape (built once, then cached). Its one parameter is the JSON array of rows."""
        text = self._sql.get(planned.shape)
        if text is None:
            text = self._sql[planned.shape] = self._build(planned.shape).as_string(None)
        return text

    def inserting(self, planned: Planned) -> str:
        """For a group of creates: the statement that inserts the rows not there yet (a backfill: all of them)
        and answers for those only. The others (a replay) then go through the create statement itself."""
        return self.sql(replace(planned, shape=("insert", *planned.shape[1:])))

    def _build(self, shape: tuple) -> sql.Composed:
        kind, table = shape[0], self.catalog.table(shape[1])
        assert table is not None and table.primary_key is not None
        if kind == "delete":
            by_key, by_link = shape[2], shape[3]
            return _delete_sql(table, self._input(table, by_key, by_link, ()), by_key, by_link)
        columns = shape[2]
        source = self._input(table, kind in ("update", "link", "create", "insert"),
                             kind in ("upsert", "link", "create", "insert"), columns)
        names = [c for c, _, _ in columns]
        checks = [_equal_as_column(table, c, i) if checked else None for i, (c, _, checked) in enumerate(columns)]
        if kind == "create":
            return _create_sql(table, source, names, checks)
        if kind == "insert":  # the first try of a create group: rows that are not there yet, nothing else
            return _insert_new_sql(table, source, names)
        if kind == "upsert":
            if any(checks):
                return _checked_upsert_sql(table, source, names, checks)
            return _upsert_sql(table, source, names)
        return _update_sql(table, source, names, checks, link=kind == "link")

    def _fields(self, table: Table, by_key: bool, by_link: bool, columns: tuple) -> list[tuple[str, sql.SQL]]:
        """The input rows' fields and types: n, k, a, o, x, then per column its value (or its parent's CRM
        link) and its expected value."""
        fields = [("n", sql.SQL("int4"))]
        if by_key:
            fields.append(("k", sql.SQL(table.columns[table.primary_key])))
        if by_link:
            fields += [("a", sql.SQL("text")), ("o", sql.SQL("text")), ("x", sql.SQL("text"))]
        for i, (column, parent, checked) in enumerate(columns):
            cast = sql.SQL(table.columns[column])
            if checked:
                fields.append((f"e{i}", cast))
            if parent is None:
                fields.append((f"v{i}", cast))
            else:
                fields += [(f"v{i}a", sql.SQL("text")), (f"v{i}x", sql.SQL("text"))]
        return fields

    def _input(self, table: Table, by_key: bool, by_link: bool, columns: tuple) -> sql.Composed:
        """``input``: the JSON array as typed rows n, k, a, o, x, c0, c1 … (references looked up)."""
        select = [sql.SQL("r.n")]
        if by_key:
            select.append(sql.SQL("r.k"))
        if by_link:
            select.append(sql.SQL("r.a, r.o, r.x"))
        for i, (column, parent, checked) in enumerate(columns):
            cast = sql.SQL(table.columns[column])
            if checked:
                select.append(sql.SQL("r.{} AS {}").format(sql.Identifier(f"e{i}"), sql.Identifier(f"x{i}")))
            if parent is None:
                select.append(sql.SQL("r.{} AS {}").format(sql.Identifier(f"v{i}"), sql.Identifier(f"c{i}")))
                continue
            ref = self.catalog.table(parent)
            assert ref is not None and ref.primary_key is not None
            account, crm_id = sql.Identifier(f"v{i}a"), sql.Identifier(f"v{i}x")
            select.append(sql.SQL(
                "COALESCE((SELECT p.{pk} FROM {ref} p WHERE p.crm_account = r.{a} AND p.crm_id = r.{x}), "
                "crmsync.missing_parent({name}, r.{a}, r.{x}))::{cast} AS {alias}").format(
                pk=sql.Identifier(ref.primary_key), ref=ref.ident, a=account, x=crm_id,
                name=sql.Literal(ref.name), cast=cast, alias=sql.Identifier(f"c{i}")))
        source = sql.SQL("jsonb_to_recordset(%s::jsonb) AS r({})").format(sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.SQL(name) if name in ("n", "k", "a", "o", "x") else sql.Identifier(name),
                                    kind) for name, kind in self._fields(table, by_key, by_link, columns)))
        return sql.SQL("input AS MATERIALIZED (SELECT {select} FROM {source})").format(
            select=sql.SQL(", ").join(select), source=source)


_NAMES = [(f"v{i}", f"e{i}", f"v{i}a", f"v{i}x") for i in range(1600)]  # a table has at most 1,600 columns


def _reference_table(value: Any) -> Any:
    """What a value's kind adds to its command's shape: "" for a plain value (or a null $ref), the parent
    table for a well-formed $ref, None for a malformed one."""
    if type(value) is not dict or "$ref" not in value or value["$ref"] is None:
        return ""
    ref = value["$ref"]
    if isinstance(ref, dict) and isinstance(ref.get("table"), str) and ref.get("crm_account") and ref.get("crm_id"):
        return ref["table"]
    return None


def _key(table: Table, command: ApplyCommand) -> tuple[Any, str | None]:
    if not command.key:
        return None, None
    if set(command.key) != {table.primary_key} or command.key[table.primary_key] is None:
        return None, f"key must be {{'{table.primary_key}': <value>}}, got {command.key!r}"
    return command.key[table.primary_key], None


def _link(table: Table, command: ApplyCommand) -> tuple[tuple[str, str, str] | None, str | None]:
    match = command.match
    if not match:
        return None, None
    parts = (match.get("crm_account"), match.get("crm_object"), match.get("crm_id"))
    if not all(isinstance(p, str) and p for p in parts):
        return None, f"match must hold crm_account, crm_object and crm_id, got {match!r}"
    if not table.has_crm_link:
        return None, f"table {table.name!r} has no crm_account/crm_id columns, so it cannot be matched"
    return parts, None  # type: ignore[return-value]


def _ids(names: list[str]) -> list[sql.Identifier]:
    return [sql.Identifier(n) for n in names]


def _inputs(count: int, offset: int = 0) -> list[sql.Composable]:
    return [sql.SQL("i.{}").format(sql.Identifier(f"c{i}")) for i in range(offset, offset + count)]


def _row(items: list[sql.Composable]) -> sql.Composed:
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(items))


Check = Callable[[sql.Composable], sql.Composable] | None  # column value -> "equals the expected value" (SQL)
_NO_SUPERSEDED = sql.SQL("'{}'::text[]")


def _equal_as_column(table: Table, column: str, index: int) -> Callable[[sql.Composable], sql.Composable]:
    """`left` equals expected value `index`, compared as the column's type at the precision of the streams'
    canonical form (timestamps to the millisecond, numbers as float8)."""
    expected: sql.Composable = sql.SQL("i.{}").format(sql.Identifier(f"x{index}"))
    base = table.full_types[column].split("(")[0].strip().lower()
    if base.startswith("timestamp"):
        wrap = lambda e: sql.SQL("date_trunc('milliseconds', {})").format(e)  # noqa: E731
    elif base in ("numeric", "real", "double precision"):
        wrap = lambda e: sql.SQL("({})::float8").format(e)  # noqa: E731
    else:
        wrap = lambda e: e  # noqa: E731
    return lambda left: sql.SQL("{} IS NOT DISTINCT FROM {}").format(wrap(left), wrap(expected))


def _guarded(names: list[str], checks: list[Check]) -> list[sql.Composable]:
    """The value each column gets: the command's, or — for a compare-and-set column that no longer holds the
    expected value — its own."""
    values = []
    for i, (name, check) in enumerate(zip(names, checks)):
        current = sql.SQL("t.{}").format(sql.Identifier(name))
        new = sql.SQL("i.{}").format(sql.Identifier(f"c{i}"))
        values.append(new if check is None else
                      sql.SQL("CASE WHEN {} THEN {} ELSE {} END").format(check(current), new, current))
    return values


def _superseded(names: list[str], checks: list[Check]) -> sql.Composable:
    """text[] of the compare-and-set columns left alone: they hold neither the expected nor the new value."""
    items = []
    for i, (name, check) in enumerate(zip(names, checks)):
        if check is None:
            continue
        current = sql.SQL("t.{}").format(sql.Identifier(name))
        items.append(sql.SQL("CASE WHEN NOT ({}) AND {} IS DISTINCT FROM i.{} THEN {} END").format(
            check(current), current, sql.Identifier(f"c{i}"), sql.Literal(name)))
    if not items:
        return _NO_SUPERSEDED
    return sql.SQL("array_remove(ARRAY[{}]::text[], NULL)").format(sql.SQL(", ").join(items))


def _update_sql(table: Table, source: sql.Composed, names: list[str], checks: list[Check], *,
                link: bool) -> sql.Composed:
    """update: key only; link: key + match (also sets crm_account/crm_id and links the identity)."""
    pk = sql.Identifier(table.primary_key)
    targets = _ids((["crm_account", "crm_id"] if link else []) + names)
    values = ([sql.SQL("i.a"), sql.SQL("i.x")] if link else []) + _guarded(names, checks)
    tail = (sql.SQL(", crmsync.link_identity(i.a, i.o, i.x, {}, t.{}, 'match')").format(sql.Literal(table.name), pk)
            if link else sql.SQL(""))
    # the answer reads the rows as they were before the UPDATE (one snapshot for the whole statement)
    answer = sql.SQL("SELECT i.n, t.{pk}, false, {superseded}{tail} FROM input i JOIN {t} t ON t.{pk} = i.k "
                     "ORDER BY i.n").format(pk=pk, tail=tail, t=table.ident, superseded=_superseded(names, checks))
    if not targets:
        return sql.SQL("WITH {source} {answer}").format(source=source, answer=answer)
    return sql.SQL(
        "WITH {source}, up AS (UPDATE {t} AS t SET {sets} FROM input i "
        "WHERE t.{pk} = i.k AND {old} IS DISTINCT FROM {new}) {answer}").format(
        source=source, t=table.ident, pk=pk, answer=answer,
        sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(c, v) for c, v in zip(targets, values)),
        old=_row([sql.SQL("t.{}").format(c) for c in targets]), new=_row(values))


def _upsert_sql(table: Table, source: sql.Composed, names: list[str]) -> sql.Composed:
    """match only: insert, or update the row already linked to this CRM record; then link the identity."""
    pk = sql.Identifier(table.primary_key)
    if names:
        action = sql.SQL("DO UPDATE SET {sets} WHERE {old} IS DISTINCT FROM {new}").format(
            sets=sql.SQL(", ").join(sql.SQL("{c} = excluded.{c}").format(c=c) for c in _ids(names)),
            old=_row([sql.SQL("t.{}").format(c) for c in _ids(names)]),
            new=_row([sql.SQL("excluded.{}").format(c) for c in _ids(names)]))
    else:
        action = sql.SQL("DO NOTHING")
    return sql.SQL(
        "WITH {source}, "
        "up AS (INSERT INTO {t} AS t ({cols}) SELECT {vals} FROM input i ORDER BY i.n "
        "ON CONFLICT (crm_account, crm_id) WHERE crm_id IS NOT NULL {action} "
        "RETURNING t.{pk} AS k, t.crm_account AS a, t.crm_id AS x, (t.xmax = 0) AS created), "
        # rows the upsert did not touch (nothing differed) are looked up by their CRM link, one index probe each
        "found AS (SELECT i.n, i.a, i.o, i.x, COALESCE(up.k, (SELECT t.{pk} FROM {t} t "
        "WHERE t.crm_account = i.a AND t.crm_id = i.x)) AS k, COALESCE(up.created, false) AS created "
        "FROM input i LEFT JOIN up ON up.a = i.a AND up.x = i.x), "
        "{link} SELECT n, k, created, {none} FROM found WHERE k IS NOT NULL ORDER BY n").format(
        source=source, t=table.ident, cols=sql.SQL(", ").join(_ids(["crm_account", "crm_id"] + names)),
        vals=sql.SQL(", ").join([sql.SQL("i.a"), sql.SQL("i.x"), *_inputs(len(names))]), action=action, pk=pk,
        link=_link_found(table), none=_NO_SUPERSEDED)


def _checked_upsert_sql(table: Table, source: sql.Composed, names: list[str], checks: list[Check]) -> sql.Composed:
    """match only, with compare-and-set columns: update the row linked to this CRM record column by column
    (an ON CONFLICT update cannot see the expected values), insert the rows that are not there."""
    pk = sql.Identifier(table.primary_key)
    guarded = _guarded(names, checks)
    return sql.SQL(
        "WITH {source}, "
        "existing AS (SELECT i.n, t.{pk} AS k, {superseded} AS superseded FROM input i "
        "JOIN {t} t ON t.crm_account = i.a AND t.crm_id = i.x), "
        "up AS (UPDATE {t} AS t SET {sets} FROM input i WHERE t.crm_account = i.a AND t.crm_id = i.x "
        "AND {old} IS DISTINCT FROM {new}), "
        "ins AS (INSERT INTO {t} AS t ({cols}) SELECT {vals} FROM input i "
        "WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.n = i.n) ORDER BY i.n "
        "ON CONFLICT (crm_account, crm_id) WHERE crm_id IS NOT NULL DO NOTHING "
        "RETURNING t.{pk} AS k, t.crm_account AS a, t.crm_id AS x), "
        "found AS (SELECT i.n, i.a, i.o, i.x, COALESCE(e.k, ins.k) AS k, ins.k IS NOT NULL AS created, "
        "COALESCE(e.superseded, {none}) AS superseded FROM input i LEFT JOIN existing e ON e.n = i.n "
        "LEFT JOIN ins ON ins.a = i.a AND ins.x = i.x), "
        "{link} SELECT n, k, created, superseded FROM found WHERE k IS NOT NULL ORDER BY n").format(
        source=source, t=table.ident, pk=pk, superseded=_superseded(names, checks),
        sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(c, v) for c, v in zip(_ids(names), guarded)),
        old=_row([sql.SQL("t.{}").format(c) for c in _ids(names)]), new=_row(guarded),
        cols=sql.SQL(", ").join(_ids(["crm_account", "crm_id"] + names)),
        vals=sql.SQL(", ").join([sql.SQL("i.a"), sql.SQL("i.x"), *_inputs(len(names))]),
        none=_NO_SUPERSEDED, link=_link_found(table))


def _create_sql(table: Table, source: sql.Composed, names: list[str], checks: list[Check]) -> sql.Composed:
    """key + match of a row that does not exist yet: insert it with its key and CRM link. A replay (the row is
    there) updates it column by column with compare-and-set, like any update of a linked row. A row we created
    before and that is gone now (`crmsync.created_rows`: a user deleted it since) is not inserted again: the
    command is answered as done (`created` false), and that delete is a change the streams decide."""
    pk = sql.Identifier(table.primary_key)
    targets = _ids(["crm_account", "crm_id"] + names)
    guarded = [sql.SQL("i.a"), sql.SQL("i.x"), *_guarded(names, checks)]
    return sql.SQL(
        "WITH {source}, "
        "existing AS (SELECT i.n, t.{pk} AS k, {superseded} AS superseded FROM input i JOIN {t} t ON t.{pk} = i.k), "
        "gone AS (SELECT i.n, i.k FROM input i WHERE {created_before} "
        "AND NOT EXISTS (SELECT 1 FROM existing e WHERE e.n = i.n)), "
        "up AS (UPDATE {t} AS t SET {sets} FROM input i JOIN existing e ON e.n = i.n WHERE t.{pk} = i.k "
        "AND {old} IS DISTINCT FROM {new}), "
        "ins AS (INSERT INTO {t} AS t ({cols}) SELECT {vals} FROM input i "
        "WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.n = i.n) "
        "AND NOT EXISTS (SELECT 1 FROM gone g WHERE g.n = i.n) ORDER BY i.n "
        "ON CONFLICT DO NOTHING RETURNING t.{pk} AS k), "
        "{mark}, "
        "found AS (SELECT i.n, i.a, i.o, i.x, COALESCE(e.k, ins.k) AS k, ins.k IS NOT NULL AS created, "
        "COALESCE(e.superseded, {none}) AS superseded FROM input i LEFT JOIN existing e ON e.n = i.n "
        "LEFT JOIN ins ON ins.k = i.k), "
        "{link} SELECT n, k, created, superseded FROM found WHERE k IS NOT NULL "
        "UNION ALL SELECT n, k, false, {none} FROM gone ORDER BY n").format(
        source=source, t=table.ident, pk=pk, superseded=_superseded(names, checks),
        created_before=_created_before(table),
        sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(c, v) for c, v in zip(targets, guarded)),
        old=_row([sql.SQL("t.{}").format(c) for c in targets]), new=_row(guarded),
        cols=sql.SQL(", ").join(_ids([table.primary_key, "crm_account", "crm_id"] + names)),
        vals=sql.SQL(", ").join([sql.SQL("i.k"), sql.SQL("i.a"), sql.SQL("i.x"), *_inputs(len(names))]),
        none=_NO_SUPERSEDED, link=_link_found(table), mark=_mark_created(table))


def _insert_new_sql(table: Table, source: sql.Composed, names: list[str]) -> sql.Composed:
    """Insert the rows of a create group that are not there, with their identity links; answer for those. A
    row that is there (by key or by CRM link) is left for the create statement (`_create_sql`)."""
    pk = sql.Identifier(table.primary_key)
    return sql.SQL(
        "WITH {source}, "
        "ins AS (INSERT INTO {t} AS t ({cols}) SELECT {vals} FROM input i WHERE NOT {created_before} ORDER BY i.n "
        "ON CONFLICT DO NOTHING RETURNING t.{pk} AS k), "
        "{mark}, "
        "found AS (SELECT i.n, i.a, i.o, i.x, i.k FROM input i JOIN ins ON ins.k = i.k), "
        "{link} SELECT n, k, true, {none} FROM found ORDER BY n").format(
        source=source, t=table.ident, pk=pk, cols=sql.SQL(", ").join(_ids([table.primary_key, "crm_account", "crm_id"]
                                                                          + names)),
        vals=sql.SQL(", ").join([sql.SQL("i.k"), sql.SQL("i.a"), sql.SQL("i.x"), *_inputs(len(names))]),
        none=_NO_SUPERSEDED, link=_link_found(table), mark=_mark_created(table), created_before=_created_before(table))


def _created_before(table: Table) -> sql.Composed:
    """Whether input row `i`'s key is one this writer created before (crmsync.created_rows)."""
    return sql.SQL("EXISTS (SELECT 1 FROM crmsync.created_rows c WHERE c.campaign_table = {name} "
                   "AND c.campaign_key = i.k)").format(name=sql.Literal(table.name))


def _mark_created(table: Table) -> sql.Composed:
    """The rows a create statement inserted, noted in crmsync.created_rows (a CTE named `mark`, over `ins`)."""
    return sql.SQL("mark AS (INSERT INTO crmsync.created_rows (campaign_table, campaign_key) "
                   "SELECT {name}, k FROM ins ON CONFLICT DO NOTHING)").format(name=sql.Literal(table.name))


def _link_found(table: Table) -> sql.Composed:
    """The identity link of every row `found` by its CRM link. Inline rather than crmsync.link_identity (a
    third faster on this hot path): such a row is already linked to that record, so there is no other link of
    the row to replace."""
    return sql.SQL(
        "link AS (INSERT INTO crmsync.identity_links (crm_account, crm_object, crm_id, campaign_table, "
        "campaign_key, linked_by) SELECT a, o, x, {name}, k, 'sync' FROM found WHERE k IS NOT NULL "
        "ON CONFLICT (crm_account, crm_object, crm_id) DO UPDATE "
        "SET campaign_table = excluded.campaign_table, campaign_key = excluded.campaign_key "
        "WHERE (identity_links.campaign_table, identity_links.campaign_key) "
        "IS DISTINCT FROM (excluded.campaign_table, excluded.campaign_key))").format(name=sql.Literal(table.name))


def _delete_sql(table: Table, source: sql.Composed, by_key: bool, by_link: bool) -> sql.Composed:
    """Delete by key (else by CRM link), and the identity links of the deleted rows and of the CRM record."""
    pk = sql.Identifier(table.primary_key)
    where = (sql.SQL("t.{} = i.k").format(pk) if by_key else sql.SQL("t.crm_account = i.a AND t.crm_id = i.x"))
    unlink = sql.SQL("(l.campaign_table = {} AND l.campaign_key IN (SELECT k FROM gone))").format(
        sql.Literal(table.name))
    if by_link:
        unlink = sql.SQL("{} OR (l.crm_account, l.crm_object, l.crm_id) IN (SELECT a, o, x FROM input)").format(unlink)
    return sql.SQL(
        "WITH {source}, "
        "gone AS (DELETE FROM {t} AS t USING input i WHERE {where} RETURNING i.n, t.{pk} AS k), "
        "unlink AS (DELETE FROM crmsync.identity_links l WHERE {unlink}) "
        "SELECT n, k, false, {none} FROM gone ORDER BY n").format(
        source=source, t=table.ident, where=where, pk=pk, unlink=unlink, none=_NO_SUPERSEDED)
