"""Drift repair: divergence that no change event will ever fix — commands lost with the broker's memory, an
edit the streams never saw — is found by comparing both sides and repaired by `crmsync reconcile`."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from crmsync import infra, pg
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for


def test_reconcile_repairs_commands_lost_with_the_broker_and_unseen_edits(tmp_path: Path):
    state = tmp_path / "state"
    with contacts_pipeline(state, contacts=200, recipients=200, shared=60) as world:
        supervisor, found, client, config_file = world.supervisor, world.found, world.client, world.config_file
        supervisor.start()
        checker, mapping = world.checker(), world.settings.mappings[0]
        wait_for(lambda: checker.compare(mapping).converged, 300, "the initial sync", every=1, supervisor=supervisor)

        # 1. commands lost with the broker: the CRM writer is held, the streams decide, the broker restarts empty
        writer = next(c for label, c in supervisor.children.items() if label.startswith("writer-crm"))
        writer.send_signal(signal.SIGSTOP)
        with pg.connect(found.campaign_dsn, autocommit=True) as conn:
            lost = [r[0] for r in conn.execute("SELECT id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id LIMIT 10")]
            conn.execute("UPDATE recipients SET job_title = 'lost with the broker' WHERE id = ANY(%s)", (lost,))
        with pg.connect(found.campaign_dsn) as conn:
            wait_for(lambda: conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE campaign_key = ANY(%s) AND "
                                          "agreed->>'job_title' = 'lost with the broker'", (lost,)).fetchone()[0] == 10,
                     60, "the streams to decide the edits", every=1)
        writer.kill()  # a stopped process would sit out SIGTERM
        supervisor.stop()
        broker = infra.EmbeddedBroker(state.resolve())
        broker.stop()
        assert broker.start()["bootstrap_servers"] == found.bootstrap_servers  # same address, nothing in it
        # 2. an edit the streams never see (tagged as if crmsync's own writer made it)
        with pg.connect(found.campaign_dsn) as conn:
            unseen = conn.execute("SELECT id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()[0]
            conn.execute("SELECT pg_logical_emit_message(true, 'crmsync.origin', 'writer-campaign')")
            conn.execute("UPDATE recipients SET job_title = 'never seen' WHERE id = %s", (unseen,))
        supervisor.start()
        time.sleep(15)
        before = checker.compare(mapping)
        assert len(before.differing) == 11, before.summary()  # nothing on its own brings the CRM back in line

        result = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(config_file), "reconcile"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: checker.compare(mapping).converged, 120, "the repair", every=1, supervisor=supervisor)
        titles = {r["Title"] for page in client.query_all_pages(
            "SELECT Title FROM Contact WHERE Title IN ('lost with the broker', 'never seen')") for r in page}
        assert titles == {"lost with the broker", "never seen"}
