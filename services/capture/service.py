"""Change capture of the Campaign database: PostgreSQL logical decoding (pgoutput) → one Kafka event per row
change, keyed by the row's primary key, in commit order.

Delivery: the replication slot is advanced (pg_replication_slot_advance) only after the broker acknowledged
every event of every transaction up to that commit. A crash (even kill -9) between the acknowledgement and the
advance re-publishes those transactions on restart: consumers drop the duplicates by the event id / position
(commit LSN + sequence in the transaction), which is the same for the re-published copy. Nothing is lost.

Own writes: the Campaign writer's sessions carry a replication origin, and on PostgreSQL ≥ 16 the slot is read
with pgoutput's `origin = none`, so those transactions are never decoded or published (unless
`campaign.capture_replicated` asks for changes that arrive through logical replication, which carry an origin
too). Whatever of crmsync's writes is decoded still says so: a writer emits
`pg_logical_emit_message(true, 'crmsync.origin', '<writer>')` inside its transaction, and every change of that
transaction is published with `origin` set, so the streams recognise their own writes without guessing.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from prometheus_client import Counter, Gauge, Histogram

from crmsync import kafka, pg, rejects, topics
from crmsync.config import Settings
from crmsync.envelope import Change
from crmsync.observability import progress
from services.capture.pgoutput import Decoder, Transaction, lsn_to_int

log = logging.getLogger("crmsync.capture")
ORIGIN_PREFIX = "crmsync.origin"
STAGE = "capture"
HEARTBEAT_TABLE = "crmsync.heartbeat"
MIRROR_CHECK_SECONDS = 5.0  # how often the wizard's mirror tables are looked up again

CHANGES = Counter("crmsync_capture_changes_total", "Row changes published by change capture", ["table", "op"])
SLOT_LAG = Gauge("crmsync_capture_slot_lag_bytes", "WAL bytes between the server's position and the slot's confirmed position", ["slot"])
COMMIT_TO_ACK = Histogram("crmsync_capture_commit_to_ack_seconds", "Time from a transaction's commit to the broker's acknowledgement of all its events",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAST_COMMIT = Gauge("crmsync_capture_last_commit_timestamp_seconds", "Commit time of the last published transaction", ["slot"])


class CaptureConfigError(Exception):
    """The database is not set up in a way change capture can work with; the message says what to change."""


@dataclass
class Batch:
    transactions: int = 0
    changes: int = 0
    last_commit_lsn: str | None = None


def _qualified(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return (schema or "public"), name


class CaptureService:
    def __init__(self, settings: Settings, bootstrap_servers: str, dsn: str) -> None:
        self.settings = settings
        self.cfg = settings.campaign
        self.bootstrap_servers = bootstrap_servers
        self.dsn = dsn
        self.stopping = threading.Event()
        self.decoder = Decoder()
        self.tracker = kafka.DeliveryTracker()
        self.producer = kafka.producer(bootstrap_servers)
        self.conn = pg.connect(dsn, autocommit=True, application="crmsync-capture")
        self.conn.execute("SET TimeZone = 'UTC'")
        self.last_beat = 0.0
        self.primary_keys: dict[str, list[str]] = {}  # "schema.table" -> primary-key columns
        self.published: set[str] = set()  # tables in the publication
        self.tables_checked_at = 0.0
        self.commit_to_ack: deque[float] = deque(maxlen=200_000)  # recent latencies, for benchmarks
        skip_origins = self.conn.info.server_version >= pg.ORIGIN_FILTERING_VERSION and not self.cfg.capture_replicated
        self.origin_option = ", 'origin', 'none'" if skip_origins else ""  # crmsync's writers are never decoded
        self.restart_points = self.conn.info.server_version >= 160000
        self.peek_seconds = 0.0  # what the last peek took

    # -- setup -------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Check the tables, then create or align the publication and the slot (idempotent). The first start
        creates the slot together with the snapshot (see `snapshot`)."""
        tables = [*self.cfg.capture_tables]
        self._align_publication([*tables, *self._mirror_tables()])
        slot_exists = bool(self.conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                                             (self.cfg.slot_name,)).fetchone())
        if self.cfg.snapshot == "initial" and not self._snapshot_done():
            if slot_exists:  # a snapshot that did not finish: nothing was streamed from this slot yet
                self.conn.execute("SELECT pg_drop_replication_slot(%s)", (self.cfg.slot_name,))
            # parents first; mirror tables are not snapshotted: the CRM is their source
            self.snapshot(self.settings.parents_first(tables))
        elif not slot_exists:
            self.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.cfg.slot_name,))
            log.info("created replication slot %s", self.cfg.slot_name)

    def _mirror_tables(self) -> list[str]:
        """The wizard's mirror tables (re-read while running), so edits made to them in SQL reach the CRM."""
        if not self.cfg.mirror_tables:
            return []
        from crmsync.mirrors.schema import mirrored_objects

        return sorted(table for _, _, table in mirrored_objects(self.conn))

    def _align_publication(self, tables: list[str]) -> None:
        for table in [*tables, HEARTBEAT_TABLE]:
            self._check_table(table)
        published = sql.SQL(", ").join(sql.Identifier(*_qualified(t)) for t in [*tables, HEARTBEAT_TABLE])
        exists = self.conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.cfg.publication,)).fetchone()
        verb = "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
        self.conn.execute(sql.SQL(verb).format(sql.Identifier(self.cfg.publication), published))
        kafka.ensure_topics(self.bootstrap_servers,
                            [*(self._topic(t) for t in tables), topics.heartbeat("campaign", self.cfg.name)],
                            self.settings.kafka.partitions, self.settings.kafka.replication_factor)
        self.published = set(tables)
        self.tables_checked_at = time.monotonic()

    def _follow_new_mirrors(self) -> None:
        """A wizard run while capture runs adds mirror tables: publish them too, without a restart."""
        if time.monotonic() - self.tables_checked_at < MIRROR_CHECK_SECONDS:
            return
        tables = [*self.cfg.capture_tables, *self._mirror_tables()]
        if set(tables) != self.published:
            log.info("publication %s now covers %s", self.cfg.publication, ", ".join(tables))
            self._align_publication(tables)
        self.tables_checked_at = time.monotonic()

    # -- snapshot ----------------------------------------------------------------------------------------
    def _snapshot_marker(self) -> str:
        return f"capture:{self.cfg.slot_name}:snapshot"

    def _snapshot_done(self) -> bool:
        return bool(self.conn.execute("SELECT 1 FROM crmsync.checkpoints WHERE name = %s",
                                      (self._snapshot_marker(),)).fetchone())

    def snapshot(self, tables: list[str]) -> int:
        """Create the slot and publish every existing row as a read ('r') from the snapshot the slot exports
        (Debezium's "snapshot, then stream", without its gap): CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')
        on a replication connection returns the slot's consistent point and a snapshot holding exactly the
        transactions committed before it; the slot streams exactly those committed after. So every row is
        published once, by the snapshot or by the stream. Snapshot rows are positioned just before the consistent
        point (seq -1), every streamed change after it. The done-marker is written after the broker acknowledged
        the whole snapshot: a crash during it drops the slot and repeats both (duplicates, never gaps)."""
        published = 0
        try:
            replication = pg.connect(self.dsn, autocommit=True, replication="database",
                                     application="crmsync-capture-slot")
        except psycopg.OperationalError as exc:
            raise CaptureConfigError(
                f"the first snapshot needs a replication connection to the Campaign database, which was refused "
                f"({str(exc).strip()}). Give the user the REPLICATION attribute and allow it in pg_hba.conf "
                "(`host replication <user> <address> scram-sha-256`), or set campaign.snapshot: never") from None
        refused: list = []
        with replication:  # the exported snapshot lives as long as this connection runs no other command
            _, lsn, exported, _ = replication.execute(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput "
                                                              "(SNAPSHOT 'export')").format(
                sql.Identifier(self.cfg.slot_name))).fetchone()
            log.info("created replication slot %s at %s with its snapshot", self.cfg.slot_name, lsn)
            with pg.connect(self.dsn, application="crmsync-capture-snapshot") as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))
                conn.execute("SET LOCAL TimeZone = 'UTC'")
                for table in tables:
                    published += self._snapshot_table(conn, table, lsn, refused)
        kafka.flush_all(self.producer, self.tracker)
        rejects.record_oversized(self.conn, self.producer, self.tracker, STAGE, refused)
        self.conn.execute("INSERT INTO crmsync.checkpoints (name, position) VALUES (%s, %s) ON CONFLICT (name) "
                          "DO UPDATE SET position = excluded.position, updated_at = now()",
                          (self._snapshot_marker(), Jsonb({"lsn": lsn, "rows": published})))
        log.info("snapshot of %s: %d rows published", ", ".join(tables), published)
        return published

    def _snapshot_table(self, conn: psycopg.Connection, table: str, lsn: str, refused: list) -> int:
        schema, name = _qualified(table)
        order = sql.SQL(", ").join(map(sql.Identifier, self.primary_keys[f"{schema}.{name}"]))
        cursor = conn.cursor(name="crmsync_snapshot", row_factory=dict_row)
        cursor.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(schema, name), order))
        count, lsn_int = 0, lsn_to_int(lsn)
        while rows := cursor.fetchmany(5000):
            changes = []
            for row in rows:
                values = {k: pg.json_ready(v) for k, v in row.items()}
                changes.append(Change(
                    id=f"campaign:{self.cfg.name}:snapshot:{lsn}:{name}:{count}", side="campaign",
                    source=self.cfg.name, object=topics.campaign_object(schema, name), op="r",
                    key={c: values[c] for c in self.primary_keys[f"{schema}.{name}"]}, after=values,
                    position={"lsn": lsn, "lsn_int": lsn_int, "seq": -1, "snapshot": True},  # before the stream
                    source_ts=values.get("updated_at")))
                count += 1
            refused += kafka.produce_changes(self.producer, self.tracker, self._topic(table), changes)
        cursor.close()
        return count

    def _check_table(self, table: str) -> None:
        schema, name = _qualified(table)
        row = self.conn.execute(
            """SELECT c.relreplident,
                      ARRAY(SELECT a.attname FROM pg_index i
                            JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
                            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                            WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')""", (schema, name)).fetchone()
        if row is None:
            raise CaptureConfigError(f"table {table!r} does not exist; remove it from campaign.capture_tables "
                                     "or create it")
        identity, primary_key = row
        self.primary_keys[f"{schema}.{name}"] = list(primary_key)
        if not primary_key:
            raise CaptureConfigError(
                f"table {table!r} has no primary key, so its changes cannot be keyed or ordered per record. "
                f"Add one (ALTER TABLE {table} ADD PRIMARY KEY (...)) or remove it from campaign.capture_tables.")
        if identity != "f":  # full old rows: deletes carry the record, updates fill unchanged TOAST values
            self.conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(schema, name)))

    def _topic(self, table: str) -> str:
        return topics.changes("campaign", self.cfg.name, topics.campaign_object(*_qualified(table)))

    # -- streaming ---------------------------------------------------------------------------------------
    def run(self) -> None:
        self.prepare()
        log.info("capturing %s through slot %s", ", ".join(self.cfg.capture_tables), self.cfg.slot_name)
        while not self.stopping.is_set():
            progress.tick()
            batch = self.poll_once()
            self._follow_new_mirrors()
            if batch.changes == 0 and batch.transactions == 0:
                self._maybe_heartbeat()
                self.stopping.wait(self._quiet_wait())
        self.producer.flush(10)
        self.conn.close()

    def _quiet_wait(self) -> float:
        """How long to wait after a peek that found nothing: the poll interval, or longer when that peek was
        expensive. Every peek decodes the WAL since the slot's restart point, and while crmsync's own writers
        fill the WAL (a backfill: never published, origin = none) a peek every 50 ms kept a PostgreSQL backend
        busy decoding the same WAL over and over. Waiting four times what the peek took bounds that to a
        fifth of one backend, and adds at most 0.5 s to a person's change made during a backfill."""
        return max(self.cfg.poll_interval_seconds, min(0.5, 4 * self.peek_seconds))

    def poll_once(self) -> Batch:
        """Read up to batch_changes changes, publish them, wait for the acks, then advance the slot."""
        scanned = self.conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]  # the peek reads past it
        started = time.monotonic()
        rows = self.conn.execute(
            "SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_peek_binary_changes("
            f"%s, NULL, %s, 'proto_version', '1', 'publication_names', %s, 'messages', 'true'{self.origin_option})",
            (self.cfg.slot_name, self.cfg.batch_changes,
             sql.Identifier(self.cfg.publication).as_string(self.conn))).fetchall()  # pgoutput parses a name list
        self.peek_seconds = time.monotonic() - started
        batch = Batch()
        if not rows:
            self._skip_filtered(scanned)
            return batch
        commit_times = []
        refused: list = []
        for txn in self.decoder.transactions(rows):
            batch.transactions += 1
            batch.changes += self._publish(txn, refused)
            batch.last_commit_lsn = txn.commit_lsn
            commit_times.append(txn.commit_ts)
        kafka.flush_all(self.producer, self.tracker)
        rejects.record_oversized(self.conn, self.producer, self.tracker, STAGE, refused)  # before the slot moves
        acked = datetime.now(timezone.utc)
        for committed in commit_times:
            latency = (acked - committed).total_seconds()
            COMMIT_TO_ACK.observe(latency)
            self.commit_to_ack.append(latency)
        if batch.last_commit_lsn:
            self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                              (self.cfg.slot_name, batch.last_commit_lsn))
            self._restart_point()
            self._record_lag()
        return batch

    def _skip_filtered(self, scanned: str) -> None:
        """Move the slot past WAL whose every transaction was left out (crmsync's own writes: origin = none).
        Nothing else moves it then, and a peek decodes everything from the slot's position again: during a
        backfill, every poll re-read the whole backfill (measured: 2/3 of PostgreSQL's time). Safe: the peek
        examined every transaction committed up to `scanned` and returned none of them; one committing later
        has a later commit record and still comes. Done once 64 KB piled up, not on every quiet poll."""
        moved = self.conn.execute(
            "SELECT pg_replication_slot_advance(slot_name, %s::pg_lsn) FROM pg_replication_slots "
            "WHERE slot_name = %s AND pg_wal_lsn_diff(%s::pg_lsn, confirmed_flush_lsn) > 65536",
            (scanned, self.cfg.slot_name, scanned)).fetchone()
        if moved:
            self._restart_point()

    def _restart_point(self) -> None:
        """Give decoding a point to restart from near the slot's position (a running-transactions record: ~100
        bytes of WAL) each time the slot moved. A peek decodes from the slot's restart point, which PostgreSQL
        moves only past such a record — logged every 15 s otherwise, so each peek of a busy database (every
        50 ms) re-decoded up to 15 s of WAL. Needs PostgreSQL ≥ 16 and a superuser (or EXECUTE on
        pg_log_standby_snapshot); without, the 15-second records do it, slower."""
        if not self.restart_points:
            return
        try:
            self.conn.execute("SELECT pg_log_standby_snapshot()")
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction) as exc:
            log.info("cannot log restart points for the slot (%s); decoding restarts further back", exc)
            self.restart_points = False

    def _publish(self, txn: Transaction, refused: list) -> int:
        origin = txn.messages.get(ORIGIN_PREFIX)
        commit_ts = txn.commit_ts.isoformat().replace("+00:00", "Z") if txn.commit_ts else None
        published = 0
        for seq, change in enumerate(txn.changes):
            relation = change.relation
            qualified = f"{relation.schema}.{relation.name}"
            row = change.new if change.new is not None else change.old or {}
            key = {column: row.get(column) for column in self.primary_keys[qualified]}
            heartbeat = qualified == HEARTBEAT_TABLE
            event = Change(
                id=f"campaign:{self.cfg.name}:{txn.commit_lsn}:{seq}", side="campaign", source=self.cfg.name,
                object=relation.name if heartbeat else topics.campaign_object(relation.schema, relation.name),
                op=change.op, key=key,
                after=change.new if change.op != "d" else None,
                before=change.old,
                position={"lsn": txn.commit_lsn, "lsn_int": lsn_to_int(txn.commit_lsn), "seq": seq,
                          "xid": txn.xid, "change_lsn": change.lsn},
                source_ts=commit_ts, origin=origin,
            )
            topic = topics.heartbeat("campaign", self.cfg.name) if heartbeat else self._topic(qualified)
            if not self._produce(topic, event, refused):
                continue
            CHANGES.labels(relation.name, change.op).inc()
            published += 1
        if txn.commit_ts:
            LAST_COMMIT.labels(self.cfg.slot_name).set(txn.commit_ts.timestamp())
        return published

    def _produce(self, topic: str, event: Change, refused: list) -> bool:
        """Queue one change. One over the message limit must never stop the stream: without its before-image if
        that makes it fit (an update that shortens a huge value, the delete of a huge row: the key still says
        which record), else into `refused` (the rejects ledger)."""
        try:
            kafka.produce(self.producer, self.tracker, topic, event.to_json(), event.kafka_key())
            return True
        except kafka.MessageTooLarge as why:
            if event.before is None:
                refused.append((event, why))
                return False
            return self._produce(topic, replace(event, before=None), refused)

    # -- heartbeat and lag -------------------------------------------------------------------------------
    def _maybe_heartbeat(self) -> None:
        """On a quiet database nothing else would move the slot, and the server would keep WAL forever."""
        now = time.monotonic()
        if now - self.last_beat < self.cfg.heartbeat_seconds:
            return
        self.last_beat = now
        self.conn.execute(sql.SQL("INSERT INTO {} (id, beat_at) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET "
                                  "beat_at = excluded.beat_at").format(sql.Identifier(*_qualified(HEARTBEAT_TABLE))))
        self._record_lag()

    def slot_status(self) -> dict[str, Any]:
        return read_slot_status(self.conn, self.cfg.slot_name)

    def _record_lag(self) -> None:
        status = self.slot_status()
        if status.get("exists"):
            SLOT_LAG.labels(self.cfg.slot_name).set(status["lag_bytes"])

    def stop(self, *_args: Any) -> None:
        self.stopping.set()


def read_slot_status(conn: psycopg.Connection, slot: str) -> dict[str, Any]:
    """Slot position and lag in bytes (WAL the server keeps for us), for metrics and `crmsync capture status`."""
    row = conn.execute(
        """SELECT confirmed_flush_lsn::text, restart_lsn::text,
                  pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
           FROM pg_replication_slots WHERE slot_name = %s""", (slot,)).fetchone()
    if row is None:
        return {"slot": slot, "exists": False}
    return {"slot": slot, "exists": True, "confirmed_flush_lsn": row[0], "restart_lsn": row[1],
            "lag_bytes": int(row[2] or 0)}


def main(settings: Settings, bootstrap_servers: str, dsn: str) -> None:
    pg.migrate(dsn)
    service = CaptureService(settings, bootstrap_servers, dsn)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    service.run()
