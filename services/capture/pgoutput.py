"""Decoder for PostgreSQL's logical replication protocol (pgoutput, protocol version 1, with messages).

Input: the rows of pg_logical_slot_peek_binary_changes(); each row's `data` is one protocol message.
Output: whole transactions (BEGIN … COMMIT) with their row changes as Python values, because change capture
publishes a transaction only once all of it is known (an origin message may arrive after its rows).
Reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
UNCHANGED_TOAST = object()  # marker: value not sent because it did not change (filled from the old row)


def lsn_to_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _parse_array(text: str) -> list[str | None]:
    """A one-dimensional PostgreSQL array literal such as {a,"b c",NULL} (multi-select picklists use text[])."""
    items: list[str | None] = []
    body, i, n = text[1:-1], 0, len(text) - 2
    while i < n:
        if body[i] == '"':
            i += 1
            chunk = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chunk.append(body[i])
                i += 1
            items.append("".join(chunk))
            i += 2
        else:
            end = body.find(",", i)
            end = n if end == -1 else end
            raw = body[i:end]
            items.append(None if raw == "NULL" else raw)
            i = end + 1
    return items


def _timestamp(text: str) -> str:
    """'2026-11-29 03:41:03.07+00' → '2026-11-29T03:41:03.07+00:00' (ISO 8601, what every consumer parses)."""
    text = text.replace(" ", "T", 1)
    if len(text) > 3 and text[-3] in "+-" and text[-2:].isdigit():
        text += ":00"
    return text


_CONVERTERS: dict[int, Callable[[str], Any]] = {
    16: lambda t: t == "t",                      # bool
    20: int, 21: int, 23: int, 26: int,          # int8, int2, int4, oid
    700: float, 701: float, 1700: float,         # float4, float8, numeric
    114: json.loads, 3802: json.loads,           # json, jsonb
    1114: _timestamp, 1184: _timestamp,          # timestamp, timestamptz (session TimeZone is UTC)
    1009: _parse_array, 1015: _parse_array,      # text[], varchar[]
}


@dataclass
class Relation:
    oid: int
    schema: str
    name: str
    columns: list[str]
    type_oids: list[int]
    identity_columns: list[str]  # replica-identity columns (all of them under REPLICA IDENTITY FULL)


@dataclass
class RowChange:
    relation: Relation
    op: str  # 'c' | 'u' | 'd'
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    lsn: str


@dataclass
class Transaction:
    xid: int
    commit_lsn: str = ""
    commit_ts: datetime | None = None
    changes: list[RowChange] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)  # prefix -> content of transactional messages


_STRUCTS: dict[str, struct.Struct] = {}


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> str:
        value = chr(self.data[self.pos])
        self.pos += 1
        return value

    def unpack(self, fmt: str) -> Any:
        layout = _STRUCTS.get(fmt) or _STRUCTS.setdefault(fmt, struct.Struct("!" + fmt))
        values = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        end = self.data.index(0, self.pos)
        value = self.data[self.pos:end].decode()
        self.pos = end + 1
        return value

    def raw(self, length: int) -> bytes:
        value = self.data[self.pos:self.pos + length]
        self.pos += length
        return value


class Decoder:
    """Stateful across messages (relations are announced once per decoding session, before first use)."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def transactions(self, rows: Iterable[tuple[str, int, bytes]]) -> list[Transaction]:
        done: list[Transaction] = []
        current: Transaction | None = None
        for lsn, xid, data in rows:
            reader = Reader(bytes(data))
            kind = reader.byte()
            if kind == "B":
                _final_lsn, _ts, txid = reader.unpack("QqI")
                current = Transaction(xid=txid)
            elif kind == "C":
                _flags, commit_lsn, _end_lsn, ts = reader.unpack("BQQq")
                assert current is not None, "COMMIT without BEGIN"
                current.commit_lsn = lsn
                current.commit_ts = PG_EPOCH + timedelta(microseconds=ts)
                done.append(current)
                current = None
            elif kind == "R":
                self._relation(reader)
            elif kind in "IUD":
                assert current is not None, f"{kind} outside a transaction"
                current.changes.append(self._row_change(kind, reader, lsn))
            elif kind == "M":
                flags, _msg_lsn = reader.unpack("BQ")
                prefix = reader.string()
                content = reader.raw(reader.unpack("I")).decode()
                if flags & 1 and current is not None:
                    current.messages[prefix] = content
            # 'Y' (type), 'O' (origin) and 'T' (truncate) carry nothing crmsync publishes.
        return done

    def _relation(self, reader: Reader) -> None:
        oid = reader.unpack("I")
        schema, name = reader.string(), reader.string()
        reader.byte()  # replica identity setting: the service checks it itself
        columns, types, keys = [], [], []
        for _ in range(reader.unpack("H")):
            flags = reader.unpack("B")
            column = reader.string()
            type_oid, _typmod = reader.unpack("Ii")
            columns.append(column)
            types.append(type_oid)
            if flags & 1:
                keys.append(column)
        self.relations[oid] = Relation(oid, schema, name, columns, types, keys)

    def _row_change(self, kind: str, reader: Reader, lsn: str) -> RowChange:
        relation = self.relations[reader.unpack("I")]
        old = new = None
        tag = reader.byte()
        if tag in "KO":
            old = self._tuple(reader, relation)
            tag = reader.byte() if kind == "U" else tag
        if tag == "N":
            new = self._tuple(reader, relation)
        if kind == "U" and new is not None and old is not None:
            for column, value in new.items():
                if value is UNCHANGED_TOAST:  # REPLICA IDENTITY FULL: the old row has the full value
                    new[column] = old.get(column)
        return RowChange(relation, {"I": "c", "U": "u", "D": "d"}[kind], new, old, lsn)

    def _tuple(self, reader: Reader, relation: Relation) -> dict[str, Any]:
        values: dict[str, Any] = {}
        data, pos = reader.data, reader.pos  # the hot loop of change capture: read bytes directly
        count = int.from_bytes(data[pos:pos + 2], "big")
        pos += 2
        for index in range(count):
            column = relation.columns[index]
            tag = data[pos]
            pos += 1
            if tag == 110:  # 'n'
                values[column] = None
            elif tag == 117:  # 'u'
                values[column] = UNCHANGED_TOAST
            else:
                length = int.from_bytes(data[pos:pos + 4], "big")
                text = data[pos + 4:pos + 4 + length].decode()
                pos += 4 + length
                convert = _CONVERTERS.get(relation.type_oids[index])
                values[column] = convert(text) if convert else text
        reader.pos = pos
        return values
