"""Benchmark: Campaign change capture (PostgreSQL logical decoding → Kafka), on the embedded defaults.

1. Throughput: 100,000 row updates (100 transactions of 1,000 rows) committed while capture runs; row
   changes per second from the first commit to the broker's acknowledgement of the last event.
2. Latency: a steady 500 single-row transactions per second for 20 s; p50/p95 of commit → broker ack.

Run: .venv/bin/python bench/capture.py  (prints a table; not a test)
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crmsync import config, infra, pg, process  # noqa: E402
from crmsync.campaign.seed import seed  # noqa: E402
from services.capture.service import CaptureService  # noqa: E402


def _fresh_database(found: infra.Endpoints) -> tuple[str, str]:
    return pg.fresh_database(found.campaign_dsn, "bench")


def _start_capture(found, dsn, name) -> tuple[CaptureService, threading.Thread]:
    settings = config.Settings.model_validate({"campaign": {"name": name, "slot_name": f"slot_{name}",
                                                            "publication": f"pub_{name}", "batch_changes": 20000}})
    service = CaptureService(settings, found.bootstrap_servers, dsn)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    while not service.slot_status().get("exists"):
        time.sleep(0.05)
    return service, thread


def _wait_caught_up(service: CaptureService, dsn: str) -> float:
    with pg.connect(dsn, autocommit=True) as conn:
        target = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
    from services.capture.pgoutput import lsn_to_int
    while lsn_to_int(service.slot_status()["confirmed_flush_lsn"]) < lsn_to_int(str(target)):
        time.sleep(0.005)
    return time.perf_counter()


def throughput(found) -> dict:
    dsn, name = _fresh_database(found)
    seed(dsn, 100_000)
    service, thread = _start_capture(found, dsn, name)
    time.sleep(1)
    started = time.perf_counter()
    with pg.connect(dsn, autocommit=True) as conn:
        for start in range(1, 100_001, 1000):
            conn.execute("UPDATE recipients SET job_title = 'bench' || id WHERE id BETWEEN %s AND %s",
                         (start, start + 999))
    committed = time.perf_counter()
    with pg.connect(dsn, autocommit=True) as conn:  # a final marker transaction we can wait for
        conn.execute("UPDATE crmsync.heartbeat SET beat_at = now()")
    done = _wait_caught_up(service, dsn)
    service.stop()
    thread.join()
    return {"changes": 100_000, "commit_seconds": committed - started, "total_seconds": done - started}


def latency(found, rate: int = 500, seconds: int = 20) -> dict:
    dsn, name = _fresh_database(found)
    seed(dsn, 5_000)
    service, thread = _start_capture(found, dsn, name)
    time.sleep(1)
    service.commit_to_ack.clear()
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        interval = 1 / rate
        next_at = time.perf_counter()
        for n in range(rate * seconds):
            conn.execute("UPDATE recipients SET job_title = %s WHERE id = %s", (f"t{n}", n % 5000 + 1))
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    _wait_caught_up(service, dsn)
    service.stop()
    thread.join()
    samples = sorted(service.commit_to_ack)
    return {"transactions": len(samples), "p50": statistics.median(samples),
            "p95": samples[int(len(samples) * 0.95) - 1], "max": samples[-1]}


def main() -> None:
    process.interrupt_on_stop_signals()  # a SIGTERM (timeout, CI) unwinds: the servers started are stopped
    console = Console()
    state = Path(tempfile.mkdtemp(prefix="crmsync-bench-"))
    settings = config.load(environ={"CRMSYNC_STATE_DIR": str(state), **{k: v for k, v in __import__("os").environ.items()
                                                                        if k in ("KAFKA_BOOTSTRAP_SERVERS", "CAMPAIGN_DSN")}})
    found = infra.up(settings)
    try:
        console.print("throughput: 100,000 updates …")
        t = throughput(found)
        console.print("latency: 500 changes/s for 20 s …")
        lat = latency(found)
    finally:
        infra.down(settings)
    table = Table(title="Change capture (PostgreSQL logical decoding → Kafka), embedded defaults, 2 cores")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("100,000 updates: commit → broker ack, changes/s", f"{t['changes'] / t['total_seconds']:,.0f}")
    table.add_row("  (time to commit the updates alone)", f"{t['commit_seconds']:.1f} s")
    table.add_row("  (first commit → last ack)", f"{t['total_seconds']:.1f} s")
    table.add_row("steady 500 changes/s: commit → ack p50", f"{lat['p50'] * 1000:.0f} ms")
    table.add_row("steady 500 changes/s: commit → ack p95", f"{lat['p95'] * 1000:.0f} ms")
    table.add_row("steady 500 changes/s: commit → ack max", f"{lat['max'] * 1000:.0f} ms")
    console.print(table)


if __name__ == "__main__":
    main()
