"""Benchmark: every CRM end to end through `crmsync run`'s services, against its local HTTPS sandbox (issues 14, 15).

For each CRM, on its own embedded broker and PostgreSQL, with the CRM's shipped contacts mapping:
1. **Backfill CRM → Campaign**: the sandbox seeded with N contacts, an empty Campaign; from the services' start
   until every contact is linked to a recipient. Records/s, and the CRM requests per record (the sandbox's own
   count of API requests, so every retry and sign-in is in it).
2. **Campaign updates → CRM**: M linked recipients get a new job title in one statement; until the CRM writer
   has applied M commands (its Prometheus counter). Records/s, requests per written record, and for Dynamics the
   peak of its 5-minute service-protection window (6,000 requests per user) sampled during the run.
3. **Freshness**, one edit at a time, K each way: Campaign → CRM from the UPDATE's commit until the CRM writer
   counted the write as applied (the CRM acknowledged it); CRM → Campaign from the CRM's answer to the edit until
   the recipient row holds it. p50 / p95 / max in seconds.

Run: .venv/bin/python bench/crms.py [--crm dynamics] [--crm oracle] [--records N] [--updates M] [--edits K]
(prints a table; not a test). Defaults follow the issues: Dynamics 100,000 / 10,000, Oracle 5,000 / 1,000,
Salesforce 20,000 / 10,000.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crmsync import connectors, pg, process  # noqa: E402
from crmsync.envelope import ApplyCommand  # noqa: E402
from crmsync.run import Supervisor  # noqa: E402
from tests.pipeline import CrmWorld, crm_pipeline  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

DEFAULTS = {"dynamics": (100_000, 10_000), "oracle": (5_000, 1_000), "salesforce": (20_000, 10_000)}
APPLIED = re.compile(r'^crmsync_crm_writer_applied_total\{[^}]*\} ([0-9.e+]+)$', re.M)


@dataclass
class Figures:
    crm: str
    records: int
    updates: int
    backfill_seconds: float = 0.0
    backfill_requests: int = 0
    update_seconds: float = 0.0
    update_requests: int = 0
    peak_window: int | None = None  # Dynamics: most requests seen in the 5-minute protection window
    to_crm: list[float] = field(default_factory=list)
    to_campaign: list[float] = field(default_factory=list)


def api_requests(sandbox: Any) -> int:
    """Every API request the sandbox served (its admin endpoints left out)."""
    return sum(n for path, n in sandbox.stats()["requests"].items() if "__sandbox" not in path)


def applied_count(url: str) -> float:
    return sum(float(v) for v in APPLIED.findall(httpx.get(url, timeout=5).text))


class WindowSampler(threading.Thread):
    """Samples Dynamics' service-protection window (requests per user in the last 5 minutes) every second."""

    def __init__(self, sandbox: Any) -> None:
        super().__init__(daemon=True)
        self.sandbox, self.peak, self.halt = sandbox, 0, threading.Event()

    def run(self) -> None:
        while not self.halt.wait(1.0):
            window = self.sandbox.stats().get("service_protection", {}).get("in_window", {})
            self.peak = max([self.peak, *window.values()])


def linked(dsn: str, mapping: str) -> int:
    with pg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE mapping = %s AND crm_id IS NOT NULL "
                            "AND campaign_key IS NOT NULL", (mapping,)).fetchone()[0]


def bench(crm: str, records: int, updates: int, edits: int, console: Console) -> Figures:
    figures = Figures(crm, records, updates)
    with tempfile.TemporaryDirectory(prefix=f"crmsync-bench-{crm}-") as tmp, \
            crm_pipeline(Path(tmp) / "state", crms={crm: records}, recipients=0) as world:
        supervisor, sandbox, mapping = world.supervisor, world.sandboxes[crm], world.mapping(crm).name
        dsn, writer_metrics = world.found.campaign_dsn, supervisor.metrics_targets()[f"writer-crm {crm}"]
        sampler = WindowSampler(sandbox) if crm == "dynamics" else None
        if sampler:
            sampler.start()
        console.print(f"{crm}: backfill of {records:,} contacts …")
        before, started = api_requests(sandbox), time.monotonic()
        supervisor.start()
        wait_for(lambda: linked(dsn, mapping) >= records, 3600, "the backfill", supervisor, every=0.5)
        figures.backfill_seconds, figures.backfill_requests = time.monotonic() - started, api_requests(sandbox) - before

        console.print(f"{crm}: {updates:,} Campaign updates …")
        wait_for(lambda: _reachable(writer_metrics), 60, "the CRM writer's metrics", supervisor, every=0.5)
        applied_before, before = applied_count(writer_metrics), api_requests(sandbox)
        started = time.monotonic()
        with pg.connect(dsn) as conn:
            conn.execute("UPDATE recipients SET job_title = 'bench ' || id WHERE id IN (SELECT campaign_key FROM "
                         "crmsync.sync_state WHERE mapping = %s ORDER BY campaign_key LIMIT %s)", (mapping, updates))
        wait_for(lambda: applied_count(writer_metrics) - applied_before >= updates, 3600, "the updates", supervisor,
                 every=0.5)
        figures.update_seconds, figures.update_requests = time.monotonic() - started, api_requests(sandbox) - before
        if sampler:
            sampler.halt.set()
            figures.peak_window = sampler.peak

        console.print(f"{crm}: freshness, {edits} edits each way …")
        figures.to_crm = freshness_to_crm(dsn, mapping, writer_metrics, supervisor, edits)
        figures.to_campaign = freshness_to_campaign(world, crm, edits)
    return figures


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def freshness_to_crm(dsn: str, mapping: str, writer_metrics: str, supervisor: Supervisor, edits: int) -> list[float]:
    times = []
    with pg.connect(dsn, autocommit=True) as conn:
        keys = [k for (k,) in conn.execute("SELECT campaign_key FROM crmsync.sync_state WHERE mapping = %s "
                                           "ORDER BY campaign_key DESC LIMIT %s", (mapping, edits))]
        for key in keys:
            applied = applied_count(writer_metrics)
            conn.execute("UPDATE recipients SET job_title = %s WHERE id = %s", (f"fresh {uuid.uuid4().hex[:8]}", key))
            started = time.monotonic()
            wait_for(lambda: applied_count(writer_metrics) > applied, 120, "a Campaign edit's write", supervisor,
                     every=0.02)
            times.append(time.monotonic() - started)
            time.sleep(0.5)
    return times


def freshness_to_campaign(world: CrmWorld, account: str, edits: int) -> list[float]:
    mapping = world.mapping(account)
    title = next(f.crm for f in mapping.fields if f.campaign == "job_title")
    sink = connectors.for_account(world.settings.accounts[account]).sink(world.clients[account])
    times = []
    with pg.connect(world.found.campaign_dsn, autocommit=True) as conn:
        pairs = conn.execute("SELECT crm_id, campaign_key FROM crmsync.sync_state WHERE mapping = %s "
                             "ORDER BY campaign_key LIMIT %s", (mapping.name, edits)).fetchall()
        for crm_id, key in pairs:
            value = f"crm {uuid.uuid4().hex[:8]}"
            [outcome] = sink.apply([ApplyCommand(id=f"bench:{uuid.uuid4().hex}", side="crm", target=account,
                                                 object=mapping.crm_object, action="upsert", key={"id": crm_id},
                                                 values={title: value}, cause="bench")])
            if not outcome.ok:
                raise RuntimeError(f"the CRM refused the bench edit: {outcome.code} {outcome.message}")
            started = time.monotonic()
            wait_for(lambda: conn.execute("SELECT job_title FROM recipients WHERE id = %s", (key,)).fetchone()[0] == value,
                     120, "a CRM edit's arrival", world.supervisor, every=0.02)
            times.append(time.monotonic() - started)
            time.sleep(0.5)
    return times


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))] if ordered else float("nan")


def table(results: list[Figures]) -> Table:
    out = Table(title="CRMs end to end (crmsync run's services, local HTTPS sandboxes, 2 cores)")
    for column in ("CRM", "backfill", "records/s", "requests/record", "updates", "records/s ", "requests/write",
                   "peak 5-min window", "fresh → CRM p50/p95/max s", "fresh → Campaign p50/p95/max s"):
        out.add_column(column, justify="right")
    for f in results:
        out.add_row(f.crm, f"{f.records:,}", f"{f.records / f.backfill_seconds:,.0f}",
                    f"{f.backfill_requests / f.records:.3f}", f"{f.updates:,}", f"{f.updates / f.update_seconds:,.0f}",
                    f"{f.update_requests / f.updates:.3f}",
                    "-" if f.peak_window is None else f"{f.peak_window:,} / 6,000",
                    *(f"{percentile(t, .5):.2f} / {percentile(t, .95):.2f} / {max(t):.2f}"
                      for t in (f.to_crm, f.to_campaign)))
    return out


def main() -> None:
    process.interrupt_on_stop_signals()  # a SIGTERM (timeout, CI) unwinds: the servers started are stopped
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crm", action="append", choices=sorted(DEFAULTS), help="repeatable; default dynamics, oracle")
    parser.add_argument("--records", type=int, help="contacts to backfill (default per CRM)")
    parser.add_argument("--updates", type=int, help="Campaign updates to write to the CRM (default per CRM)")
    parser.add_argument("--edits", type=int, default=20, help="single edits each way for freshness")
    args = parser.parse_args()
    console = Console()
    results = []
    for crm in args.crm or ["dynamics", "oracle"]:
        records, updates = args.records or DEFAULTS[crm][0], args.updates or DEFAULTS[crm][1]
        results.append(bench(crm, records, min(updates, records), args.edits, console))
    console.print(table(results))


if __name__ == "__main__":
    main()
