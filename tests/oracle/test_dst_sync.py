"""An incremental sync across both daylight-saving changes of America/Los_Angeles, driven by the sandbox clock.

The client keeps its cursor in UTC, sends it as the user's wall-clock time (`ModifiedDate >= '...Z'`) and turns
every record's ModifiedDate back into UTC with the earliest-instant rule (connectors/oracle/timezone.py). The test
checks that no record is ever skipped -- in particular a record modified during the repeated hour whose wall-clock
ModifiedDate is *earlier* than the cursor's -- and that re-reading is confined to the repeated hour.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

import pytest

from connectors.oracle.client import OracleClient
from connectors.oracle.query import order_by, rest_term, ws_term
from tests.sandbox_oracle.conftest import WIDE_OPEN, RunningOracle

FIELDS = ["Id", "ExternalSystemId", "ModifiedDate"]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Sync:
    """The smallest incremental reader: everything modified at or after the cursor, cursor moved to the max."""

    def __init__(self, client: OracleClient, cursor: datetime) -> None:
        self.client, self.cursor = client, cursor

    def run(self) -> list[str]:
        rows = list(self.client.query("Contacts", fields=FIELDS, order_by=order_by("ModifiedDate", "Id"),
                                      q=rest_term("ModifiedDate", ">=", self.cursor, self.client.clock)))
        for row in rows:
            self.cursor = max(self.cursor, self.client.clock.parse_rest(row["ModifiedDate"]))
        return [row["ExternalSystemId"] for row in rows]


@pytest.fixture
def dst_sandbox(start_oracle: Callable[..., RunningOracle]) -> RunningOracle:
    running = start_oracle("dst")
    running.admin("settings", WIDE_OPEN)
    return running


def touch(client: OracleClient, sandbox: RunningOracle, at: str, key: str) -> None:
    """Create a contact while the sandbox clock reads `at` (UTC)."""
    sandbox.admin("clock", {"at": at})
    client.create("Contacts", {"ContactFirstName": "DST", "ContactLastName": key, "ExternalSystemId": key})


def test_fall_back_no_record_is_skipped(dst_sandbox: RunningOracle,
                                        make_client: Callable[..., OracleClient]) -> None:
    client = make_client(dst_sandbox, rest_requests_per_window=1000)
    sync = Sync(client, utc("2024-11-03T08:00:00Z"))
    touch(client, dst_sandbox, "2024-11-03T08:20:00Z", "A")  # 01:20 PDT
    assert sync.run() == ["A"]
    assert sync.cursor == utc("2024-11-03T08:20:00Z")

    touch(client, dst_sandbox, "2024-11-03T09:10:00Z", "B")  # 01:10 PST: the wall clock went back
    a, b = (client.query_page("Contacts", fields=["ModifiedDate"], q=rest_term("ExternalSystemId", "=", key))
            .records[0]["ModifiedDate"] for key in ("A", "B"))
    assert (a, b) == ("2024-11-03T01:20:00Z", "2024-11-03T01:10:00Z"), "B's wall clock is earlier than A's"
    assert sync.run() == ["A", "B"], "B is read although its wall-clock ModifiedDate is before the cursor"
    assert sync.cursor == utc("2024-11-03T08:20:00Z"), "B's 01:10 is read as its first occurrence (08:10Z)"

    touch(client, dst_sandbox, "2024-11-03T09:40:00Z", "C")  # 01:40 PST, still the repeated hour
    assert sync.run() == ["A", "B", "C"], "the repeated hour is re-read, never skipped"
    touch(client, dst_sandbox, "2024-11-03T10:05:00Z", "D")  # 02:05 PST, unambiguous again
    assert sync.run()[-1] == "D"
    assert sync.cursor == utc("2024-11-03T10:05:00Z")
    touch(client, dst_sandbox, "2024-11-03T10:30:00Z", "E")
    assert sync.run() == ["D", "E"], "after the repeated hour nothing is re-read but the cursor's own second"
    assert client.usage().sign_ins >= 2, "the clock jumps outlived the session; the client signed in again"

    since = ws_term(">=", utc("2024-11-03T09:00:00Z"))
    by_utc = [r["ExternalSystemId"] for r in client.web_services.query(
        "Contact", ["ExternalSystemId"], filters={"ModifiedDate": since}, sort=[("ModifiedDate", "ASC")])]
    assert by_utc == ["B", "C", "D", "E"], "Web Services compare XSD UTC instants: no ambiguity at all"


def test_spring_forward_no_record_is_skipped(dst_sandbox: RunningOracle,
                                             make_client: Callable[..., OracleClient]) -> None:
    client = make_client(dst_sandbox, rest_requests_per_window=1000)
    sync = Sync(client, utc("2024-03-10T09:00:00Z"))
    touch(client, dst_sandbox, "2024-03-10T09:50:00Z", "F")  # 01:50 PST
    touch(client, dst_sandbox, "2024-03-10T10:10:00Z", "G")  # 03:10 PDT (02:00-02:59 never happened)
    assert sync.run() == ["F", "G"]
    assert sync.cursor == utc("2024-03-10T10:10:00Z")
    assert client.clock.to_utc(datetime(2024, 3, 10, 2, 30)) == utc("2024-03-10T10:00:00Z"), \
        "a missing wall-clock time maps to the transition instant"
    touch(client, dst_sandbox, "2024-03-10T10:10:30Z", "H")
    assert sync.run() == ["G", "H"], "the cursor is inclusive: only its own second is read again"


def test_deleted_items_across_the_repeated_hour(dst_sandbox: RunningOracle,
                                                make_client: Callable[..., OracleClient]) -> None:
    client = make_client(dst_sandbox, rest_requests_per_window=1000)
    ids = {}
    for at, key in (("2024-11-03T08:40:00Z", "X"), ("2024-11-03T09:20:00Z", "Y")):
        touch(client, dst_sandbox, at, key)
        ids[key] = client.query_page("Contacts", fields=["Id"], q=rest_term("ExternalSystemId", "=", key)
                                     ).records[0]["Id"]
        client.delete("Contacts", ids[key])
    items = {i.external_id: i for i in client.web_services.deleted_items("Contact",
                                                                         since=utc("2024-11-03T08:30:00Z"))}
    assert set(items) == {"X", "Y"}
    assert items["X"].deleted_at == utc("2024-11-03T08:40:00Z")
    assert items["Y"].deleted_at == utc("2024-11-03T08:20:00Z"), "01:20 repeated: read as the first occurrence"
    assert items["Y"].deleted_at <= datetime(2024, 11, 3, 9, 20, tzinfo=timezone.utc)
