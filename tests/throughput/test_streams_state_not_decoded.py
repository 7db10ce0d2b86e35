"""The sync state the streams write is never decoded by change capture: their sessions carry a replication
origin, as the Campaign writer's do, and capture reads its slot with `origin = none`. Without it, each peek of
capture's slot decoded every sync-state row again until the slot moved past it (issue 16: PostgreSQL's CPU in
a backfill). Shown with PostgreSQL's own test_decoding plugin and its `only-local` option (the same filter)."""
from __future__ import annotations

from crmsync import pg
from crmsync.infra import Endpoints
from streams.app import BatchHandler
from tests.streams.changes import crm, decide  # noqa: F401 - the fixture


def test_the_streams_sync_state_writes_carry_an_origin(decide, endpoints):  # noqa: F811
    slot = "test_streams_origin"
    handler = BatchHandler(decide.settings, Endpoints(endpoints.bootstrap_servers, decide.dsn), "crm")
    with pg.connect(decide.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
        try:
            outcome = handler.handle([crm("c", "003ORIGIN", "2026-01-05T10:00:00.000+0000", FirstName="Or",
                                          LastName="Igin", Email="origin@example.com")])
            assert [c.action for c in outcome.commands] == ["create"]
            everything = [row[0] for row in conn.execute(
                "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", (slot,))]
            assert any("crmsync.sync_state" in data for data in everything)  # written, and in the WAL
            local = [row[0] for row in conn.execute(
                "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, 'only-local', '1')", (slot,))]
            assert not [data for data in local if "crmsync.sync_state" in data]
        finally:
            handler.close()
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
