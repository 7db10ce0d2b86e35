"""The change envelope: one JSON shape for every record change, apply command and reject in crmsync.

Why one module: pollers, the change-capture service, the stream processors and the writers all exchange these
messages through Kafka; defining them once keeps producers and consumers in lock-step (see docs/envelope.md).

Delivery is at-least-once. Every message carries a deterministic ``id`` derived from its source position
(Campaign: commit LSN + sequence in the transaction; CRM: modification stamp + record id), so a consumer drops
a duplicate by remembering the last position it applied per key.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal

import orjson

SCHEMA_VERSION = 1

Op = Literal["c", "u", "d", "r"]  # create, update, delete, read (snapshot / backfill / repair)
OPS: tuple[str, ...] = ("c", "u", "d", "r")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _plain(text: str) -> bool:
    """Printable ASCII: what orjson and json.dumps(ensure_ascii=True) write alike."""
    return text.isascii() and text.isprintable()


def record_key(key: dict[str, Any]) -> bytes:
    """Kafka message key for a record: its primary key as canonical JSON, so equal keys hash alike.

    The bytes decide a record's partition, so they never change: json.dumps(sort_keys, compact separators,
    ASCII escapes). orjson writes exactly those bytes for printable ASCII text and 64-bit integers — every CRM id and Campaign key —
    at a tenth of the cost (one key per message); anything else goes through json.dumps."""
    if all((type(value) is int and -2**63 < value < 2**63) or (type(value) is str and _plain(value))
           for value in key.values()) and all(type(name) is str and _plain(name) for name in key):
        return orjson.dumps(key, option=orjson.OPT_SORT_KEYS)
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str).encode()


# orjson writes the same JSON as json.dumps(separators=(",", ":"), ensure_ascii=False, default=str) — dates,
# decimals and other values still go through str() — at a fraction of the cost: every change and command is
# encoded once and decoded at least once, which made JSON the largest single cost of a backfill.
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(value: Any) -> bytes:
    """JSON bytes for a message payload (see _ORJSON_OPTIONS)."""
    return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS)


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)


@functools.cache
def _field_names(message_class: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(message_class))  # (dataclasses.fields walks them: once per class)


def _dumps(message: Any) -> bytes:
    """Shallow field dict → JSON. (dataclasses.asdict deep-copies every value: 10x slower on the hot path.)"""
    return dumps({name: getattr(message, name) for name in _field_names(type(message))})


@dataclass(slots=True)
class Change:
    """One row change on one side. ``after`` is the full row (None for deletes); ``before`` holds the old row
    when the source knows it (Campaign updates/deletes, REPLICA IDENTITY FULL)."""

    id: str
    side: Literal["crm", "campaign"]
    source: str
    object: str
    op: Op
    key: dict[str, Any]
    after: dict[str, Any] | None
    position: dict[str, Any]
    source_ts: str | None = None
    captured_ts: str = field(default_factory=utc_now_iso)
    before: dict[str, Any] | None = None
    origin: str | None = None  # set when the change was written by crmsync itself (echo suppression)
    # True: `after` holds only the fields this change touched (a field it lacks is unchanged, not null), as a
    # CRM that pushes changed fields (Salesforce Change Data Capture UPDATE events) sends them
    partial: bool = False
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")

    def to_json(self) -> bytes:
        return _dumps(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Change":
        return cls(**_checked(loads(raw), "change"))

    def kafka_key(self) -> bytes:
        return record_key(self.key)


def crm_change(account: str, obj: str, op: Op, crm_id: str, version: str, ts: str, *,
               after: dict[str, Any] | None, before: dict[str, Any] | None = None, id_prefix: str = "crm",
               partial: bool = False, **position: Any) -> Change:
    """The one way a CRM change is built (change sources, drift repair, the workflow's import), so the same
    record version always has the same id and position: ``crm:<account>:<object>:<id>:<version>``, key
    ``{"id": <CRM id>}``, position ``{"ts": <ISO UTC>, "id": <CRM id>, …}``. `version` is the CRM's own
    modification stamp as it wrote it (or its row version); `ts` is that moment in ISO 8601 UTC — what the
    streams order a record's changes by. `partial`: `after` holds only the fields the change touched."""
    return Change(id=f"{id_prefix}:{account}:{obj}:{crm_id}:{version}", side="crm", source=account, object=obj,
                  op=op, key={"id": crm_id}, after=after, before=before,
                  position={"ts": ts, "id": crm_id, **position}, source_ts=ts, partial=partial)


def changes_from_message(raw: bytes | str) -> list[Change]:
    """A change topic message holds one Change, or a batch envelope {"v": 1, "changes": [...]} (backfills)."""
    payload = loads(raw)
    if isinstance(payload, dict) and "changes" in payload:
        _checked(payload, "change batch")
        return [Change(**_checked(item, "change")) for item in payload["changes"]]
    return [Change(**_checked(payload, "change"))]


@dataclass(slots=True)
class ApplyCommand:
    """An instruction for a writer: make ``object`` on ``side``/``target`` look like ``values``.

    ``key`` identifies the target record when it is known (CRM id or Campaign key); ``match`` holds the
    matching-key values used to find or create it otherwise. ``cause`` is the id of the change it came from.

    ``expect`` makes the write conditional, field by field (compare-and-set): a field is written only if the
    target still holds the expected value (or, for a record that does not exist yet, always). A field whose
    value changed meanwhile is left alone: that edit is news the streams will decide. ``base_version`` is the
    target record's version (CRM modification stamp) the decision saw; a writer whose API can make the whole
    update conditional on it does so (e.g. Salesforce If-Unmodified-Since)."""

    id: str
    side: Literal["crm", "campaign"]
    target: str
    object: str
    action: Literal["upsert", "create", "delete"]  # create: a Campaign row with the key the streams allocated
    key: dict[str, Any] | None
    values: dict[str, Any]
    cause: str
    match: dict[str, Any] | None = None
    source_ts: str | None = None
    created_ts: str = field(default_factory=utc_now_iso)
    attempt: int = 0
    expect: dict[str, Any] | None = None
    base_version: str | None = None
    mapping: str | None = None  # the mapping whose decision made it (None: older messages, tools)
    v: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return _dumps(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "ApplyCommand":
        return cls(**_checked(loads(raw), "apply command"))


@dataclass(slots=True)
class Reject:
    """A record a stage could not process. It keeps the whole record and the reason, so nothing is lost and
    `crmsync rejects retry` can put it back."""

    id: str
    stage: str
    side: Literal["crm", "campaign"]
    target: str
    object: str
    reason: str
    error_code: str | None
    record: dict[str, Any]
    attempt: int = 0
    created_ts: str = field(default_factory=utc_now_iso)
    v: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return _dumps(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Reject":
        return cls(**_checked(loads(raw), "reject"))


# -- echo tags --------------------------------------------------------------------------------------------------
# A Campaign writer's transaction carries an origin (crmsync.pg.tag_origin), which change capture copies onto every
# change of that transaction: how the streams recognise their own writes exactly. The tag also names, per table,
# the mapping whose decisions the transaction applied. With two CRMs on one Campaign table (two mappings), a row
# written for Salesforce's mapping is an echo for that mapping only: for the Dynamics mapping it is news, to be
# carried on to Dynamics. `None` for a table means: an echo for every mapping (tags without the table part).
ECHO_FOR_ALL = None


def echo_tag(writer: str, mappings_by_table: dict[str, str | None] | None = None) -> str:
    """`writer`, or `writer:{"<table>": "<mapping>", …}` (tables whose rows are echoes of one mapping only)."""
    named = {table: name for table, name in (mappings_by_table or {}).items() if name is not None}
    return f"{writer}:{json.dumps(named, sort_keys=True, separators=(',', ':'))}" if named else writer


def echo_mapping(origin: str | None, writers: tuple[str, ...], table: str) -> tuple[bool, str | None]:
    """(written by one of `writers`, the one mapping it is an echo for — or ECHO_FOR_ALL) of a change of `table`."""
    if not origin:
        return False, ECHO_FOR_ALL
    writer, _, named = origin.partition(":")
    if writer not in writers:
        return False, ECHO_FOR_ALL
    try:
        mappings = json.loads(named) if named else {}
    except ValueError:
        mappings = {}
    return True, mappings.get(table) if isinstance(mappings, dict) else ECHO_FOR_ALL


def _checked(payload: Any, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ValueError(f"{what} must be a JSON object")
    version = payload.get("v")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{what} has schema version {version!r}; this crmsync reads version {SCHEMA_VERSION}")
    return payload
