"""The neutral record filter (crmsync/filters.py) as an Oracle Web Services search specification.

A QueryPage `searchspec` is `[Field] <op> '<value>'` terms joined by AND / OR with parentheses ("Using Search
Specifications", c-Using-Search-Specifications.html; the terms follow "Query Syntax", c-Query-Syntax.html):
operators `= <> < <= > >= LIKE ~LIKE IS NULL IS NOT NULL`, values in single quotes with a quote doubled and a
backslash before `\\`, `*` and `?` (the LIKE wildcards). Every literal is built in query.py (`ws_literal`), from
the field's type in the describe, so no value can change the expression's shape.

| filter op                       | search specification                                   |
|---------------------------------|--------------------------------------------------------|
| is empty / is not empty         | `[F] IS NULL` / `[F] IS NOT NULL`                       |
| = != < <= > >=                  | `[F] = '…'`, `[F] <> '…'`, …  (text compares exactly)  |
| after before on or after …      | `>`, `<`, `>=`, `<=`; a whole day as a datetime bound  |
| like                            | `[F] ~LIKE '…'`, the user's `%` and `_` become `*` and `?`, case-insensitive like SOQL's LIKE |
| contains / starts / ends with   | `[F] ~LIKE '*…*'` / `'…*'` / `'*…'`, the text matched literally |
| in / not in                     | `([F] = 'a' OR [F] = 'b')` / `([F] <> 'a' AND [F] <> 'b')` |

Datetimes go as XSD UTC instants, which OOD compares exactly (no user time zone, no repeated hour). Refused with
a FilterError naming the place: unknown fields, text operators on non-text fields, date operators on non-dates,
values of the wrong type.
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Any, Mapping

from crmsync.filters import (COMPARE_OPS, DATE_OPS, NULL_OPS, STRING_OPS, Condition, FilterError, Group, Node,
                             end_of, parse_moment, start_of)

from .query import ws_literal
from .types import OodField

_COMPARE = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_DATE = {"after": ">", "before": "<", "on or after": ">=", "on or before": "<="}
_TEXT_TYPES = ("string", "picklist", "id")
_NUMBER_TYPES = ("integer", "number", "currency")


def render(node: Node, fields: Mapping[str, OodField], path: str = "filter") -> str:
    """The search specification for `node`; `fields` is the record type's describe, by integration tag."""
    by_lower = {name.lower(): f for name, f in fields.items()}
    return _render(node, by_lower, path)


def any_of(field: str, values: list[str]) -> str:
    """`[F] = 'a' OR [F] = 'b' ...` (ids or keys)."""
    return " OR ".join(f"[{field}] = {ws_literal(v)}" for v in values)


def _render(node: Node, fields: Mapping[str, OodField], path: str) -> str:
    if isinstance(node, Group):
        parts = [_render(item, fields, f"{path}.{node.logic}[{i}]") for i, item in enumerate(node.items)]
        return parts[0] if len(parts) == 1 else "(" + f" {node.logic.upper()} ".join(parts) + ")"
    return _condition(node, fields, path)


def _condition(cond: Condition, fields: Mapping[str, OodField], path: str) -> str:
    field = fields.get(cond.field.lower())
    if field is None:
        raise FilterError(f"{path}.field", f"{cond.field!r} is not a field of this record type (see `crmsync "
                                           "wizard` or the record type's describe for its integration tags)")
    name = f"[{field.name}]"
    if cond.op in NULL_OPS:
        return f"{name} {'IS NULL' if cond.op == 'is empty' else 'IS NOT NULL'}"
    if cond.op in ("in", "not in"):
        op, joint = ("=", " OR ") if cond.op == "in" else ("<>", " AND ")
        terms = [f"{name} {op} {_literal(v, field, path)}" for v in cond.value]
        return terms[0] if len(terms) == 1 else "(" + joint.join(terms) + ")"
    if cond.op in STRING_OPS:
        return f"{name} ~LIKE '{_pattern(cond, field, path)}'"
    if cond.op in DATE_OPS:
        if field.crm_type not in ("date", "datetime"):
            raise FilterError(f"{path}.op", f"'{cond.op}' compares dates, but {field.name} is a {field.crm_type} field")
        return f"{name} {_DATE[cond.op]} {_moment(cond.value, field, path, cond.op)}"
    assert cond.op in COMPARE_OPS
    return f"{name} {_COMPARE[cond.op]} {_literal(cond.value, field, path)}"


def _pattern(cond: Condition, field: OodField, path: str) -> str:
    """A LIKE pattern without its quotes: the user's own (`like`: % and _ are wildcards) or a literal text."""
    if field.crm_type not in _TEXT_TYPES:
        raise FilterError(f"{path}.op", f"'{cond.op}' compares text, but {field.name} is a {field.crm_type} field")
    if not isinstance(cond.value, str):
        raise FilterError(f"{path}.value", f"'{cond.op}' needs a text value, got {cond.value!r}")
    literal = ws_literal(cond.value)[1:-1]  # quotes doubled, \ * ? escaped
    if cond.op == "like":
        return literal.replace("%", "*").replace("_", "?")
    return {"contains": f"*{literal}*", "starts with": f"{literal}*", "ends with": f"*{literal}"}[cond.op]


def _literal(value: Any, field: OodField, path: str) -> str:
    where = f"{path}.value"
    if field.crm_type in _NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FilterError(where, f"{field.name} is a {field.crm_type} field: the value must be a number, got "
                                     f"{value!r}")
        return ws_literal(value)
    if field.crm_type == "boolean":
        if not isinstance(value, bool):
            raise FilterError(where, f"{field.name} is a boolean field: the value must be true or false, got "
                                     f"{value!r}")
        return ws_literal(value)
    if field.crm_type in ("date", "datetime"):
        return _moment(value, field, path, "=")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FilterError(where, f"{field.name} is a text field: the value must be text, got {value!r}")
    return ws_literal(str(value))


def _moment(value: Any, field: OodField, path: str, op: str) -> str:
    try:
        moment = parse_moment(value)
    except ValueError as exc:
        raise FilterError(f"{path}.value", f"{field.name} is a {field.crm_type} field: {exc}") from None
    if field.crm_type == "date":
        day: date = moment.date() if isinstance(moment, datetime) else moment
        return ws_literal(day)
    # a datetime compared with a whole day: "after 2012-11-01" means after the end of that day
    return ws_literal(end_of(moment) if op in ("after", "on or before") else start_of(moment))
