"""How values look on the wire and on disk: Salesforce ids, datetimes, and field values from JSON or CSV.

Ids are 18 characters: a 3-character key prefix, a pod id, a base-62 number and a 3-character suffix that
encodes which of the first 15 characters are upper case, so the id survives case-insensitive systems.
Datetimes are stored and returned as `YYYY-MM-DDTHH:MM:SS.fff+0000` in UTC (model.py), which sorts correctly as
text. `coerce` turns a client value into that storage encoding or raises the error
Salesforce gives for a value of the wrong type (JSON_PARSER_ERROR in REST, INVALID_TYPE_ON_FIELD_IN_RECORD in
Bulk CSV).
"""
from __future__ import annotations

import random
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from .errors import SalesforceError
from .model import FieldDef

STRING_TYPES = frozenset({"string", "picklist", "multipicklist", "textarea", "phone", "url", "email", "combobox",
                          "encryptedstring", "id", "reference"})

# ---------------------------------------------------------------- ids

ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_POD = "5g0"  # 2-character pod id + the reserved character, as in e.g. 0035g00000AbCdE
_ID_RE = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")


def id_checksum(id15: str) -> str:
    """Salesforce's 3-character suffix: one bit per upper-case letter in each 5-character chunk."""
    out = ""
    for chunk in range(3):
        bits = sum(1 << i for i, ch in enumerate(id15[chunk * 5:chunk * 5 + 5]) if "A" <= ch <= "Z")
        out += _CHECKSUM_CHARS[bits]
    return out


def make_id(prefix: str, number: int) -> str:
    digits = ""
    while number:
        number, rem = divmod(number, 62)
        digits = ID_ALPHABET[rem] + digits
    id15 = f"{prefix}{_POD}{digits.rjust(9, '0')}"
    return id15 + id_checksum(id15)


def random_id(prefix: str) -> str:
    """An id for transient things (query locators, bulk jobs) that must not repeat across restarts."""
    id15 = prefix + "".join(random.choice(ID_ALPHABET) for _ in range(12))
    return id15 + id_checksum(id15)


def normalize_id(value: Any) -> str | None:
    """The 18-character form of a 15- or 18-character id, or None when `value` is not an id at all."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        return None
    return value[:15] + id_checksum(value[:15])


# ---------------------------------------------------------------- datetimes

_DT_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
                    r"(Z|[+-]\d{2}(?::?\d{2})?)?$")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def format_datetime(moment: datetime) -> str:
    """The stored and REST form: millisecond precision, always UTC, `+0000` (sortable as text)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")[:23] + "+0000"


def parse_datetime(text: str) -> datetime:
    """Parse the datetime forms clients send (`Z`, `+00:00`, `+0000`, 0-9 fractional digits); naive means UTC.
    ValueError for text that is no datetime, or one before year 1 once in UTC (0001-01-01T00:30:00+01:00)."""
    match = _DT_RE.match(text.strip())
    if not match:
        raise ValueError(f"invalid datetime {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro,
                      tzinfo=timezone.utc)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        try:
            moment -= sign * offset
        except OverflowError:
            raise ValueError(f"{text!r} lies before year 1 in UTC") from None
    return moment


def coerce(f: FieldDef, value: Any, csv: bool) -> Any:
    """Turn a JSON (or Bulk CSV text) value into the stored encoding, or raise the parser error."""
    if value is None:
        return None
    try:
        return _coerce_value(f, value, csv)
    except (TypeError, ValueError):
        if csv:
            raise SalesforceError("INVALID_TYPE_ON_FIELD_IN_RECORD",
                                  f"{f.label}: value not of required type: {value}", [f.name]) from None
        raise SalesforceError("JSON_PARSER_ERROR", f"Cannot deserialize instance of {f.type} from "
                              f"{json_token(value)} or request may be missing a required field",
                              [f.name]) from None


def json_token(value: Any) -> str:
    """How Salesforce's JSON parser (Jackson) names the token it could not deserialize: `VALUE_STRING value
    abc`, `VALUE_NUMBER_INT value 7`, `START_OBJECT value {`."""
    if isinstance(value, dict):
        return "START_OBJECT value {"
    if isinstance(value, list):
        return "START_ARRAY value ["
    if isinstance(value, bool):
        return f"VALUE_{str(value).upper()} value {str(value).lower()}"
    if isinstance(value, int):
        return f"VALUE_NUMBER_INT value {value}"
    if isinstance(value, float):
        return f"VALUE_NUMBER_FLOAT value {value}"
    return f"VALUE_STRING value {value}"


def _coerce_value(f: FieldDef, value: Any, csv: bool) -> Any:
    if isinstance(value, (dict, list)):
        raise TypeError
    if f.type in STRING_TYPES:
        if isinstance(value, bool):
            raise TypeError
        text = str(value)
        if f.type == "multipicklist":
            text = ";".join(dict.fromkeys(v.strip() for v in text.split(";") if v.strip()))
        return text or None  # Salesforce stores no empty strings
    if f.type == "boolean":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return int(value.lower() in ("true", "1", "yes"))
        raise ValueError
    if isinstance(value, bool):
        raise TypeError
    if f.type == "int":
        number = float(value) if isinstance(value, str) else value
        if not isinstance(number, (int, float)) or number != int(number):
            raise ValueError
        return int(number)
    if f.type in ("double", "currency", "percent"):
        return float(value)
    if f.type == "date":
        text = str(value)
        return (parse_datetime(text).date() if "T" in text else date.fromisoformat(text)).isoformat()
    if f.type == "datetime":
        return format_datetime(parse_datetime(str(value)))
    raise TypeError
