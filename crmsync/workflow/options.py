"""Named options in crmsync.options, such as the automatic-index watermarks `LASTIMPORT_<account>_<activity>`.

Values keep the seed's text format, `yyyy/MM/dd hh:mm:ss` (UTC here), so a person can read and edit them.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

import psycopg

FORMAT = "%Y/%m/%d %H:%M:%S"


def lastimport_name(account: str, activity: str) -> str:
    """The seed's default option name, LASTIMPORT_<account>_<activity> (anything odd becomes _)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"LASTIMPORT_{account}_{activity}")


def format_moment(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(FORMAT)


def read(conn: psycopg.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM crmsync.options WHERE name = %s", (name,)).fetchone()
    return row[0] if row else None


def write(conn: psycopg.Connection, name: str, value: str) -> None:
    conn.execute("INSERT INTO crmsync.options (name, value) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                 "SET value = excluded.value, updated_at = now()", (name, value))


def read_moment(conn: psycopg.Connection, name: str) -> datetime | None:
    value = read(conn, name)
    if not value:
        return None
    try:
        return datetime.strptime(value, FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"option {name} holds {value!r}; expected a date as yyyy/MM/dd hh:mm:ss (UTC)") from None


def write_moment(conn: psycopg.Connection, name: str, moment: datetime) -> None:
    write(conn, name, format_moment(moment))


def watermarks(conn: psycopg.Connection) -> list[tuple[str, str, datetime]]:
    return conn.execute("SELECT name, value, updated_at FROM crmsync.options WHERE name LIKE 'LASTIMPORT\\_%' "
                        "ORDER BY name").fetchall()
