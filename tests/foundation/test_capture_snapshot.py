"""Change capture's first snapshot and the stream after it meet exactly: with transactions committing all the
while, every row is published exactly once — by the snapshot or by the stream — and every streamed change is
positioned after the snapshot (the stream processors drop changes at or before a record's known position)."""
from __future__ import annotations

import threading
import time
from collections import Counter

from crmsync import config, pg, topics
from crmsync.campaign.seed import seed
from services.capture.service import CaptureService
from tests.conftest import consume_changes
from tests.waiting import wait_for


def test_rows_committed_during_the_snapshot_arrive_exactly_once(endpoints, campaign_db) -> None:
    dsn, name = campaign_db
    seed(dsn, 4000)  # a snapshot that takes a moment
    settings = config.Settings.model_validate({"campaign": {
        "name": name, "slot_name": f"slot_{name}", "publication": f"pub_{name}", "capture_tables": ["recipients"]}})
    stop_writing = threading.Event()
    written: list[int] = []

    def keep_committing() -> None:  # one row per transaction, as fast as it goes, all through the snapshot
        with pg.connect(dsn, autocommit=True) as conn:
            while not stop_writing.is_set():
                written.append(conn.execute("INSERT INTO recipients (email) VALUES (%s) RETURNING id",
                                            (f"during-{len(written)}@example.com",)).fetchone()[0])

    writer = threading.Thread(target=keep_committing, daemon=True)
    writer.start()
    wait_for(lambda: len(written) > 50, 30, "the writer to be busy")
    service = CaptureService(settings, endpoints.bootstrap_servers, dsn)
    capture = threading.Thread(target=service.run, daemon=True)
    capture.start()
    try:
        def snapshot_done() -> bool:
            with pg.connect(dsn) as conn:
                return bool(conn.execute("SELECT 1 FROM crmsync.checkpoints WHERE name = %s",
                                         (f"capture:slot_{name}:snapshot",)).fetchone())

        wait_for(snapshot_done, 120, "the snapshot", every=0.05)
        time.sleep(1.0)  # and a while longer: these commits can only come through the stream
        stop_writing.set()
        writer.join(30)
        with pg.connect(dsn) as conn:
            expected = {r[0] for r in conn.execute("SELECT id FROM recipients")}
        topic = topics.changes("campaign", name, "recipients")
        seen = consume_changes(endpoints.bootstrap_servers, [topic],
                               lambda s: {c.key["id"] for c in s} >= expected, timeout=120)
    finally:
        stop_writing.set()
        service.stop()
        capture.join(30)
    times = Counter(c.key["id"] for c in seen)
    twice = sorted(i for i, n in times.items() if n > 1)
    assert not twice, f"{len(twice)} rows published by both the snapshot and the stream, e.g. {twice[:5]}"
    assert set(times) == expected
    snapshot = [c for c in seen if c.op == "r"]
    streamed = [c for c in seen if c.op != "r"]
    assert snapshot and streamed and written[0] in times and written[-1] in times
    after = max((c.position["lsn_int"], c.position["seq"]) for c in snapshot)
    early = [c.key["id"] for c in streamed if (c.position["lsn_int"], c.position["seq"]) <= after]
    assert not early, f"{len(early)} streamed changes positioned at or before the snapshot would be dropped: {early[:5]}"
