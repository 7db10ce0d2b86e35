"""Field values in the one canonical form every part of crmsync compares: decided by the field's declared type,
never by what a value looks like.

Why: the streams merge CRM and Campaign values three-way, drift repair compares both sides, the workflow
activity converts between them. If each guessed a value's type from its shape, a text field holding
'2021-06-01T00:30:00+01:00' would arrive on the other side as '2021-05-31T23:30:00.000Z'. So every value is
brought to canonical form by its field's *kind* — from the CRM's describe and the Campaign catalog
(crmsync/field_types.py) — and a text field's value arrives byte for byte.

Canonical forms (JSON-friendly, side-neutral):

    text      str, unchanged — except NUL, which PostgreSQL text cannot hold: it becomes U+FFFD on both sides
    integer   int
    number    int when integral, else float
    boolean   bool
    date      'YYYY-MM-DD'
    datetime  ISO 8601 in UTC with milliseconds and 'Z' (conversions below change this)
    time      str, unchanged
    json      unchanged (arrays, objects, values of unknown kind)

A kind of None (not known yet) converts only what the value's Python type says (date/datetime objects, Decimals)
and never parses a string. A value that cannot have its field's kind (an invalid or out-of-range date, 'abc' in
a number field) raises `ValueError`: the caller rejects that one change with the message, and the rest flows.

Per-field conversions are the ones Campaign users know from the CRM connector activity: default, date_only,
without_time_offset, copy (as a string).
"""
from __future__ import annotations

from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

Kind = Literal["text", "integer", "number", "boolean", "date", "datetime", "time", "json"]
KINDS: tuple[str, ...] = ("text", "integer", "number", "boolean", "date", "datetime", "time", "json")
Conversion = Literal["default", "date_only", "without_time_offset", "copy"]
NUL_REPLACEMENT = "\ufffd"

_TRUE = frozenset({"true", "t", "1", "yes", "y"})
_FALSE = frozenset({"false", "f", "0", "no", "n"})


class EnumerationMap(Protocol):
    """Translates picklist values ⇄ Campaign enumeration values (filled by `crmsync enums sync`)."""

    def to_campaign(self, enumeration: str, value: Any) -> Any: ...

    def to_crm(self, enumeration: str, value: Any) -> Any: ...


class IdentityEnumerations:
    """Until enumerations are synchronised, picklist values pass through unchanged."""

    def to_campaign(self, enumeration: str, value: Any) -> Any:
        return value

    def to_crm(self, enumeration: str, value: Any) -> Any:
        return value


# -- timestamps ----------------------------------------------------------------------------------------------
def parse_timestamp(value: Any) -> datetime | None:
    """An aware datetime from Salesforce ('…000+0000'), PostgreSQL ('…+00:00') and ISO ('…Z') forms; naive
    values are UTC. Raises ValueError for text that is not a timestamp (or out of range)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    text = str(value).strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    try:
        parsed = datetime.fromisoformat(text)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        parsed.astimezone(timezone.utc)  # '0001-01-01T00:30:00+01:00' exists locally but not in UTC
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid timestamp: {_shown(value)} ({exc})") from None
    return parsed


def epoch(value: Any) -> float:
    """Seconds since the epoch of a timestamp; 0.0 for none or for one that cannot be read (ordering only)."""
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        return 0.0
    return parsed.timestamp() if parsed else 0.0


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- canonical form ------------------------------------------------------------------------------------------
def canonical(value: Any, kind: Kind | None = None, conversion: Conversion = "default") -> Any:
    """`value` from either side in canonical form for a field of `kind` (see the module docstring)."""
    if value is None:
        return None
    if conversion == "copy":
        return _text(value)
    if kind is None:
        return _by_python_type(value, conversion)
    try:
        return _CANONICAL[kind](value, conversion)
    except KeyError:
        raise ValueError(f"unknown field kind {kind!r}; expected one of {KINDS}") from None


def _by_python_type(value: Any, conversion: Conversion) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, Decimal)):
        return _number(value, conversion)
    if isinstance(value, datetime):
        return _datetime(value, conversion)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat()
    return value


def _text(value: Any, conversion: Conversion = "default") -> str:
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _integer(value: Any, conversion: Conversion) -> int:
    number = _number(value, conversion)
    if isinstance(number, float):
        raise ValueError(f"not a whole number: {_shown(value)}")
    return number


def _number(value: Any, conversion: Conversion) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {_shown(value)}")
    try:
        exact = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {_shown(value)}") from None
    if not exact.is_finite():
        raise ValueError(f"not a finite number: {_shown(value)}")
    if exact == exact.to_integral_value():
        return int(exact)
    return float(exact)


def _boolean(value: Any, conversion: Conversion) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {_shown(value)}")


def _date(value: Any, conversion: Conversion) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat() if value.tzinfo is None else value.astimezone(timezone.utc).date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()
    if len(text) == 10:
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError as exc:
            raise ValueError(f"not a valid date: {_shown(value)} ({exc})") from None
    moment = parse_timestamp(text)  # a datetime given for a date field: its day in UTC (date_only semantics)
    assert moment is not None
    return moment.astimezone(timezone.utc).date().isoformat()


def _datetime(value: Any, conversion: Conversion) -> str:
    moment = parse_timestamp(value)
    assert moment is not None
    if conversion == "date_only":
        return moment.astimezone(timezone.utc).date().isoformat()
    if conversion == "without_time_offset":  # keep the wall-clock time, drop the zone
        return moment.replace(tzinfo=None).isoformat(timespec="milliseconds")
    return iso_utc(moment)


def _time(value: Any, conversion: Conversion) -> str:
    return _text(value)


def _json(value: Any, conversion: Conversion) -> Any:
    return _by_python_type(value, conversion) if not isinstance(value, (list, dict)) else value


_CANONICAL = {"text": _text, "integer": _integer, "number": _number, "boolean": _boolean, "date": _date,
              "datetime": _datetime, "time": _time, "json": _json}


def shown(value: Any, limit: int = 80) -> str:
    """`value` as an error message may show it: repr, cut after `limit` characters (a 2 MB value is not repeated)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(str(value))} characters)"


_shown = shown


# -- multi-select values ---------------------------------------------------------------------------------------
def split_multi(value: Any, separator: str = ";") -> list[str]:
    """A multi-select value as the CRM writes it ('a;b') as a list; a list stays a list."""
    if isinstance(value, list):
        return [str(v) for v in value]
    return [part for part in str(value).split(separator) if part] if value not in (None, "") else []


def join_multi(values: list[Any], separator: str = ";") -> str:
    """A list of picklist values as the CRM writes a multi-select ('a;b')."""
    return separator.join(str(v) for v in values)


# -- matching ------------------------------------------------------------------------------------------------
def match_key(value: Any) -> str | None:
    """Matching keys compare case- and space-insensitively ('  Ann@Example.COM ' == 'ann@example.com')."""
    if value is None:
        return None
    text = "".join(str(value).split()).lower()
    return text or None


def match_expression(column: str, alias: str = "t") -> "Any":
    """SQL (psycopg.sql) for the matching key of a Campaign column: lower-case, all whitespace removed, exactly
    as `match_key` does it, so a match is an index lookup (see `match_index`)."""
    from psycopg import sql

    return sql.SQL("lower(regexp_replace({}::text, '\\s', '', 'g'))").format(
        sql.Identifier(alias, column) if alias else sql.Identifier(column))


def match_index(table: str, column: str) -> "Any":
    """The expression index that makes matching by `column` an index lookup (created by the streams)."""
    from psycopg import sql

    schema, _, name = table.rpartition(".")
    target = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    index = sql.Identifier(f"crmsync_match_{name}_{column}"[:63])
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (({}))").format(index, target,
                                                                       match_expression(column, alias=""))


# -- kinds of declared types ---------------------------------------------------------------------------------
_PG_KINDS = {
    "text": "text", "character varying": "text", "varchar": "text", "character": "text", "bpchar": "text",
    "citext": "text", "name": "text", "uuid": "text",
    "smallint": "integer", "integer": "integer", "bigint": "integer", "int2": "integer", "int4": "integer",
    "int8": "integer",
    "numeric": "number", "real": "number", "double precision": "number", "float4": "number", "float8": "number",
    "boolean": "boolean", "bool": "boolean",
    "date": "date",
    "timestamp with time zone": "datetime", "timestamp without time zone": "datetime", "timestamptz": "datetime",
    "timestamp": "datetime",
    "time without time zone": "time", "time with time zone": "time", "time": "time",
    "json": "json", "jsonb": "json",
}


def kind_of_pg_type(declared: str) -> Kind:
    """The kind of a PostgreSQL column from its declared type ('character varying(80)', 'numeric(12,2)',
    'text[]'); arrays and types not listed are json (passed through unchanged)."""
    base = declared.split("(")[0].strip().lower()
    if base.endswith("[]") or declared.strip().endswith("[]"):
        return "json"
    return _PG_KINDS.get(base, "json")  # type: ignore[return-value]
