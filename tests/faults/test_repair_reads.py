"""A repair read of a Campaign row (drift repair after the broker lost its memory) carries no before-image, so it
cannot say which of its fields were edited. Found by the fault suite: a CRM edit's command to Campaign was lost
with the broker, and a Campaign edit of another field of the same row too; the repair read then showed the
row's old value in the CRM-edited field with the row's newest `updated_at`, which beat the CRM edit — the CRM
was set back to the old value and the two sides stayed different. A field whose value is the one our lost write
was meant to replace is now recognised as "Campaign has not caught up": our write is sent again."""
from __future__ import annotations

from crmsync.envelope import Change
from tests.streams.changes import ACCOUNT, crm, decide, linked  # noqa: F401 - decide is a fixture


def _repair_read(key: int, row: dict, updated_at: str) -> Change:
    return Change(id=f"repair:{updated_at}:campaign:{key}", side="campaign", source="campaign", object="recipients",
                  op="r", key={"id": key}, after={**row, "updated_at": updated_at}, position={"repair": True},
                  source_ts=updated_at)


def test_a_repair_read_of_a_row_that_missed_our_write_sends_it_again(decide):
    key = linked(decide, "003S", "sam@example.com")
    row = {"id": key, "email": "sam@example.com", "first_name": "Di", "last_name": "Ho", "job_title": None,
           "crm_account": ACCOUNT, "crm_id": "003S"}
    edited_in_crm = decide([crm("u", "003S", "2026-01-04T10:00:00.000+0000", FirstName="Di", LastName="true",
                                Email="sam@example.com")])
    assert [c.values for c in edited_in_crm.commands if c.side == "campaign"] == [{"last_name": "true"}]
    # that command was lost; so was the change of a Campaign edit of job_title, made 5 s later
    repaired = decide([_repair_read(key, {**row, "job_title": "Buyer"}, "2026-01-04T10:00:05Z")])
    to_campaign = [c.values for c in repaired.commands if c.side == "campaign"]
    to_crm = [c.values for c in repaired.commands if c.side == "crm"]
    assert to_campaign == [{"last_name": "true"}]  # our lost write, again
    assert [v.get("Title") for v in to_crm] == ["Buyer"] and "LastName" not in to_crm[0]  # the real edit only


def test_a_repair_read_of_a_field_edited_in_campaign_is_an_edit(decide):
    """The other case stays as it was: a value that is not the one our write replaced is Campaign's own edit."""
    key = linked(decide, "003U", "uma@example.com")
    row = {"id": key, "email": "uma@example.com", "first_name": "Di", "last_name": "Ho", "crm_account": ACCOUNT,
           "crm_id": "003U"}
    decide([crm("u", "003U", "2026-01-04T10:00:00.000+0000", FirstName="Di", LastName="true", Email="uma@example.com")])
    repaired = decide([_repair_read(key, {**row, "last_name": "Edited"}, "2026-01-04T10:00:05Z")])
    assert [c.values.get("LastName") for c in repaired.commands if c.side == "crm"] == ["Edited"]
