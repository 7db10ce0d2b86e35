"""A record's journey through the pipeline, by its id (CRM id or Campaign key), derived from what exists.

Nothing new is recorded for this: the link comes from crmsync.sync_state, every step from the topics (each
message carries its own times) and refusals from the rejects ledger. A trip is one decided change:

    modified      the source's own modification time (CRM stamp / commit time)     Change.source_ts
    captured      read by the poller / change capture                                  Change.captured_ts
    published     appended to the change topic                                         message timestamp
    decided       the streams published the apply command                              its message timestamp
    applied       the target side's modification time of the record afterwards         echo Change.source_ts
    acknowledged  that write came back from the target side onto its change topic     echo message timestamp

Changes the streams decided needed nothing (echoes of our writes, no-ops) are listed without a trip.
Topics are scanned from their start (at most `limit` newest messages each): fine for a lookup by a person,
not meant for bulk use.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Iterator

from confluent_kafka import Consumer, KafkaError, TopicPartition
from psycopg.rows import dict_row

from crmsync import kafka, lag, pg, rejects, topics
from crmsync.config import Mapping, Settings
from crmsync.envelope import ApplyCommand, Change, changes_from_message


def lookup(settings: Settings, bootstrap_servers: str, dsn: str, record_id: str,
           limit: int = 100_000, show_values: bool = False) -> dict[str, Any]:
    """The journey of `record_id`; {"found": False} when no synced record has that id. Reject reasons without
    the record's values unless `show_values`."""
    link = _link(dsn, record_id)
    if link is None:
        return {"id": record_id, "found": False}
    mapping = next((m for m in settings.mappings if m.name == link["mapping"]), None)
    if mapping is None:
        return {"id": record_id, "found": False, "reason": f"mapping {link['mapping']} is not configured"}
    names = _topics(settings, mapping)
    changes = {side: [(c, at) for c, at in _changes(bootstrap_servers, names[side], limit) if _is_record(c, link)]
               for side in ("crm", "campaign")}
    commands = _commands(bootstrap_servers, [names["apply-crm"], names["apply-campaign"]], limit)
    causes = {c.id for side in changes.values() for c, _ in side}
    mine = [(c, at) for c, at in commands if c.cause in causes]
    trips = [_trip(command, at, changes) for command, at in sorted(mine, key=lambda item: item[1])]
    _add_rejects(dsn, trips, show_values)
    decided = {t["change_id"] for t in trips}
    quiet = [{"side": c.side, "change_id": c.id, "op": c.op, "origin": c.origin, "modified": c.source_ts,
              "published": _iso(at)} for side in changes.values() for c, at in side if c.id not in decided]
    return {"id": record_id, "found": True, "mapping": mapping.name, "crm_id": link["crm_id"],
            "campaign_key": link["campaign_key"], "trips": trips, "no_command": quiet}


def _link(dsn: str, record_id: str) -> dict[str, Any] | None:
    with pg.connect(dsn, autocommit=True, application="crmsync-dashboard") as conn:
        return conn.cursor(row_factory=dict_row).execute(
            "SELECT mapping, crm_id, campaign_key FROM crmsync.sync_state WHERE crm_id = %s OR campaign_key::text = %s "
            "ORDER BY updated_at DESC LIMIT 1", (record_id, record_id)).fetchone()


def _topics(settings: Settings, mapping: Mapping) -> dict[str, str]:
    db = settings.campaign.name
    return {"crm": topics.changes("crm", mapping.account, mapping.crm_object),
            "campaign": topics.changes("campaign", db, mapping.campaign_table),
            "apply-crm": topics.apply("crm", mapping.account, mapping.crm_object),
            "apply-campaign": topics.apply("campaign", db, mapping.campaign_table)}


def _is_record(change: Change, link: dict[str, Any]) -> bool:
    if change.side == "crm":
        return link["crm_id"] is not None and change.key.get("id") == link["crm_id"]
    return link["campaign_key"] is not None and str(change.key.get("id")) == str(link["campaign_key"])


def _messages(bootstrap_servers: str, topic_names: list[str], limit: int) -> Iterator[tuple[bytes, float]]:
    """(value, timestamp in epoch seconds) of the newest `limit` messages of each topic, in partition order."""
    reader = Consumer(kafka.client_config(bootstrap_servers, {
        "group.id": "crmsync-journey", "enable.auto.commit": False, "enable.partition.eof": True}))
    try:
        metadata = reader.list_topics(timeout=5)
        partitions = [TopicPartition(t, p) for t in topic_names if t in metadata.topics
                      for p in metadata.topics[t].partitions]
        if not partitions:
            return
        ends = lag.end_offsets(bootstrap_servers, partitions)
        starts = [TopicPartition(tp.topic, tp.partition, max(0, ends[(tp.topic, tp.partition)] - limit))
                  for tp in partitions if ends[(tp.topic, tp.partition)] > 0]
        if not starts:
            return
        reader.assign(starts)
        open_partitions = {(tp.topic, tp.partition) for tp in starts}
        deadline = time.monotonic() + 30
        while open_partitions and time.monotonic() < deadline:
            for message in reader.consume(1000, 0.5):
                if message.error() is None:
                    yield message.value(), message.timestamp()[1] / 1000
                elif message.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard((message.topic(), message.partition()))
    finally:
        reader.close()


def _changes(bootstrap_servers: str, topic: str, limit: int) -> list[tuple[Change, float]]:
    found = []
    for value, at in _messages(bootstrap_servers, [topic], limit):
        try:
            found.extend((change, at) for change in changes_from_message(value))
        except (ValueError, TypeError):
            continue  # not ours to judge here: the streams reject unreadable changes
    return sorted(found, key=lambda item: item[1])


def _commands(bootstrap_servers: str, topic_names: list[str], limit: int) -> list[tuple[ApplyCommand, float]]:
    found = []
    for value, at in _messages(bootstrap_servers, topic_names, limit):
        try:
            found.append((ApplyCommand.from_json(value), at))
        except (ValueError, TypeError):
            continue
    return found


def _trip(command: ApplyCommand, decided_at: float, changes: dict[str, list[tuple[Change, float]]]) -> dict[str, Any]:
    """Stages of one decided change; the first change on the target side after the command is its echo."""
    source_side = "campaign" if command.side == "crm" else "crm"
    cause = next(((c, at) for c, at in changes[source_side] if c.id == command.cause), None)
    echo = next(((c, at) for c, at in changes[command.side] if at >= decided_at and c.id != command.cause), None)
    change = cause[0] if cause else None
    stages = [("modified", change.source_ts if change else None), ("captured", change.captured_ts if change else None),
              ("published", _iso(cause[1]) if cause else None), ("decided", _iso(decided_at)),
              ("applied", echo[0].source_ts if echo else None), ("acknowledged", _iso(echo[1]) if echo else None)]
    return {"direction": f"{source_side}→{command.side}", "change_id": command.cause, "command_id": command.id,
            "op": change.op if change else None, "action": command.action,
            "fields": sorted(command.values), "stages": [{"stage": s, "at": _normal(at)} for s, at in stages],
            "seconds": _span(stages), "reject": None}


def _add_rejects(dsn: str, trips: list[dict[str, Any]], show_values: bool) -> None:
    if not trips:
        return
    with pg.connect(dsn, autocommit=True, application="crmsync-dashboard") as conn:
        rows = conn.cursor(row_factory=dict_row).execute(
            "SELECT command_id, status, error_code, reason, attempts, record FROM crmsync.rejects "
            "WHERE command_id = ANY(%s)", ([t["command_id"] for t in trips],)).fetchall()
    for row in rows:
        record = row.pop("record")
        if not show_values:
            row["reason"] = rejects.without_values(row["reason"] or "", record)
    by_command = {row.pop("command_id"): row for row in rows}
    for trip in trips:
        trip["reject"] = by_command.get(trip["command_id"])


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _normal(value: str | None) -> str | None:
    moment = _parse(value)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


def _span(stages: list[tuple[str, str | None]]) -> float | None:
    """Seconds from the source modification to the acknowledgement, when both are known."""
    start, end = _parse(stages[0][1]), _parse(stages[-1][1])
    return round((end - start).total_seconds(), 3) if start and end else None

