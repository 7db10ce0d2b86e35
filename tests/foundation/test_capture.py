"""Change capture of the Campaign database: real PostgreSQL logical decoding, real broker."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict

import psycopg
import pytest

from crmsync import config, pg, process, topics
from crmsync.infra import Endpoints
from services.capture.service import CaptureConfigError, CaptureService
from tests.conftest import consume_changes
from tests.waiting import wait_for


def _settings(name: str, **campaign):
    return config.Settings.model_validate({"campaign": {"name": name, "slot_name": f"slot_{name}",
                                                         "publication": f"pub_{name}", **campaign}})


class RunningCapture:
    """The capture service in a thread of the test process (the kill test uses a real subprocess instead)."""

    def __init__(self, settings, endpoints: Endpoints, dsn: str) -> None:
        self.service = CaptureService(settings, endpoints.bootstrap_servers, dsn)
        self.thread = threading.Thread(target=self.service.run, daemon=True)

    def __enter__(self) -> CaptureService:
        self.thread.start()
        return self.service

    def __exit__(self, *exc) -> None:
        self.service.stop()
        self.thread.join(30)


def test_insert_update_delete_arrive_in_order_with_envelope(endpoints, campaign_db):
    dsn, name = campaign_db
    settings = _settings(name)
    topic = topics.changes("campaign", name, "recipients")
    with RunningCapture(settings, endpoints, dsn):
        time.sleep(0.5)
        with pg.connect(dsn, autocommit=True) as conn:
            rid = conn.execute("INSERT INTO recipients (email, first_name) VALUES ('a@example.com', 'Ann') RETURNING id").fetchone()[0]
            for n in range(5):
                conn.execute("UPDATE recipients SET first_name = %s WHERE id = %s", (f"Ann{n}", rid))
            conn.execute("DELETE FROM recipients WHERE id = %s", (rid,))
        seen = consume_changes(endpoints.bootstrap_servers, [topic], lambda s: len(s) >= 7)
    assert [c.op for c in seen] == ["c", "u", "u", "u", "u", "u", "d"]
    assert [c.after["first_name"] for c in seen[1:6]] == [f"Ann{n}" for n in range(5)]
    first = seen[0]
    assert first.v == 1 and first.side == "campaign" and first.source == name and first.object == "recipients"
    assert first.key == {"id": rid} and first.after["email"] == "a@example.com"
    assert first.position["lsn"] and first.position["seq"] == 0 and first.source_ts.endswith("Z")
    assert seen[-1].after is None and seen[-1].before["first_name"] == "Ann4"
    positions = [(c.position["lsn_int"], c.position["seq"]) for c in seen]
    assert positions == sorted(positions) and len(set(c.id for c in seen)) == 7


def test_unchanged_toast_values_are_filled_from_the_old_row(endpoints, campaign_db):
    dsn, name = campaign_db
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text, n int)")
    big = "x" * 200_000  # stored out of line (TOAST)
    with RunningCapture(_settings(name, capture_tables=["notes"]), endpoints, dsn):
        time.sleep(0.5)
        with pg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO notes VALUES (1, %s, 0)", (big,))
            conn.execute("UPDATE notes SET n = 1 WHERE id = 1")
        seen = consume_changes(endpoints.bootstrap_servers, [topics.changes("campaign", name, "notes")],
                               lambda s: len(s) >= 2)
    assert seen[1].op == "u" and seen[1].after["n"] == 1 and seen[1].after["body"] == big


def test_writer_origin_message_tags_the_transaction(endpoints, campaign_db):
    dsn, name = campaign_db
    with RunningCapture(_settings(name), endpoints, dsn):
        time.sleep(0.5)
        with pg.connect(dsn) as conn:  # one transaction
            conn.execute("INSERT INTO recipients (email) VALUES ('sync@example.com')")
            conn.execute("SELECT pg_logical_emit_message(true, 'crmsync.origin', 'writer-campaign')")
        with pg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO recipients (email) VALUES ('human@example.com')")
        seen = consume_changes(endpoints.bootstrap_servers, [topics.changes("campaign", name, "recipients")],
                               lambda s: len(s) >= 2)
    origins = {c.after["email"]: c.origin for c in seen}
    assert origins == {"sync@example.com": "writer-campaign", "human@example.com": None}


def test_table_without_primary_key_is_refused(endpoints, campaign_db):
    dsn, name = campaign_db
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE loose (a int, b text)")
    service = CaptureService(_settings(name, capture_tables=["recipients", "loose"]), endpoints.bootstrap_servers, dsn)
    with pytest.raises(CaptureConfigError, match=r"table 'loose' has no primary key.*ADD PRIMARY KEY"):
        service.prepare()


def test_quiet_database_slot_still_advances(endpoints, campaign_db):
    """Other databases on the server write WAL; heartbeats keep our slot's confirmed position moving."""
    dsn, name = campaign_db
    settings = _settings(name, heartbeat_seconds=0.5)
    other = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with RunningCapture(settings, endpoints, dsn) as service:
        time.sleep(1.5)
        start = service.slot_status()["confirmed_flush_lsn"]
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS wal_noise (x text)")
            for _ in range(20):
                conn.execute("INSERT INTO wal_noise SELECT repeat('n', 1000) FROM generate_series(1, 200)")
        time.sleep(3)
        end = service.slot_status()
    from services.capture.pgoutput import lsn_to_int
    assert lsn_to_int(end["confirmed_flush_lsn"]) > lsn_to_int(start)
    assert end["lag_bytes"] < 1_000_000  # the noise (~4 MB of WAL) is not held back by our slot
    beats = consume_changes(endpoints.bootstrap_servers, [topics.heartbeat("campaign", name)], lambda s: len(s) >= 2)
    assert len(beats) >= 2 and all(b.object == "heartbeat" and b.position["lsn"] for b in beats)


def test_kill_9_during_20000_updates_loses_nothing(endpoints, campaign_db, write_config, tmp_path):
    dsn, name = campaign_db
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO recipients (email, job_title) SELECT 'r' || g || '@example.com', 'v0' "
                     "FROM generate_series(1, 1000) g")
    cfg = write_config({"campaign": {"name": name, "slot_name": f"slot_{name}", "publication": f"pub_{name}",
                                     "batch_changes": 500}})
    found = Endpoints(endpoints.bootstrap_servers, dsn)
    log = tmp_path / "capture.log"
    capture = process.spawn_service("capture", found, config_file=cfg, log_file=log)
    status_sql = "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s"
    with pg.connect(dsn, autocommit=True) as conn:
        wait_for(lambda: conn.execute(status_sql, (f"slot_{name}",)).fetchone(), 60, "the slot")

    def make_updates() -> None:  # 20,000 updates, 20 rows per transaction, each value unique
        with pg.connect(dsn, autocommit=True) as conn:
            for round_ in range(1, 21):
                for start in range(1, 1001, 20):
                    conn.execute("UPDATE recipients SET job_title = %s WHERE id BETWEEN %s AND %s",
                                 (f"v{round_}", start, start + 19))
                    time.sleep(0.005)  # spread over ~5 s so the kill lands mid-stream even on a busy machine

    from services.capture.pgoutput import lsn_to_int

    def confirmed() -> int:
        with pg.connect(dsn, autocommit=True) as conn:
            return lsn_to_int(conn.execute(status_sql, (f"slot_{name}",)).fetchone()[0])

    with pg.connect(dsn, autocommit=True) as conn:  # wait until capture streams (snapshot done, slot moving)
        conn.execute("UPDATE recipients SET job_title = 'warm-up' WHERE id = 1")
        warm = lsn_to_int(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    wait_for(lambda: confirmed() >= warm, 120, "capture to start streaming")
    before = confirmed()
    writer = threading.Thread(target=make_updates)
    writer.start()
    wait_for(lambda: confirmed() > before, 60, "capture to publish part of the stream")
    assert writer.is_alive(), "the kill must happen while updates are still being made"
    os.kill(capture.pid, signal.SIGKILL)  # in the middle of the stream, no clean shutdown
    capture.wait()
    writer.join()
    capture = process.spawn_service("capture", found, config_file=cfg, log_file=log)
    try:
        wanted = {(rid, f"v{r}") for rid in range(1, 1001) for r in range(1, 21)}

        def updates(seen) -> set[tuple[int, str]]:
            return {(c.key["id"], c.after["job_title"]) for c in seen if c.op == "u"}

        seen = consume_changes(endpoints.bootstrap_servers, [topics.changes("campaign", name, "recipients")],
                               lambda s: wanted <= updates(s), timeout=240)
    finally:
        process.stop(capture)
    got = updates(seen)
    assert wanted <= got, f"{len(wanted - got)} changes missing, e.g. {sorted(wanted - got)[:5]}"
    per_key = defaultdict(list)
    for change in seen:
        per_key[change.key["id"]].append((change.position["lsn_int"], change.position["seq"]))
    for positions in per_key.values():  # re-published duplicates keep their position: order per key holds
        deduped = sorted(set(positions))
        assert [p for i, p in enumerate(positions) if p not in positions[:i]] == deduped
