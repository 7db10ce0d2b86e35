"""Field values on the wire and in storage: one `Dialect` per API flavour, converting both ways.

Storage encodings (SQLite): strings, picklist codes (LIC) and ids as TEXT; booleans as INTEGER 0/1; number and
currency as REAL; integer as INTEGER; dates as 'YYYY-MM-DD'; datetimes as 'YYYY-MM-DDTHH:MM:SS' in UTC, which
sorts correctly as text. OOD keeps datetimes to the second.

Datetimes on the wire differ per API, which is the point of this module:
- `rest`: "Datetime fields ... YYYY-MM-DDTHH:mm:ssZ ... This example represents 6:00 PM ... in the user's time
  zone" (REST API Developer's Guide, "Date and Time Formats", OnDemRestAPI_Overview15.html). The `Z` is a literal:
  the sandbox writes the user's wall-clock time followed by `Z`, and reads any value (with or without `Z`) as the
  user's wall-clock time. A wall-clock time that occurs twice (the hour repeated when DST ends) is read as its
  first occurrence; one that never occurs (skipped when DST starts) is moved forward by the length of the gap --
  zoneinfo's `fold=0` rule, the same as Java's `ZonedDateTime.ofLocal`.
- `xsd`: Web Services v2.0 uses XSD dateTime ("Locale-Dependent Access to Oracle CRM On Demand",
  OnDemWebSvcs_OverviewSuppt17.html). Output is UTC with `Z`; input with `Z` or an offset is absolute, input
  without a zone and the locale form `MM/DD/YYYY hh:mm:ss` (accepted by QueryPage) are the user's local time.
- `v1`: the Web Services v1.0 form `MM/DD/YYYY hh:mm:ss` in the user's time zone, used by DeletedItemQueryPage.

Picklists are stored as language-independent codes; with `LOVLanguageMode: LDC` values are read and written as
display values ("LOVLanguageMode Querying", OnDemRestAPI_Ref25.html).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from .errors import BAD_VALUE, PICKLIST, TOO_LONG, OracleError
from .model import Field, RecordType

STORAGE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_REST_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})Z?$")
_XSD_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})?$")
_V1_DATETIME = re.compile(r"^(\d{2})/(\d{2})/(\d{4})(?: (\d{2}):(\d{2}):(\d{2}))?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TRUE, _FALSE = {"true", "y", "1"}, {"false", "n", "0"}


def utc_text(moment: datetime) -> str:
    """Storage form of an aware datetime."""
    return moment.astimezone(timezone.utc).strftime(STORAGE_FORMAT)


def from_utc_text(text: str) -> datetime:
    return datetime.strptime(text, STORAGE_FORMAT).replace(tzinfo=timezone.utc)


def wall_to_utc(wall: datetime, zone: ZoneInfo) -> str:
    """The server's reading of a naive wall-clock time in `zone` (fold=0: first occurrence, gaps move forward)."""
    return utc_text(wall.replace(tzinfo=zone, fold=0))


def utc_to_wall(text: str, zone: ZoneInfo) -> datetime:
    return from_utc_text(text).astimezone(zone).replace(tzinfo=None)


@dataclass(frozen=True)
class Dialect:
    """How one API writes values: the user's time zone, the datetime style and the picklist language mode."""
    zone: ZoneInfo
    datetimes: str = "rest"  # rest | xsd | v1
    lov: str = "LIC"  # LIC | LDC

    # ---------------------------------------------------------------- wire -> storage

    def to_storage(self, rt: RecordType, field: Field, raw: Any, *, query: bool = False) -> Any:
        """Convert a client value for `field` to its storage encoding; None/'' clear the field. A `query` value is
        only converted, not validated: too long or unknown picklist values simply match nothing."""
        if raw is None or raw == "":
            return None
        kind = field.type
        if kind in ("string", "id"):
            text = raw if isinstance(raw, str) else _bad(raw, "text", field)
            if field.max_length and len(text) > field.max_length and not query:
                raise OracleError(TOO_LONG, field.name, field.max_length)
            return text
        if kind == "picklist":
            if query:
                return (field.code_for(str(raw)) or str(raw)) if self.lov == "LDC" else str(raw)
            return self._picklist_code(rt, field, raw)
        if kind == "boolean":
            return self._boolean(raw, field)
        if kind in ("number", "currency", "integer"):
            return _number(raw, field)
        if kind == "date":
            return _date(raw, field, locale_form=self.datetimes != "rest")
        return self.datetime_to_storage(raw, field)

    def datetime_to_storage(self, raw: Any, field: Field) -> str:
        try:
            return self._datetime_to_storage(raw, field)
        except OverflowError:  # a moment before year 1 once in UTC: refused like any value that is no datetime
            return _bad(raw, "datetime", field)

    def _datetime_to_storage(self, raw: Any, field: Field) -> str:
        text = raw.strip() if isinstance(raw, str) else _bad(raw, "datetime", field)
        if self.datetimes == "rest":
            match = _REST_DATETIME.match(text)
            if not match:
                _bad(raw, "datetime (YYYY-MM-DDTHH:MM:SSZ)", field)
            return wall_to_utc(_wall(*match.groups()), self.zone)
        match = _XSD_DATETIME.match(text)
        if match:
            *parts, zone_text = match.groups()
            wall = _wall(*parts)
            if zone_text is None:
                return wall_to_utc(wall, self.zone)
            return utc_text(datetime.fromisoformat(text.replace("Z", "+00:00")))
        match = _V1_DATETIME.match(text)
        if match and match.group(4) is not None:
            month, day, year, hour, minute, second = match.groups()
            return wall_to_utc(_wall(year, month, day, hour, minute, second), self.zone)
        return _bad(raw, "datetime", field)

    def _picklist_code(self, rt: RecordType, field: Field, raw: Any) -> str:
        text = raw if isinstance(raw, str) else str(raw)
        code = field.code_for(text) if self.lov == "LDC" else (text if field.label_for(text) is not None else None)
        if code is None:
            raise OracleError(PICKLIST, f"PickList {field.title}", field.name, rt.name)
        return code

    def _boolean(self, raw: Any, field: Field) -> int:
        if isinstance(raw, bool):
            return int(raw)
        text = str(raw).strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
        return _bad(raw, "boolean", field)

    # ---------------------------------------------------------------- storage -> wire

    def from_storage(self, field: Field, value: Any) -> Any:
        """The JSON value for a stored value (REST); Web Services stringify it with `as_text`."""
        if value is None:
            return "" if field.type in ("string", "id", "picklist") else None
        kind = field.type
        if kind == "picklist":
            return (field.label_for(value) or value) if self.lov == "LDC" else value
        if kind == "boolean":
            return bool(value)
        if kind == "integer":
            return int(value)
        if kind in ("number", "currency"):
            number = float(value)
            return int(number) if number.is_integer() else number
        if kind == "datetime":
            return self.format_datetime(value)
        return value

    def format_datetime(self, stored: str) -> str:
        if self.datetimes == "rest":
            return utc_to_wall(stored, self.zone).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.datetimes == "v1":
            return utc_to_wall(stored, self.zone).strftime("%m/%d/%Y %H:%M:%S")
        return stored + "Z"

    def as_text(self, field: Field, value: Any) -> str | None:
        """A stored value as Web Services element text; None when the element is left out."""
        wire = self.from_storage(field, value)
        if wire is None:
            return None
        if isinstance(wire, bool):
            return "true" if wire else "false"
        return str(wire)


def _wall(year: str, month: str, day: str, hour: str, minute: str, second: str) -> datetime:
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError as exc:
        raise OracleError(BAD_VALUE, f"{year}-{month}-{day}T{hour}:{minute}:{second}", "datetime", str(exc)) from None


def _number(raw: Any, field: Field) -> float | int:
    if isinstance(raw, bool):
        _bad(raw, "number", field)
    try:
        number = float(raw) if not isinstance(raw, (int, float)) else raw
    except (TypeError, ValueError):
        return _bad(raw, "number", field)
    if isinstance(number, float) and not math.isfinite(number):
        _bad(raw, "number", field)
    if field.type == "integer":
        if float(number) != int(float(number)):
            _bad(raw, "integer", field)
        return int(float(number))
    return float(number)


def _date(raw: Any, field: Field, *, locale_form: bool) -> str:
    """YYYY-MM-DD; Web Services also accept the locale form MM/DD/YYYY."""
    text = raw.strip() if isinstance(raw, str) else _bad(raw, "date", field)
    match = _V1_DATETIME.match(text) if locale_form else None
    if match and match.group(4) is None:
        month, day, year = match.group(1), match.group(2), match.group(3)
        text = f"{year}-{month}-{day}"
    if not _ISO_DATE.match(text):
        _bad(raw, "date (YYYY-MM-DD)", field)
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return _bad(raw, "date (YYYY-MM-DD)", field)


def _bad(raw: Any, expected: str, field: Field) -> NoReturn:
    raise OracleError(BAD_VALUE, raw, expected, field.name)

