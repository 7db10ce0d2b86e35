"""Two-way correctness, one deterministic test per class of silent divergence found under concurrent edits.

Each of these lost an edit or left the two sides holding each other's values, with no reject and no conflict
recorded: two updates of one row in one batch, text that looks like a timestamp, an older CRM value decided
after a newer Campaign edit and applied over it, and two batches deadlocking on their locks.
"""
from __future__ import annotations

import threading
from dataclasses import replace
import time

import pytest
from prometheus_client import REGISTRY

from crmsync import pg
from crmsync.field_types import store_crm_fields
from crmsync.infra import Endpoints
from services.campaign_writer.service import CampaignWriter
from streams.app import BatchHandler
from tests.streams.changes import ACCOUNT, campaign, crm, linked, recipient

TEXTS = ["2021-06-01T00:30:00+01:00", "0001-01-01T00:30:00+01:00", "2024-02-30", "007", "1e3", "-0", "true",
         "False", "  spaced  ", "NaN", "1990-02-03"]


def _row(key: int, email: str, **columns) -> dict:
    return {"id": key, "email": email, "first_name": "Di", "last_name": "Ho", "job_title": None, "city": None,
            "zip_code": None, "crm_account": ACCOUNT, "crm_id": columns.pop("crm_id"), **columns}


def test_two_updates_of_one_row_in_one_batch_both_reach_the_crm(decide):
    """Two Campaign updates of a row 49 ms apart, decided in one batch: the first changed zip_code, the second
    job_title. The batch used to keep only the newest change, whose before-image shows zip_code unchanged."""
    key = linked(decide, "003Q", "quinn@example.com")
    v0 = _row(key, "quinn@example.com", crm_id="003Q")
    v1 = {**v0, "zip_code": "Z-p2-87"}
    v2 = {**v1, "job_title": "Title-p2-106"}
    out = decide([campaign("u", key, "2026-01-01T12:00:00.000Z", v1, before=v0),
                  campaign("u", key, "2026-01-01T12:00:00.049Z", v2, before=v1)])
    [command] = [c for c in out.commands if c.side == "crm"]  # one command for the record, both fields in it
    assert command.values["MailingPostalCode"] == "Z-p2-87" and command.values["Title"] == "Title-p2-106"


@pytest.mark.parametrize("text", TEXTS)
def test_text_arrives_byte_for_byte_both_ways(decide, text):
    """Text fields carry any text, whatever it looks like: no parsing as dates, numbers or booleans."""
    with pg.connect(decide.dsn) as conn:
        store_crm_fields(conn, ACCOUNT, "Contact", {"Title": ("text", "string"), "MailingCity": ("text", "string"),
                                                    "Email": ("text", "email"), "Birthdate": ("date", "date")})
    crm_id = f"003T{abs(hash(text)) % 10_000:04d}"
    key = linked(decide, crm_id, f"t{abs(hash(text))}@example.com")
    from_crm = decide([crm("u", crm_id, "2026-01-02T10:00:00.000+0000", FirstName="Di", LastName="Ho",
                           Email=f"t{abs(hash(text))}@example.com", Title=text)])
    assert [c.values["job_title"] for c in from_crm.commands if c.side == "campaign"] == [text]
    base = _row(key, f"t{abs(hash(text))}@example.com", crm_id=crm_id, job_title=text)
    from_campaign = decide([campaign("u", key, "2026-01-02T11:00:00Z", {**base, "city": text}, before=base)])
    assert [c.values["MailingCity"] for c in from_campaign.commands if c.side == "crm"] == [text]
    assert not from_crm.invalid and not from_campaign.invalid


def test_a_value_that_cannot_have_its_fields_kind_is_reported_and_the_rest_syncs(decide):
    """'0001-01-01T00:30:00+01:00' in a date field crash-looped the streams (OverflowError): now that field is
    left out with a reason, and the record's other fields still go."""
    key = linked(decide, "003V", "vi@example.com")
    out = decide([crm("u", "003V", "2026-01-02T10:00:00.000+0000", FirstName="Vi", LastName="Ho",
                      Email="vi@example.com", Birthdate="0001-01-01T00:30:00+01:00")])
    [command] = [c for c in out.commands if c.side == "campaign"]
    assert command.values == {"first_name": "Vi"} and command.key == {"id": key}
    [invalid] = out.invalid
    assert invalid.field == "Birthdate" and "0001-01-01T00:30:00+01:00" in invalid.reason


def test_an_older_crm_edit_decided_first_does_not_overwrite_a_later_campaign_edit(decide, endpoints):
    """CRM edit at 12:00:00.0, Campaign edit of the same field at 12:00:00.5. The poller is slower than change
    capture, but here the CRM edit is decided first and its command reaches the Campaign writer only after the
    user's edit: it used to overwrite it (the sides then held each other's values, `agreed` the CRM's)."""
    key = linked(decide, "003R", "ray@example.com")
    v0 = _row(key, "ray@example.com", crm_id="003R")
    crm_first = decide([crm("u", "003R", "2026-01-02T12:00:00.000+0000", FirstName="Di", LastName="L-c1-397",
                            Email="ray@example.com")])
    [to_campaign] = [c for c in crm_first.commands if c.side == "campaign"]
    assert to_campaign.values == {"last_name": "L-c1-397"} and to_campaign.expect == {"last_name": "Ho"}
    with pg.connect(decide.dsn) as conn:  # the user's edit lands before the writer gets to that command
        conn.execute("UPDATE recipients SET last_name = 'L-p1-487' WHERE id = %s", (key,))
    writer = CampaignWriter(decide.dsn, endpoints.bootstrap_servers, "campaign", tables=["recipients"])
    try:
        [applied] = writer.apply_batch([to_campaign]).applied
    finally:
        writer.close()
    assert applied.superseded == ["last_name"]
    # change capture brings the user's edit: newer than the CRM's, it wins and goes to the CRM
    later = decide([campaign("u", key, "2026-01-02T12:00:00.500Z", {**v0, "last_name": "L-p1-487"}, before=v0)])
    assert [(c.side, c.values.get("LastName")) for c in later.commands] == [("crm", "L-p1-487")]
    with pg.connect(decide.dsn) as conn:
        assert conn.execute("SELECT last_name FROM recipients WHERE id = %s", (key,)).fetchone()[0] == "L-p1-487"
        agreed = conn.execute("SELECT agreed->>'last_name' FROM crmsync.sync_state WHERE crm_id = '003R'").fetchone()
    assert agreed[0] == "L-p1-487"


def test_a_batch_that_loses_a_deadlock_is_decided_again_in_place(decide, endpoints):
    """Two transactions wait on each other's rows: PostgreSQL aborts one. The streams used to exit (and needed
    20 s to work again); now the batch is decided again at once, in the same process."""
    first = linked(decide, "003X", "xa@example.com")
    second = linked(decide, "003Y", "ya@example.com")
    handler = BatchHandler(decide.settings, Endpoints(endpoints.bootstrap_servers, decide.dsn), "campaign")
    base1, base2 = _row(first, "xa@example.com", crm_id="003X"), _row(second, "ya@example.com", crm_id="003Y")
    changes = [campaign("u", first, "2026-01-03T10:00:00Z", {**base1, "city": "Oslo"}, before=base1),
               campaign("u", second, "2026-01-03T10:00:01Z", {**base2, "city": "Bergen"}, before=base2)]
    with pg.connect(decide.dsn) as other:
        other.execute("SET deadlock_timeout = '20s'")  # the batch, not this transaction, detects the cycle
        ids = dict(other.execute("SELECT campaign_key, id FROM crmsync.sync_state WHERE campaign_key = ANY(%s)",
                                 ([first, second],)).fetchall())
        other.execute("SELECT 1 FROM crmsync.sync_state WHERE id = %s FOR UPDATE", (max(ids.values()),))
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(outcome=_catching(handler.handle, changes)))
        thread.start()
        time.sleep(0.5)  # the batch now holds the lower row and waits for the higher one
        other.execute("SELECT 1 FROM crmsync.sync_state WHERE id = %s FOR UPDATE", (min(ids.values()),))
        other.commit()
    thread.join(30)
    handler.conn.close()
    outcome = result["outcome"]
    assert not isinstance(outcome, Exception), f"the batch failed: {outcome!r}"
    assert REGISTRY.get_sample_value("crmsync_streams_batch_retries_total",
                                     {"side": "campaign", "error": "DeadlockDetected"}) >= 1
    assert sorted(c.values["MailingCity"] for c in outcome.commands) == ["Bergen", "Oslo"]


def _catching(function, *args):
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        return exc


def test_an_echo_after_a_delete_does_not_bring_the_record_back(decide):
    """A recipient deleted in Campaign (`mark`: the CRM contact stays) while our write to that contact was in
    flight: the write's echo used to mark the link alive again, and drift repair then found a linked record
    gone from Campaign."""
    key = linked(decide, "003W", "wu@example.com")
    v0 = _row(key, "wu@example.com", crm_id="003W")
    decide([campaign("u", key, "2026-01-04T10:00:00Z", {**v0, "city": "Oslo"}, before=v0)])  # sent to the CRM
    decide([campaign("d", key, "2026-01-04T10:00:01Z", None, before={**v0, "city": "Oslo"})])
    echo = decide([crm("u", "003W", "2026-01-04T10:00:02.000+0000", FirstName="Di", LastName="Ho",
                       Email="wu@example.com", MailingCity="Oslo")])
    later_edit = decide([crm("u", "003W", "2026-01-04T10:05:00.000+0000", FirstName="Di", LastName="Ho",
                             Email="wu@example.com", MailingCity="Bergen")])
    assert echo.commands == [] and later_edit.commands == []
    with pg.connect(decide.dsn) as conn:
        assert conn.execute("SELECT deleted FROM crmsync.sync_state WHERE crm_id = '003W'").fetchone()[0] is True


def test_a_crm_undelete_unmarks_the_recipient(decide):
    key = linked(decide, "003U", "uma@example.com")
    decide([crm("d", "003U", "2026-01-04T11:00:00.000+0000")])  # `mark`: the recipient is flagged deleted
    back = decide([crm("c", "003U", "2026-01-04T11:01:00.000+0000", FirstName="Di", LastName="Ho",
                       Email="uma@example.com", Title="Back")])
    assert [(c.key, c.values) for c in back.commands] == [({"id": key}, {"deleted": False, "job_title": "Back"})]


def test_a_late_write_seen_in_the_same_batch_as_the_edit_it_overwrote_is_undone(decide):
    """Our write of a Campaign edit reached the CRM after a CRM user's later edit of the same field (Salesforce's
    compare-and-set is a read before the write: a narrow window). The streams see both CRM versions in one
    batch: the user's edit wins, and the winner is re-asserted twice — once per version — merged into one
    command. That command must expect what the CRM holds last (our late write), not what the first version
    showed: with the first, the CRM writer's compare-and-set left it out, and the two sides kept each other's
    values (found by tests/sync/test_chaos.py)."""
    key = linked(decide, "003LATE", "late@example.com")
    base = _row(key, "late@example.com", crm_id="003LATE", phone="+1 555 0100")
    decide([crm("u", "003LATE", "2026-01-06T09:00:00.000+0000", FirstName="Di", LastName="Ho",
                Email="late@example.com", HasOptedOutOfEmail=False, Phone="+1 555 0100")])
    sent = decide([campaign("u", key, "2026-01-06T12:00:00Z", {**base, "phone": "campaign-value"}, before=base)])
    assert [c.values.get("Phone") for c in sent.commands] == ["campaign-value"]
    fields = dict(FirstName="Di", LastName="Ho", Email="late@example.com", HasOptedOutOfEmail=False)
    out = decide([crm("u", "003LATE", "2026-01-06T12:00:05.000+0000", **fields, Phone="crm-value"),  # the user
                  crm("u", "003LATE", "2026-01-06T12:00:06.000+0000", **fields, Phone="campaign-value")])  # ours, late
    to_crm = [c for c in out.commands if c.side == "crm"]
    assert [(c.values.get("Phone"), (c.expect or {}).get("Phone")) for c in to_crm] == [("crm-value", "campaign-value")]
    assert [c.values.get("phone") for c in out.commands if c.side == "campaign"] == ["crm-value"]


def test_a_repair_read_of_a_row_whose_crm_create_was_lost_creates_it_again(decide):
    """A Campaign row was decided (its link has no CRM id yet, the create command is in flight) and the command was
    lost with the broker's memory. The drift repair re-publishes the row as a read: the create goes out again
    (the row's values equal what the link agreed, so the merge alone sent nothing and the record never reached
    the CRM; found by tests/faults/test_faults_salesforce.py)."""
    row = recipient(decide.dsn, "lost-create@example.com", first_name="Lo", last_name="St")
    after = {**_row(row["id"], "lost-create@example.com", crm_id=None, first_name="Lo", last_name="St"),
             "crm_account": None}
    first = decide([campaign("c", row["id"], "2026-01-07T10:00:00Z", after)])
    created = [(c.action, c.match, c.values.get("Email")) for c in first.commands if c.side == "crm"]
    assert created == [("upsert", {"Campaign_Key__c": str(row["id"])}, "lost-create@example.com")]
    repair = campaign("r", row["id"], "2026-01-07T10:00:00Z", after)
    again = decide([replace(repair, position={"repair": True, "missing": "crm"})])  # as crmsync/drift.py has it
    assert [(c.action, c.match, c.values.get("Email")) for c in again.commands if c.side == "crm"] == created


def test_a_repair_read_of_a_crm_record_whose_campaign_insert_was_lost_inserts_it_again(decide):
    """The same, the other way: a new CRM record was decided (its Campaign key allocated, the insert in flight)
    and the insert was lost. The repair's read of the CRM record sends the row again."""
    fields = dict(FirstName="Lo", LastName="St", Email="lost-insert@example.com", HasOptedOutOfEmail=False)
    first = decide([crm("c", "003LOST", "2026-01-07T11:00:00.000+0000", **fields)])
    inserted = [(c.action, c.key, c.values.get("email")) for c in first.commands if c.side == "campaign"]
    assert [action for action, _, _ in inserted] == ["create"]
    repair = crm("r", "003LOST", "2026-01-07T11:00:00.000+0000", **fields)
    again = decide([replace(repair, position={**repair.position, "repair": True, "missing": "campaign"})])
    assert [(c.action, c.key, c.values.get("email")) for c in again.commands if c.side == "campaign"] == inserted
