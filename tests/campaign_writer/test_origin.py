"""Echo tag: change capture sees every change the writer makes as the sync's own (origin='writer-campaign')."""
from __future__ import annotations

import threading
import time

from crmsync import config, pg, topics
from services.capture.service import CaptureService
from tests.campaign_writer.conftest import account, contact, ref, rows
from tests.waiting import wait_for
from tests.conftest import consume_changes


def test_writer_changes_are_captured_with_the_writer_origin(endpoints, campaign_db, commands, writer):
    dsn, name = campaign_db
    settings = config.Settings.model_validate({"campaign": {"name": name, "slot_name": f"slot_{name}",
                                                            "publication": f"pub_{name}"}})
    capture = CaptureService(settings, endpoints.bootstrap_servers, dsn)
    thread = threading.Thread(target=capture.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: capture.slot_status().get("exists"), 30, "the replication slot")
        time.sleep(0.3)
        first = writer.apply_batch([
            commands.upsert("organisations", match=account("001A"), name="Acme"),
            commands.upsert("recipients", match=contact("003A"), email="a@example.com", organisation_id=ref("001A")),
            commands.upsert("recipients", match=contact("003B"), email="b@example.com"),
        ])
        assert len(first.applied) == 3
        ann = rows(dsn, "SELECT id FROM recipients WHERE crm_id = '003A'")[0][0]
        writer.apply_batch([commands.upsert("recipients", key={"id": ann}, match=contact("003A"), job_title="CTO"),
                            commands.delete("recipients", match=contact("003B"))])
        with pg.connect(dsn, autocommit=True) as conn:  # a person's change, for contrast
            conn.execute("UPDATE recipients SET city = 'Lyon' WHERE id = %s", (ann,))
        wanted = {("organisations", "c"), ("recipients", "c"), ("recipients", "u"), ("recipients", "d")}
        seen = consume_changes(endpoints.bootstrap_servers,
                               [topics.changes("campaign", name, t) for t in ("organisations", "recipients")],
                               lambda s: len(s) >= 6, timeout=60)
    finally:
        capture.stop()
        thread.join(30)
    ours = [c for c in seen if not (c.after or {}).get("city")]
    theirs = [c for c in seen if (c.after or {}).get("city") == "Lyon"]
    assert {(c.object, c.op) for c in ours} == wanted
    assert len(ours) == 5 and {c.origin for c in ours} == {"writer-campaign"}
    assert [c.origin for c in theirs] == [None]
