"""The sync's own writes: change capture never decodes the Campaign writer's transactions (their session carries
a replication origin and the slot asks pgoutput for `origin = none`, PostgreSQL ≥ 16), and whatever it does see
of them — a keyless insert, whose key the streams learn from capture; a database configured to capture
replicated rows; a table another mapping also syncs (a second CRM must see the write) — is tagged
origin='writer-campaign'. A person's edit is captured untagged."""
from __future__ import annotations

import threading
import time

import pytest

from crmsync import config, pg, topics
from services.capture.service import CaptureService
from tests.campaign_writer.conftest import account, contact, ref, rows
from tests.conftest import consume_changes
from tests.waiting import wait_for


def _capturing(endpoints, campaign_db, **campaign):
    dsn, name = campaign_db
    settings = config.Settings.model_validate({"campaign": {"name": name, "slot_name": f"slot_{name}",
                                                            "publication": f"pub_{name}", **campaign}})
    capture = CaptureService(settings, endpoints.bootstrap_servers, dsn)
    thread = threading.Thread(target=capture.run, daemon=True)
    thread.start()
    wait_for(lambda: capture.slot_status().get("exists"), 30, "the replication slot")
    time.sleep(0.3)
    return capture, thread


def _write(writer, commands, dsn) -> int:
    """Keyed writes, as the streams send them: creates with allocated keys, an update, a delete."""
    with pg.connect(dsn, autocommit=True) as conn:
        org, ann, bob = (conn.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", (t,)).fetchone()[0]
                         for t in ("organisations", "recipients", "recipients"))
    first = writer.apply_batch([
        commands.create("organisations", key={"id": org}, match=account("001A"), name="Acme"),
        commands.create("recipients", key={"id": ann}, match=contact("003A"), email="a@example.com",
                        organisation_id=ref("001A")),
        commands.create("recipients", key={"id": bob}, match=contact("003B"), email="b@example.com")])
    assert len(first.applied) == 3 and all(a.created for a in first.applied)
    assert rows(dsn, "SELECT id FROM recipients WHERE crm_id = '003A'") == [(ann,)]
    writer.apply_batch([commands.upsert("recipients", key={"id": ann}, match=contact("003A"), job_title="CTO"),
                        commands.delete("recipients", key={"id": bob}, match=contact("003B"))])
    with pg.connect(dsn, autocommit=True) as conn:  # a person's change, for contrast
        conn.execute("UPDATE recipients SET city = 'Lyon' WHERE id = %s", (ann,))
    return ann


def test_keyed_writes_are_never_decoded(endpoints, campaign_db, commands, writer):
    dsn, name = campaign_db
    assert writer.origin.usable  # the embedded PostgreSQL is 18
    capture, thread = _capturing(endpoints, campaign_db)
    try:
        ann = _write(writer, commands, dsn)
        seen = consume_changes(endpoints.bootstrap_servers,
                               [topics.changes("campaign", name, t) for t in ("organisations", "recipients")],
                               lambda s: any((c.after or {}).get("city") for c in s), timeout=60)
        time.sleep(1.0)  # anything of the writer's would have come by now (it committed before the person)
        seen += consume_changes(endpoints.bootstrap_servers,
                                [topics.changes("campaign", name, t) for t in ("organisations", "recipients")],
                                lambda s: False, timeout=2)
        wait_for(lambda: capture.slot_status()["lag_bytes"] < 10_000, 30, "the slot to move past the writes")
    finally:
        capture.stop()
        thread.join(30)
    assert {(c.op, c.key["id"], c.origin) for c in seen} == {("u", ann, None)}


@pytest.mark.parametrize("why", ["keyless insert", "capture_replicated", "sibling mapping"])
def test_what_capture_sees_of_the_writer_is_tagged(endpoints, campaign_db, commands, writer, why):
    dsn, name = campaign_db
    capture, thread = _capturing(endpoints, campaign_db, capture_replicated=why == "capture_replicated")
    try:
        if why == "keyless insert":  # a table without a key sequence: the streams learn the key from capture
            writer.apply_batch([commands.upsert("recipients", match=contact("003C"), email="c@example.com")])
            ann = rows(dsn, "SELECT id FROM recipients WHERE crm_id = '003C'")[0][0]
            wanted = {("c", ann, "writer-campaign"), ("u", ann, None)}
            with pg.connect(dsn, autocommit=True) as conn:
                conn.execute("UPDATE recipients SET city = 'Lyon' WHERE id = %s", (ann,))
        else:  # "sibling mapping": recipients synced with two CRMs, so transactions writing them stay visible
            writer.sibling_tables = frozenset({"recipients"} if why == "sibling mapping" else ())
            ann = _write(writer, commands, dsn)
            bob = rows(dsn, "SELECT last_value FROM recipients_id_seq")[0][0]
            org = rows(dsn, "SELECT id FROM organisations WHERE crm_id = '001A'")[0][0]
            wanted = {("c", org, "writer-campaign"), ("c", ann, "writer-campaign"), ("c", bob, "writer-campaign"),
                      ("u", ann, "writer-campaign"), ("d", bob, "writer-campaign"), ("u", ann, None)}
        seen = consume_changes(endpoints.bootstrap_servers,
                               [topics.changes("campaign", name, t) for t in ("organisations", "recipients")],
                               lambda s: len(s) >= len(wanted), timeout=60)
    finally:
        capture.stop()
        thread.join(30)
    assert {(c.op, c.key["id"], c.origin) for c in seen} == wanted
