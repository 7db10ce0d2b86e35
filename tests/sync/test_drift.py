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

        # 1. commands lost with the broker: the writers are held, the streams decide, the broker restarts empty.
        # Edits, and creates both ways (the created record's link is there, the record never arrives)
        writers = [c for label, c in supervisor.children.items() if label.startswith("writer-")]
        for writer in writers:
            writer.send_signal(signal.SIGSTOP)
        with pg.connect(found.campaign_dsn, autocommit=True) as conn:
            lost = [r[0] for r in conn.execute("SELECT id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id LIMIT 10")]
            conn.execute("UPDATE recipients SET job_title = 'lost with the broker' WHERE id = ANY(%s)", (lost,))
            new_rows = [conn.execute("INSERT INTO recipients (email, first_name, last_name) VALUES (%s, 'Lo', 'St') "
                                     "RETURNING id", (f"lost-create-{i}@example.com",)).fetchone()[0] for i in range(3)]
        new_contacts = [client.sf.Contact.create({"LastName": "Lost", "Email": f"lost-insert-{i}@example.com"})["id"]
                        for i in range(3)]
        with pg.connect(found.campaign_dsn) as conn:
            wait_for(lambda: conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE campaign_key = ANY(%s) AND "
                                          "agreed->>'job_title' = 'lost with the broker'", (lost,)).fetchone()[0] == 10,
                     60, "the streams to decide the edits", every=1)
            wait_for(lambda: conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE campaign_key = ANY(%s) OR "
                                          "crm_id = ANY(%s)", (new_rows, new_contacts)).fetchone()[0] == 6,
                     60, "the streams to decide the creates", every=1)
        for writer in writers:
            writer.kill()  # a stopped process would sit out SIGTERM
        supervisor.stop()
        broker = infra.EmbeddedBroker(state.resolve())
        broker.stop()
        assert broker.start()["bootstrap_servers"] == found.bootstrap_servers  # same address, nothing in it
        # 2. an edit the streams never see (tagged as if crmsync's own writer made it), and a delete of a row our
        # writer created for a CRM contact, never seen either (its change lost with the broker, say)
        with pg.connect(found.campaign_dsn) as conn:
            unseen = conn.execute("SELECT id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()[0]
            conn.execute("SELECT pg_logical_emit_message(true, 'crmsync.origin', 'writer-campaign')")
            conn.execute("UPDATE recipients SET job_title = 'never seen' WHERE id = %s", (unseen,))
        with pg.connect(found.campaign_dsn) as conn:
            deleted = conn.execute("SELECT r.id FROM recipients r JOIN crmsync.created_rows c ON c.campaign_table = "
                                   "'recipients' AND c.campaign_key = r.id WHERE r.id <> %s ORDER BY r.id LIMIT 1",
                                   (unseen,)).fetchone()[0]
            conn.execute("SELECT pg_logical_emit_message(true, 'crmsync.origin', 'writer-campaign')")
            conn.execute("DELETE FROM recipients WHERE id = %s", (deleted,))
        supervisor.start()
        time.sleep(15)
        before = checker.compare(mapping)
        assert len(before.differing) == 11, before.summary()  # nothing on its own brings the CRM back in line
        assert (sorted(before.missing_in_crm), sorted(before.missing_in_campaign)) == (new_rows, sorted(new_contacts))
        # a row never inserted is missing (sent again), one we created and a person deleted is gone (not sent again)
        assert before.gone_from_campaign == [deleted], before.summary()

        result = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(config_file), "reconcile"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: checker.compare(mapping).converged, 120, "the repair", every=1, supervisor=supervisor)
        titles = {r["Title"] for page in client.query_all_pages(
            "SELECT Title FROM Contact WHERE Title IN ('lost with the broker', 'never seen')") for r in page}
        assert titles == {"lost with the broker", "never seen"}
        emails = {r["Email"] for page in client.query_all_pages(
            "SELECT Email FROM Contact WHERE Email LIKE 'lost-create-%'") for r in page}
        assert emails == {f"lost-create-{i}@example.com" for i in range(3)}
        with pg.connect(found.campaign_dsn) as conn:
            assert sorted(r[0] for r in conn.execute("SELECT crm_id FROM recipients WHERE email LIKE 'lost-insert-%%'")
                          ) == sorted(new_contacts)
            assert conn.execute("SELECT count(*) FROM recipients WHERE id = %s", (deleted,)).fetchone()[0] == 0
