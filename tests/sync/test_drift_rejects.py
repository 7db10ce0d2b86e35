"""Drift repair never deletes a live record because of an open reject: a Campaign edit the CRM refuses (its
validation rule) leaves the pair different on purpose, and the ledger says why; the pair is left to the retries,
not reported "gone from CRM" and deleted. The mapping has no CRM external id field, so the refused command names
the CRM record only (nothing in it names the Campaign row): the case that used to publish the delete."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from crmsync import pg
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for


def test_a_pair_with_an_open_crm_reject_is_left_alone_by_the_repair(own_state_dir: Path) -> None:
    state = own_state_dir
    with contacts_pipeline(state, contacts=60, recipients=60, shared=20, crm_external_id=None) as world:
        world.supervisor.start()
        checker, mapping = world.checker(), world.settings.mappings[0]
        wait_for(lambda: checker.compare(mapping).converged, 300, "the initial sync", every=1,
                 supervisor=world.supervisor)
        with pg.connect(world.found.campaign_dsn, autocommit=True) as conn:
            key, crm_id = conn.execute("SELECT id, crm_id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id "
                                       "LIMIT 1").fetchone()
            conn.execute("UPDATE recipients SET email = 'refused@invalid.example' WHERE id = %s", (key,))

        def refused() -> bool:
            with pg.connect(world.found.campaign_dsn) as conn:
                return bool(conn.execute(
                    "SELECT 1 FROM crmsync.rejects WHERE status <> 'resolved' AND object = 'Contact' AND "
                    "error_code = 'FIELD_CUSTOM_VALIDATION_EXCEPTION' AND record->'key'->>'id' = %s",
                    (crm_id,)).fetchone())

        wait_for(refused, 120, "the CRM to refuse the edit", every=1, supervisor=world.supervisor)
        report = checker.compare(mapping)
        assert crm_id not in report.gone_from_crm and key not in report.gone_from_campaign, report.summary()
        assert report.rejected >= 1 and report.converged, report.summary()

        result = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(world.config_file), "reconcile"],
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        time.sleep(10)  # what a published delete would need to reach the CRM and Campaign
        world.supervisor.check()
        assert [r["Id"] for page in world.client.query_all_pages(f"SELECT Id FROM Contact WHERE Id = '{crm_id}'")
                for r in page] == [crm_id]  # the contact lives
        with pg.connect(world.found.campaign_dsn) as conn:
            assert conn.execute("SELECT deleted FROM recipients WHERE id = %s", (key,)).fetchone() == (False,)
