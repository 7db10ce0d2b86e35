"""Benchmark: two-way sync end to end. Every service runs as its own process under the `crmsync run` supervisor,
with the local HTTPS Salesforce sandbox, the embedded broker and PostgreSQL, and the contacts mapping only.

1. Backfill, CRM → Campaign: N contacts in the sandbox and an empty Campaign. Timed from starting the services
   until N recipients have a crm_id. Reports records/s, sandbox API requests, and the peak RSS and CPU seconds
   of every process.
2. Updates, Campaign → CRM: once N contacts are linked, N recipients get a new job_title in transactions of 500.
   Timed from the first commit until the sandbox holds N Contacts with that Title (SOQL COUNT()). Reports
   records/s and sandbox API calls per written record. Our own COUNT() queries are not counted.
3. Freshness at a steady rate, in each direction. Every change carries a unique marker and goes to a different
   record, so each record changes only once and keeps the stamp of when it was applied:
   (a) Campaign → CRM: single-row UPDATE commits at --rate/s. Freshness = the Contact's SystemModstamp (when the
       sandbox applied it) minus the time the commit returned.
   (b) CRM → Campaign: sObject Collections PATCHes of rate/10 records every 0.1 s through the connector's
       client. Freshness = recipients.updated_at (set by trigger when writer-campaign applied it) minus the
       Contact's SystemModstamp.
   Every timestamp comes from this machine's clock. The marked messages are then read back from the change and
   apply topics (Change.captured_ts, ApplyCommand.created_ts), which splits each latency into stages.

Each scenario gets its own state dir under one temp dir, so its own broker, PostgreSQL and sandbox. Services are
stopped, the sandbox is stopped and the infra is brought down even when a step fails.

Run: .venv/bin/python bench/sync.py [--contacts 100000] [--updates 10000] [--rate 200] [--seconds 30]
                                    [--only backfill|updates|freshness] [--keep]   (prints tables; not a test)
"""
from __future__ import annotations

import argparse
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
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crmsync import config, infra, lag, names, pg, process, topics  # noqa: E402
from crmsync.config import Settings  # noqa: E402
from crmsync.drift import clients_for  # noqa: E402
from crmsync.envelope import ApplyCommand, changes_from_message  # noqa: E402
from crmsync.run import (SANDBOX_ACCOUNT, Sandbox, Supervisor, effective_settings, only_mappings, plan,  # noqa: E402
                         start_sandbox, write_effective_config)
from connectors.salesforce.client import SalesforceClient  # noqa: E402
from streams.app import APP_ID as STREAMS_GROUP  # noqa: E402

MAPPING = "contacts"
POLL_INTERVAL = 2.0  # `crmsync service poller --interval` default, which the supervisor uses
UPDATE_TRANSACTION = 500
IDLE_SECONDS = 30  # how long the poller's calls are counted with nothing changing
LOOKBACK_MINUTES = 5  # connectors/salesforce/source.py DEFAULT_LOOKBACK_SECONDS
SERVICES = ("capture", "streams", "writer-campaign", f"poller {SANDBOX_ACCOUNT}",
            f"writer-crm {SANDBOX_ACCOUNT}")


# -- one isolated world per scenario ---------------------------------------------------------------------------
@dataclass
class World:
    name: str
    base: Settings  # its own state dir: its own broker, PostgreSQL and sandbox
    found: infra.Endpoints
    sandbox: Sandbox
    settings: Settings  # effective: the sandbox account, the contacts mapping alone
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

    def soql_count(self, where: str) -> int:
        return self.client.call("query", lambda sf: sf.query(f"SELECT COUNT() FROM Contact WHERE {where}"))["totalSize"]

    def linked(self) -> int:
        return self.scalar("SELECT count(*) FROM crmsync.sync_state WHERE mapping = %s AND crm_id IS NOT NULL "
                           "AND campaign_key IS NOT NULL AND NOT deleted", (MAPPING,))

    def tick(self) -> None:
        self.supervisor.check()  # restart a service that died, as `crmsync run` does


@contextmanager
def world(root: Path, name: str, contacts: int, console: Console, *, account: dict | None = None,
          mappings: tuple[str, ...] = (MAPPING,)) -> Iterator[World]:
    """`account`: settings of the sandbox account to change (e.g. {"cdc": False}); `mappings`: which of the
    shipped mappings run."""
    state = root / name
    base = config.load(environ={"CRMSYNC_STATE_DIR": str(state)})
    found = infra.up(base)
    sandbox = supervisor = None
    try:
        pg.migrate(found.campaign_dsn)
        console.print(f"[{name}] starting the Salesforce sandbox with {contacts:,} contacts …")
        sandbox = start_sandbox(state, seed_contacts=contacts, log_file=state / "sandbox-salesforce.log")
        effective = only_mappings(effective_settings(base, sandbox), list(mappings))
        if account:
            accounts = {SANDBOX_ACCOUNT: effective.accounts[SANDBOX_ACCOUNT].model_copy(update=account)}
            effective = effective.model_copy(update={"accounts": accounts})
        config_file = write_effective_config(effective, found, state / "run" / "crmsync.yaml")
        supervisor = Supervisor(plan(effective), found, config_file, state / "logs")
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
    """(messages produced, messages not yet consumed) over every change and apply topic of the mapping."""
    s, m = w.settings, w.settings.mappings[0]
    campaign = s.campaign.name
    groups = {
        STREAMS_GROUP: [topics.changes("crm", m.account, m.crm_object),
                        topics.changes("campaign", campaign, m.campaign_table)],
        f"crmsync-writer-campaign-{campaign}": [topics.apply("campaign", campaign, m.campaign_table)],
        f"crmsync-writer-crm-{m.account}": [topics.apply("crm", m.account, m.crm_object)],
    }
    produced = behind = 0
    for group, names in groups.items():
        p, b = lag.total(lag.group_lag(w.found.bootstrap_servers, group, names))
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


# -- 1. backfill ------------------------------------------------------------------------------------------------
def backfill(root: Path, n: int, console: Console) -> dict:
    with world(root, "backfill", n, console) as w:
        checkpoint = names.poller_checkpoint(SANDBOX_ACCOUNT, "Contact")
        before = w.sandbox.stats()
        monitor = Monitor(w).start()
        started_wall, started = time.time(), time.perf_counter()
        w.supervisor.start()
        console.print(f"[backfill] services started; waiting for {n:,} recipients with a crm_id …")
        marks: dict[str, float] = {}
        own_rows_read = own_scans = 0
        deadline = started + 180 + n / 25  # generous: the point is to measure, not to give up
        applied = 0
        with pg.connect(w.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
            while True:
                w.tick()
                applied = conn.execute("SELECT count(*) FROM recipients WHERE crm_id IS NOT NULL").fetchone()[0]
                own_scans, own_rows_read = own_scans + 1, own_rows_read + applied  # every row has a crm_id here
                decided = conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE mapping = %s "
                                       "AND crm_id IS NOT NULL", (MAPPING,)).fetchone()[0]
                now = time.perf_counter() - started
                if applied and "first recipient" not in marks:
                    marks["first recipient"] = now
                if decided >= n and "streams decided all" not in marks:
                    marks["streams decided all"] = now
                if "poller snapshot published" not in marks:
                    done = conn.execute("SELECT updated_at FROM crmsync.checkpoints WHERE name = %s AND "
                                        "(position->>'snapshot_done')::boolean", (checkpoint,)).fetchone()
                    if done:
                        marks["poller snapshot published"] = done[0].timestamp() - started_wall
                if applied >= n or time.perf_counter() > deadline:
                    break
                time.sleep(0.5)
            seconds = time.perf_counter() - started
            scans = conn.execute("SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables "
                                 "WHERE relname = 'recipients'").fetchone()
        marks["all recipients written"] = seconds
        after = w.sandbox.stats()
        monitor.stop()
        restarts = dict(w.supervisor.restarts)
    return {"n": n, "applied": applied, "seconds": seconds, "marks": marks,
            "requests": requests_total(after) - requests_total(before), "by_endpoint": requests_delta(before, after),
            "peak_rss": monitor.peak, "cpu": monitor.cpu_seconds(), "restarts": restarts,
            "recipients_seq_scans": scans[0] - own_scans, "recipients_rows_scanned": scans[1] - own_rows_read}


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
    return ", ".join(f"{label.split()[0]} {value:.0f} s" for label, value in ranked)


def _busiest(cpu: dict[str, float], seconds: float, top: int = 3) -> str:
    return f"{_cpu_list(cpu, top)} CPU in {seconds:.0f} s wall ({os.cpu_count()} cores)"


def _mark(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def report(results: dict, console: Console, args: argparse.Namespace) -> None:
    table = Table(title=f"Two-way sync Salesforce sandbox ⇄ Campaign, contacts mapping, every service a process, "
                        f"embedded broker + PostgreSQL, {os.cpu_count()} cores", show_lines=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target")
    table.add_column("what limits it")
    if b := results.get("backfill"):
        rate = b["applied"] / b["seconds"]
        marks = b["marks"]
        stages = "; ".join(f"{k} at {v:.0f} s" for k, v in sorted(marks.items(), key=lambda kv: kv[1]))
        done = "" if b["applied"] >= b["n"] else f" (TIMED OUT: {b['applied']:,} of {b['n']:,})"
        table.add_row(f"backfill {b['n']:,} contacts CRM → Campaign: records/s",
                      f"{rate:,.0f}{done}", f"≥ 10,000/s {_mark(rate >= 10_000)}",
                      f"{stages}. Busiest: {_busiest(b['cpu'], b['seconds'])}")
        table.add_row("  backfill: seconds, start of services → last recipient", f"{b['seconds']:,.1f} s", "",
                      f"recipients table: {b['recipients_seq_scans']:,} sequential scans reading "
                      f"{b['recipients_rows_scanned']:,} rows (our own count polls subtracted)")
        endpoints = ", ".join(f"{k} {v:,}" for k, v in b["by_endpoint"].items())
        table.add_row("  backfill: sandbox API requests", f"{b['requests']:,}", "",
                      f"{1000 * b['requests'] / max(1, b['applied']):.2f} per 1,000 records: {endpoints}")
        for label in SERVICES:
            table.add_row(f"  backfill: peak RSS {label.split()[0]}", _mb(b["peak_rss"].get(label, 0)), "",
                          f"CPU {b['cpu'].get(label, 0):.0f} s")
        table.add_row("  backfill: (sandbox / postgres / broker)",
                      f"{_mb(b['peak_rss'].get('sandbox', 0))} / – / {_mb(b['peak_rss'].get('broker', 0))}", "",
                      f"CPU {b['cpu'].get('sandbox', 0):.0f} s / {b['cpu'].get('postgres', 0):.0f} s / "
                      f"{b['cpu'].get('broker', 0):.0f} s" + (f"; restarts {b['restarts']}" if b["restarts"] else ""))
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
    console.print(f"Salesforce poller interval: {POLL_INTERVAL:.0f} s (the default of `crmsync service "
                  f"poller --interval`). Options: --contacts {args.contacts} --updates {args.updates} "
                  f"--rate {args.rate} --seconds {args.seconds}" + (f" --only {args.only}" if args.only else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000, help="contacts to backfill")
    parser.add_argument("--updates", type=int, default=10_000, help="Campaign updates to send to the CRM")
    parser.add_argument("--rate", type=int, default=200, help="changes per second in the freshness runs")
    parser.add_argument("--seconds", type=int, default=30, help="length of each freshness run")
    parser.add_argument("--only", choices=("backfill", "updates", "freshness"))
    parser.add_argument("--keep", action="store_true", help="keep the state dirs (logs, data) afterwards")
    args = parser.parse_args()
    console = Console(width=max(180, Console().width))
    root = Path(tempfile.mkdtemp(prefix="crmsync-bench-sync-"))
    results: dict[str, dict] = {}
    try:
        if args.only in (None, "backfill"):
            results["backfill"] = backfill(root, args.contacts, console)
        if args.only in (None, "updates"):
            results["updates"] = updates(root, args.updates, console)
        if args.only in (None, "freshness"):
            results["freshness"] = freshness(root, args.rate, args.seconds, console)
    finally:
        if results:
            report(results, console, args)
        if args.keep:
            console.print(f"state dirs and logs kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
