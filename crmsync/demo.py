"""`crmsync demo`: show the pipeline working on the embedded defaults, live, until Ctrl-C."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.table import Table

from crmsync import kafka, pg, process, topics
from crmsync.campaign.seed import seed
from crmsync.config import Settings
from crmsync.infra import Endpoints


def _edit_recipients(dsn: str, stop: threading.Event, per_second: float = 20) -> None:
    """Play a marketer: small edits to random recipients, so change capture has something to show."""
    rng = random.Random(7)
    with pg.connect(dsn, autocommit=True, application="crmsync-demo") as conn:
        top = conn.execute("SELECT max(id) FROM recipients").fetchone()[0] or 1
        while not stop.wait(1 / per_second):
            conn.execute("UPDATE recipients SET job_title = %s WHERE id = %s",
                         (rng.choice(["CMO", "Buyer", "Analyst", "Engineer"]), rng.randint(1, top)))


def _status_table(counts: Counter, started: float, lag: dict) -> Table:
    table = Table(title=f"crmsync demo — change capture ({time.monotonic() - started:,.0f}s, Ctrl-C to stop)")
    table.add_column("topic")
    table.add_column("changes captured", justify="right")
    for topic, count in sorted(counts.items()):
        table.add_row(topic, f"{count:,}")
    table.add_row("[dim]replication slot lag[/dim]", f"[dim]{lag.get('lag_bytes', '?')} bytes[/dim]")
    return table


def run_capture_demo(settings: Settings, found: Endpoints, *, recipients: int, exit_after: float | None,
                     console: Console) -> Counter:
    from services.capture.service import read_slot_status

    with pg.connect(found.campaign_dsn) as conn:
        empty = conn.execute("SELECT count(*) FROM recipients").fetchone()[0] == 0
    if empty:
        console.print(f"seeding {recipients:,} recipients …")
        seed(found.campaign_dsn, recipients)
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    capture = process.spawn_service("capture", found, log_file=log_dir / "capture.log")
    stop = threading.Event()
    editor = threading.Thread(target=_edit_recipients, args=(found.campaign_dsn, stop), daemon=True)
    editor.start()
    watched = [topics.changes("campaign", settings.campaign.name, t) for t in settings.campaign.capture_tables]
    kafka.ensure_topics(found.bootstrap_servers, watched, settings.kafka.partitions)
    consumer = kafka.consumer(found.bootstrap_servers, f"crmsync-demo-{time.time_ns()}")
    consumer.subscribe(watched)
    counts: Counter = Counter()
    started = time.monotonic()
    lag: dict = {}
    try:
        with Live(_status_table(counts, started, lag), console=console, refresh_per_second=4) as live, \
                pg.connect(found.campaign_dsn, autocommit=True) as conn:
            while exit_after is None or time.monotonic() - started < exit_after:
                for message in consumer.consume(1000, 0.25):
                    if not message.error():
                        counts[message.topic()] += 1
                lag = read_slot_status(conn, settings.campaign.slot_name)
                live.update(_status_table(counts, started, lag))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        consumer.close()
        process.stop(capture)
    console.print(f"captured {sum(counts.values()):,} changes")
    return counts
