"""Records by the neutral filter tree (crmsync/filters.py), rendered as an OData `$filter` the Dataverse Web API
takes (learn.microsoft.com/power-apps/developer/data-platform/webapi/query/filter-rows), and deletions by date.

Every literal is built here from the column's type, so a value can never change the filter's shape:

- text in single quotes with quotes doubled ('O''Brien'); for contains / starts with / ends with, Dataverse's
  LIKE wildcards in the text (% _ [) are bracketed ([%] [_] [[]) so they match literally; `like` keeps the user's
  % and _ as wildcards, and since OData anchors patterns only through contains/startswith/endswith, the pattern
  must start or end with % (or hold no wildcard: then it is an equality);
- GUIDs (ids, lookups: filtered as `_<lookup>_value`) unquoted after checking they are GUIDs; numbers as plain
  decimals; booleans true/false; choices as their integer (a label is looked up); date-times unquoted in UTC
  ('after 2012-11-01' on a date-time means after the end of that day, as in the Salesforce connector); DateOnly
  columns as dates;
- `in` / `not in` become `or` / `and` chains of eq / ne; on a multi-select column they are ContainValues /
  DoesNotContainValues (any of / none of the options), and `contains` one option is ContainValues too.

`deleted()` reads the audit log (`audits`, operation 3 = Delete), the one place Dataverse keeps deletions by date;
it needs auditing on for the table (IsAuditEnabled) and reaches back as far as the audit retention.
"""
from __future__ import annotations

import uuid
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Iterator, Sequence

from crmsync.connectors import DeletedRecord
from crmsync.filters import (COMPARE_OPS, DATE_OPS, NULL_OPS, STRING_OPS, Condition, FilterError, Group, Node,
                             end_of, parse_moment, start_of)
from crmsync.values import iso_utc, parse_timestamp

from .client import DataverseApiError, DataverseClient
from .schema import Catalog, Column, Table
from .values import read_value

_OPS = {"=": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_DATE_OPS = {"after": "gt", "before": "lt", "on or after": "ge", "on or before": "le"}
_TEXT_TYPES = frozenset({"String", "Memo", "EntityName"})
_NUMBER_TYPES = frozenset({"Integer", "BigInt", "Money", "Decimal", "Double"})
_FUNCTION = "Microsoft.Dynamics.CRM."
IDS_PER_QUERY = 100  # GUIDs per In(...) keep the URL near 5,000 characters, far below the 32,768 Dataverse takes
DELETE_OPERATION = 3  # audit operation Delete


# ---------------------------------------------------------------- the filter

def to_odata(node: Node, table: Table, path: str = "filter") -> str:
    """The `$filter` expression for `node` over `table`'s columns (named by logical name, any case)."""
    if isinstance(node, Group):
        parts = [to_odata(item, table, f"{path}.{node.logic}[{i}]") for i, item in enumerate(node.items)]
        return f"({f' {node.logic} '.join(parts)})" if len(parts) > 1 else parts[0]
    return _condition(node, table, path)


def _condition(cond: Condition, table: Table, path: str) -> str:
    try:
        column = table.column(cond.field)
    except KeyError:
        raise FilterError(f"{path}.field", f"{cond.field!r} is not a column of {table.name} (columns are named by "
                                           "logical name; see `crmsync wizard` for the table's columns)") from None
    name = column.web_name
    if cond.op in NULL_OPS:
        return f"{name} {'eq' if cond.op == 'is empty' else 'ne'} null"
    if column.multiselect:
        return _multiselect(cond, column, path)
    if cond.op in ("in", "not in"):
        op, joiner = ("eq", " or ") if cond.op == "in" else ("ne", " and ")
        return "(" + joiner.join(f"{name} {op} {literal(column, v, f'{path}.value')}" for v in cond.value) + ")"
    if cond.op in STRING_OPS:
        return _string_match(cond, column, path)
    if cond.op in DATE_OPS:
        if column.type != "DateTime":
            raise FilterError(f"{path}.op", f"'{cond.op}' compares dates, but {column.name} is a {column.crm_type} "
                                            "column")
        return f"{name} {_DATE_OPS[cond.op]} {_moment(column, cond.value, cond.op, f'{path}.value')}"
    assert cond.op in COMPARE_OPS
    return f"{name} {_OPS[cond.op]} {literal(column, cond.value, f'{path}.value')}"


def literal(column: Column, value: Any, path: str) -> str:
    """An OData literal of `value` for `column`, or a FilterError saying what the column takes."""
    if column.lookup or column.type == "Uniqueidentifier":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise FilterError(path, f"{column.name} holds record ids: the value must be a GUID, got {value!r}") \
                from None
    if column.choice is not None:
        try:
            return str(column.choice.value_of(value))
        except ValueError as exc:
            raise FilterError(path, str(exc)) from None
    if column.type in _NUMBER_TYPES:
        return _number(column, value, path)
    if column.type == "Boolean":
        if not isinstance(value, bool):
            raise FilterError(path, f"{column.name} is a boolean column: the value must be true or false, "
                                    f"got {value!r}")
        return "true" if value else "false"
    if column.type == "DateTime":
        return _moment(column, value, "=", path)
    if column.type in _TEXT_TYPES:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise FilterError(path, f"{column.name} is a text column: the value must be text, got {value!r}")
        return quote(str(value))
    raise FilterError(path, f"{column.name} is a {column.crm_type} column, which filters cannot compare")


def quote(text: str) -> str:
    """An OData string literal: single quotes, a quote inside doubled."""
    return "'" + text.replace("'", "''") + "'"


def like_text(text: str) -> str:
    """`text` matching literally inside contains/startswith/endswith: Dataverse's wildcards bracketed."""
    return "".join(f"[{c}]" if c in "%_[" else c for c in text)


def _number(column: Column, value: Any, path: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise FilterError(path, f"{column.name} is numeric ({column.type}): the value must be a number, "
                                f"got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise FilterError(path, f"{column.name}: {value!r} is not a finite number") from None
    if not number.is_finite():
        raise FilterError(path, f"{column.name}: {value!r} is not a finite number")
    if column.type in ("Integer", "BigInt") and number != number.to_integral_value():
        raise FilterError(path, f"{column.name} holds whole numbers, got {value!r}")
    return format(number.normalize() if number != number.to_integral_value() else number.to_integral_value(), "f")


def _moment(column: Column, value: Any, op: str, path: str) -> str:
    """A date literal for a DateOnly column, else a UTC date-time; a whole day given for a date-time stands for
    its end with 'after' and 'on or before', for its start otherwise."""
    try:
        moment = parse_moment(value)
    except ValueError as exc:
        raise FilterError(path, f"{column.name} is a date column: {exc}") from None
    if column.date_only:
        return (moment.date() if isinstance(moment, datetime) else moment).isoformat()
    bound = (end_of(moment) if op in ("after", "on or before") else start_of(moment)).astimezone(timezone.utc)
    if bound.microsecond == 0:
        return bound.strftime("%Y-%m-%dT%H:%M:%SZ")
    return bound.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _string_match(cond: Condition, column: Column, path: str) -> str:
    if column.type not in _TEXT_TYPES:
        raise FilterError(f"{path}.op", f"'{cond.op}' compares text, but {column.name} is a {column.crm_type} "
                                        "column")
    if not isinstance(cond.value, str):
        raise FilterError(f"{path}.value", f"'{cond.op}' needs a text value, got {cond.value!r}")
    name = column.web_name
    if cond.op == "like":
        return _like(name, cond.value, path)
    function = {"contains": "contains", "starts with": "startswith", "ends with": "endswith"}[cond.op]
    return f"{function}({name},{quote(like_text(cond.value))})"


def _like(name: str, pattern: str, path: str) -> str:
    """A `like` pattern (% and _ wildcards) through contains/startswith/endswith; '[' is literal."""
    inner = pattern.replace("[", "[[]")
    leading, trailing = inner.startswith("%"), inner.endswith("%") and len(inner) > 1
    if leading and trailing:
        return f"contains({name},{quote(inner[1:-1])})"
    if trailing:
        return f"startswith({name},{quote(inner[:-1])})"
    if leading:
        return f"endswith({name},{quote(inner[1:])})"
    if "%" not in pattern and "_" not in pattern:
        return f"{name} eq {quote(pattern)}"
    raise FilterError(f"{path}.value", f"the pattern {pattern!r} has wildcards inside but neither starts nor ends "
                                       "with %: Dataverse matches patterns only through contains, startswith and "
                                       "endswith; add % at one end or split it into 'starts with' and 'ends with'")


def _multiselect(cond: Condition, column: Column, path: str) -> str:
    if cond.op not in ("in", "not in", "contains"):
        raise FilterError(f"{path}.op", f"{column.name} is a multi-select choice: use 'in' (holds any of the "
                                        "options), 'not in' (holds none of them), 'contains' (holds one option) or "
                                        "'is empty'")
    values = cond.value if isinstance(cond.value, list) else [cond.value]
    options = ",".join(quote(literal_option(column, v, f"{path}.value")) for v in values)
    function = "DoesNotContainValues" if cond.op == "not in" else "ContainValues"
    return f"{_FUNCTION}{function}(PropertyName={quote(column.name)},PropertyValues=[{options}])"


def literal_option(column: Column, value: Any, path: str) -> str:
    assert column.choice is not None
    try:
        return str(column.choice.value_of(value))
    except ValueError as exc:
        raise FilterError(path, str(exc)) from None


# ---------------------------------------------------------------- the record query

class DynamicsQuery:
    """RecordQuery over one environment (crmsync/connectors.py)."""

    def __init__(self, client: DataverseClient, catalog: Catalog, page_size: int = 5000) -> None:
        self.client, self.catalog, self.page_size = client, catalog, page_size

    def records(self, obj: str, fields: Sequence[str], where: Node | None = None,
                order_by: Sequence[tuple[str, bool]] = (), include_deleted: bool = False,
                ids: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of {"id": <GUID>, <field>: value...}. `include_deleted` changes nothing: Dataverse keeps no deleted
        rows that a query could return (see deleted())."""
        table = self.catalog.table(obj)
        columns = [self._column(table, name, "fields") for name in fields if name != "id"]
        select = list(dict.fromkeys([table.primary_id] + [c.web_name for c in columns]))
        orderby = [f"{self._column(table, name, 'order_by').web_name} {'desc' if descending else 'asc'}"
                   for name, descending in order_by]
        condition = to_odata(where, table) if where is not None else None
        for clause in _id_clauses(table, ids) if ids is not None else [None]:
            parts = [part for part in (condition, clause) if part]
            combined = " and ".join(f"({part})" for part in parts) if len(parts) > 1 else next(iter(parts), None)
            for page in self.client.query_pages(table.entity_set, select=select, filter=combined,
                                                orderby=orderby, page_size=self.page_size):
                yield [{"id": row[table.primary_id],
                        **{c.name: read_value(c, row.get(c.web_name)) for c in columns}} for row in page]

    def deleted(self, obj: str, start: str, end: str) -> list[DeletedRecord]:
        """Rows deleted in [start, end) from the audit log; ValueError when the table is not audited."""
        table = self.catalog.table(obj)
        if not table.audit_enabled:
            raise ValueError(f"auditing is off for {table.name} in {self.client.account.url}, and Dataverse keeps "
                             "deletions by date only in the audit log: turn auditing on for the table (and the "
                             "environment), or rely on the change source, which reads deletions from change "
                             "tracking")
        begin, finish = parse_timestamp(start), parse_timestamp(end)
        if begin is None or finish is None:
            raise ValueError(f"deleted() needs a start and an end (got {start!r}, {end!r})")
        condition = (f"objecttypecode eq {quote(table.name)} and operation eq {DELETE_OPERATION} and "
                     f"createdon ge {_utc(begin)} and createdon lt {_utc(finish)}")
        found: list[DeletedRecord] = []
        try:
            for page in self.client.query_pages("audits", select=["_objectid_value", "createdon"],
                                                filter=condition, orderby=["createdon asc"],
                                                page_size=self.page_size):
                found += [DeletedRecord(row["_objectid_value"], iso_utc(parse_timestamp(row["createdon"])))
                          for row in page if row.get("_objectid_value")]
        except DataverseApiError as exc:
            if exc.status in (403, 404):
                raise ValueError(f"the audit log of {self.client.account.url} cannot be read ({exc.code}: "
                                 f"{exc.message}); the account needs the View Audit History privilege") from None
            raise
        return found

    @staticmethod
    def _column(table: Table, name: str, what: str) -> Column:
        try:
            return table.column(name)
        except KeyError as exc:
            raise ValueError(f"{what}: {exc.args[0]}") from None


def _id_clauses(table: Table, ids: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(str(i) for i in ids if i))
    checked = []
    for value in unique:
        try:
            checked.append(str(uuid.UUID(value)))
        except ValueError:
            raise ValueError(f"ids: {value!r} is not a GUID (Dataverse record ids are GUIDs)") from None
    return [f"{_FUNCTION}In(PropertyName={quote(table.primary_id)},PropertyValues=["
            + ",".join(quote(i) for i in checked[s:s + IDS_PER_QUERY]) + "])"
            for s in range(0, len(checked), IDS_PER_QUERY)]


def _utc(moment: datetime | date) -> str:
    assert isinstance(moment, datetime)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
