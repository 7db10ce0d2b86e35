"""The reconciler's decisions against a real Campaign database: links, matching, echoes, conflicts, deletes."""
from __future__ import annotations

import pytest

from crmsync import pg
from tests.streams.changes import ACCOUNT, campaign, created_row, crm, linked, recipient

def test_new_crm_contact_becomes_a_campaign_insert(decide):
    out = decide([crm("c", "003A", "2026-01-01T10:00:00.000+0000", FirstName="Ann", LastName="Lee",
                      Email="ann@example.com", Birthdate="1990-02-03", HasOptedOutOfEmail=False)])
    [command] = out.commands
    assert command.side == "campaign" and command.object == "recipients" and command.action == "create"
    with pg.connect(decide.dsn) as conn:  # the key comes from the table's own sequence, in the deciding transaction
        allocated = conn.execute("SELECT last_value FROM recipients_id_seq").fetchone()[0]
        state = conn.execute("SELECT campaign_key FROM crmsync.sync_state WHERE crm_id = '003A'").fetchone()
    assert command.key == {"id": allocated} and state == (allocated,)
    assert command.match == {"crm_account": ACCOUNT, "crm_object": "Contact", "crm_id": "003A"}
    assert command.values == {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com",
                              "birth_date": "1990-02-03", "email_opt_out": False}


def test_matching_email_links_instead_of_duplicating(decide):
    row = recipient(decide.dsn, "  Bob@Example.com ", first_name="Bob", job_title="Buyer")
    out = decide([crm("c", "003B", "2000-01-01T10:00:00.000+0000", FirstName="Robert", Email="bob@example.com",
                      Title=None)])
    campaign_cmds = [c for c in out.commands if c.side == "campaign"]
    crm_cmds = [c for c in out.commands if c.side == "crm"]
    assert len(campaign_cmds) == 1 and campaign_cmds[0].key == {"id": row["id"]}  # an update, not an insert
    assert campaign_cmds[0].match["crm_id"] == "003B"
    # the Campaign row was edited after the CRM record (2000): its values win field by field
    assert crm_cmds and crm_cmds[0].key == {"id": "003B"}
    assert crm_cmds[0].values["FirstName"] == "Bob" and crm_cmds[0].values["Campaign_Key__c"] == str(row["id"])
    assert {c.field for c in out.conflicts} >= {"first_name"}


def test_echoes_of_our_own_writes_are_dropped(decide):
    out = decide([crm("c", "003C", "2026-01-01T10:00:00.000+0000", FirstName="Cy", LastName="Xu",
                      Email="cy@example.com")])
    row = created_row(decide, out, "cy@example.com")  # the key was allocated by the streams: the link is complete
    with pg.connect(decide.dsn) as conn:
        assert conn.execute("SELECT campaign_key FROM crmsync.sync_state WHERE crm_id = '003C'").fetchone() == (
            row["id"],)
    # where change capture still shows the writer's insert (PostgreSQL < 16), it is tagged with its origin
    echo = campaign("c", row["id"], "2026-01-01T10:00:01Z",
                    {"id": row["id"], "email": "cy@example.com", "first_name": "Cy", "crm_account": ACCOUNT,
                     "crm_id": "003C"}, origin="writer-campaign")
    assert decide([echo]).commands == []
    # a marketer edits the row: that goes to the CRM...
    human = campaign("u", row["id"], "2026-01-01T11:00:00Z",
                     {"id": row["id"], "email": "cy@example.com", "first_name": "Cyrus", "last_name": "Xu",
                      "crm_account": ACCOUNT, "crm_id": "003C"},
                     before={"id": row["id"], "email": "cy@example.com", "first_name": "Cy", "last_name": "Xu",
                             "crm_account": ACCOUNT, "crm_id": "003C"})
    [to_crm] = decide([human]).commands
    assert to_crm.side == "crm" and to_crm.values["FirstName"] == "Cyrus"
    # ...and the CRM's echo of that write (seen by the poller) is not sent back: no ping-pong
    assert decide([crm("u", "003C", "2026-01-01T11:00:02.000+0000", FirstName="Cyrus", LastName="Xu",
                       Email="cy@example.com")]).commands == []


def test_concurrent_edits_last_modified_wins_and_is_recorded(decide):
    key = linked(decide, "003D", "di@example.com")
    base = {"id": key, "email": "di@example.com", "first_name": "Di", "last_name": "Ho",
            "crm_account": ACCOUNT, "crm_id": "003D"}
    to_crm = decide([campaign("u", key, "2026-01-01T12:00:00Z", {**base, "job_title": "CMO"},
                              before={**base, "job_title": None})]).commands
    assert to_crm[0].values == {"Title": "CMO", "Campaign_Key__c": str(key)}
    # the CRM user had edited the title earlier (11:00), before our write (still in flight) arrived
    out = decide([crm("u", "003D", "2026-01-01T11:00:00.000+0000", FirstName="Di", LastName="Ho",
                      Email="di@example.com", Title="CEO")])
    # the Campaign edit is newer: it stays, and is re-sent so it lands after the CRM user's edit
    assert [(c.side, c.values["Title"]) for c in out.commands] == [("crm", "CMO")]
    [conflict] = out.conflicts
    assert (conflict.field, conflict.crm_value, conflict.campaign_value, conflict.decision) == \
        ("job_title", "CEO", "CMO", "campaign wins")
    with pg.connect(decide.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM crmsync.conflicts WHERE field = 'job_title'").fetchone()[0] == 1


def test_a_decision_made_again_records_its_conflict_once(decide):
    """A read that had to wait (its parent not in the CRM yet) comes back and is decided again: the same two
    edits are the same conflict, recorded once (the demo showed each one three times)."""
    key = linked(decide, "003K", "kay@example.com")
    base = {"id": key, "email": "kay@example.com", "first_name": "Kay", "last_name": "Ho",
            "crm_account": ACCOUNT, "crm_id": "003K"}
    decide([campaign("u", key, "2026-01-01T12:00:00Z", {**base, "job_title": "CMO"},
                     before={**base, "job_title": None})])
    crm_edit = crm("r", "003K", "2026-01-01T11:00:00.000+0000", FirstName="Di", LastName="Ho",
                   Email="kay@example.com", Title="CEO")
    first = decide([crm_edit])
    again = decide([crm_edit])  # the same change, back from deferred_changes
    assert [c.field for c in first.conflicts] == [c.field for c in again.conflicts] == ["job_title"]
    with pg.connect(decide.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM crmsync.conflicts WHERE crm_id = '003K' AND field = 'job_title'"
                            ).fetchone()[0] == 1


def test_owned_field_always_goes_to_its_owner(decide):
    linked(decide, "003E", "eve@example.com")
    out = decide([crm("u", "003E", "2026-01-02T10:00:00.000+0000", FirstName="Di", LastName="Ho",
                      Email="eve@example.com", HasOptedOutOfEmail=True)])
    # HasOptedOutOfEmail ⇄ email_opt_out is Campaign-owned in the default mapping: the CRM edit is reverted
    assert [(c.side, c.values.get("HasOptedOutOfEmail")) for c in out.commands] == [("crm", False)]
    assert out.conflicts[0].policy == "owner:campaign"


@pytest.mark.parametrize("policy, expected", [
    ("propagate", ("delete", {})), ("mark", ("upsert", {"deleted": True})), ("ignore", None)])
def test_crm_delete_follows_the_delete_policy(decide, policy, expected):
    linked(decide, "003F", f"fay-{policy}@example.com")
    out = decide([crm("d", "003F", "2026-01-03T10:00:00.000+0000")], delete=policy)
    got = [(c.action, c.values) for c in out.commands]
    assert got == ([expected] if expected else [])


def test_duplicates_and_bursts_collapse(decide):
    first = crm("c", "003G", "2026-01-01T10:00:00.000+0000", FirstName="G1", LastName="L", Email="g@example.com")
    second = crm("u", "003G", "2026-01-01T10:00:05.000+0000", FirstName="G2", LastName="L", Email="g@example.com")
    out = decide([first, second, first])  # a burst, and an at-least-once redelivery of the first change
    assert len(out.commands) == 1 and out.commands[0].values["first_name"] == "G2"
    again = decide([first])  # replayed after the fact: older than what we have, ignored
    assert again.commands == []


def test_a_superseded_write_landing_late_is_still_an_echo(decide):
    """Campaign edit sent to the CRM; the CRM user edits the same field later, before our write lands: the
    CRM wins and is re-asserted. When our older write then lands, its echo must not undo the decision: nothing
    goes to Campaign, no conflict, and the CRM is told the winner again (the older write may have landed after
    the re-assertion: tests/faults/test_late_crm_write.py)."""
    key = linked(decide, "003H", "hal@example.com")
    base = {"id": key, "email": "hal@example.com", "first_name": "Di", "last_name": "Ho", "crm_account": ACCOUNT,
            "crm_id": "003H"}
    decide([campaign("u", key, "2026-01-01T12:00:00Z", {**base, "first_name": "FromCampaign"}, before=base)])
    won = decide([crm("u", "003H", "2026-01-01T12:00:01.000+0000", FirstName="FromCRM", LastName="Ho",
                      Email="hal@example.com")])
    assert sorted((c.side, c.values.get("FirstName", c.values.get("first_name"))) for c in won.commands) == \
        [("campaign", "FromCRM"), ("crm", "FromCRM")]
    late_echo = decide([crm("u", "003H", "2026-01-01T12:00:05.000+0000", FirstName="FromCampaign", LastName="Ho",
                            Email="hal@example.com")])
    assert [(c.side, c.values["FirstName"]) for c in late_echo.commands] == [("crm", "FromCRM")]
    assert late_echo.conflicts == []
    final_echo = decide([crm("u", "003H", "2026-01-01T12:00:06.000+0000", FirstName="FromCRM", LastName="Ho",
                             Email="hal@example.com")])
    assert final_echo.commands == []


def test_a_record_that_came_whole_from_one_side_stores_its_field_stamps_once(decide):
    """A backfilled record's fields all came from the CRM at one moment: its sync state says so once
    ({"*": [side, ts]}, a third of the row before). Loaded again, every field has its own entry: an edit of one
    field stamps that field alone."""
    def stored_meta() -> dict:
        with pg.connect(decide.dsn) as conn:
            return conn.execute("SELECT field_meta FROM crmsync.sync_state WHERE crm_id = '003F'").fetchone()[0]

    created, edited = 1767261600.0, 1767265200.0  # 2026-01-01 10:00 and 11:00 UTC
    decide([crm("c", "003F", "2026-01-01T10:00:00.000+0000", FirstName="Fay", LastName="Fu",
                Email="fay@example.com")])
    assert stored_meta() == {"*": ["crm", created]}
    [command] = decide([crm("u", "003F", "2026-01-01T11:00:00.000+0000", FirstName="Faye", LastName="Fu",
                            Email="fay@example.com")]).commands
    assert command.values == {"first_name": "Faye"}
    assert stored_meta() == {"first_name": ["crm", edited], "last_name": ["crm", created], "email": ["crm", created]}
