"""Dynamics 365 and Oracle CRM On Demand under the same crash test as Salesforce (test_two_way.py): while the
initial two-way sync runs, every service is SIGKILLed in turn and restarted by the supervisor. Afterwards both
sides hold the same people, each exactly once, and every pair is linked — whatever the CRM."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from crmsync import connectors, pg
from tests.pipeline import crm_pipeline, kill_each_in_turn, wait_restarted

CONTACTS, RECIPIENTS, SHARED = 2000, 2000, 600


def crm_emails(world, crm: str) -> Counter:  # type: ignore[no-untyped-def]
    mapping = world.mapping(crm)
    email = next(f.crm for f in mapping.fields if f.campaign == "email")
    query = connectors.for_account(world.settings.accounts[crm]).query(world.clients[crm])
    return Counter(r[email].strip().lower() for page in query.records(mapping.crm_object, [email])
                   for r in page if r.get(email))


def campaign_emails(world) -> Counter:  # type: ignore[no-untyped-def]
    with pg.connect(world.found.campaign_dsn) as conn:
        return Counter(e.strip().lower() for (e,) in conn.execute("SELECT email FROM recipients"))


@pytest.mark.parametrize("crm", ["dynamics", "oracle"])
def test_kill_9_each_service_in_turn_during_the_initial_sync(tmp_path: Path, crm: str):
    with crm_pipeline(tmp_path / "state", crms={crm: CONTACTS}, recipients=RECIPIENTS, shared=SHARED) as world:
        supervisor = world.supervisor
        # the sandboxes and the Campaign seed draw from the same people: more than SHARED may match by email
        people = set(crm_emails(world, crm)) | set(campaign_emails(world))
        supervisor.start()
        killed = kill_each_in_turn(supervisor)
        deadline = time.monotonic() + 600
        while not world.converged() and time.monotonic() < deadline:
            supervisor.check()
            time.sleep(3)
        assert world.converged(), world.summaries()
        assert wait_restarted(supervisor, len(killed)) >= len(killed) == 6
        in_crm, in_campaign = crm_emails(world, crm), campaign_emails(world)
        with pg.connect(world.found.campaign_dsn) as conn:
            links = conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE mapping = %s AND crm_id IS NOT NULL "
                                 "AND campaign_key IS NOT NULL", (world.mapping(crm).name,)).fetchone()[0]
        assert set(in_crm) == set(in_campaign) == people  # nothing lost either way
        assert max(in_crm.values()) == max(in_campaign.values()) == 1  # nothing duplicated
        assert links == len(people)
