"""Benchmark: two-way sync end to end, against the speed of its slowest raw stage, as a user runs it.

Every service runs as its own process under the `crmsync run` supervisor, with the local HTTPS Salesforce
sandbox, the embedded broker and PostgreSQL and the shipped (default) mappings: accounts, contacts, purchases.
One run (`make bench`, or `.venv/bin/python bench/sync.py`) prints:

1. Raw stages, each alone, in this run: the CRM read (the poller's change source reading every object of the
   mappings, REST query and Bulk API 2.0 query), the broker (producing and consuming change-sized keyed
   messages), the Campaign write (the Campaign writer applying `create` commands from Kafka), and for the other
   direction the Campaign read (capture's snapshot query) and the CRM write (the connector's sink, Bulk 2.0).
2. The backfill, both directions, from starting the services to the last linked record: N contacts (and the
   sandbox's N/5 accounts) CRM → an empty Campaign; N recipients (and their organisations and purchases)
   Campaign → an empty CRM. Records/s, and the ratio to the slowest raw stage of that direction.
3. The CRM → Campaign backfill with 1 and with 2 workers (streams and writers as 2 processes each): the same
   final state (a digest of every synced row), records/s and per worker.
4. Peak RSS of every service (and CPU seconds) in the CRM → Campaign backfill at each size (--sizes).

`--quick` runs everything small (development); `--only STEP` runs one step. `updates` and `freshness` (steady
Campaign updates → CRM; latency at a steady rate, split by stage) run only when asked for with --only.
Each backfill gets its own state dir, so its own broker, PostgreSQL and sandbox; everything started is stopped
even when a step fails. Prints tables; writes them as JSON with --json. Not a test.

Run: .venv/bin/python bench/sync.py [--quick] [--contacts 100000] [--sizes 10000,100000,1000000]
                                    [--only raw|import|export|workers|memory|updates|freshness] [--json FILE]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crmsync import config, connectors, infra, kafka, lag, pg, process, topics  # noqa: E402
from crmsync.campaign.seed import seed as seed_campaign  # noqa: E402
from crmsync.config import Settings  # noqa: E402
from crmsync.drift import clients_for  # noqa: E402
from crmsync.envelope import ApplyCommand, Change, changes_from_message  # noqa: E402
from crmsync.run import (SANDBOX_ACCOUNT, Sandbox, Supervisor, effective_settings, only_mappings, plan,  # noqa: E402
                         start_sandbox, write_effective_config)
from connectors.salesforce.client import SalesforceClient  # noqa: E402
from services.campaign_writer.service import CampaignWriter  # noqa: E402
from streams.app import APP_ID as STREAMS_GROUP  # noqa: E402

MAPPING = "contacts"  # the mapping the updates and freshness steps use
POLL_INTERVAL = 2.0  # `crmsync service poller --interval` default, which the supervisor uses
UPDATE_TRANSACTION = 500
IDLE_SECONDS = 30  # how long the poller's calls are counted with nothing changing
LOOKBACK_MINUTES = 5  # connectors/salesforce/source.py DEFAULT_LOOKBACK_SECONDS
GOAL_RATIO = 0.8
GOAL_RATE = 10_000
GOAL_RSS = 300 * 2**20
SCALED_SERVICES = ("streams", "writer-campaign", "writer-crm")
# the synced columns of each Campaign table: what "the same final state" compares, row by row
DIGEST = {"recipients": "crm_id, email, first_name, last_name, job_title, city, zip_code, birth_date",
          "organisations": "crm_id, name, industry, city, website"}


# -- one isolated world per run -----------------------------------------------------------------------------------
@dataclass
class World:
    name: str
    base: Settings  # its own state dir: its own broker, PostgreSQL and sandbox
    found: infra.Endpoints
    sandbox: Sandbox
    settings: Settings  # effective: the sandbox account and the mappings of this run
    supervisor: Supervisor
    _client: SalesforceClient | None = None

    @property
    def client(self) -> SalesforceClient:
        """Our own API client (its calls are subtracted from the sandbox's request counts)."""
        if self._client is None:
            self._client = clients_for(self.settings)[SANDBOX_ACCOUNT]
        return self._client

    def scalar(self, sql: str, params: tuple = ()) -> Any:
        with pg.connect(self.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
            return conn.execute(sql, params).fetchone()[0]

    def soql_count(self, where: str, obj: str = "Contact") -> int:
        clause = f" WHERE {where}" if where else ""
        return self.client.call("query", lambda sf: sf.query(f"SELECT COUNT() FROM {obj}{clause}"))["totalSize"]

    def linked(self) -> int:
        return self.scalar("SELECT count(*) FROM crmsync.sync_state WHERE mapping = %s AND crm_id IS NOT NULL "
                           "AND campaign_key IS NOT NULL AND NOT deleted", (MAPPING,))

    def tick(self) -> None:
        self.supervisor.check()  # restart a service that died, as `crmsync run` does


@contextmanager
def world(root: Path, name: str, contacts: int, console: Console, *, account: dict | None = None,
          mappings: list[str] | tuple[str, ...] | None = (MAPPING,), recipients: int = 0,
          workers: int = 1) -> Iterator[World]:
    """A broker, a PostgreSQL, a sandbox seeded with `contacts` (and contacts/5 accounts), Campaign seeded with
    `recipients` (and their organisations and purchases), and the services of `mappings` (None: the shipped
    mappings) ready to start as `workers` processes each. `account`: settings of the sandbox account to change
    (e.g. {"cdc": False})."""
    state = root / name
    base = config.load(environ={"CRMSYNC_STATE_DIR": str(state)})
    found = infra.up(base)
    sandbox = supervisor = None
    try:
        pg.migrate(found.campaign_dsn)
        console.print(f"[{name}] starting the Salesforce sandbox with {contacts:,} contacts …")
        sandbox = start_sandbox(state, seed_contacts=contacts, log_file=state / "sandbox-salesforce.log")
        effective = effective_settings(base, sandbox)
        if mappings is not None:
            effective = only_mappings(effective, list(mappings))
        if account:
            accounts = {SANDBOX_ACCOUNT: effective.accounts[SANDBOX_ACCOUNT].model_copy(update=account)}
            effective = effective.model_copy(update={"accounts": accounts})
        if recipients:
            console.print(f"[{name}] seeding Campaign with {recipients:,} recipients …")
            seed_campaign(found.campaign_dsn, recipients)
        config_file = write_effective_config(effective, found, state / "run" / "crmsync.yaml")
        supervisor = Supervisor(plan(effective, workers), found, config_file, state / "logs")
        yield World(name, base, found, sandbox, effective, supervisor)
    finally:
        if supervisor is not None:
            supervisor.stop()
        if sandbox is not None:
            process.stop(sandbox.process)
        infra.down(base)


def requests_total(stats: dict) -> int:
    return sum(stats["requests"].values())


def requests_delta(before: dict, after: dict) -> dict[str, int]:
    keys = set(before["requests"]) | set(after["requests"])
    delta = {k: after["requests"].get(k, 0) - before["requests"].get(k, 0) for k in keys}
    return {k: v for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v}


def writes_delta(before: dict, after: dict, obj: str = "Contact") -> dict[str, int]:
    b, a = before["writes"].get(obj, {}), after["writes"].get(obj, {})
    return {op: a.get(op, 0) - b.get(op, 0) for op in set(a) | set(b) if a.get(op, 0) - b.get(op, 0)}


def client_calls(client: SalesforceClient) -> int:
    return sum(client.calls.values())


def calls_per_minute(w: World, seconds: float) -> dict:
    """The services' sandbox API calls per minute over `seconds` of doing nothing ourselves, by endpoint."""
    before, started = w.sandbox.stats(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        w.tick()
        time.sleep(1)
    after, minutes = w.sandbox.stats(), (time.perf_counter() - started) / 60
    return {"per_minute": (requests_total(after) - requests_total(before)) / minutes,
            "by_endpoint": {k: v / minutes for k, v in requests_delta(before, after).items()}}


# -- processes: peak RSS and CPU seconds -----------------------------------------------------------------------
def _vm_hwm(pid: int) -> int | None:
    """The kernel's record of the process's peak resident set (bytes)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Monitor:
    """Samples every process of a world once a second: peak RSS (VmHWM) and CPU seconds (user + system).
    Processes first seen after `start()` (the services it starts) count their CPU from zero; PostgreSQL counts
    the postmaster, its live backends and the backends it has reaped."""

    def __init__(self, w: World) -> None:
        self.w = w
        status = infra.status(w.base)
        self.fixed = {"sandbox": w.sandbox.process.pid, "postgres": (status["postgres"] or {}).get("pid"),
                      "broker": (status["broker"] or {}).get("pid")}
        self.peak: dict[str, int] = {}
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.procs: dict[int, psutil.Process] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Monitor":
        self._sample(baseline=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self._sample()

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            self._sample()

    def _targets(self) -> list[tuple[str, int]]:
        found = [(label, child.pid) for label, child in list(self.w.supervisor.children.items())]
        return found + [(label, pid) for label, pid in self.fixed.items() if pid]

    def _cpu(self, label: str, proc: psutil.Process) -> float:
        times = proc.cpu_times()
        total = times.user + times.system
        if label == "postgres":
            total += times.children_user + times.children_system
            for child in proc.children():
                try:
                    t = child.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        return total

    def _sample(self, baseline: bool = False) -> None:
        for label, pid in self._targets():
            try:
                proc = self.procs.get(pid) or self.procs.setdefault(pid, psutil.Process(pid))
                cpu = self._cpu(label, proc)
                rss = _vm_hwm(pid) or proc.memory_info().rss
            except psutil.Error:
                continue
            self.first.setdefault((label, pid), cpu if baseline else 0.0)
            self.last[(label, pid)] = cpu
            if label != "postgres":  # its RSS counts shared buffers touched: not comparable
                self.peak[label] = max(self.peak.get(label, 0), rss)

    def cpu_seconds(self) -> dict[str, float]:
        result: dict[str, float] = {}
        for (label, pid), cpu in self.last.items():
            result[label] = result.get(label, 0.0) + cpu - self.first.get((label, pid), 0.0)
        return result


# -- waiting -----------------------------------------------------------------------------------------------------
def wait_linked(w: World, n: int, console: Console) -> float:
    """Until n contacts are linked both ways (CRM id and Campaign key known to the streams)."""
    started = time.perf_counter()
    deadline = started + 180 + n / 50
    while (count := w.linked()) < n:
        w.tick()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {count:,} of {n:,} contacts linked after {time.perf_counter() - started:.0f} s")
        time.sleep(1)
    console.print(f"[{w.name}] {n:,} contacts linked after {time.perf_counter() - started:.0f} s")
    return time.perf_counter() - started


def _all_lag(w: World) -> tuple[int, int]:
    """(messages produced, messages not yet consumed) over every change and apply topic of the mappings."""
    s, campaign = w.settings, w.settings.campaign.name
    groups: dict[str, set[str]] = {}
    for m in s.mappings:
        groups.setdefault(STREAMS_GROUP, set()).update({topics.changes("crm", m.account, m.crm_object),
                                                        topics.changes("campaign", campaign, m.campaign_table)})
        groups.setdefault(f"crmsync-writer-campaign-{campaign}", set()).add(
            topics.apply("campaign", campaign, m.campaign_table))
        groups.setdefault(f"crmsync-writer-crm-{m.account}", set()).add(topics.apply("crm", m.account, m.crm_object))
    produced = behind = 0
    for group, names in groups.items():
        p, b = lag.total(lag.group_lag(w.found.bootstrap_servers, group, sorted(names)))
        produced, behind = produced + p, behind + b
    return produced, behind


def wait_quiet(w: World, console: Console, settle: float = 2 * POLL_INTERVAL + 1, timeout: float = 300) -> None:
    """Until every consumer has caught up and nothing new was produced for `settle` seconds (two poll cycles:
    the poller has read back the echoes of our writes, and the streams recognised them)."""
    started = time.perf_counter()
    last_produced, since = -1, time.perf_counter()
    while time.perf_counter() - started < timeout:
        w.tick()
        produced, behind = _all_lag(w)
        if produced != last_produced or behind:
            last_produced, since = produced, time.perf_counter()
        elif time.perf_counter() - since >= settle:
            return
        time.sleep(1)
    console.print(f"[yellow][{w.name}] not quiet after {timeout:.0f} s; going on[/yellow]")


# -- reading markers back from the topics ---------------------------------------------------------------------
def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def first_seen(found: infra.Endpoints, topic: str, extract: Callable[[bytes], list[tuple[str, float]]],
               prefix: str) -> dict[str, float]:
    """marker → the earliest timestamp `extract` finds for it in `topic` (read from the beginning)."""
    reader = Consumer({"bootstrap.servers": found.bootstrap_servers, "group.id": f"crmsync-bench-{uuid.uuid4().hex}",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    seen: dict[str, float] = {}
    try:
        metadata = reader.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions]
        reader.assign(partitions)
        open_partitions = {tp.partition for tp in partitions}
        quiet_polls, deadline = 0, time.monotonic() + 120
        while time.monotonic() < deadline and (open_partitions or quiet_polls < 2):
            batch = reader.consume(5000, 0.5)
            quiet_polls = 0 if batch else quiet_polls + 1
            for message in batch:
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard(message.partition())
                    continue
                if prefix.encode() not in message.value():
                    continue
                for marker, ts in extract(message.value()):
                    if marker.startswith(prefix) and (marker not in seen or ts < seen[marker]):
                        seen[marker] = ts
    finally:
        reader.close()
    return seen


def census(found: infra.Endpoints) -> list[dict]:
    """Every crmsync topic read from the beginning: messages, distinct keys, and for change topics the ops,
    the messages that repeat a change id already seen (the same record version published twice) and those
    the streams will take for an echo (`origin` set)."""
    reader = Consumer({"bootstrap.servers": found.bootstrap_servers, "group.id": f"crmsync-bench-{uuid.uuid4().hex}",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    rows = []
    try:
        names = sorted(t for t in reader.list_topics(timeout=10).topics if t.startswith(topics.PREFIX + "."))
        for topic in names:
            meta = reader.list_topics(topic, timeout=10).topics[topic]
            reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
            open_partitions, keys, ids = set(meta.partitions), set(), set()
            row = {"topic": topic, "messages": 0, "repeated": 0, "echo": 0, "ops": {}}
            deadline = time.monotonic() + 300
            while open_partitions and time.monotonic() < deadline:
                for message in reader.consume(5000, 1.0):
                    if message.error() is not None:
                        if message.error().code() == KafkaError._PARTITION_EOF:
                            open_partitions.discard(message.partition())
                        continue
                    row["messages"] += 1
                    keys.add(message.key())
                    if topics.parse(topic)["kind"] == "changes":
                        payload = json.loads(message.value())
                        row["repeated"] += payload["id"] in ids
                        ids.add(payload["id"])
                        row["echo"] += bool(payload.get("origin"))
                        row["ops"][payload["op"]] = row["ops"].get(payload["op"], 0) + 1
            reader.unassign()
            row["keys"] = len(keys)
            rows.append(row)
    finally:
        reader.close()
    return rows


def print_census(rows: list[dict], console: Console) -> None:
    table = Table(title="Messages per topic (read back from the beginning)")
    for column in ("topic", "messages", "distinct keys", "per key", "same change id again", "origin set", "ops"):
        table.add_column(column, justify="right" if column != "topic" else "left")
    for row in rows:
        table.add_row(row["topic"], f"{row['messages']:,}", f"{row['keys']:,}",
                      f"{row['messages'] / max(1, row['keys']):.2f}", f"{row['repeated']:,}", f"{row['echo']:,}",
                      " ".join(f"{op}={n:,}" for op, n in sorted(row["ops"].items())))
    table.add_row("total", f"{sum(r['messages'] for r in rows):,}", "", "", "", "", "")
    console.print(table)


def _changes(field_name: str) -> Callable[[bytes], list[tuple[str, float]]]:
    def extract(raw: bytes) -> list[tuple[str, float]]:
        return [(str((c.after or {}).get(field_name)), _epoch(c.captured_ts)) for c in changes_from_message(raw)]
    return extract


def _commands(field_name: str) -> Callable[[bytes], list[tuple[str, float]]]:
    def extract(raw: bytes) -> list[tuple[str, float]]:
        command = ApplyCommand.from_json(raw)
        return [(str(command.values.get(field_name)), _epoch(command.created_ts))]
    return extract


# -- statistics -----------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def stage_split(order: list[dict[str, float]], names: list[str]) -> list[tuple[str, float, float]]:
    """Per consecutive pair of timestamps (all markers seen at both): (stage name, p50, p95) in seconds."""
    result = []
    for name, a, b in zip(names, order, order[1:]):
        deltas = [b[m] - a[m] for m in a.keys() & b.keys()]
        result.append((name, percentile(deltas, 0.5), percentile(deltas, 0.95)))
    return result



# -- 1. raw stages, each alone ------------------------------------------------------------------------------------
def _rate(records: int, seconds: float) -> float:
    return records / seconds if seconds > 0 else float("nan")


def _stage(name: str, records: int, seconds: float, note: str = "") -> dict:
    return {"stage": name, "records": records, "seconds": seconds, "rate": _rate(records, seconds), "note": note}


def crm_read(w: World, objects: list[str], **options: Any) -> tuple[dict, list[bytes]]:
    """The poller's change source reading every object from scratch, alone (no broker): what the backfill's
    CRM side can do at best. Returns the stage and a sample of the changes as JSON (the broker stage sends
    messages of their size)."""
    account = w.settings.accounts[SANDBOX_ACCOUNT]
    connector = connectors.for_account(account)
    client = connector.client(SANDBOX_ACCOUNT, account)
    records, sample = 0, []
    started = time.perf_counter()
    for obj in objects:
        source = connector.change_source(client, obj, **options)
        for page in source.read(None):
            records += len(page.changes)
            if len(sample) < 2000:
                sample += [c.to_json() for c in page.changes[:2000 - len(sample)]]
    seconds = time.perf_counter() - started
    client.close()
    label = "CRM read, Bulk API 2.0 query" if options.get("bulk_threshold") == 1 else "CRM read, REST query"
    return _stage(label, records, seconds, f"{', '.join(objects)}: the poller's change source, no broker"), sample


def broker(found: infra.Endpoints, sample: list[bytes], n: int, partitions: int) -> dict:
    """n keyed change messages of the backfill's sizes through the broker: produced with crmsync's producer
    (batching, lz4), then consumed with its consumer settings. The stage rate is the slower of the two."""
    topic = f"crmsync.bench.{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(found.bootstrap_servers, [topic], partitions)
    producer, tracker = kafka.producer(found.bootstrap_servers), kafka.DeliveryTracker()
    started = time.perf_counter()
    for i in range(n):
        kafka.produce(producer, tracker, topic, sample[i % len(sample)], str(i).encode())
    kafka.flush_all(producer, tracker)
    produced = time.perf_counter() - started
    consumer = kafka.consumer(found.bootstrap_servers, f"crmsync-bench-{uuid.uuid4().hex}",
                              **{"queued.max.messages.kbytes": 16384})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])  # no group join
    got, started = 0, time.perf_counter()
    deadline = started + 300
    while got < n and time.perf_counter() < deadline:
        got += len(kafka.without_errors(consumer.consume(5000, 0.5), logging.getLogger("bench")))
    consumed = time.perf_counter() - started
    consumer.close()
    size = sum(map(len, sample)) / len(sample)
    rate = min(_rate(n, produced), _rate(got, consumed))
    return {"stage": "broker, produce + consume", "records": n, "seconds": n / rate, "rate": rate,
            "note": f"{size:,.0f}-byte messages, {partitions} partitions: produce {_rate(n, produced):,.0f}/s, "
                    f"consume {_rate(got, consumed):,.0f}/s"}


def campaign_write(found: infra.Endpoints, n: int, partitions: int, console: Console) -> dict:
    """The Campaign writer alone: n `create` commands (new contacts, keys allocated as the streams do) waiting
    in Kafka, applied by the writer's own loop, until the last row is in (a database of its own)."""
    dsn, name = pg.fresh_database(found.campaign_dsn, "benchwrite")
    topic = topics.apply("campaign", name, "recipients")
    kafka.ensure_topics(found.bootstrap_servers, [topic], partitions)
    with pg.connect(dsn, autocommit=True) as conn:
        first = conn.execute("SELECT setval('recipients_id_seq', nextval('recipients_id_seq') + %s)", (n,)
                             ).fetchone()[0] - n
    producer, tracker = kafka.producer(found.bootstrap_servers), kafka.DeliveryTracker()
    for i in range(n):
        key = first + i
        values = {"first_name": f"First{i}", "last_name": f"Last{i}", "email": f"p{i}@example.com",
                  "job_title": "Buyer", "phone": "+44 20 7946 0000", "birth_date": "1990-02-03", "city": "Lyon",
                  "zip_code": "69001", "email_opt_out": False, "street": "1 Main Street"}
        command = ApplyCommand(id=f"bench-{i}", side="campaign", target=name, object="recipients", action="create",
                               key={"id": key}, match={"crm_account": "bench", "crm_object": "Contact",
                                                       "crm_id": f"003{i:015d}"},
                               values=values, cause=f"bench-{i}", expect={c: None for c in values})
        kafka.produce(producer, tracker, topic, command.to_json(), str(key).encode())
    kafka.flush_all(producer, tracker)
    writer = CampaignWriter(dsn, found.bootstrap_servers, name, tables=["recipients"], partitions=partitions)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    started = time.perf_counter()
    thread.start()
    written = 0
    with pg.connect(dsn, autocommit=True) as conn:
        while written < n and time.perf_counter() - started < 600:
            time.sleep(0.2)
            written = conn.execute("SELECT count(*) FROM recipients").fetchone()[0]
    seconds = time.perf_counter() - started
    stop.set()
    thread.join(60)
    return _stage("Campaign write", written, seconds, "the Campaign writer's loop: Kafka → create commands → "
                                                      "PostgreSQL, one process")


def campaign_read(w: World) -> dict:
    """What change capture's first snapshot does per row, alone: read every synced table with a server-side
    cursor and build the changes (no broker)."""
    tables = sorted({m.campaign_table for m in w.settings.mappings})
    records, started = 0, time.perf_counter()
    with pg.connect(w.found.campaign_dsn, application="crmsync-bench") as conn:
        for table in tables:
            cursor = conn.cursor(name="bench_read", row_factory=dict_row)
            cursor.execute(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - table names from our mappings
            while rows := cursor.fetchmany(5000):
                for row in rows:
                    values = {k: pg.json_ready(v) for k, v in row.items()}
                    Change(id="x", side="campaign", source="campaign", object=table, op="r", key={"id": row["id"]},
                           after=values, position={}).to_json()
                records += len(rows)
            cursor.close()
    return _stage("Campaign read", records, time.perf_counter() - started,
                  f"{', '.join(tables)}: capture's snapshot query and changes, no broker")


def crm_write(root: Path, n: int, console: Console) -> dict:
    """The connector's sink alone (Bulk API 2.0 above its threshold): n new Contacts, as the streams send new
    Campaign rows (upsert by the Campaign key), into an empty sandbox of its own."""
    state = root / "crm-write"
    sandbox = start_sandbox(state, log_file=state / "sandbox.log")
    try:
        settings = effective_settings(config.load(environ={"CRMSYNC_STATE_DIR": str(state)}), sandbox)
        account = settings.accounts[SANDBOX_ACCOUNT]
        connector = connectors.for_account(account)
        client = connector.client(SANDBOX_ACCOUNT, account)
        sink = connector.sink(client)
        commands = [ApplyCommand(id=f"bench-{i}", side="crm", target=SANDBOX_ACCOUNT, object="Contact",
                                 action="upsert", key=None, match={"Campaign_Key__c": str(i + 1)}, cause="bench",
                                 values={"FirstName": f"First{i}", "LastName": f"Last{i}",
                                         "Email": f"p{i}@example.com", "Title": "Buyer", "MailingCity": "Lyon",
                                         "Campaign_Key__c": str(i + 1)}) for i in range(n)]
        started = time.perf_counter()
        outcomes = []
        for start in range(0, n, 5000):  # the CRM writer's batches
            outcomes += sink.apply(commands[start:start + 5000])
        seconds = time.perf_counter() - started
        client.close()
        ok = sum(o.ok for o in outcomes)
        return _stage("CRM write, Bulk API 2.0", ok, seconds, "the connector's sink, batches of 5,000 (the CRM "
                                                              "writer's), no broker")
    finally:
        process.stop(sandbox.process)


# -- 2. the backfills ------------------------------------------------------------------------------------------------
class Timeline:
    """Once a second: how far each stage got (change messages published, decided by the streams; apply commands
    published, applied by the writer; linked rows). Where a backfill waits shows as the stage whose count
    trails the one before it."""

    def __init__(self, w: World, linked: Callable[[], int], every: float = 2.0) -> None:
        s = w.settings
        self.w, self.linked, self.every = w, linked, every
        self.changes = sorted({topics.changes("crm", m.account, m.crm_object) for m in s.mappings}
                              | {topics.changes("campaign", s.campaign.name, m.campaign_table) for m in s.mappings})
        self.to_campaign = sorted({topics.apply("campaign", s.campaign.name, m.campaign_table) for m in s.mappings})
        self.to_crm = sorted({topics.apply("crm", m.account, m.crm_object) for m in s.mappings})
        self.rows: list[dict] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.perf_counter()

    def start(self) -> "Timeline":
        self.thread.start()
        return self

    def stop(self) -> list[dict]:
        self.stopping.set()
        self.thread.join()
        return self.rows

    def _run(self) -> None:
        """Cheap on purpose (it shares the 2 cores with what it measures): one long-lived probe per group, the
        brokers' high watermarks as they report them (which may trail the log by a batch on the embedded broker:
        fine for a timeline), every `every` s."""
        bootstrap, campaign = self.w.found.bootstrap_servers, self.w.settings.campaign.name
        probes = [_GroupProbe(bootstrap, group, names) for group, names in (
            (STREAMS_GROUP, self.changes), (f"crmsync-writer-campaign-{campaign}", self.to_campaign),
            (f"crmsync-writer-crm-{SANDBOX_ACCOUNT}", self.to_crm))]
        try:
            while not self.stopping.wait(self.every):
                try:
                    (published, behind), (commands, writer_behind), (crm_commands, crm_behind) = \
                        [probe.totals() for probe in probes]
                    self.rows.append({"t": round(time.perf_counter() - self.started, 1), "changes": published,
                                      "decided": published - behind, "commands": commands + crm_commands,
                                      "applied": commands - writer_behind + crm_commands - crm_behind,
                                      "linked": self.linked()})
                except Exception:  # noqa: BLE001 - a missed sample is not worth a failed benchmark
                    continue
        finally:
            for probe in probes:
                probe.close()


class _GroupProbe:
    """(messages produced, messages the group has not consumed) on some topics, from one consumer kept open."""

    def __init__(self, bootstrap: str, group: str, topic_names: list[str]) -> None:
        self.consumer = Consumer(kafka.client_config(bootstrap, {"group.id": group, "enable.auto.commit": False}))
        self.topic_names = topic_names
        self.partitions: list[TopicPartition] = []

    def totals(self) -> tuple[int, int]:
        if len({tp.topic for tp in self.partitions}) < len(self.topic_names):  # (the services create them)
            metadata = self.consumer.list_topics(timeout=5)
            self.partitions = [TopicPartition(t, p) for t in self.topic_names if t in metadata.topics
                               for p in metadata.topics[t].partitions]
        committed = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.committed(self.partitions, timeout=5)}
        produced = behind = 0
        for tp in self.partitions:
            end = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
            produced += end
            behind += max(0, end - max(0, committed.get((tp.topic, tp.partition), 0)))
        return produced, behind

    def close(self) -> None:
        self.consumer.close()


def print_timeline(rows: list[dict], console: Console, every: float = 5.0) -> None:
    table = Table(title="Where the backfill was (cumulative counts)")
    for column in ("seconds", "changes published", "decided (streams)", "commands", "applied (writers)", "linked"):
        table.add_column(column, justify="right")
    shown = -every
    for row in rows:
        if row["t"] - shown >= every or row is rows[-1]:
            shown = row["t"]
            table.add_row(f"{row['t']:.0f}", *(f"{row[k]:,}" for k in ("changes", "decided", "commands", "applied",
                                                                         "linked")))
    console.print(table)


def digest(w: World) -> str:
    """One hash of every synced row of Campaign: two runs that end in the same state give the same digest."""
    found = hashlib.sha256()
    with pg.connect(w.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
        for table, columns in sorted(DIGEST.items()):
            for row in conn.execute(f"SELECT {columns} FROM {table} ORDER BY crm_id"):  # noqa: S608
                found.update(repr(row).encode())
    return found.hexdigest()[:16]


def import_backfill(root: Path, name: str, n: int, console: Console, *, workers: int = 1,
                    raw: bool = False) -> dict:
    """N contacts and N/5 accounts in the sandbox, an empty Campaign, the shipped mappings: from starting the
    services until every one of them is a linked Campaign row. With `raw`, the CRM read alone is measured first
    in the same world (REST and Bulk API 2.0)."""
    with world(root, name, n, console, mappings=None, workers=workers) as w:
        objects = sorted({m.crm_object for m in w.settings.mappings})
        stages = []
        if raw:
            console.print(f"[{name}] raw stage: the CRM read alone …")
            rest, sample = crm_read(w, objects, bulk_threshold=10**12)
            bulk, _ = crm_read(w, objects, bulk_threshold=1)
            stages = [rest, bulk] if bulk["stage"] != rest["stage"] else [rest]
            w.sample = sample
        expected = n + max(1, n // 5)
        before = w.sandbox.stats()
        monitor = Monitor(w).start()
        # counting linked rows scans the tables: at 1,000,000 rows every 0.5 s it took a core from what it measured
        every = max(0.5, expected / 200_000)
        timeline = Timeline(w, lambda: w.scalar(
            "SELECT (SELECT count(*) FROM recipients WHERE crm_id IS NOT NULL) + "
            "(SELECT count(*) FROM organisations WHERE crm_id IS NOT NULL)"), every=max(2.0, 4 * every)).start()
        started = time.perf_counter()
        w.supervisor.start()
        console.print(f"[{name}] services started ({workers} worker(s)); waiting for {expected:,} linked rows …")
        marks: dict[str, float] = {}
        linked, deadline = 0, started + 300 + n / 200
        with pg.connect(w.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
            while linked < expected and time.perf_counter() < deadline:
                w.tick()
                time.sleep(every)
                linked = conn.execute("SELECT (SELECT count(*) FROM recipients WHERE crm_id IS NOT NULL) + "
                                      "(SELECT count(*) FROM organisations WHERE crm_id IS NOT NULL)").fetchone()[0]
                if linked and "first linked row" not in marks:
                    marks["first linked row"] = time.perf_counter() - started
        seconds = time.perf_counter() - started
        monitor.stop()
        after = w.sandbox.stats()
        result = {"timeline": timeline.stop(), "direction": "CRM → Campaign", "n": n, "records": expected,
                  "linked": linked, "seconds": seconds,
                  "rate": _rate(linked, seconds), "workers": workers, "marks": marks, "cpu": monitor.cpu_seconds(),
                  "peak_rss": monitor.peak, "restarts": dict(w.supervisor.restarts),
                  "requests": requests_total(after) - requests_total(before),
                  "by_endpoint": requests_delta(before, after), "digest": digest(w), "raw": stages}
        if raw:
            result["sample"] = w.sample
    return result


def export_backfill(root: Path, n: int, console: Console, *, raw: bool = False,
                    account: dict | None = None) -> dict:
    """N recipients (N/5 organisations, N/2 purchases) in Campaign, an empty CRM, the shipped mappings: from
    starting the services until the CRM holds every one of them. With `raw`, the Campaign read alone first.
    `account`: settings of the sandbox account to change (e.g. {"cdc": False}: the poller polls)."""
    with world(root, "export", 0, console, mappings=None, recipients=n, account=account) as w:
        stages = [campaign_read(w)] if raw else []
        with pg.connect(w.found.campaign_dsn, autocommit=True) as conn:
            wanted = {obj: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
                      for obj, table in (("Account", "organisations"), ("Contact", "recipients"),
                                         ("Opportunity", "purchases"))}
        expected = sum(wanted.values())
        before = w.sandbox.stats()
        monitor = Monitor(w).start()
        timeline = Timeline(w, lambda: w.scalar("SELECT count(*) FROM crmsync.sync_state WHERE crm_id IS NOT NULL "
                                                 "AND campaign_key IS NOT NULL")).start()
        started = time.perf_counter()
        w.supervisor.start()
        console.print(f"[export] services started; waiting for {expected:,} CRM records …")
        arrived, deadline = {}, started + 300 + n / 100
        while sum(arrived.values()) < expected and time.perf_counter() < deadline:
            w.tick()
            time.sleep(1.0)
            arrived = {obj: w.soql_count("", obj) for obj in wanted}
        seconds = time.perf_counter() - started
        monitor.stop()
        timeline.stop()  # before the broker goes down
        after = w.sandbox.stats()
        total = sum(arrived.values())
        console.print("[export] waiting for the echoes to settle, then counting every topic's messages …")
        wait_quiet(w, console)
        messages = census(w.found)
    return {"timeline": timeline.rows, "census": messages, "direction": "Campaign → CRM", "n": n, "records": expected, "linked": total,
            "seconds": seconds,
            "rate": _rate(total, seconds), "workers": 1, "cpu": monitor.cpu_seconds(), "peak_rss": monitor.peak,
            "restarts": dict(w.supervisor.restarts), "arrived": arrived,
            "requests": requests_total(after) - requests_total(before), "by_endpoint": requests_delta(before, after),
            "raw": stages}


# -- 2. Campaign updates → CRM ---------------------------------------------------------------------------------
def updates(root: Path, n: int, console: Console) -> dict:
    with world(root, "updates", n, console) as w:
        w.supervisor.start()
        wait_linked(w, n, console)
        wait_quiet(w, console)
        client = w.client
        idle = calls_per_minute(w, IDLE_SECONDS)
        marker = f"bench-upd-{uuid.uuid4().hex[:8]}"
        console.print(f"[updates] {n:,} Campaign updates in transactions of {UPDATE_TRANSACTION} …")
        monitor = Monitor(w).start()
        before, mine_before = w.sandbox.stats(), client_calls(client)
        with pg.connect(w.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id LIMIT %s",
                                              (n,))]
            started = time.perf_counter()
            for start in range(0, len(ids), UPDATE_TRANSACTION):
                with conn.transaction():
                    conn.execute("UPDATE recipients SET job_title = %s WHERE id = ANY(%s)",
                                 (marker, ids[start:start + UPDATE_TRANSACTION]))
        committed = time.perf_counter() - started
        deadline = time.perf_counter() + 180 + n / 100
        arrived = 0
        while time.perf_counter() < deadline:
            w.tick()
            arrived = w.soql_count(f"Title = '{marker}'")
            if arrived >= len(ids):
                break
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        after, mine = w.sandbox.stats(), client_calls(client) - mine_before
        by_endpoint = requests_delta(before, after)
        by_endpoint["GET query"] = by_endpoint.get("GET query", 0) - mine  # our own COUNT() polls
        monitor.stop()
        console.print("[updates] waiting for the poller to read back the echoes, then counting its calls …")
        wait_quiet(w, console)
        in_window = calls_per_minute(w, IDLE_SECONDS)
        restarts = dict(w.supervisor.restarts)
    return {"n": len(ids), "arrived": arrived, "seconds": seconds, "commit_seconds": committed,
            "requests": requests_total(after) - requests_total(before) - mine,
            "by_endpoint": {k: v for k, v in by_endpoint.items() if v},
            "writes": writes_delta(before, after), "idle": idle, "in_window": in_window,
            "cpu": monitor.cpu_seconds(), "peak_rss": monitor.peak,
            "restarts": restarts}


# -- 3. freshness ------------------------------------------------------------------------------------------------
def _paced(count: int, rate: float, step: Callable[[int], None]) -> float:
    """Call step(i) for i in range(count) at `rate` calls per second; return the seconds it took."""
    started = time.perf_counter()
    for i in range(count):
        step(i)
        delay = started + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return time.perf_counter() - started


def _wait_for(w: World, count: Callable[[], int], total: int, timeout: float) -> int:
    deadline, got = time.perf_counter() + timeout, 0
    while time.perf_counter() < deadline:
        w.tick()
        got = count()
        if got >= total:
            break
        time.sleep(1)
    return got


def _crm_stamps(w: World, prefix: str) -> dict[str, float]:
    return {r["Title"]: _epoch(r["SystemModstamp"]) for page in w.client.query_all_pages(
        f"SELECT Id, Title, SystemModstamp FROM Contact WHERE Title LIKE '{prefix}%'") for r in page}


def campaign_to_crm(w: World, ids: list[int], rate: int, console: Console) -> dict:
    n, prefix = len(ids), f"fa-{uuid.uuid4().hex[:6]}-"
    committed: dict[str, float] = {}
    console.print(f"[freshness] Campaign → CRM: {n:,} single-row commits at {rate}/s …")
    with pg.connect(w.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
        def step(i: int) -> None:
            conn.execute("UPDATE recipients SET job_title = %s WHERE id = %s", (f"{prefix}{i}", ids[i]))
            committed[f"{prefix}{i}"] = time.time()
        took = _paced(n, rate, step)
    _wait_for(w, lambda: w.soql_count(f"Title LIKE '{prefix}%'"), n, 120)
    applied = _crm_stamps(w, prefix)
    captured = first_seen(w.found, topics.changes("campaign", w.settings.campaign.name, "recipients"),
                          _changes("job_title"), prefix)
    decided = first_seen(w.found, topics.apply("crm", SANDBOX_ACCOUNT, "Contact"), _commands("Title"), prefix)
    latencies = [applied[m] - committed[m] for m in applied.keys() & committed.keys()]
    return {"sent": n, "rate": n / took, "arrived": len(latencies), "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95), "max": max(latencies, default=float("nan")),
            "stages": stage_split([committed, captured, decided, applied],
                                  ["commit → capture published", "→ streams decided", "→ CRM applied (writer)"])}


def crm_to_campaign(w: World, crm_ids: list[str], rate: int, console: Console) -> dict:
    n, prefix = len(crm_ids), f"fb-{uuid.uuid4().hex[:6]}-"
    per_call = max(1, round(rate / 10))
    calls = math.ceil(n / per_call)
    console.print(f"[freshness] CRM → Campaign: {n:,} updates, {per_call} per PATCH, {rate}/s …")

    def step(i: int) -> None:
        chunk = range(i * per_call, min(n, (i + 1) * per_call))
        results = w.client.collections_update("Contact", [{"id": crm_ids[j], "Title": f"{prefix}{j}"} for j in chunk])
        failed = [r for r in results if not r.get("success")]
        if failed:
            raise RuntimeError(f"the sandbox refused {len(failed)} updates: {failed[0]}")
    took = _paced(calls, rate / per_call, step)
    _wait_for(w, lambda: w.scalar("SELECT count(*) FROM recipients WHERE job_title LIKE %s", (f"{prefix}%",)), n, 120)
    changed = _crm_stamps(w, prefix)
    with pg.connect(w.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
        applied = {t: u.timestamp() for t, u in conn.execute(
            "SELECT job_title, updated_at FROM recipients WHERE job_title LIKE %s", (f"{prefix}%",))}
    polled = first_seen(w.found, topics.changes("crm", SANDBOX_ACCOUNT, "Contact"), _changes("Title"), prefix)
    decided = first_seen(w.found, topics.apply("campaign", w.settings.campaign.name, "recipients"),
                         _commands("job_title"), prefix)
    latencies = [applied[m] - changed[m] for m in applied.keys() & changed.keys()]
    return {"sent": n, "rate": n / took, "arrived": len(latencies), "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95), "max": max(latencies, default=float("nan")),
            "stages": stage_split([changed, polled, decided, applied],
                                  ["CRM change → poller published", "→ streams decided",
                                   "→ Campaign applied (writer)"])}


def freshness(root: Path, rate: int, seconds: int, console: Console) -> dict:
    n = rate * seconds  # one record per change, so every record keeps the stamp of its one change
    with world(root, "freshness", max(n, 1000), console) as w:
        w.supervisor.start()
        wait_linked(w, max(n, 1000), console)
        wait_quiet(w, console)
        with pg.connect(w.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
            rows = conn.execute("SELECT id, crm_id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id LIMIT %s",
                                (n,)).fetchall()
        monitor = Monitor(w).start()
        to_crm = campaign_to_crm(w, [r[0] for r in rows], rate, console)
        wait_quiet(w, console)
        to_campaign = crm_to_campaign(w, [r[1] for r in rows], rate, console)
        monitor.stop()
        restarts = dict(w.supervisor.restarts)
    return {"to_crm": to_crm, "to_campaign": to_campaign, "cpu": monitor.cpu_seconds(), "restarts": restarts}


# -- the report -------------------------------------------------------------------------------------------------
def _mb(value: int) -> str:
    return f"{value / 2**20:,.0f} MB"


def _cpu_list(cpu: dict[str, float], top: int) -> str:
    ranked = sorted(cpu.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{label} {value:.0f} s" for label, value in ranked)


def old_report(results: dict, console: Console, args: argparse.Namespace) -> None:
    """The updates and freshness steps (--only updates / freshness)."""
    if not ("updates" in results or "freshness" in results):
        return
    table = Table(title="Contacts mapping, every service a process, embedded broker + PostgreSQL", show_lines=True)
    for column in ("measure", "value", "target", "what limits it"):
        table.add_column(column, justify="right" if column == "value" else "left")
    if u := results.get("updates"):
        rate = u["arrived"] / u["seconds"]
        per_record = u["requests"] / max(1, sum(u["writes"].values()))
        done = "" if u["arrived"] >= u["n"] else f" (TIMED OUT: {u['arrived']:,} of {u['n']:,})"
        table.add_row(f"{u['n']:,} Campaign updates → CRM (transactions of {UPDATE_TRANSACTION}): records/s",
                      f"{rate:,.0f}{done}", "",
                      f"first commit → all {u['n']:,} in the sandbox {u['seconds']:.1f} s (committing took "
                      f"{u['commit_seconds']:.1f} s). Busiest: {_busiest(u['cpu'], u['seconds'])}"
                      + (f"; restarts {u['restarts']}" if u["restarts"] else ""))
        endpoints = ", ".join(f"{k} {v:,}" for k, v in u["by_endpoint"].items())
        writes = ", ".join(f"{op} {count:,}" for op, count in u["writes"].items())
        table.add_row("  updates: sandbox API calls per written record", f"{per_record:.4f}",
                      f"≤ 0.005 {_mark(per_record <= 0.005)}",
                      f"{u['requests']:,} calls for {writes} Contact writes: {endpoints}")
        idle, in_window = u["idle"], u["in_window"]
        table.add_row("  idle: sandbox API calls per minute with nothing changing", f"{idle['per_minute']:.0f}", "",
                      f"= {idle['per_minute'] * 60 * 24:,.0f} per day for one object, poller every "
                      f"{POLL_INTERVAL:.0f} s: " + ", ".join(f"{k} {v:.0f}" for k, v in idle["by_endpoint"].items()))
        extra = in_window["per_minute"] - idle["per_minute"]
        table.add_row(f"  after the updates, nothing changing: API calls per minute (the {u['n']:,} updated Contacts "
                      f"are inside the poller's {LOOKBACK_MINUTES} min lookback)", f"{in_window['per_minute']:.0f}",
                      "", f"{extra:+.0f}/min over idle: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                                      in_window["by_endpoint"].items())
                      + ". Every cycle re-reads the window; it is measured back from the poller's cursor, which "
                      "only a newer change moves, so this lasts until one comes")
    if f := results.get("freshness"):
        for key, title, target, limit in (
                ("to_crm", "Campaign commit → CRM applied", 1.0, "≤ 1 s"),
                ("to_campaign", "CRM change → Campaign applied", POLL_INTERVAL + 1,
                 f"≤ poll interval + 1 s = {POLL_INTERVAL + 1:.0f} s")):
            r = f[key]
            stages = "; ".join(f"{name} p50 {p50:.2f} s / p95 {p95:.2f} s" for name, p50, p95 in r["stages"])
            table.add_row(f"freshness {title}: p50", f"{r['p50']:.2f} s", "", f"{r['arrived']:,} of {r['sent']:,} "
                          f"changes arrived, sent at {r['rate']:.0f}/s; max {r['max']:.2f} s")
            table.add_row(f"freshness {title}: p95", f"{r['p95']:.2f} s", f"{limit} {_mark(r['p95'] <= target)}",
                          stages)
        table.add_row("  freshness: CPU during both directions", "", "",
                      _cpu_list(f["cpu"], 8) + " CPU"
                      + (f"; restarts {f['restarts']}" if f["restarts"] else ""))
    console.print(table)
    console.print(f"Salesforce poller interval: {POLL_INTERVAL:.0f} s (the default of `crmsync service poller "
                  f"--interval`).")


def _busiest(cpu: dict[str, float], seconds: float, top: int = 3) -> str:
    return f"{_cpu_list(cpu, top)} CPU in {seconds:.0f} s wall ({os.cpu_count()} cores)"


def _mark(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def _service_labels(peaks: dict[str, int]) -> list[str]:
    return sorted(label for label in peaks if label not in ("sandbox", "broker", "postgres"))


def report(results: dict, console: Console) -> None:
    if "raw" in results:
        table = Table(title=f"Raw stages, each alone ({os.cpu_count()} cores)", show_lines=False)
        for column in ("direction", "stage", "records", "seconds", "records/s", "how"):
            table.add_column(column, justify="right" if column in ("records", "seconds", "records/s") else "left")
        for direction, stages in results["raw"].items():
            for st in stages:
                table.add_row(direction, st["stage"], f"{st['records']:,}", f"{st['seconds']:.1f}",
                              f"{st['rate']:,.0f}", st["note"])
        console.print(table)
    backfills = [results[k] for k in ("import", "export") if k in results]
    if backfills:
        table = Table(title="Backfill end to end, shipped mappings, every service a process", show_lines=True)
        for column in ("direction", "records", "seconds", "records/s", "slowest raw stage", "ratio", "goals",
                       "CPU seconds (busiest)"):
            table.add_column(column)
        for b in backfills:
            raw = results.get("raw", {}).get(b["direction"], [])
            slowest = min(raw, key=lambda st: st["rate"]) if raw else None
            ratio = b["rate"] / slowest["rate"] if slowest and slowest["rate"] else float("nan")
            done = "" if b["linked"] >= b["records"] else f" (TIMED OUT: {b['linked']:,} of {b['records']:,})"
            bulk = [st for st in raw if "Bulk" in st["stage"]]
            goals = (f"ratio ≥ {GOAL_RATIO:.0%} {_mark(ratio >= GOAL_RATIO)}; "
                     f"≥ {GOAL_RATE:,}/s {_mark(b['rate'] >= GOAL_RATE)}" + (" (Bulk 2.0)" if bulk else ""))
            table.add_row(b["direction"], f"{b['records']:,}{done}", f"{b['seconds']:.1f}", f"{b['rate']:,.0f}",
                          f"{slowest['stage']} {slowest['rate']:,.0f}/s" if slowest else "–", f"{ratio:.0%}",
                          goals, _cpu_list(b["cpu"], 9) + (f"; restarts {b['restarts']}" if b["restarts"] else ""))
        console.print(table)
    for key in ("import", "export"):
        if results.get(key, {}).get("timeline"):
            print_timeline(results[key]["timeline"], console)
        if results.get(key, {}).get("census"):
            print_census(results[key]["census"], console)
    if "workers" in results:
        runs = results["workers"]
        table = Table(title="Scale-out: CRM → Campaign backfill with 1 and 2 workers (streams and writers)")
        for column in ("workers", "records", "seconds", "records/s", "per worker", "final state digest",
                       "same state", "CPU (streams, writers)"):
            table.add_column(column)
        first = runs[0]["digest"]
        for r in runs:
            cpu = {k: v for k, v in r["cpu"].items() if k.split()[0] in SCALED_SERVICES}
            table.add_row(str(r["workers"]), f"{r['linked']:,}", f"{r['seconds']:.1f}", f"{r['rate']:,.0f}",
                          f"{r['rate'] / r['workers']:,.0f}", r["digest"], "yes" if r["digest"] == first else "NO",
                          _cpu_list(cpu, 6))
        console.print(table)
    if "memory" in results:
        runs = results["memory"]
        labels = sorted({label for r in runs for label in _service_labels(r["peak_rss"])})
        table = Table(title=f"Peak RSS per service in the CRM → Campaign backfill (goal < {_mb(GOAL_RSS)} and flat)")
        table.add_column("service")
        for r in runs:
            table.add_column(f"{r['n']:,} contacts", justify="right")
        table.add_column("goal")
        for label in [*labels, "sandbox", "broker"]:
            peaks = [r["peak_rss"].get(label, 0) for r in runs]
            goal = "" if label in ("sandbox", "broker") else _mark(max(peaks) < GOAL_RSS)
            table.add_row(label, *(_mb(v) for v in peaks), goal)
        table.add_row("seconds / records/s", *(f"{r['seconds']:.0f} s / {r['rate']:,.0f}" for r in runs), "")
        console.print(table)


def run_all(args: argparse.Namespace, root: Path, console: Console) -> dict:
    results: dict[str, Any] = {}
    only, n = args.only, args.contacts
    wanted = (lambda step: only in (None, step))
    defaults = config.load(environ={"CRMSYNC_STATE_DIR": str(root / "x")})
    partitions = defaults.kafka.partitions
    kafka.tune_groups(defaults)  # the in-process stages join groups as the services do on the embedded broker
    if wanted("raw") or wanted("import") or wanted("workers") or wanted("memory"):
        imported = import_backfill(root, "import", n, console, raw=wanted("raw") or wanted("import"))
        sample = imported.pop("sample", None)
        if imported["raw"]:
            results.setdefault("raw", {})["CRM → Campaign"] = list(imported["raw"])
        if wanted("raw") or wanted("import"):
            state = root / "raw"
            base = config.load(environ={"CRMSYNC_STATE_DIR": str(state)})
            found = infra.up(base)
            try:
                console.print("[raw] the broker alone, then the Campaign write alone …")
                shared = [broker(found, sample or [b"{}" * 800], n, partitions)]
                shared.append(campaign_write(found, n, partitions, console))
            finally:
                infra.down(base)
            results["raw"]["CRM → Campaign"] += shared
        if wanted("import"):
            results["import"] = imported
        if wanted("workers"):
            results["workers"] = [imported, import_backfill(root, "import-2", n, console, workers=2)]
        if wanted("memory"):
            runs = {n: imported}
            for size in args.sizes:
                if size not in runs:
                    runs[size] = import_backfill(root, f"memory-{size}", size, console)
            results["memory"] = [runs[size] for size in sorted(runs)]
    if wanted("export") or wanted("raw"):
        exported = export_backfill(root, n, console, raw=True, account={"cdc": False} if args.poll else None)
        console.print("[raw] the CRM write alone …")
        stages = [*exported["raw"], crm_write(root, n, console)]
        if "raw" in results:
            stages.append(results["raw"]["CRM → Campaign"][-2])  # the broker, measured once
        results.setdefault("raw", {})["Campaign → CRM"] = stages
        if wanted("export"):
            results["export"] = exported
    if only == "updates":
        results["updates"] = updates(root, args.updates, console)
    if only == "freshness":
        results["freshness"] = freshness(root, args.rate, args.seconds, console)
    return results


def main() -> None:
    process.interrupt_on_stop_signals()  # a SIGTERM (timeout, CI) unwinds: the servers started are stopped
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--contacts", type=int, default=None, help="contacts (and recipients) to backfill")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes for the memory table")
    parser.add_argument("--updates", type=int, default=10_000, help="Campaign updates to send (--only updates)")
    parser.add_argument("--rate", type=int, default=200, help="changes per second (--only freshness)")
    parser.add_argument("--seconds", type=int, default=30, help="length of each freshness run")
    parser.add_argument("--only", choices=("raw", "import", "export", "workers", "memory", "updates", "freshness"))
    parser.add_argument("--poll", action="store_true",
                        help="the export's poller polls the CRM (the account's cdc: false) instead of CDC events")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the state dirs (logs, data) afterwards")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the in-process stages' own logs stay out of the tables
    args.contacts = args.contacts or (5_000 if args.quick else 100_000)
    args.sizes = [int(s) for s in (args.sizes or ("2000,5000" if args.quick else "10000,100000,1000000")).split(",")]
    console = Console(width=max(180, Console().width))
    root = Path(tempfile.mkdtemp(prefix="crmsync-bench-sync-"))
    results: dict[str, Any] = {}
    try:
        results = run_all(args, root, console)
    finally:
        if results:
            report(results, console)
            old_report(results, console, args)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1, default=str))
        if args.keep:
            console.print(f"state dirs and logs kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
