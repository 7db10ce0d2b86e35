"""The mirror service: the wizard's mirror tables kept current in both directions, Heroku Connect style.

The wizard creates one PostgreSQL table per selected CRM object (CRM id as primary key, typed columns). This
service makes them live:

- **CRM → mirror.** The CRM poller follows every mirrored object (it reads all fields) and publishes to
  the CRM change topics; this service upserts the rows by id in batches — a row is rewritten only when a value
  differs, and never by an older modification stamp — and deletes the rows of deleted records. Its transactions
  carry the origin tag ``mirror``, so change capture marks what it wrote and it is never sent back.
- **mirror → CRM.** Change capture publishes the mirror tables too (REPLICA IDENTITY FULL, so old rows come
  along). An UPDATE or DELETE made in SQL becomes an apply command with just the changed, updateable fields,
  carried out through the account's CRM writer in this process (same batching, rejects, retries and links as the
  continuous sync). An INSERT is refused into the rejects ledger: a mirror row needs the CRM's id.
- **No restart.** The schema documents are re-read every few seconds: a wizard re-run that adds fields or tables
  is followed at once (the poller re-describes objects on its own).
- **Formulas.** A CRM (Salesforce) does not bump the modification stamp when only a formula's value changes, so the
  formula fields of every mirror are re-read every `formula_refresh_seconds` (crmsync/wizard/data.py).

Offsets are committed only after the database transaction or the CRM writes they describe (replays are
idempotent: upserts compare values, updates of equal values are skipped by the CRM-side comparison).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable

from confluent_kafka import Message
from prometheus_client import Counter
from psycopg import sql

from crmsync import connectors, envelope, kafka, names, pg, rejects, topics
from crmsync.config import Settings
from crmsync.envelope import ApplyCommand, Change, Reject, changes_from_message
from crmsync.infra import Endpoints
from crmsync.observability import progress
from crmsync.values import join_multi, split_multi
from crmsync.mirrors.data import MIRROR_ORIGIN
from crmsync.mirrors.schema import key_column, mirrored_elements
from services.crm_writer.service import CrmWriter

log = logging.getLogger("crmsync.mirror")

STAGE = MIRROR_ORIGIN

ROWS = Counter("crmsync_mirror_rows_total", "Mirror rows written from CRM changes", ["account", "object", "op"])
EDITS = Counter("crmsync_mirror_edits_total", "Mirror-table edits sent to the CRM", ["account", "object", "op"])


@dataclass(frozen=True)
class Mirror:
    """One mirrored CRM object: its schema element and where its changes travel."""

    account: str
    element: dict[str, Any]
    campaign_name: str

    @property
    def obj(self) -> str:
        return self.element["name"]

    @property
    def qualified(self) -> tuple[str, str]:
        schema, table = self.element["sqlTable"].split(".", 1)
        return schema, table

    @property
    def crm_topic(self) -> str:
        return topics.changes("crm", self.account, self.obj)

    @property
    def campaign_topic(self) -> str:
        return topics.changes("campaign", self.campaign_name, topics.campaign_object(*self.qualified))

    def fields(self) -> list[dict[str, Any]]:
        return self.element["fields"]

    @property
    def key(self) -> str:
        """The mirror table's primary key column (the CRM's own key field)."""
        return key_column(self.element)


def to_mirror(field: dict[str, Any], value: Any, separator: str = ";") -> Any:
    """A CRM value as its mirror column takes it (multi-select 'a;b' → ['a', 'b'])."""
    if field["sqlType"] == "text[]" and isinstance(value, str):
        return split_multi(value, separator)
    return value


def to_crm(field: dict[str, Any], value: Any, separator: str = ";") -> Any:
    """A mirror column value as the CRM takes it (['a', 'b'] → 'a;b')."""
    if field["sqlType"] == "text[]" and isinstance(value, list):
        return join_multi(value, separator)
    return value


class MirrorService:
    def __init__(self, settings: Settings, endpoints: Endpoints, account: str, *,
                 client: Any = None, schema_reload_seconds: float = 5.0,
                 formula_refresh_seconds: float | None = None) -> None:
        self.settings, self.endpoints, self.account = settings, endpoints, account
        self.connector = connectors.for_account(settings.accounts[account])
        self.client = client or self.connector.client(account, settings.accounts[account])
        self.owns_client = client is None  # then closed with the service (its CRM session logged off)
        self.discovery = self.connector.discovery(self.client)
        self.writer = CrmWriter(self.connector, self.connector.sink(self.client), account, endpoints.bootstrap_servers,
                                endpoints.campaign_dsn, objects=[], client=self.client)
        self.conn = pg.connect(endpoints.campaign_dsn, application=f"crmsync-mirror-{account}")
        self.schema_reload_seconds = schema_reload_seconds
        self.formula_refresh_seconds = (settings.campaign.formula_refresh_seconds
                                        if formula_refresh_seconds is None else formula_refresh_seconds)
        self.mirrors: dict[str, Mirror] = {}  # topic -> mirror
        self.consumer: Any = None
        self._schema_at = self._formulas_at = 0.0
        self._generated_at: Any = None  # generated_at of the schema documents last read
        self._updateable: dict[str, set[str]] = {}

    # -- what to follow -----------------------------------------------------------------------------------
    def reload_schema(self) -> bool:
        """Re-read the schema documents when a wizard run stored new ones; re-subscribe when the mirrored
        objects changed. True if they did."""
        self._schema_at = time.monotonic()
        with self.conn.transaction():
            generated = self.conn.execute("SELECT max(generated_at) FROM crmsync.crm_schemas WHERE account = %s",
                                          (self.account,)).fetchone()[0]
            if generated is not None and generated == self._generated_at:
                return False
            elements = mirrored_elements(self.conn, self.account)
        self._generated_at = generated
        self._updateable = {}  # fields may have changed too: describe again when next needed
        mirrors = [Mirror(self.account, element, self.settings.campaign.name) for _, element in elements]
        by_topic = {t: m for m in mirrors for t in (m.crm_topic, m.campaign_topic)}
        changed = set(by_topic) != set(self.mirrors)
        self.mirrors = by_topic
        if changed and by_topic:
            kafka.ensure_topics(self.endpoints.bootstrap_servers, sorted(by_topic),
                                self.settings.kafka.partitions, self.settings.kafka.replication_factor)
            if self.consumer is None:
                self.consumer = kafka.consumer(self.endpoints.bootstrap_servers, names.mirror_group(self.account))
            kafka.subscribe(self.consumer, sorted(by_topic))
            log.info("mirroring %s of %s", ", ".join(sorted({m.obj for m in mirrors})), self.account)
        return changed

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            progress.tick()
            if time.monotonic() - self._schema_at >= self.schema_reload_seconds:
                self.reload_schema()
            if self.consumer is None:
                progress.joined()  # nothing mirrored yet: no group to be in, idle is working
                stop.wait(min(self.schema_reload_seconds, 5.0))
                continue
            self.run_once()
            self._maybe_refresh_formulas()
        self.close()

    def run_once(self, timeout: float = 0.2) -> int:
        messages = kafka.without_errors(self.consumer.consume(2000, timeout), log)
        if messages:
            self.process(messages)
            self.consumer.commit(offsets=kafka.next_offsets(messages), asynchronous=False)
        return len(messages)

    def process(self, messages: list[Message]) -> None:
        """CRM changes into the mirror, mirror edits into the CRM; per object, in message order."""
        crm: dict[str, list[Change]] = {}
        edits: dict[str, list[Change]] = {}
        for message in messages:
            mirror = self.mirrors.get(message.topic())
            if mirror is None:
                continue  # an object no longer mirrored
            target = crm if message.topic() == mirror.crm_topic else edits
            target.setdefault(message.topic(), []).extend(changes_from_message(message.value()))
        for topic, changes in crm.items():
            self.apply_crm_changes(self.mirrors[topic], changes)
        for topic, changes in edits.items():
            self.send_edits(self.mirrors[topic], changes)

    # -- CRM → mirror -----------------------------------------------------------------------------------------
    def apply_crm_changes(self, mirror: Mirror, changes: list[Change]) -> None:
        latest: dict[str, Change] = {}
        for change in changes:  # a burst collapses to each record's newest state
            earlier = latest.get(change.key["id"])
            if change.partial and earlier is not None and earlier.after is not None:  # only the fields it touched
                change = replace(change, after={**earlier.after, **(change.after or {})}, partial=earlier.partial)
            latest[change.key["id"]] = change
        deletes = sorted(i for i, c in latest.items() if c.op == "d")
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for change in latest.values():
            if change.op != "d":
                row = self._mirror_row(mirror, change.key["id"], change.after or {},
                                       self.connector.multi_select_separator)
                shapes.setdefault(tuple(row), []).append(row)
        table = sql.Identifier(*mirror.qualified)
        with self.conn.transaction():
            pg.tag_origin(self.conn, STAGE)
            for columns, rows in shapes.items():
                self.conn.execute(_upsert_sql(table, columns, mirror.key, self._version_column()),
                                  (envelope.dumps(rows).decode(),))
                ROWS.labels(self.account, mirror.obj, "upsert").inc(len(rows))
            if deletes:
                self.conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(
                    table, sql.Identifier(mirror.key)), (deletes,))
                ROWS.labels(self.account, mirror.obj, "delete").inc(len(deletes))

    def _mirror_row(self, mirror: Mirror, key: str, after: dict[str, Any], separator: str) -> dict[str, Any]:
        """The mirror columns this change carries (a field the change lacks is left as it is); the key always."""
        row = {f["sqlName"]: to_mirror(f, after[f["name"]], separator) for f in mirror.fields() if f["name"] in after}
        return {mirror.key: key, **row}

    # -- mirror → CRM -----------------------------------------------------------------------------------------
    def send_edits(self, mirror: Mirror, changes: list[Change]) -> None:
        commands: list[ApplyCommand] = []
        refused: list[Reject] = []
        for change in changes:
            if change.origin is not None:  # written by crmsync (this service, wizard load, formula refresh)
                continue
            if change.op == "c":
                refused.append(self._insert_refused(mirror, change))
            elif change.op == "d":
                commands.append(self._command(mirror, change, "delete", {}))
            elif change.op == "u":
                values = self._changed_fields(mirror, change)
                if values:
                    commands.append(self._command(mirror, change, "upsert", values))
        if refused:
            self._refuse(refused)
        if commands:
            result = self.writer.process(commands)
            for command in commands:
                EDITS.labels(self.account, mirror.obj, command.action).inc()
            log.info("%s: %d edit(s) of %s sent to %s, %d refused", STAGE, result.applied, mirror.obj,
                     self.account, result.rejected)

    def _changed_fields(self, mirror: Mirror, change: Change) -> dict[str, Any]:
        before, after = change.before or {}, change.after or {}
        updateable = self._updateable_fields(mirror.obj)
        separator = self.connector.multi_select_separator
        return {f["name"]: to_crm(f, after.get(f["sqlName"]), separator) for f in mirror.fields()
                if f["sqlName"] in after and before.get(f["sqlName"]) != after.get(f["sqlName"])
                and f["name"] in updateable}

    def _updateable_fields(self, obj: str) -> set[str]:
        """From the CRM's describe: read-only, system and formula fields never go back."""
        if obj not in self._updateable:
            system = {name.lower() for name in self.connector.system_fields}
            self._updateable[obj] = {f.name for f in self.discovery.describe_table(obj).fields
                                     if f.updateable and not f.calculated and f.name.lower() not in system}
        return self._updateable[obj]

    def _version_column(self) -> str | None:
        """The mirror column of the CRM's modification stamp: a row is never rewritten by an older change."""
        return self.connector.index_fields[0].lower() if self.connector.index_fields else None

    def _command(self, mirror: Mirror, change: Change, action: str, values: dict[str, Any]) -> ApplyCommand:
        row = change.after or change.before or {}
        return ApplyCommand(id=f"{change.id}>mirror", side="crm", target=self.account, object=mirror.obj,
                            action=action, key={"id": row.get(mirror.key) or change.key.get("id")}, values=values,
                            cause=change.id, source_ts=change.source_ts)

    def _insert_refused(self, mirror: Mirror, change: Change) -> Reject:
        schema, table = mirror.qualified
        return Reject(id=f"{STAGE}:{change.id}", stage=STAGE, side="crm", target=self.account, object=mirror.obj,
                      error_code="MIRROR_INSERT_REFUSED",
                      reason=(f"a row inserted into the mirror table {schema}.{table} is not created in "
                              f"{mirror.obj}: mirror rows carry the CRM's id. Create the record in the CRM (the "
                              f"mirror follows), or add it to a Campaign table that a sync mapping exports."),
                      record={"change": envelope.loads(change.to_json())})

    def _refuse(self, refused: list[Reject]) -> None:
        with self.conn.transaction():
            for reject in refused:
                rejects.record(self.conn, reject, command=None, status="abandoned", retry_in=None)
        for reject in refused:
            rejects.publish(self.writer.producer, self.writer.tracker, reject)
        kafka.flush_all(self.writer.producer, self.writer.tracker)

    # -- formulas ---------------------------------------------------------------------------------------------
    def _maybe_refresh_formulas(self) -> None:
        if not self.formula_refresh_seconds or time.monotonic() - self._formulas_at < self.formula_refresh_seconds:
            return
        self._formulas_at = time.monotonic()
        from crmsync.mirrors.data import refresh_formulas

        try:
            changed = refresh_formulas(self.discovery, self.endpoints.campaign_dsn, self.account)
            if any(changed.values()):
                log.info("formula refresh of %s: %s", self.account, changed)
        except Exception:
            log.exception("formula refresh of %s failed; trying again in %ss", self.account,
                          self.formula_refresh_seconds)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        self.writer.close()
        self.conn.close()
        if self.owns_client:
            self.client.close()


def _upsert_sql(table: sql.Identifier, columns: Iterable[str], key: str, version: str | None) -> sql.Composed:
    """Insert or update by the `key` column from a JSON array; rewrite a row only when a value differs and never
    with an older modification stamp (`version`, a replayed change after a crash)."""
    cols = [sql.Identifier(c) for c in columns]
    others = [c for c in cols if c != sql.Identifier(key)]
    guard = sql.SQL("")
    if version and version in columns:
        guard = sql.SQL(" AND (t.{v} IS NULL OR excluded.{v} >= t.{v})").format(v=sql.Identifier(version))
    action = sql.SQL("DO NOTHING") if not others else sql.SQL(
        "DO UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new}){guard}").format(
        sets=sql.SQL(", ").join(sql.SQL("{c} = excluded.{c}").format(c=c) for c in others),
        old=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in others),
        new=sql.SQL(", ").join(sql.SQL("excluded.{}").format(c) for c in others), guard=guard)
    return sql.SQL("INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{t}, %s::jsonb) "
                   "ON CONFLICT ({key}) {action}").format(t=table, cols=sql.SQL(", ").join(cols),
                                                         key=sql.Identifier(key), action=action)


def run(settings: Settings, endpoints: Endpoints, account: str, stop: threading.Event | None = None) -> None:
    """`crmsync service mirror --account NAME`: until `stop` (SIGTERM) is set."""
    pg.migrate(endpoints.campaign_dsn)
    MirrorService(settings, endpoints, account).run(stop or threading.Event())
