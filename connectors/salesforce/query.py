"""Salesforce record queries: the neutral filter tree (crmsync/filters.py) as a SOQL WHERE clause, with the
seed's rules and Salesforce's escaping, and `SalesforceQuery`, the connector's RecordQuery.

The seed's rules (checked by `crmsync.filters.parse`, plus the type rules here):
one logical operator type per level, no AND NOT, null / numeric / date comparisons, no joins, a field on the
left. Beyond the seed, string comparisons are translated too. Every literal is built here from the field's
type in the object's describe, so a value is always a well-formed literal of the right type:

- strings are quoted, with backslash, quotes, newlines… escaped as SOQL requires (and, for `contains` /
  `starts with` / `ends with`, the LIKE wildcards % and _ escaped, so they match literally);
- numbers must be numbers, dates must be dates (ISO 8601 or the seed's forms), booleans booleans.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

from connectors.salesforce.soql import escape_string, id_lists, quote, soql_datetime
from crmsync.connectors import DeletedRecord
from crmsync.filters import (COMPARE_OPS, DATE_OPS, NULL_OPS, STRING_OPS, Condition, FilterError, Group,
                                      Node, end_of, parse_moment, start_of)

NUMERIC_TYPES = frozenset({"int", "double", "currency", "percent", "long"})
STRING_TYPES = frozenset({"string", "picklist", "textarea", "phone", "url", "email", "combobox", "id",
                          "reference", "multipicklist", "encryptedstring"})
_DATE_OP_SQL = {"after": ">", "before": "<", "on or after": ">=", "on or before": "<="}


def _like_literal(text: str) -> str:
    """A LIKE operand matching `text` literally: wildcards escaped as \\% and \\_ after the string escaping."""
    return escape_string(text).replace("%", "\\%").replace("_", "\\_")


def to_soql(node: Node, field_types: dict[str, str], path: str = "filter") -> str:
    """The WHERE clause (without WHERE) for `node`; `field_types` maps field names (any case) to describe types."""
    lowered = {k.lower(): (k, v) for k, v in field_types.items()}
    return _render(node, lowered, path)


def _render(node: Node, fields: dict[str, tuple[str, str]], path: str) -> str:
    if isinstance(node, Group):
        parts = [_render(item, fields, f"{path}.{node.logic}[{i}]") for i, item in enumerate(node.items)]
        joined = f" {node.logic.upper()} ".join(parts)
        return f"({joined})" if len(parts) > 1 else joined
    return _condition(node, fields, path)


def _condition(cond: Condition, fields: dict[str, tuple[str, str]], path: str) -> str:
    if cond.field.lower() not in fields:
        raise FilterError(f"{path}.field", f"{cond.field!r} is not a field of this object (see `crmsync wizard` "
                                           "or the object's describe for its fields)")
    name, kind = fields[cond.field.lower()]
    if cond.op in NULL_OPS:
        return f"{name} {'=' if cond.op == 'is empty' else '!='} null"
    if cond.op in ("in", "not in"):
        values = ", ".join(_literal(v, kind, name, path) for v in cond.value)
        return f"{name} {cond.op.upper()} ({values})"
    if cond.op in STRING_OPS:
        return _string_match(cond, name, kind, path)
    if cond.op in DATE_OPS:
        if kind not in ("date", "datetime"):
            raise FilterError(f"{path}.op", f"'{cond.op}' compares dates, but {name} is a {kind} field")
        return f"{name} {_DATE_OP_SQL[cond.op]} {_date_literal(cond.value, kind, name, path, cond.op)}"
    assert cond.op in COMPARE_OPS
    return f"{name} {cond.op} {_literal(cond.value, kind, name, path)}"


def _string_match(cond: Condition, name: str, kind: str, path: str) -> str:
    if kind not in STRING_TYPES:
        raise FilterError(f"{path}.op", f"'{cond.op}' compares text, but {name} is a {kind} field")
    if not isinstance(cond.value, str):
        raise FilterError(f"{path}.value", f"'{cond.op}' needs a text value, got {cond.value!r}")
    if cond.op == "like":  # the user's own pattern: % and _ are wildcards, everything else is escaped
        return f"{name} LIKE {quote(cond.value)}"
    text = _like_literal(cond.value)
    pattern = {"contains": f"%{text}%", "starts with": f"{text}%", "ends with": f"%{text}"}[cond.op]
    return f"{name} LIKE '{pattern}'"


def _literal(value: Any, kind: str, name: str, path: str) -> str:
    where = f"{path}.value"
    if kind in NUMERIC_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FilterError(where, f"{name} is numeric ({kind}): the value must be a number, got {value!r}")
        return repr(value) if isinstance(value, float) else str(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise FilterError(where, f"{name} is a boolean field: the value must be true or false, got {value!r}")
        return "true" if value else "false"
    if kind in ("date", "datetime"):
        return _date_literal(value, kind, name, path, "=")
    if kind in STRING_TYPES:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise FilterError(where, f"{name} is a text field: the value must be text, got {value!r}")
        return quote(str(value))
    raise FilterError(f"{path}.field", f"{name} is a {kind} field, which filters cannot compare")


def _date_literal(value: Any, kind: str, name: str, path: str, op: str) -> str:
    try:
        moment = parse_moment(value)
    except ValueError as exc:
        raise FilterError(f"{path}.value", f"{name} is a {kind} field: {exc}") from None
    if kind == "date":
        return (moment.date() if isinstance(moment, datetime) else moment).isoformat()
    # a datetime field compared with a whole day: "after 2012-11-01" means after the end of that day
    bound = end_of(moment) if op in ("after", "on or before") else start_of(moment)
    return soql_datetime(bound)


class SalesforceQuery:
    """crmsync.connectors.RecordQuery for one Salesforce account (drift repair, the workflow activity)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._types: dict[str, dict[str, str]] = {}

    def field_types(self, obj: str) -> dict[str, str]:
        """Field name → Salesforce type, from the object's describe (cached)."""
        if obj not in self._types:
            self._types[obj] = {f["name"]: f["type"] for f in self.client.describe(obj)["fields"]}
        return self._types[obj]

    def records(self, obj: str, fields: Sequence[str], where: Node | None = None,
                order_by: Sequence[tuple[str, bool]] = (), include_deleted: bool = False,
                ids: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        types = self.field_types(obj)
        clause = [to_soql(where, types)] if where is not None else []
        select = ", ".join(dict.fromkeys(["Id", *fields]))
        order = ", ".join(f"{name}{' DESC' if descending else ''}" for name, descending in order_by)
        chunks: list[str | None] = [None] if ids is None else list(id_lists(ids, 200))  # no ids: no query
        for id_clause in chunks:
            parts = clause + ([id_clause] if id_clause else [])
            soql = (f"SELECT {select} FROM {obj}" + (f" WHERE {' AND '.join(parts)}" if parts else "")
                    + (f" ORDER BY {order}" if order else ""))
            for page in self.client.query_all_pages(soql, include_deleted=include_deleted):
                yield [{"id": r["Id"], **{k: v for k, v in r.items() if k != "attributes"}} for r in page]

    def deleted(self, obj: str, start: str, end: str) -> list[DeletedRecord]:
        """From the `deleted` resource: whole minutes, at least one, the last 15 days at most (Salesforce's
        recycle bin); a start before that is refused with Salesforce's INVALID_REPLICATION_DATE."""
        begin, finish = datetime.fromisoformat(start.replace("Z", "+00:00")), datetime.fromisoformat(end.replace("Z", "+00:00"))
        answer = self.client.get_deleted(obj, begin, max(finish, begin + timedelta(minutes=1)))
        return [DeletedRecord(e["id"], e["deletedDate"]) for e in answer.get("deletedRecords", [])]
