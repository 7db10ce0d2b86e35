"""SOQL literals, written once: string quoting with Salesforce's escapes, datetimes, Id lists.

Every SOQL statement crmsync builds takes its literals from here, so a value can never break out of its
literal (the workflow filter translator, the writer's read of current values, the poller's cursor).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
IDS_PER_QUERY = 300  # a GET's URI is capped at 16,384 bytes (414 URI_TOO_LONG): 300 quoted ids URL-encode to ~8,400


def escape_string(text: str) -> str:
    """SOQL string-literal escaping: backslash first, then quotes and control characters."""
    return "".join(_ESCAPES.get(c, c) for c in text)


def quote(text: str) -> str:
    return f"'{escape_string(text)}'"


def soql_datetime(moment: datetime) -> str:
    """An unquoted SOQL datetime literal with milliseconds, in UTC."""
    moment = moment.astimezone(timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def id_lists(ids: Iterable[str], per_query: int = IDS_PER_QUERY) -> list[str]:
    """`Id IN (…)` clauses of at most `per_query` ids each."""
    ids = list(ids)
    return [f"Id IN ({', '.join(quote(i) for i in ids[start:start + per_query])})"
            for start in range(0, len(ids), per_query)]
