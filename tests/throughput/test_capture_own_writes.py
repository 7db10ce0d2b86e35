"""Change capture moves its slot past WAL that holds only crmsync's own writes (never decoded: origin = none).
Nothing is published for them, so nothing else would move the slot, and every poll decoded the whole backfill
again from the slot's position: two thirds of PostgreSQL's time in a 36,000-record backfill."""
from __future__ import annotations

import threading

from crmsync import config, pg
from services.capture.service import CaptureService
from tests.campaign_writer.conftest import Commands, contact
from tests.waiting import wait_for


def test_the_slot_moves_past_the_writers_own_transactions(endpoints, campaign_db, writer):
    dsn, name = campaign_db
    settings = config.Settings.model_validate({"campaign": {"name": name, "slot_name": f"slot_{name}",
                                                            "publication": f"pub_{name}", "heartbeat_seconds": 3600}})
    capture = CaptureService(settings, endpoints.bootstrap_servers, dsn)
    thread = threading.Thread(target=capture.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: capture.slot_status().get("exists"), 30, "the replication slot")
        commands = Commands(name)
        with pg.connect(dsn, autocommit=True) as conn:
            first = conn.execute("SELECT setval('recipients_id_seq', nextval('recipients_id_seq') + 3000)").fetchone()[0]
            start = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        writer.apply_batch([commands.create("recipients", key={"id": first - 3000 + i}, match=contact(f"003{i:05d}"),
                                            email=f"p{i}@example.com", first_name="P") for i in range(3000)])
        with pg.connect(dsn, autocommit=True) as conn:
            end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            written = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)).fetchone()[0]
        assert written > 65536  # the writer's 3,000 rows: never published, and the slot must not stay before them

        # The slot moves once 64 KB of skipped WAL piled up, so it may rest up to 64 KB before `end` (a poll
        # that ran while the writer's transaction was half written moves it to that point, and what is left
        # of the transaction may be less than 64 KB): never back at `start`, which is more than that away.
        def moved() -> bool:
            with pg.connect(dsn, autocommit=True) as conn:
                return conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, confirmed_flush_lsn) <= 65536 "
                                    "FROM pg_replication_slots WHERE slot_name = %s",
                                    (end, f"slot_{name}")).fetchone()[0]
        wait_for(moved, 10, "the slot to move past the writer's transaction")
    finally:
        capture.stop()
        thread.join(30)
