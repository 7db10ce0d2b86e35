"""Decisions with two CRMs on one Campaign table, and with a CRM that stamps whole seconds (Dynamics, Oracle).

Real PostgreSQL, no broker: the reconciler is fed the changes the pollers and change capture would publish."""
from __future__ import annotations

import pytest

from crmsync import config, pg
from crmsync.envelope import Change, crm_change, echo_tag
from streams.reconcile import Reconciler
from tests.pipeline import contacts_mapping
from tests.streams.changes import campaign, recipient


def _settings() -> config.Settings:
    return config.Settings.model_validate({
        "accounts": {"sf": {"type": "salesforce", "username": "u", "password": "p"},
                     "dyn": {"type": "dynamics", "url": "https://org.example", "tenant_id": "t", "client_id": "c",
                             "client_secret": "s"}},
        "campaign": {"name": "campaign"},
        "mappings": [{**contacts_mapping("salesforce", "contacts_sf").model_dump(), "account": "sf"},
                     {**contacts_mapping("dynamics", "contacts_dyn").model_dump(), "account": "dyn"}]})


@pytest.fixture
def decide(campaign_db):
    dsn, _ = campaign_db
    settings = _settings()

    def run(changes: list[Change]):
        with pg.connect(dsn) as conn:
            return Reconciler(settings, "campaign").process(conn, changes)

    run.dsn = dsn
    return run


def _dyn(op: str, crm_id: str, ts: str, version: int, **fields) -> Change:
    change = crm_change("dyn", "contact", op, crm_id, str(version), ts,
                        after={"contactid": crm_id, "modifiedon": ts, **fields})
    change.position["version"] = version
    return change


def _sf(op: str, crm_id: str, ts: str, **fields) -> Change:
    return crm_change("sf", "Contact", op, crm_id, ts, ts, after={"Id": crm_id, "SystemModstamp": ts, **fields})


def _linked_in_both(decide) -> int:
    """A recipient linked to a Salesforce contact and a Dynamics contact (both matched by email)."""
    key = recipient(decide.dsn, "both@example.com", first_name="Bo", last_name="Th")["id"]
    row = {"id": key, "email": "both@example.com", "first_name": "Bo", "last_name": "Th", "job_title": "Start"}
    decide([_sf("c", "003B", "2026-01-01T10:00:00.000Z", FirstName="Bo", LastName="Th", Email="both@example.com",
                Title="Start")])
    decide([_dyn("c", "d-1", "2026-01-01T10:00:00Z", 1, firstname="Bo", lastname="Th",
                 emailaddress1="both@example.com", jobtitle="Start")])
    decide([campaign("u", key, "2026-01-01T10:00:01Z", row, before=row, origin="writer-campaign")])
    with pg.connect(decide.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE campaign_key = %s AND crm_id IS NOT NULL",
                            (key,)).fetchone() == (2,)
    return key


def test_a_write_for_one_crm_is_an_echo_for_its_mapping_and_news_for_the_other(decide):
    key = _linked_in_both(decide)
    before = {"id": key, "email": "both@example.com", "first_name": "Bo", "last_name": "Th", "job_title": "Start"}
    after = {**before, "job_title": "From Salesforce"}
    decide([_sf("u", "003B", "2026-01-02T10:00:00.000Z", FirstName="Bo", LastName="Th", Email="both@example.com",
                Title="From Salesforce")])
    # the Campaign writer applied it for contacts_sf; change capture shows the row with that tag
    out = decide([campaign("u", key, "2026-01-02T10:00:01Z", after, before=before,
                           origin=echo_tag("writer-campaign", {"recipients": "contacts_sf"}))])
    [command] = out.commands
    assert (command.target, command.values["jobtitle"], command.mapping) == ("dyn", "From Salesforce", "contacts_dyn")
    # a tag without the table part is an echo for every mapping (older writers): nothing to send
    again = {**after, "job_title": "Untagged"}
    assert decide([campaign("u", key, "2026-01-02T10:00:02Z", again, before=after, origin="writer-campaign")]).commands == []


def test_a_crm_edit_in_the_same_second_as_a_campaign_edit_wins(decide):
    """Dynamics stamps whole seconds: an edit at 12:00:00.9 shows as 12:00:00, before a Campaign edit made at
    12:00:00.563. Read as 'older', it lost, and the Campaign value was written back over it. Inside one second
    the CRM wins (its stamp stands for the whole second)."""
    key = _linked_in_both(decide)
    before = {"id": key, "email": "both@example.com", "first_name": "Bo", "last_name": "Th", "job_title": "Start"}
    campaign_edit = decide([campaign("u", key, "2026-01-02T12:00:00.563Z", {**before, "job_title": "Campaign"},
                                     before=before)])
    assert {c.target for c in campaign_edit.commands} == {"sf", "dyn"}
    out = decide([_dyn("u", "d-1", "2026-01-02T12:00:00Z", 7, firstname="Bo", lastname="Th",
                       emailaddress1="both@example.com", jobtitle="Dynamics")])
    assert [(c.side, c.values.get("job_title")) for c in out.commands if c.side == "campaign"] == [("campaign", "Dynamics")]
    assert not [c for c in out.commands if c.target == "dyn"]  # nothing sent back over the Dynamics edit
