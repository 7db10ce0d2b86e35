"""The one topic-naming rule of crmsync. Every topic name in the project comes from these functions.

    crmsync.<side>.<source>.<object>            record changes read from one side (CRM account or Campaign db)
    crmsync.apply.<side>.<target>.<object>      commands for the writer of that side
    crmsync.rejects.<side>.<target>             records a stage could not process, with the reason
    crmsync.heartbeat.<side>.<source>           liveness ticks of a capture service (lag measurement)
    crmsync.epoch.<id>                          the broker's epoch marker: it exists while the broker remembers

`side` is ``crm`` or ``campaign``. Names are lower-case; anything outside [a-z0-9_-] becomes ``_`` so an
account called "Sales EU" and a table called "Recipients" give valid, stable topic names.
"""
from __future__ import annotations

import re
from typing import Literal

Side = Literal["crm", "campaign"]
PREFIX = "crmsync"
SIDES: tuple[str, ...] = ("crm", "campaign")


def _part(value: str) -> str:
    cleaned = re.sub(r"[^a-z0-9_-]", "_", value.strip().lower())
    if not cleaned:
        raise ValueError(f"empty topic name part: {value!r}")
    return cleaned


def _side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return side


def changes(side: Side, source: str, obj: str) -> str:
    """Topic of record changes captured from `source` (a CRM account or the Campaign database) for `obj`."""
    return f"{PREFIX}.{_side(side)}.{_part(source)}.{_part(obj)}"


def campaign_object(schema: str, table: str) -> str:
    """How a Campaign table is named in changes and topics: bare in `public`, schema-qualified elsewhere (the
    wizard's mirror tables live in one schema per account and would otherwise clash with Campaign tables)."""
    return table if schema == "public" else f"{schema}.{table}"


def apply(side: Side, target: str, obj: str) -> str:
    """Topic of apply commands that the writer of `side` carries out against `target`."""
    return f"{PREFIX}.apply.{_side(side)}.{_part(target)}.{_part(obj)}"


def rejects(side: Side, target: str) -> str:
    return f"{PREFIX}.rejects.{_side(side)}.{_part(target)}"


def heartbeat(side: Side, source: str) -> str:
    return f"{PREFIX}.heartbeat.{_side(side)}.{_part(source)}"


def epoch(epoch_id: str) -> str:
    """An empty topic whose existence says the broker still remembers what crmsync gave it (crmsync/broker_loss.py)."""
    return f"{PREFIX}.epoch.{_part(epoch_id)}"


def parse(topic: str) -> dict[str, str]:
    """Split a crmsync topic name back into its parts (kind, side, source/target, object)."""
    parts = topic.split(".")
    if len(parts) < 3 or parts[0] != PREFIX:
        raise ValueError(f"not a crmsync topic: {topic!r}")
    kind = parts[1]
    if kind in SIDES and len(parts) == 4:
        return {"kind": "changes", "side": kind, "source": parts[2], "object": parts[3]}
    if kind == "apply" and len(parts) == 5:
        return {"kind": "apply", "side": parts[2], "target": parts[3], "object": parts[4]}
    if kind in ("rejects", "heartbeat") and len(parts) == 4:
        return {"kind": kind, "side": parts[2], "source": parts[3]}
    raise ValueError(f"not a crmsync topic: {topic!r}")
