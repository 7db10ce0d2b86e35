"""Value conversion between the CRM, the Campaign database and the canonical form the streams compare.

Canonical values are JSON-friendly and side-neutral: dates 'YYYY-MM-DD', datetimes ISO 8601 in UTC with 'Z',
numbers as int/float, booleans, strings, and references as the parent's CRM id. Per-field conversions are the
ones Campaign users know from the CRM connector activity: default (with time-zone handling), date only,
without time offset, copy (as a string).
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Protocol


class EnumerationMap(Protocol):
    """Hook translating picklist values ⇄ Campaign enumeration values (the wizard's enum sync fills it)."""

    def to_campaign(self, enumeration: str, value: Any) -> Any: ...

    def to_crm(self, enumeration: str, value: Any) -> Any: ...


class IdentityEnumerations:
    """Until enumerations are synchronised, picklist values pass through unchanged."""

    def to_campaign(self, enumeration: str, value: Any) -> Any:
        return value

    def to_crm(self, enumeration: str, value: Any) -> Any:
        return value


def parse_timestamp(value: Any) -> datetime | None:
    """Accept Salesforce ('…000+0000'), PostgreSQL ('…+00:00') and ISO ('…Z') forms."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def epoch(value: Any) -> float:
    parsed = parse_timestamp(value)
    return parsed.timestamp() if parsed else 0.0


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical(value: Any, conversion: str = "default") -> Any:
    """Bring a value from either side to the canonical form, applying the field's conversion."""
    if value is None:
        return None
    if conversion == "copy":
        return str(value)
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        return value.isoformat()
    elif isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] in "T ":
        try:
            moment = parse_timestamp(value)
        except ValueError:
            return value
    else:
        return value
    if conversion == "date_only":
        return moment.date().isoformat()
    if conversion == "without_time_offset":  # keep the wall-clock time, drop the zone
        return moment.replace(tzinfo=None).isoformat(timespec="milliseconds")
    return _iso_utc(moment)


def to_crm(value: Any) -> Any:
    """Canonical → what the CRM's REST API accepts (Salesforce takes ISO dates and datetimes as sent)."""
    return value


def match_key(value: Any) -> str | None:
    """Matching keys compare case- and space-insensitively ('  Ann@Example.COM ' == 'ann@example.com')."""
    if value is None:
        return None
    text = "".join(str(value).split()).lower()
    return text or None
