"""Partial CRM changes (`Change.partial`: only the fields an update touched, as Salesforce Change Data Capture
pushes them) against the reconciler's real decisions and a real Campaign database: an absent field is unchanged,
never null; a partial change never creates a record; a filter judges only the fields it carries; a carried field
equal to the value before our write in flight is an edit, not a side that has not caught up."""
from __future__ import annotations

from crmsync.envelope import Change, crm_change
from crmsync.values import iso_utc, parse_timestamp
from tests.streams.changes import ACCOUNT, campaign, crm, linked, recipient


def pushed(crm_id: str, commit_ts: str, **changed) -> Change:
    """An UPDATE event's change: the record id and the changed fields only."""
    return crm_change(ACCOUNT, "Contact", "u", crm_id, f"{commit_ts}/{crm_id}", iso_utc(parse_timestamp(commit_ts)),
                      after={"Id": crm_id, **changed}, partial=True)


def test_an_update_carrying_one_field_changes_that_field_only(decide):
    key = linked(decide, "003P1", "p1@example.com")
    [command] = decide([pushed("003P1", "2026-01-01T11:00:00.000+0000", Title="CMO")]).commands
    assert command.side == "campaign" and command.key == {"id": key}
    assert command.values == {"job_title": "CMO"}  # first name, last name, email… left as they are
    assert set(command.expect) == {"job_title"}
    # a field the update set to null (nulledFields) is carried as None: that one is cleared
    [cleared] = decide([pushed("003P1", "2026-01-01T11:00:01.000+0000", FirstName=None)]).commands
    assert cleared.values == {"first_name": None}


def test_a_partial_change_never_creates_a_record(decide):
    out = decide([pushed("003P2", "2026-01-01T11:00:00.000+0000", Title="CMO", Email="p2@example.com")])
    assert out.commands == [] and out.skipped == 1
    # the same record as a whole (a create, a read) does create its Campaign row
    [insert] = decide([crm("c", "003P2", "2026-01-01T11:00:01.000+0000", LastName="P2", Email="p2@example.com",
                           Title="CMO")]).commands
    assert insert.side == "campaign" and insert.action == "create" and insert.values["job_title"] == "CMO"


def test_a_filter_judges_only_the_fields_a_partial_change_carries(decide):
    web = {"filter": {"crm": {"LeadSource": ["Web"]}, "campaign": {}}}
    decide([crm("c", "003P3", "2026-01-01T10:00:00.000+0000", LastName="P3", Email="p3@example.com",
                LeadSource="Web")], **web)
    row = recipient(decide.dsn, "p3@example.com")
    decide([campaign("c", row["id"], "2026-01-01T10:00:01Z", {"id": row["id"], "email": "p3@example.com",
                                                              "crm_account": ACCOUNT, "crm_id": "003P3"},
                     origin="writer-campaign")], **web)
    # LeadSource did not change (not carried): the edit passes the filter
    [command] = decide([pushed("003P3", "2026-01-01T11:00:00.000+0000", Title="Buyer")], **web).commands
    assert command.values == {"job_title": "Buyer"}
    # it changed to a value outside the filter: out
    out = decide([pushed("003P3", "2026-01-01T11:00:01.000+0000", LeadSource="Phone", Title="CEO")], **web)
    assert out.commands == [] and out.skipped == 1


def test_a_pushed_edit_back_to_the_value_before_our_write_is_decided(decide):
    """Polling may read a record before our write lands (the old value: not caught up, nothing to do); a pushed
    update carrying the field means a user set it, racing our write: the policy decides."""
    key = linked(decide, "003P4", "p4@example.com")
    base = {"id": key, "email": "p4@example.com", "first_name": "Di", "last_name": "Ho", "crm_account": ACCOUNT,
            "crm_id": "003P4"}
    decide([campaign("u", key, "2026-01-01T10:30:00Z", {**base, "job_title": "Buyer"}, before=base)])
    decide([pushed("003P4", "2026-01-01T10:30:01.000+0000", Title="Buyer")])  # the echo: agreed "Buyer"
    [to_crm] = decide([campaign("u", key, "2026-01-01T12:00:00Z", {**base, "job_title": "CMO"},
                                before={**base, "job_title": "Buyer"})]).commands
    assert to_crm.values["Title"] == "CMO"  # in flight: the CRM held "Buyer" before it
    # a read of the record before our write landed shows "Buyer": not caught up, nothing to decide
    assert decide([crm("u", "003P4", "2026-01-01T12:00:01.000+0000", FirstName="Di", LastName="Ho",
                       Email="p4@example.com", Title="Buyer")]).commands == []
    # a user's update setting "Buyer" (after "CMO" was decided) is an edit: it wins by last-modified
    out = decide([pushed("003P4", "2026-01-01T12:00:02.000+0000", Title="Buyer")])
    assert [(c.side, c.values.get("job_title", c.values.get("Title"))) for c in out.commands] == \
        [("campaign", "Buyer"), ("crm", "Buyer")]
    [conflict] = out.conflicts
    assert (conflict.field, conflict.crm_value, conflict.campaign_value, conflict.decision) == \
        ("job_title", "Buyer", "CMO", "crm wins")
