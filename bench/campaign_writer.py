"""Benchmark: the Campaign writer (ApplyCommands → PostgreSQL), on the embedded defaults.

1. `apply_batch` alone, in batches of 2,000: 100,000 inserts (upsert by CRM match, identity links written) and
   100,000 updates (key + match, the form the stream processors send for linked records).
2. End to end through Kafka with the writer as its own process (`python -m services.campaign_writer`):
   100,000 insert commands and then 100,000 update commands produced to the apply topic; records/s from the
   first produce to the last row landing, and the writer process's peak RSS.

Run: .venv/bin/python bench/campaign_writer.py  (prints a table; not a test)
"""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crmsync import config, infra, kafka, pg, process, topics  # noqa: E402
from crmsync.envelope import ApplyCommand, record_key  # noqa: E402
from services.campaign_writer.service import CampaignWriter  # noqa: E402

N = 100_000
BATCH = 2_000


def _fresh_database(found: infra.Endpoints) -> tuple[str, str]:
    return pg.fresh_database(found.campaign_dsn, "bench")


def insert_command(name: str, n: int, tag: str) -> ApplyCommand:
    return ApplyCommand(
        id=f"{tag}-ins-{n}", side="campaign", target=name, object="recipients", action="upsert", key=None,
        match={"crm_account": "bench", "crm_object": "Contact", "crm_id": f"003{tag}{n:012d}"},
        values={"email": f"person{n}@example.com", "first_name": f"First{n}", "last_name": f"Last{n}",
                "job_title": "Engineer", "city": "Lyon", "country_code": "FR", "birth_date": "1980-05-17",
                "email_opt_out": False},
        cause=f"bench:{n}", source_ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def update_command(name: str, n: int, key: int, tag: str, title: str) -> ApplyCommand:
    return ApplyCommand(
        id=f"{tag}-upd-{n}-{title}", side="campaign", target=name, object="recipients", action="upsert",
        key={"id": key}, match={"crm_account": "bench", "crm_object": "Contact", "crm_id": f"003{tag}{n:012d}"},
        values={"job_title": title, "city": "Paris"}, cause=f"bench:{n}",
        source_ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _keys(dsn: str, tag: str) -> dict[str, int]:
    with pg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT crm_id, id FROM recipients WHERE crm_id LIKE %s", (f"003{tag}%",)))


def in_process(found: infra.Endpoints) -> dict[str, float]:
    dsn, name = _fresh_database(found)
    writer = CampaignWriter(dsn, found.bootstrap_servers, name)
    inserts = [insert_command(name, n, "a") for n in range(N)]
    started = time.perf_counter()
    for start in range(0, N, BATCH):
        result = writer.apply_batch(inserts[start:start + BATCH])
        assert len(result.applied) == len(inserts[start:start + BATCH]), result.rejects[:1]
    insert_seconds = time.perf_counter() - started
    keys = _keys(dsn, "a")
    updates = [update_command(name, n, keys[f"003a{n:012d}"], "a", "Manager") for n in range(N)]
    started = time.perf_counter()
    for start in range(0, N, BATCH):
        writer.apply_batch(updates[start:start + BATCH])
    update_seconds = time.perf_counter() - started
    writer.close()
    return {"insert": N / insert_seconds, "update": N / update_seconds,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return


def _produce(found: infra.Endpoints, topic: str, commands: list[ApplyCommand]) -> None:
    producer = kafka.producer(found.bootstrap_servers)
    tracker = kafka.DeliveryTracker()
    for command in commands:
        while True:
            try:
                producer.produce(topic, value=command.to_json(), key=record_key(command.match), on_delivery=tracker)
                break
            except BufferError:
                producer.poll(0.05)
    kafka.flush_all(producer, tracker)


def _wait_count(dsn: str, query: str, wanted: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    with pg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute(query).fetchone()[0] >= wanted:
                return time.perf_counter()
            time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {wanted} rows: {query}")


def through_kafka(found: infra.Endpoints, state: Path) -> dict[str, float]:
    dsn, name = _fresh_database(found)
    topic = topics.apply("campaign", name, "recipients")
    kafka.ensure_topics(found.bootstrap_servers, [topic])
    cfg = state / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"campaign": {"name": name}}))
    writer = subprocess_writer(found, dsn, cfg, state)
    sampler = RssSampler(writer.pid)
    try:
        _produce(found, topic, [insert_command(name, -1, "warm")])  # wait until the writer has joined
        _wait_count(dsn, "SELECT count(*) FROM recipients", 1, timeout=120)
        started = time.perf_counter()
        _produce(found, topic, [insert_command(name, n, "k") for n in range(N)])
        done = _wait_count(dsn, "SELECT count(*) FROM recipients WHERE crm_id LIKE '003k%'", N)
        insert_rate = N / (done - started)
        keys = _keys(dsn, "k")
        updates = [update_command(name, n, keys[f"003k{n:012d}"], "k", "Director") for n in range(N)]
        started = time.perf_counter()
        _produce(found, topic, updates)
        done = _wait_count(dsn, "SELECT count(*) FROM recipients WHERE job_title = 'Director'", N)
        update_rate = N / (done - started)
    finally:
        process.stop(writer)
        sampler.stop.set()
    return {"insert": insert_rate, "update": update_rate, "rss_mb": sampler.peak / 2**20}


def subprocess_writer(found: infra.Endpoints, dsn: str, cfg: Path, state: Path):
    import subprocess

    env = process.service_env(infra.Endpoints(found.bootstrap_servers, dsn),
                              {"CRMSYNC_STATE_DIR": str(state), "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return subprocess.Popen([sys.executable, "-m", "services.campaign_writer", "--config", str(cfg),
                             "--tables", "recipients", "--log-level", "WARNING"],
                            env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                            stdout=open(state / "writer.log", "ab"), stderr=subprocess.STDOUT)


def main() -> None:
    process.interrupt_on_stop_signals()  # a SIGTERM (timeout, CI) unwinds: the servers started are stopped
    console = Console()
    state = Path(tempfile.mkdtemp(prefix="crmsync-bench-"))
    settings = config.load(environ={"CRMSYNC_STATE_DIR": str(state), **{k: v for k, v in os.environ.items()
                                                                        if k in ("KAFKA_BOOTSTRAP_SERVERS", "CAMPAIGN_DSN")}})
    found = infra.up(settings)
    try:
        console.print(f"apply_batch in process: {N:,} inserts, {N:,} updates …")
        direct = in_process(found)
        console.print(f"through Kafka, writer subprocess: {N:,} inserts, {N:,} updates …")
        end_to_end = through_kafka(found, state)
    finally:
        infra.down(settings)
    table = Table(title=f"Campaign writer, embedded defaults, {os.cpu_count()} cores")
    table.add_column("measure")
    table.add_column("inserts (match) rec/s", justify="right")
    table.add_column("updates (key+match) rec/s", justify="right")
    table.add_column("peak RSS", justify="right")
    table.add_row("apply_batch, batches of 2,000", f"{direct['insert']:,.0f}", f"{direct['update']:,.0f}",
                  f"{direct['rss_mb']:.0f} MB (bench process)")
    table.add_row("Kafka → writer process → PostgreSQL", f"{end_to_end['insert']:,.0f}",
                  f"{end_to_end['update']:,.0f}", f"{end_to_end['rss_mb']:.0f} MB (writer)")
    console.print(table)


if __name__ == "__main__":
    main()
