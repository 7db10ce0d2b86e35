"""An older write of ours that lands in the CRM after a newer one (its answer timed out, the request was carried
out late: the fault suite's stalls do exactly this) leaves the CRM holding a superseded value. The poller then
shows that value back; it is one we sent, so it used to be dropped as an echo — and the two sides stayed
different for good, with nothing recorded. Now the newest agreed value is sent again, once."""
from __future__ import annotations

from tests.streams.changes import campaign, crm, decide, linked  # noqa: F401 - decide is a fixture


def _row(key: int, phone: str, crm_id: str = "003L") -> dict:
    return {"id": key, "email": "lea@example.com", "first_name": "Di", "last_name": "Ho", "phone": phone,
            "crm_account": "sf", "crm_id": crm_id}


def test_an_older_write_landing_last_in_the_crm_is_corrected(decide):
    key = linked(decide, "003L", "lea@example.com")
    v0, v1, v2 = _row(key, "+1 555 000000"), _row(key, "+1 555 111111"), _row(key, "+1 555 222222")
    first = decide([campaign("u", key, "2026-01-03T10:00:00Z", v1, before=v0)])
    second = decide([campaign("u", key, "2026-01-03T10:00:04Z", v2, before=v1)])
    assert [c.values["Phone"] for c in [*first.commands, *second.commands] if c.side == "crm"] == \
        ["+1 555 111111", "+1 555 222222"]
    # the poller's next read: the first write landed after the second
    late = decide([crm("u", "003L", "2026-01-03T10:00:07.000+0000", FirstName="Di", LastName="Ho",
                       Email="lea@example.com", Phone="+1 555 111111")])
    [again] = [c for c in late.commands if c.side == "crm"]
    assert again.values["Phone"] == "+1 555 222222" and again.expect == {"Phone": "+1 555 111111"}
    assert not [c for c in late.commands if c.side == "campaign"] and not late.conflicts
    # its echo ends it: nothing more is sent either way (no ping-pong)
    echo = decide([crm("u", "003L", "2026-01-03T10:00:09.000+0000", FirstName="Di", LastName="Ho",
                       Email="lea@example.com", Phone="+1 555 222222")])
    assert echo.commands == []


def test_the_echo_of_the_newest_write_sends_nothing(decide):
    key = linked(decide, "003M", "lea@example.com")
    v0, v1 = _row(key, "+1 555 000000", "003M"), _row(key, "+1 555 111111", "003M")
    decide([campaign("u", key, "2026-01-03T10:00:00Z", v1, before=v0)])
    echo = decide([crm("u", "003M", "2026-01-03T10:00:02.000+0000", FirstName="Di", LastName="Ho",
                       Email="lea@example.com", Phone="+1 555 111111")])
    assert echo.commands == []
