"""Benchmark: the Salesforce connector against the local HTTPS sandbox, on the embedded broker and PostgreSQL.

1. Poller, initial snapshot: N seeded contacts → Kafka (published and acknowledged, checkpoint stored).
2. Writer, sObject Collections: N upserts by external id (200 per call) from the apply topic.
3. Writer, Bulk API 2.0: N upserts by external id, as one ingest job.
4. Poller, incremental: the 2·N contacts the writers created, picked up as changes.

For each: records/s and API calls per 1,000 records (every HTTP request the connector sent, as counted by its own
client). The writer's clock starts once its consumer group is joined and all commands are queued, so producing
them is not included.

Run: .venv/bin/python bench/salesforce.py [--records 20000]   (prints a table; not a test)
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crmsync import config, infra, kafka, pg, process, topics  # noqa: E402
from connectors.salesforce.account import SalesforceAccount
from crmsync.config import Settings  # noqa: E402
from crmsync.envelope import ApplyCommand, record_key  # noqa: E402
from connectors.salesforce.client import SalesforceClient  # noqa: E402
from services.crm_poller import service as poller  # noqa: E402
from services.crm_writer import service as writer  # noqa: E402
from sandboxes.salesforce.settings import DEFAULT_CREDENTIALS  # noqa: E402

BANNER = re.compile(r"Salesforce sandbox: (https://\S+)\s+\(CA: (.+)\)")


def start_sandbox(state: Path, seed_contacts: int) -> tuple[subprocess.Popen, str, Path]:
    """Run `crmsync sandbox salesforce` on a free port and wait for its banner (base URL and CA file)."""
    log_path = state / "salesforce.log"
    state.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandboxes.cli", "salesforce", "--port", "0", "--state",
             str(state / "salesforce"), "--seed-contacts", str(seed_contacts), "--log-level", "warning"],
            cwd=Path(__file__).resolve().parents[1], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        match = BANNER.search(log_path.read_text(errors="replace"))
        if match:
            return process, match.group(1), Path(match.group(2))
        if process.poll() is not None:
            raise RuntimeError(f"sandbox exited:\n{log_path.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("sandbox did not start")


def account(base_url: str, ca: Path) -> SalesforceAccount:
    c = DEFAULT_CREDENTIALS
    return SalesforceAccount(login_url=base_url, username=c.username, password=c.password,
                             security_token=c.security_token, client_id=c.client_id, client_secret=c.client_secret,
                             ca_file=ca)


def calls(client: SalesforceClient) -> int:
    return sum(client.calls.values())


def bench_poll(settings: Settings, found: infra.Endpoints, name: str, client: SalesforceClient) -> dict:
    built = poller.build(settings, found, name, ["Contact"], client=client)
    before = calls(client)
    started = time.perf_counter()
    result = built.objects["Contact"].poll_once()
    seconds = time.perf_counter() - started
    built.close()
    return {"records": result.total, "seconds": seconds, "calls": calls(client) - before}


def bench_write(settings: Settings, found: infra.Endpoints, name: str, client: SalesforceClient, records: int,
                sink_options: dict) -> dict:
    """Join the consumer group first, then queue `records` upsert commands, then time the writer alone."""
    prefix = uuid.uuid4().hex[:6]
    topic = topics.apply("crm", name, "Contact")
    kafka.ensure_topics(found.bootstrap_servers, [topic])
    w = writer.build(settings, found, name, client=client, objects=["Contact"], **sink_options)
    w.connect()
    producer, tracker = kafka.producer(found.bootstrap_servers), kafka.DeliveryTracker()
    for i in range(records):
        key = f"BENCH-{prefix}-{i:07d}"
        command = ApplyCommand(id=f"bench-{key}", side="crm", target=name, object="Contact", action="upsert",
                               key=None, match={"Campaign_Key__c": key},
                               values={"FirstName": "Bench", "LastName": f"Contact {i}",
                                       "Email": f"bench.{prefix}.{i}@example.com", "Title": "Benchmark"},
                               cause=f"bench:{key}")
        producer.produce(topic, value=command.to_json(), key=record_key(command.match), on_delivery=tracker)
        producer.poll(0)
    kafka.flush_all(producer, tracker)
    before = calls(client)
    started = time.perf_counter()
    handled = rejected = 0
    while handled < records:
        result = w.run_once()
        handled += result.applied + result.rejected
        rejected += result.rejected
    seconds = time.perf_counter() - started
    w.close()
    return {"records": records, "seconds": seconds, "calls": calls(client) - before, "rejected": rejected}


def main() -> None:
    process.interrupt_on_stop_signals()  # a SIGTERM (timeout, CI) unwinds: the servers started are stopped
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    n = args.records
    console = Console(width=max(140, Console().width))
    state = Path(tempfile.mkdtemp(prefix="crmsync-bench-sf-"))
    environ = {"CRMSYNC_STATE_DIR": str(state),
               **{k: v for k, v in os.environ.items() if k in ("KAFKA_BOOTSTRAP_SERVERS", "CAMPAIGN_DSN")}}
    base_settings = config.load(environ=environ)
    found = infra.up(base_settings)
    pg.migrate(found.campaign_dsn)
    console.print(f"starting the Salesforce sandbox with {n:,} contacts …")
    process, base_url, ca = start_sandbox(state / "sandboxes", n)
    rows = []
    try:
        name = f"bench{uuid.uuid4().hex[:6]}"
        acct = account(base_url, ca)
        settings = Settings(state_dir=state, accounts={name: acct})
        client = SalesforceClient(name, acct)

        console.print("poller: initial snapshot …")
        snap = bench_poll(settings, found, name, client)
        rows.append(("poller: initial snapshot", "REST query (2,000/page)", snap))
        console.print(f"writer: {n:,} upserts through sObject Collections …")
        rest = bench_write(settings, found, name, client, n, {"bulk_threshold": 10**9})
        rows.append(("writer: upsert by external id", "REST sObject Collections (200/call)", rest))
        console.print(f"writer: {n:,} upserts through Bulk API 2.0 …")
        bulk = bench_write(settings, found, name, client, n,
                           {"bulk_threshold": 2000, "bulk_poll_interval": 0.2})
        rows.append(("writer: upsert by external id", "Bulk API 2.0 ingest", bulk))
        console.print("poller: incremental (everything the writers created) …")
        incr = bench_poll(settings, found, name, client)
        rows.append(("poller: incremental changes", "REST queryAll (2,000/page)", incr))
        usage = client.api_usage()
    finally:
        process.terminate()
        process.wait(15)
        infra.down(base_settings)

    table = Table(title=f"Salesforce connector ↔ local sandbox ({n:,} records), embedded broker + PostgreSQL, "
                        f"{os.cpu_count()} cores")
    for column, justify in (("step", "left"), ("API", "left"), ("records", "right"), ("seconds", "right"),
                            ("records/s", "right"), ("API calls", "right"), ("calls / 1,000 records", "right")):
        table.add_column(column, justify=justify)
    for step, api, r in rows:
        table.add_row(step, api, f"{r['records']:,}", f"{r['seconds']:.1f}", f"{r['records'] / r['seconds']:,.0f}",
                      f"{r['calls']:,}", f"{1000 * r['calls'] / max(1, r['records']):.2f}")
    console.print(table)
    if usage:
        console.print(f"org API usage after the run: {usage[0]:,} of {usage[1]:,} daily requests")


if __name__ == "__main__":
    main()
