"""Continuous two-way sync end to end: the real services as processes, the Salesforce sandbox over HTTPS,
the embedded broker and PostgreSQL. Each test has its own state dir, so its own broker, database and sandbox."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from crmsync import pg
from tests.pipeline import contacts_pipeline, kill_each_in_turn, wait_restarted


@pytest.mark.parametrize("crm", ["salesforce", "dynamics", "oracle"])
def test_demo_scenario_converges_without_ping_pong(tmp_path: Path, crm: str):
    """`crmsync demo --crm CRM --scenario basic --exit`: edits on both sides, a conflict, a delete, a duplicate
    and a record the CRM refuses; exit 0 only when both sides converged and the CRM stays quiet afterwards.
    Every CRM's sandbox, with the shipped mappings (contacts, accounts, purchases) and its picklists."""
    env = {**os.environ, "CRMSYNC_STATE_DIR": str(tmp_path / "state")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("CAMPAIGN_DSN", None)
    try:
        result = subprocess.run([sys.executable, "-m", "crmsync", "demo", "--crm", crm, "--contacts", "300", "--recipients", "300",
                                 "--shared", "90", "--scenario", "basic", "--exit"],
                                env=env, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run([sys.executable, "-m", "crmsync", "infra", "down"], env=env, capture_output=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "converged" in result.stdout


def test_kill_9_each_service_in_turn_during_a_10000_record_sync(tmp_path: Path):
    """5,000 CRM contacts and 5,000 recipients (1,500 the same people): while the initial sync runs, every
    service is killed with SIGKILL in turn and restarted. Afterwards both sides hold the same 8,500 people,
    each exactly once."""
    with contacts_pipeline(tmp_path / "state", contacts=5000, recipients=5000, shared=1500) as world:
        supervisor, client = world.supervisor, world.client
        supervisor.start()
        killed = kill_each_in_turn(supervisor)
        checker, mapping = world.checker(), world.settings.mappings[0]
        deadline = time.monotonic() + 600
        while True:
            supervisor.check()
            report = checker.compare(mapping)
            if report.converged or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert report.converged, report.summary()
        assert wait_restarted(supervisor, len(killed)) >= len(killed) == 6
        crm_emails = Counter(r["Email"].strip().lower() for page in client.query_all_pages("SELECT Email FROM Contact")
                             for r in page)
        with pg.connect(world.found.campaign_dsn) as conn:
            campaign_emails = Counter(e.strip().lower() for (e,) in conn.execute("SELECT email FROM recipients"))
            links = conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE mapping = 'contacts' "
                                 "AND crm_id IS NOT NULL AND campaign_key IS NOT NULL").fetchone()[0]
        assert sum(crm_emails.values()) == 8500 and max(crm_emails.values()) == 1  # nothing duplicated in the CRM
        assert sum(campaign_emails.values()) == 8500 and max(campaign_emails.values()) == 1
        assert links == 8500 and set(crm_emails) == set(campaign_emails)  # nothing lost either way
