"""The query activity: rows of a Campaign table, filtered with the workflow filter tree.

Table and column names are checked against the real schema (the Campaign writer's catalog) and quoted as
identifiers; every value is a bound parameter. Nothing the workflow file says can change the statement's shape
beyond what the tree describes.
"""
from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from crmsync.pg import json_ready
from crmsync import filters
from crmsync.workflow.engine import ActivityError, Outputs, Progress, RunContext, Row
from crmsync.filters import Condition, Group, Node
from crmsync.workflow.model import QueryActivity
from crmsync.catalog import Catalog, Table

_COMPARE = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "after": ">", "before": "<",
            "on or after": ">=", "on or before": "<="}


def campaign_table(ctx: RunContext, name: str) -> Table:
    """The table's metadata, or an error naming the table."""
    table = Catalog(ctx.conn).table(name)
    if table is None:
        raise ActivityError(f"table {name!r} does not exist in the Campaign database", "UNDEFINED_TABLE")
    return table


def check_columns(table: Table, names: list[str], what: str) -> None:
    unknown = [n for n in names if n not in table.columns]
    if unknown:
        raise ActivityError(f"{what}: {', '.join(unknown)} not column(s) of {table.name} (columns: "
                            f"{', '.join(table.columns)})", "UNDEFINED_COLUMN")


def run(activity: QueryActivity, rows: list[Row], ctx: RunContext, progress: Progress) -> Outputs:
    table = campaign_table(ctx, activity.table)
    columns = activity.columns or list(table.columns)
    check_columns(table, columns, "columns")
    statement, params = select(table, columns, activity)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        found = [{k: json_ready(v) for k, v in r.items()} for r in cur.execute(statement, params)]
    progress.total(len(found))
    progress.advance(len(found))
    return Outputs(ok=found, note=f"{len(found)} row(s) of {table.name}")


def select(table: Table, columns: list[str], activity: QueryActivity) -> tuple[sql.Composed, list[Any]]:
    params: list[Any] = []
    statement = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)), table.ident)
    if activity.where is not None:
        node = filters.parse(activity.where, "where")
        check_columns(table, [c.field for c in filters.conditions(node)], "where")
        statement += sql.SQL(" WHERE ") + where_sql(node, params, table.columns)
    if activity.order_by:
        check_columns(table, [o.field for o in activity.order_by], "order_by")
        statement += sql.SQL(" ORDER BY ") + sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(o.field), sql.SQL("DESC" if o.descending else "ASC"))
            for o in activity.order_by)
    if activity.limit:
        statement += sql.SQL(" LIMIT {}").format(sql.Literal(activity.limit))
    return statement, params


def where_sql(node: Node, params: list[Any], types: dict[str, str] | None = None) -> sql.Composable:
    """The tree as SQL; values are appended to `params` (placeholders only in the text). With the columns' `types`
    (Catalog), a value that cannot be compared with its column (a date that is no date, text for a number) is
    refused here with its place, instead of failing inside PostgreSQL."""
    return _where(node, params, types or {}, "where")


def _where(node: Node, params: list[Any], types: dict[str, str], path: str) -> sql.Composable:
    if isinstance(node, Group):
        joined = sql.SQL(f" {node.logic.upper()} ").join(
            _where(item, params, types, f"{path}.{node.logic}[{i}]") for i, item in enumerate(node.items))
        return sql.SQL("({})").format(joined)
    return _condition(node, params, types.get(node.field, ""), path)


def _condition(cond: Condition, params: list[Any], pg_type: str, path: str) -> sql.Composable:
    column = sql.Identifier(cond.field)
    if cond.op in filters.NULL_OPS:
        return sql.SQL("{} IS NULL" if cond.op == "is empty" else "{} IS NOT NULL").format(column)
    if cond.op in ("in", "not in"):
        params.append([_operand(v, cond, pg_type, path) for v in cond.value])
        return sql.SQL("{} = ANY(%s)" if cond.op == "in" else "NOT ({} = ANY(%s))").format(column)
    if cond.op in filters.STRING_OPS:
        text = str(cond.value)
        if cond.op != "like":
            text = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            text = {"contains": f"%{text}%", "starts with": f"{text}%", "ends with": f"%{text}"}[cond.op]
        params.append(text)
        return sql.SQL("{}::text ILIKE %s").format(column)
    if cond.op in filters.DATE_OPS and pg_type and not _is_temporal(pg_type):
        raise filters.FilterError(f"{path}.op", f"'{cond.op}' compares dates, but {cond.field} is a {pg_type} column")
    params.append(_operand(cond.value, cond, pg_type or ("date" if cond.op in filters.DATE_OPS else ""), path))
    return sql.SQL("{} " + _COMPARE[cond.op] + " %s").format(column)


_TEMPORAL = ("date", "timestamp", "timestamptz")
_NUMERIC = ("int2", "int4", "int8", "numeric", "float4", "float8")


def _is_temporal(pg_type: str) -> bool:
    return pg_type.rsplit(".", 1)[-1] in _TEMPORAL


def _operand(value: Any, cond: Condition, pg_type: str, path: str) -> Any:
    """`value` as its column can compare it: dates parsed (ISO 8601 or the seed's forms), numbers checked."""
    name = pg_type.rsplit(".", 1)[-1]
    if name in _TEMPORAL:
        try:
            return filters.parse_moment(value)
        except ValueError as exc:
            raise filters.FilterError(f"{path}.value", f"{cond.field} is a {name} column: {exc}") from None
    if name in _NUMERIC and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise filters.FilterError(f"{path}.value", f"{cond.field} is a {name} column: the value must be a number, "
                                                   f"got {filters.shown(value)}")
    return value
