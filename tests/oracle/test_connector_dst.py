"""The change source across both daylight-saving changes of the API user's zone (America/Los_Angeles, 2024),
driven by the sandbox clock: every create, update and delete is published once, at its exact instant -- none
lost, none shifted by an hour -- through the REST API (wall-clock ModifiedDates) and Web Services (UTC)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

import pytest

from connectors.oracle.connection import OracleConnection
from connectors.oracle.source import OracleChangeSource
from crmsync.envelope import Change
from tests.sandbox_oracle.conftest import WIDE_OPEN, RunningOracle


class Recorder:
    """Reads like the engine: pages in order, the cursor kept, every change remembered."""

    def __init__(self, source: OracleChangeSource) -> None:
        self.source, self.cursor, self.changes = source, None, []

    def read(self) -> list[tuple[str, str, str]]:
        pages = list(self.source.read(self.cursor))
        self.cursor = pages[-1].cursor
        new: list[Change] = [c for p in pages for c in p.changes]
        self.changes += new
        return [(c.op, self.name(c), c.position["ts"]) for c in new]

    def name(self, change: Change) -> str:
        if change.after:
            return change.after["ExternalSystemId"]
        return next(c.after["ExternalSystemId"] for c in self.changes if c.key == change.key and c.after)


@pytest.fixture
def dst(start_oracle: Callable[..., RunningOracle]) -> RunningOracle:
    running = start_oracle("dst")
    running.admin("settings", WIDE_OPEN)
    return running


@pytest.fixture(params=["rest", "webservices"])
def reading(request: pytest.FixtureRequest, dst: RunningOracle,
            connect: Callable[..., OracleConnection]) -> tuple[OracleConnection, Recorder]:
    """A connection to a sandbox of the test's own and a recorder reading changes through one API."""
    connection = connect(dst)
    return connection, Recorder(OracleChangeSource(connection, "Contact", api=request.param))


def write(connection: OracleConnection, sandbox: RunningOracle, at: str, key: str, **values: Any) -> None:
    """Save a contact (create or update, by its external id) while the sandbox clock reads `at` (UTC)."""
    sandbox.admin("clock", {"at": at})
    outcome, = connection.api.web_services.insert_or_update("Contact", [
        {"ContactFirstName": "DST", "ContactLastName": key, "ExternalSystemId": key, **values}])
    assert outcome.ok, outcome.error


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_fall_back_nothing_lost_nothing_shifted(dst: RunningOracle,
                                                reading: tuple[OracleConnection, Recorder]) -> None:
    """2024-11-03: 01:00-01:59 happens twice (PDT, then PST); B's and C's wall clocks read 01:20 and 01:10."""
    connection, recorder = reading
    write(connection, dst, "2024-11-03T07:50:00Z", "A")  # 00:50 PDT
    assert recorder.read() == [("r", "A", "2024-11-03T07:50:00.000Z")]
    write(connection, dst, "2024-11-03T08:20:00Z", "B", CustomDateTime0=utc("2024-11-03T09:30:00Z"))  # 01:20 PDT
    assert recorder.read() == [("c", "B", "2024-11-03T08:20:00.000Z")]
    write(connection, dst, "2024-11-03T09:10:00Z", "C")  # 01:10 PST: the wall clock went back
    assert recorder.read() == [("c", "C", "2024-11-03T09:10:00.000Z")], "not at 08:10Z, where its wall clock reads"
    cursor_after_c = recorder.cursor
    write(connection, dst, "2024-11-03T09:40:00Z", "B", JobTitle="Second hour")  # 01:40 PST
    c_id = recorder.changes[-1].key["id"]
    dst.admin("clock", {"at": "2024-11-03T09:50:00Z"})
    connection.api.delete("Contacts", c_id)  # DeletedDate 11/03/2024 01:50:00: the second one
    assert recorder.read() == [("u", "B", "2024-11-03T09:40:00.000Z"), ("d", "C", "2024-11-03T09:50:00.000Z")]
    write(connection, dst, "2024-11-03T10:05:00Z", "D")  # 02:05 PST
    assert recorder.read() == [("c", "D", "2024-11-03T10:05:00.000Z")]
    assert recorder.read() == []

    b = next(c for c in reversed(recorder.changes) if c.after and c.after["ExternalSystemId"] == "B")
    assert b.after["CustomDateTime0"] == "2024-11-03T09:30:00.000Z", "a datetime field in the repeated hour, exact"
    assert b.after["ModifiedDate"] == "2024-11-03T09:40:00.000Z" and b.after["CreatedDate"] == "2024-11-03T08:20:00.000Z"
    assert len({c.id for c in recorder.changes}) == len(recorder.changes) == 6

    restarted = Recorder(OracleChangeSource(connection, "Contact", api=recorder.source.api,
                                            full_window_every_seconds=10 ** 9))
    restarted.changes, restarted.cursor = list(recorder.changes), cursor_after_c
    assert [c[:2] for c in restarted.read()] == [("u", "B"), ("c", "D"), ("d", "C")], \
        "from the cursor of C (01:10 PST, which OOD would read as 01:10 PDT) nothing earlier comes again"


def test_spring_forward_nothing_lost_nothing_shifted(dst: RunningOracle,
                                                     reading: tuple[OracleConnection, Recorder]) -> None:
    """2024-03-10: 02:00-02:59 never happens; 01:59:59 PST is followed by 03:00:00 PDT."""
    connection, recorder = reading
    write(connection, dst, "2024-03-10T09:50:00Z", "F")  # 01:50 PST
    assert recorder.read() == [("r", "F", "2024-03-10T09:50:00.000Z")]
    write(connection, dst, "2024-03-10T09:59:59Z", "G")  # 01:59:59 PST, the last second before the gap
    write(connection, dst, "2024-03-10T10:00:00Z", "H", CustomDateTime0=utc("2024-03-10T10:30:00Z"))  # 03:00 PDT
    assert recorder.read() == [("c", "G", "2024-03-10T09:59:59.000Z"), ("c", "H", "2024-03-10T10:00:00.000Z")]
    assert recorder.changes[-1].after["CustomDateTime0"] == "2024-03-10T10:30:00.000Z"
    write(connection, dst, "2024-03-10T10:10:00Z", "F", JobTitle="After the gap")  # 03:10 PDT
    assert recorder.read() == [("u", "F", "2024-03-10T10:10:00.000Z")]
    assert recorder.read() == []

