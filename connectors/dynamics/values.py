"""Column values between the Dataverse Web API and crmsync, by each column's declared type (schema.py).

Reading (`record_of`): a Web API row becomes the record a change carries, keyed by logical column names —
lookups under their own name with the referenced GUID (`parentcustomerid`, not `_parentcustomerid_value`),
multi-select choices as a list of option values as strings (`["1", "3"]`, what a `text[]` mirror column and the
enumeration CHECK hold), everything else as the Web API wrote it (choices as integers, DateOnly as 'YYYY-MM-DD',
date-times as 'YYYY-MM-DDTHH:MM:SSZ'). Annotations and `@odata.etag` stay out; `version_of` reads the row version.

Writing (`write_value`): a canonical value (crmsync/values.py) becomes what the Web API takes for the column —
choices from their integer, its string or their label; multi-select from a list or 'a;b' / '1,3' text; DateOnly
as a date (a date-time given for it keeps its UTC day, nothing is shifted by a time zone); date-times in UTC to
the second (Dataverse keeps seconds); money and decimals as Decimals rounded to the column's precision (sent digit
for digit, see client.encode_json); lookups are the sink's business (they become `<navigation>@odata.bind`).
A value that cannot be written raises `ValueProblem` naming the column and what it takes.
"""
from __future__ import annotations

import re
import uuid
from datetime import timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Mapping

from crmsync.values import canonical, parse_timestamp

from .schema import Column, Table

_ETAG = re.compile(r'W/"(\d+)"')


class ValueProblem(ValueError):
    """A value a column cannot take; the message names the column and what it accepts."""


# ---------------------------------------------------------------- reading

def record_of(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's mirrored columns under their logical names, in the forms described above."""
    record = {}
    for name, web_name, multiselect in table.readers:
        if web_name in row:
            value = row[web_name]
            record[name] = multiselect_values(value) if multiselect and value is not None else value
    return record


def read_value(column: Column, value: Any) -> Any:
    if value is None:
        return None
    if column.multiselect:
        return multiselect_values(value)
    return value


def version_of(row: Mapping[str, Any]) -> int:
    """The row version: `versionnumber`, or the number in the `W/"<version>"` ETag every row carries."""
    if row.get("versionnumber") is not None:
        return int(row["versionnumber"])
    match = _ETAG.fullmatch(str(row.get("@odata.etag", "")))
    if match is None:
        raise ValueError("the row carries neither versionnumber nor an @odata.etag with a row version")
    return int(match.group(1))


def multiselect_values(value: Any) -> list[str]:
    """'3,1' / '3;1' / [3, '1'] -> ['1', '3'] (option values as strings, numeric order, no repeats)."""
    parts = value if isinstance(value, (list, tuple)) else re.split(r"[,;]", str(value))
    cleaned = {str(p).strip() for p in parts if str(p).strip()}
    return sorted(cleaned, key=lambda p: (not p.lstrip("-").isdigit(), int(p) if p.lstrip("-").isdigit() else 0, p))


# ---------------------------------------------------------------- comparing (compare-and-set)

def comparable(column: Column, value: Any) -> Any:
    """A value (as read, or as a command holds it) in the form two values of the column compare equal in."""
    if value is None or value == "" or value == []:
        return None
    try:
        if column.multiselect:
            parts = multiselect_values(value)
            return sorted(str(column.choice.value_of(p)) if column.choice else p for p in parts) or None
        if column.choice is not None:
            return column.choice.value_of(value)
        if column.lookup or column.type == "Uniqueidentifier":
            return str(value).strip().lower()
        if column.type in ("Money", "Decimal"):
            return write_value(column, value)
        return canonical(value, column.kind)
    except ValueError:
        return value


# ---------------------------------------------------------------- writing

def write_value(column: Column, value: Any) -> Any:
    """`value` as the Web API takes it for `column` (not for lookups: see the module docstring)."""
    if value is None or (value == "" and column.type not in ("String", "Memo")):
        return None
    try:
        return _WRITERS.get(column.type, _unsupported)(column, value)
    except ValueProblem:
        raise
    except (ValueError, InvalidOperation) as exc:
        raise ValueProblem(f"{column.name} ({column.crm_type}): {exc}") from None


def _text(column: Column, value: Any) -> str:
    return canonical(value, "text")


def _guid(column: Column, value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueProblem(f"{column.name} takes a GUID, got {value!r}") from None


def _integer(column: Column, value: Any) -> int:
    return canonical(value, "integer")


def _choice(column: Column, value: Any) -> int:
    if column.choice is None:
        return canonical(value, "integer")
    return column.choice.value_of(value)


def _boolean(column: Column, value: Any) -> bool:
    return canonical(value, "boolean")


def _datetime(column: Column, value: Any) -> str:
    if column.date_only:
        return canonical(value, "date")
    moment = parse_timestamp(value)
    assert moment is not None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal(column: Column, value: Any) -> Decimal:
    number = value if isinstance(value, Decimal) else Decimal(str(canonical(value, "number")))
    places = column.precision if column.precision is not None else 2
    return number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def _double(column: Column, value: Any) -> float:
    return float(canonical(value, "number"))


def _virtual(column: Column, value: Any) -> str | None:
    if not column.multiselect:
        return _unsupported(column, value)
    parts = multiselect_values(value)
    if column.choice is not None:
        parts = [str(column.choice.value_of(p)) for p in parts]
    return ",".join(multiselect_values(parts)) or None


def _unsupported(column: Column, value: Any) -> Any:
    raise ValueProblem(f"{column.name} is a {column.crm_type} column, which crmsync does not write")


_WRITERS = {"String": _text, "Memo": _text, "EntityName": _text, "Uniqueidentifier": _guid, "Integer": _integer,
            "BigInt": _integer, "Picklist": _choice, "State": _choice, "Status": _choice, "Boolean": _boolean,
            "DateTime": _datetime, "Money": _decimal, "Decimal": _decimal, "Double": _double, "Virtual": _virtual}
