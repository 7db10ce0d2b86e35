"""Two CRMs on one Campaign: Salesforce and Dynamics 365 both synced with the recipients table.

A recipient is linked to a contact in each CRM (one link per mapping). A change made in one CRM reaches the
Campaign and, from there, the other CRM: the Campaign writer's echo tag names the mapping a row was written for,
so the write is an echo for that mapping only (docs/two-way-sync.md, "Several CRMs on one Campaign")."""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from crmsync import connectors, filters, pg
from crmsync.envelope import ApplyCommand
from tests.pipeline import CrmWorld, crm_pipeline
from tests.waiting import wait_for

SF_CONTACTS, DYN_CONTACTS, RECIPIENTS, SHARED = 40, 40, 50, 10
# Salesforce's seed draws its own people; Dynamics' and the Campaign's draw persons 0, 1, … of crmsync.people, so
# recipients 10..39 are Dynamics contacts 10..39 (the first 10 recipients took Salesforce emails instead)
PEOPLE = SF_CONTACTS + (RECIPIENTS - SHARED) + SHARED


def crm_value(world: CrmWorld, crm: str, crm_id: str, column: str) -> Any:
    mapping = world.mapping(crm)
    name = next(f.crm for f in mapping.fields if f.campaign == column)
    query = connectors.for_account(world.settings.accounts[crm]).query(world.clients[crm])
    rows = [r for page in query.records(mapping.crm_object, [name], ids=[crm_id]) for r in page]
    return rows[0].get(name) if rows else None


def crm_ids_by_email(world: CrmWorld, crm: str, email: str) -> list[str]:
    mapping = world.mapping(crm)
    name = next(f.crm for f in mapping.fields if f.campaign == "email")
    query = connectors.for_account(world.settings.accounts[crm]).query(world.clients[crm])
    return [r["id"] for page in query.records(mapping.crm_object, [name], where=filters.Condition(name, "=", email))
            for r in page]


def crm_edit(world: CrmWorld, crm: str, crm_id: str, column: str, value: Any) -> None:
    """An edit made in the CRM, as a user's would arrive (through the connector's sink)."""
    mapping = world.mapping(crm)
    name = next(f.crm for f in mapping.fields if f.campaign == column)
    sink = connectors.for_account(world.settings.accounts[crm]).sink(world.clients[crm])
    [outcome] = sink.apply([ApplyCommand(id=f"test:{uuid.uuid4().hex}", side="crm", target=crm,
                                         object=mapping.crm_object, action="upsert", key={"id": crm_id},
                                         values={name: value}, cause="test")])
    assert outcome.ok, outcome


def links(world: CrmWorld, key: int) -> dict[str, str]:
    with pg.connect(world.found.campaign_dsn) as conn:
        return {mapping: crm_id for mapping, crm_id in conn.execute(
            "SELECT mapping, crm_id FROM crmsync.sync_state WHERE campaign_key = %s AND crm_id IS NOT NULL AND NOT deleted",
            (key,))}


def campaign_value(world: CrmWorld, key: int, column: str) -> Any:
    with pg.connect(world.found.campaign_dsn) as conn:
        return conn.execute(f"SELECT {column} FROM recipients WHERE id = %s", (key,)).fetchone()[0]


def test_salesforce_and_dynamics_on_one_campaign(tmp_path: Path) -> None:
    with crm_pipeline(tmp_path / "state", crms={"salesforce": SF_CONTACTS, "dynamics": DYN_CONTACTS},
                      recipients=RECIPIENTS, shared=SHARED) as world:
        world.supervisor.start()
        wait_for(world.converged, 420, "both CRMs and the Campaign to agree", every=2, supervisor=world.supervisor)
        with pg.connect(world.found.campaign_dsn) as conn:
            people = conn.execute("SELECT count(*), count(DISTINCT lower(email)) FROM recipients").fetchone()
            linked = conn.execute("SELECT mapping, count(*) FROM crmsync.sync_state WHERE crm_id IS NOT NULL "
                                  "GROUP BY mapping ORDER BY mapping").fetchall()
            key, email = conn.execute("SELECT id, email FROM recipients ORDER BY id LIMIT 1").fetchone()
        assert people == (PEOPLE, PEOPLE)  # everyone once, whichever side they started on
        assert linked == [("contacts_dynamics", PEOPLE), ("contacts_salesforce", PEOPLE)]
        twins = links(world, key)
        assert set(twins) == {"contacts_salesforce", "contacts_dynamics"}
        for crm in ("salesforce", "dynamics"):
            assert crm_ids_by_email(world, crm, email) == [twins[f"contacts_{crm}"]]  # one contact in each CRM

        # an edit in one CRM reaches the Campaign and the other CRM
        for source, other in (("salesforce", "dynamics"), ("dynamics", "salesforce")):
            title = f"from {source} {uuid.uuid4().hex[:6]}"
            crm_edit(world, source, twins[f"contacts_{source}"], "job_title", title)
            wait_for(lambda: campaign_value(world, key, "job_title") == title, 120, f"the {source} edit in the Campaign",
                     every=1, supervisor=world.supervisor)
            wait_for(lambda: crm_value(world, other, twins[f"contacts_{other}"], "job_title") == title, 120,
                     f"the {source} edit in {other}", every=1, supervisor=world.supervisor)
        # and a Campaign edit reaches both
        with pg.connect(world.found.campaign_dsn, autocommit=True) as conn:
            conn.execute("UPDATE recipients SET city = 'Both Ways' WHERE id = %s", (key,))
        for crm in ("salesforce", "dynamics"):
            wait_for(lambda: crm_value(world, crm, twins[f"contacts_{crm}"], "city") == "Both Ways", 120,
                     f"the Campaign edit in {crm}", every=1, supervisor=world.supervisor)
        wait_for(world.converged, 180, "agreement after the edits", every=2, supervisor=world.supervisor)

        # quiet: nothing bounces between the three
        writes = {crm: sandbox.writes() for crm, sandbox in world.sandboxes.items()}
        time.sleep(10)
        world.supervisor.check()
        assert {crm: sandbox.writes() for crm, sandbox in world.sandboxes.items()} == writes
