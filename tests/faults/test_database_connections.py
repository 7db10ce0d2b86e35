"""Every service rides out its database connections being cut (what a PostgreSQL restart, a failover or an idle
timeout in a proxy does to them): edits keep flowing both ways, and a refusal that must be written to the rejects
ledger right after the cut is written, not retried against a dead connection forever (the CRM writer did that:
its whole pipeline direction stopped). The streams carry on without a restart (they used to exit: a timer of
theirs failed on its dead connection and stopped the worker)."""
from __future__ import annotations

from pathlib import Path

import pytest

from crmsync import pg
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for

# kills processes and servers on timing: run alone, after the parallel part of `make test` (Makefile)
pytestmark = pytest.mark.alone


def _cut_every_connection(dsn: str) -> int:
    with pg.connect(dsn, autocommit=True, application="test-cutter") as conn:
        return conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> "
                            "pg_backend_pid() AND datname = current_database() AND backend_type = 'client backend'"
                            ).fetchone()[0]


def test_services_carry_on_after_their_database_connections_are_cut(tmp_path: Path) -> None:
    with contacts_pipeline(tmp_path / "state", contacts=40, recipients=40, shared=12) as world:
        world.supervisor.start()
        wait_for(world.converged, 240, "the initial sync", world.supervisor, every=1)
        dsn, sf = world.found.campaign_dsn, world.client
        with pg.connect(dsn) as conn:
            (refused, _), (ordinary, ordinary_crm), (_, crm_side) = conn.execute(
                "SELECT id, crm_id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id LIMIT 3").fetchall()
        assert _cut_every_connection(dsn) >= 5  # every service holds at least one
        with pg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE recipients SET job_title = %s WHERE id = %s", ("t" * 300, refused))  # too long
            conn.execute("UPDATE recipients SET job_title = 'after the cut' WHERE id = %s", (ordinary,))
        sf.call("update", lambda api: api.Contact.update(crm_side, {"Title": "CRM after the cut"}))

        wait_for(lambda: sf.call("get", lambda api: api.Contact.get(ordinary_crm))["Title"] == "after the cut",
                 90, "the Campaign edit to reach the CRM", world.supervisor, every=1)
        with pg.connect(dsn) as conn:
            wait_for(lambda: conn.execute("SELECT job_title FROM recipients WHERE crm_id = %s",
                                          (crm_side,)).fetchone()[0] == "CRM after the cut",
                     90, "the CRM edit to reach Campaign", world.supervisor, every=1)
            wait_for(lambda: conn.execute("SELECT 1 FROM crmsync.rejects WHERE stage = 'writer-crm' AND "
                                          "error_code = 'STRING_TOO_LONG'").fetchone(),
                     60, "the CRM's refusal in the rejects ledger", world.supervisor, every=1)
        # the streams ride it out in place: a new connection for the side that lost one, the consumer kept in its
        # group (a process that exits and rejoins costs a rebalance, and the embedded broker can strand a group
        # that a member leaves during one: crmsync/run.py `_unstick_groups`)
        assert world.supervisor.restarts.get("streams", 0) == 0
