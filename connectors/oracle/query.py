"""Build Oracle CRM On Demand query expressions from values, with correct quoting and escaping.

REST `q` (REST API Developer's Guide, "Querying a Collection Resource" and "Supported Query Characters",
OnDemRestAPI_Ref23/Ref25.html): a field expression is `<Field> <op> <value> [AND|OR <op> <value> ...]`, field
expressions are joined with `;` (AND), literals are quoted and a backslash escapes a special character, `*` is the
wildcard of LIKE, the whole expression is at most 4,096 characters and null values cannot be queried.

Web Services v2.0 field elements ("Query Syntax", c-Query-Syntax.html): `<op> '<value>'` terms joined by AND/OR,
literals in single quotes with a quote doubled, `\\` before `*`, `?` and `\\`, `IS NULL` / `IS NOT NULL`.

Values are rendered by type: datetimes are aware instants and become the user's wall-clock time (REST, via
`UserClock`) or XSD UTC (Web Services); dates become YYYY-MM-DD, booleans true/false, numbers their repr.
Nothing here talks to the server; every function is pure.
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Iterable, Iterator, Sequence, Union

from .timezone import UserClock

MAX_Q_LENGTH = 4096
REST_OPERATORS = ("=", "<", ">", "<=", ">=", "LIKE")
WS_OPERATORS = ("=", "~=", "<", "<=", ">", ">=", "<>", "LIKE", "~LIKE")
Value = Union[str, int, float, Decimal, bool, date, datetime]
_REST_SPECIAL = "\\'\"*"
_WS_SPECIAL = "\\*?"


class QueryTooLong(ValueError):
    """The expression exceeds OOD's 4,096-character limit."""


# ---------------------------------------------------------------- REST


def rest_literal(value: Value, clock: UserClock | None = None, *, wildcard: bool = False) -> str:
    """A REST `q` literal. Strings are single-quoted with `\\`, quotes and `*` escaped, unless `wildcard` keeps the
    `*` of a LIKE pattern; datetimes need the user's `clock` (the REST API reads them as wall-clock times)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if clock is None:
            raise ValueError("a datetime in a REST query needs the OOD user's UserClock (REST datetimes are the "
                             "user's wall-clock time)")
        return f"'{clock.format_rest(value)}'"
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    if isinstance(value, (int, float, Decimal)):
        return repr(value) if not isinstance(value, Decimal) else str(value)
    if value is None:
        raise ValueError("OOD cannot query null values")
    text = str(value)
    special = _REST_SPECIAL.replace("*", "") if wildcard else _REST_SPECIAL
    return "'" + "".join("\\" + ch if ch in special else ch for ch in text) + "'"


def rest_term(field: str, op: str, value: Value, clock: UserClock | None = None) -> str:
    """One field expression, e.g. `ModifiedDate >= '2024-05-01T10:00:00Z'`."""
    op = _rest_operator(op)
    return f"{_field_name(field)} {op} {rest_literal(value, clock, wildcard=op == 'LIKE')}"


def rest_any_of(field: str, values: Sequence[Value], clock: UserClock | None = None) -> str:
    """`Field = 'a' OR = 'b' ...` (one field expression matching any of the values)."""
    if not values:
        raise ValueError(f"rest_any_of({field!r}) needs at least one value")
    return f"{_field_name(field)} = " + " OR = ".join(rest_literal(v, clock) for v in values)


def rest_all(*expressions: str) -> str:
    """Field expressions joined with ';' (AND); raises QueryTooLong past 4,096 characters."""
    q = ";".join(e for e in expressions if e)
    if len(q) > MAX_Q_LENGTH:
        raise QueryTooLong(f"the query expression has {len(q)} characters; OOD accepts at most {MAX_Q_LENGTH}. "
                           "Split the values with rest_any_of_chunks().")
    return q


def rest_any_of_chunks(field: str, values: Iterable[Value], clock: UserClock | None = None, *,
                       prefix: str = "", max_length: int = MAX_Q_LENGTH) -> Iterator[str]:
    """`q` expressions, each within `max_length` (with `prefix;` in front when given), that together match every
    value: for looking up many keys (ExternalSystemId) in as few requests as possible."""
    head = f"{prefix};" if prefix else ""
    start = f"{head}{_field_name(field)} = "
    current: list[str] = []
    for value in values:
        literal = rest_literal(value, clock)
        candidate = start + " OR = ".join([*current, literal])
        if len(candidate) > max_length:
            if not current:
                raise QueryTooLong(f"one value of {field} alone makes the expression longer than {max_length}")
            yield start + " OR = ".join(current)
            current = []
        current.append(literal)
    if current:
        yield start + " OR = ".join(current)


def order_by(*keys: tuple[str, str] | str) -> str:
    """`orderBy` parameter: order_by(("ModifiedDate", "asc"), "Id") -> 'ModifiedDate:asc,Id:asc'."""
    parts = []
    for key in keys:
        name, direction = (key, "asc") if isinstance(key, str) else key
        if direction.lower() not in ("asc", "desc"):
            raise ValueError(f"sort direction must be asc or desc, not {direction!r}")
        parts.append(f"{_field_name(name)}:{direction.lower()}")
    return ",".join(parts)


# ---------------------------------------------------------------- Web Services


def ws_literal(value: Value) -> str:
    """A Web Services literal: single quotes (a quote inside doubled), `\\` before `\\`, `*` and `?`; datetimes
    as XSD UTC (`2024-05-01T17:00:00Z`), which QueryPage reads as an absolute instant."""
    if isinstance(value, bool):
        return "'true'" if value else "'false'"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("pass aware datetimes to Web Services queries (they are sent as UTC)")
        return "'" + value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    if value is None:
        raise ValueError("use ws_is_null() to query empty values")
    text = str(value)
    return "'" + "".join("\\" + ch if ch in _WS_SPECIAL else ("''" if ch == "'" else ch) for ch in text) + "'"


def ws_term(op: str, value: Value) -> str:
    """The text of a QueryPage field element, e.g. ws_term('>=', since) -> ">= '2024-05-01T17:00:00Z'"."""
    op = op.upper()
    if op not in WS_OPERATORS:
        raise ValueError(f"unknown Web Services operator {op!r}; use one of {WS_OPERATORS}")
    if op.endswith("LIKE") and isinstance(value, str):
        return f"{op} '" + value.replace("'", "''") + "'"  # the caller's * and ? stay wildcards
    return f"{op} {ws_literal(value)}"


def ws_any_of(values: Sequence[Value]) -> str:
    if not values:
        raise ValueError("ws_any_of() needs at least one value")
    return " OR ".join(f"= {ws_literal(v)}" for v in values)


def ws_is_null(negate: bool = False) -> str:
    return "IS NOT NULL" if negate else "IS NULL"


# ---------------------------------------------------------------- helpers


def _rest_operator(op: str) -> str:
    normalized = op.upper()
    if normalized not in REST_OPERATORS:
        raise ValueError(f"the REST API knows the operators {REST_OPERATORS}, not {op!r}")
    return normalized


def _field_name(name: str) -> str:
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"{name!r} is not an OOD field integration tag")
    return name
