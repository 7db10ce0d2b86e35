"""Record filters: one neutral tree, parsed once, rendered by whoever runs the query — SQL for the Campaign (the
workflow query activity), each CRM connector's own language for the CRM (Salesforce's, OData $filter, Oracle's search
specification).

The tree::

    {and: [cond, cond, {or: [cond, cond]}]}      one logical operator per level; nest to mix them
    {field: NumberOfEmployees, op: ">", value: 100}
    {field: Email, op: is not empty}

Why a parser of our own rather than free text: the seed's CRM filter has rules (one logical operator type per
level, no AND NOT, no joins, a field on the left) and every refusal must name the place and the fix. Values are
never pasted into query text by hand: SQL gets bound parameters, a connector builds its literals with its CRM's
escaping rules, so a value can never change the query's shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Union

from crmsync.values import shown

FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
NULL_OPS = ("is empty", "is not empty")
COMPARE_OPS = ("=", "!=", "<", "<=", ">", ">=")
DATE_OPS = ("after", "before", "on or after", "on or before")
STRING_OPS = ("like", "contains", "starts with", "ends with")
OPS = NULL_OPS + COMPARE_OPS + DATE_OPS + STRING_OPS + ("in", "not in")
VALUE_MAX = 4000  # characters of one filter value
REFUSED_LOGIC = {"not": "NOT is not supported", "and not": "AND NOT is not supported",
                 "and_not": "AND NOT is not supported", "except": "EXCEPT (AND NOT) is not supported"}


class FilterError(ValueError):
    """A filter the translator refuses; the message names the place (`path`) and what to do instead."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class Group:
    logic: str  # "and" | "or"
    items: tuple["Node", ...]


Node = Union[Condition, Group]


def parse(raw: Any, path: str = "filter") -> Node:
    """Check the tree's shape (the rules that hold for every filter) and return it as nodes."""
    if not isinstance(raw, dict):
        raise FilterError(path, f"expected a mapping such as {{field: Email, op: is not empty}} or "
                                f"{{and: [...]}}, got {type(raw).__name__}")
    keys = {str(k).lower() for k in raw}
    for key, why in REFUSED_LOGIC.items():
        if key in keys:
            raise FilterError(path, f"{why}: rewrite it with the opposite comparison (e.g. != instead of "
                                    f"NOT =, 'is not empty' instead of NOT 'is empty')")
    logic = keys & {"and", "or"}
    if len(logic) == 2:
        raise FilterError(path, "AND and OR cannot be mixed on one level: nest one group inside the other, "
                                "e.g. {and: [a, {or: [b, c]}]}")
    if logic:
        return _group(raw, logic.pop(), path)
    return _condition(raw, path)


def _group(raw: dict, logic: str, path: str) -> Group:
    extra = [k for k in raw if str(k).lower() != logic]
    if extra:
        raise FilterError(path, f"a {logic}: group has no other keys (found {', '.join(map(str, extra))}); put "
                                "conditions inside its list")
    items = next(v for k, v in raw.items() if str(k).lower() == logic)
    if not isinstance(items, list) or not items:
        raise FilterError(f"{path}.{logic}", "expected a non-empty list of conditions or groups")
    return Group(logic, tuple(parse(item, f"{path}.{logic}[{i}]") for i, item in enumerate(items)))


def _condition(raw: dict, path: str) -> Condition:
    unknown = set(map(str, raw)) - {"field", "op", "value"}
    if "expression" in unknown or "left" in unknown:
        raise FilterError(path, "the left-hand side must be a single field (`field: Name`), not an expression")
    if "value_field" in unknown or "other_field" in unknown:
        raise FilterError(path, "comparing two fields is a join comparison, which is not supported; compare "
                                "the field with a value")
    if unknown:
        raise FilterError(path, f"unknown key(s) {', '.join(sorted(unknown))}; a condition has field, op and value")
    field, op = raw.get("field"), str(raw.get("op", "=")).strip().lower()
    if field is None:
        raise FilterError(path, "missing `field:` (the left-hand side must be a field)")
    if not isinstance(field, str):
        raise FilterError(f"{path}.field", f"the left-hand side must be a field name, not the constant {field!r}")
    if "." in field:
        raise FilterError(f"{path}.field", f"{field!r} goes through a relationship: JOIN comparisons are not "
                                           "supported; filter on a field of the object itself")
    if not FIELD_RE.match(field):
        raise FilterError(f"{path}.field", f"{field!r} is not a field name: the left-hand side must be a single "
                                           "field, not an expression or a constant")
    if op not in OPS:
        raise FilterError(f"{path}.op", f"unknown operator {op!r}; use one of: {', '.join(OPS)}")
    if op in NULL_OPS:
        if raw.get("value") is not None:
            raise FilterError(f"{path}.value", f"'{op}' takes no value")
        return Condition(field, op)
    if "value" not in raw:
        raise FilterError(path, f"missing `value:` for operator '{op}'")
    value = raw["value"]
    if op in ("in", "not in") and not (isinstance(value, list) and value):
        raise FilterError(f"{path}.value", f"'{op}' needs a non-empty list of values")
    if value is None:
        raise FilterError(f"{path}.value", "use op: 'is empty' / 'is not empty' to test for null")
    for item in value if isinstance(value, list) else [value]:
        _check_text(item, f"{path}.value")
    return Condition(field, op, value)


def _check_text(value: Any, path: str) -> None:
    """A value every query language can carry: no NUL (no CRM and no PostgreSQL text holds one), at most
    VALUE_MAX characters (a CRM's query has a size limit, a URL a few thousand characters)."""
    if isinstance(value, str) and "\x00" in value:
        raise FilterError(path, "the value contains a NUL character, which no field can hold: remove it")
    if isinstance(value, str) and len(value) > VALUE_MAX:
        raise FilterError(path, f"{shown(value, 40)}: the value has {len(value):,} characters; a filter value may have at most "
                                f"{VALUE_MAX:,}")


def conditions(node: Node) -> list[Condition]:
    """Every condition of the tree, in order (to check fields against a schema)."""
    if isinstance(node, Condition):
        return [node]
    return [c for item in node.items for c in conditions(item)]


# -- dates: ISO 8601 and the seed's forms ----------------------------------------------------------------------
_SEED_DATE = re.compile(r"^(\d{4})\D(\d{1,2})\D(\d{1,2})(?:[ T](\d{1,2})\D(\d{1,2})(?:\D(\d{1,2}))?)?$")
_JS_DATE = re.compile(r"^new\s+Date\(\s*(\d{4})\s*,\s*(\d{1,2})\s*,\s*(\d{1,2})((?:\s*,\s*\d{1,2}){0,3})\s*\)$")


def parse_moment(value: Any) -> date | datetime:
    """A date or datetime from YAML (already a date), ISO 8601 text, the seed's `yyyy.MM.dd[ hh.mm.ss]` (any
    separator: 1970/01/27, 2012-06-27 14:25:00) or a JavaScript `new Date(1970,0,27)` (month from 0).
    Datetimes without a zone are UTC."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if m := _JS_DATE.match(text):
        extra = [int(x) for x in re.findall(r"\d+", m.group(4))]
        parts = [int(m.group(1)), int(m.group(2)) + 1, int(m.group(3)), *extra]
        return datetime(*parts, tzinfo=timezone.utc) if extra else date(*parts)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if len(text) == 10:
            return parsed.date()
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except ValueError:
        pass
    if m := _SEED_DATE.match(text):
        y, mo, d, h, mi, s = (int(x) if x else None for x in m.groups())
        if h is None:
            return date(y, mo, d)
        return datetime(y, mo, d, h, mi, s or 0, tzinfo=timezone.utc)
    raise ValueError(f"{value!r} is not a date: use ISO 8601 (2012-11-01, 2012-11-01T10:00:00Z), yyyy/MM/dd, "
                     "yyyy-MM-dd hh:mm:ss or new Date(2012,10,1)")


def start_of(moment: date | datetime) -> datetime:
    return moment if isinstance(moment, datetime) else datetime.combine(moment, time(), timezone.utc)


def end_of(moment: date | datetime) -> datetime:
    """The last instant a date covers (end dates are inclusive: 2026-11-29 means the whole day)."""
    if isinstance(moment, datetime):
        return moment
    return datetime.combine(moment + timedelta(days=1), time(), timezone.utc) - timedelta(microseconds=1)
