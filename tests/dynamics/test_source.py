"""The Dynamics change source against a real sandbox: change tracking and modifiedon + id, every create, update and
delete exactly once across tied modification times and restarts from any cursor it handed out."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable

from prometheus_client import REGISTRY

from connectors.dynamics import CONNECTOR
from connectors.dynamics.connector import DynamicsClient
from crmsync.connectors import SourcePage
from crmsync.envelope import Change
from tests.sandbox_dynamics.conftest import RunningSandbox

from .conftest import ACCOUNT_NAME


def read_all(client: DynamicsClient, obj: str, cursor: dict[str, Any] | None, **options: Any) -> list[SourcePage]:
    pages = list(CONNECTOR.change_source(client, obj, **options).read(cursor))
    for page in pages:
        json.dumps(page.cursor)  # a cursor is stored as JSON
        for change in page.changes:
            Change.from_json(change.to_json())  # and every change survives the envelope
    return pages


def changes_of(pages: list[SourcePage]) -> list[Change]:
    return [c for page in pages for c in page.changes]


def by_id(changes: list[Change]) -> dict[str, Change]:
    ids = [c.id for c in changes]
    assert len(ids) == len(set(ids)), "a change was delivered twice"
    return {c.id: c for c in changes}


def assert_restartable(client: DynamicsClient, obj: str, start: dict[str, Any] | None, pages: list[SourcePage],
                       **options: Any) -> None:
    """From every cursor handed out, a new source delivers exactly the changes of the pages after it."""
    cursors = [start] + [page.cursor for page in pages]
    for index, cursor in enumerate(cursors[:-1]):
        rest = changes_of(read_all(client, obj, cursor, **options))
        assert [c.id for c in rest] == [c.id for c in changes_of(pages[index:])]


def test_snapshot_then_creates_updates_deletes_exactly_once(start_sandbox: Callable[..., RunningSandbox],
                                                            connect: Callable[..., DynamicsClient]) -> None:
    sandbox = start_sandbox(seed_contacts=0)
    client = connect(sandbox)
    sandbox.admin("clock", {"frozen": True})  # every write gets the same createdon and modifiedon
    ids = client.create_multiple("accounts", "account", [{"name": f"Tied {i}"} for i in range(23)])
    sandbox.admin("clock", {"frozen": False})
    snapshot = read_all(client, "account", None, page_size=5)
    assert [(len(p.changes), p.snapshot_done) for p in snapshot] == [(5, False)] * 4 + [(3, False), (0, True)]
    first = by_id(changes_of(snapshot))
    assert len({c.position["ts"] for c in first.values()}) == 1  # all 23 share one modification time
    assert {c.key["id"] for c in first.values()} == set(ids) and {c.op for c in first.values()} == {"r"}
    sample = next(iter(first.values()))
    assert sample.position["ts"].endswith("Z") and sample.source_ts == sample.position["ts"]
    assert sample.id == f"crm:{ACCOUNT_NAME}:account:{sample.key['id']}:{sample.position['version']}"
    assert sample.after is not None and sample.after["name"].startswith("Tied") and sample.object == "account"
    assert_restartable(client, "account", None, snapshot, page_size=5)

    cursor = snapshot[-1].cursor
    time.sleep(1.1)  # creates are told apart from updates by createdon, in whole seconds after the last read
    new = client.create_multiple("accounts", "account", [{"name": f"New {i}"} for i in range(3)])
    for _ in range(2):  # updated twice: one change, at the last version
        client.update_multiple("accounts", "account", [{"accountid": i, "telephone1": uuid.uuid4().hex[:8]}
                                                       for i in ids[:2]])
    client.delete("accounts", ids[2])
    client.delete("accounts", ids[3])
    gone = client.create("accounts", {"name": "Created and deleted in between"})
    client.delete("accounts", gone)
    delta = read_all(client, "account", cursor, page_size=4)
    changes = by_id(changes_of(delta))
    ops = {(c.key["id"], c.op) for c in changes.values()}
    assert ops == {*((i, "c") for i in new), (ids[0], "u"), (ids[1], "u"), (ids[2], "d"), (ids[3], "d"),
                   (gone, "d")}
    deletes = [c for c in changes.values() if c.op == "d"]
    assert all(c.after is None and c.position["ts"].endswith("Z") for c in deletes)
    assert max(c.position["version"] for c in first.values()) < min(c.position["version"] for c in deletes)
    assert not any(p.snapshot_done for p in delta)
    assert_restartable(client, "account", cursor, delta, page_size=4)
    assert changes_of(read_all(client, "account", delta[-1].cursor)) == []


def test_an_expired_delta_link_reads_every_row_again(start_sandbox: Callable[..., RunningSandbox],
                                                     connect: Callable[..., DynamicsClient]) -> None:
    sandbox = start_sandbox(seed_contacts=30)
    client = connect(sandbox)
    snapshot = read_all(client, "contact", None, page_size=10)
    known = by_id(changes_of(snapshot))
    sandbox.admin("change-tracking", {"expire_days": 1})
    sandbox.admin("clock", {"offset_seconds": 2 * 86400})
    client.tokens.invalidate()  # tokens are checked on the sandbox clock too
    before = REGISTRY.get_sample_value("crmsync_dynamics_change_tracking_resyncs_total",
                                       {"account": ACCOUNT_NAME, "object": "contact"}) or 0.0
    again = read_all(client, "contact", snapshot[-1].cursor, page_size=10)
    assert REGISTRY.get_sample_value("crmsync_dynamics_change_tracking_resyncs_total",
                                     {"account": ACCOUNT_NAME, "object": "contact"}) == before + 1
    reread = by_id(changes_of(again))
    assert set(reread) == set(known) and {c.op for c in reread.values()} == {"r"}  # same ids: consumers drop them
    assert again[-1].cursor["delta"] and not any(p.snapshot_done for p in again)
    assert changes_of(read_all(client, "contact", again[-1].cursor)) == []


def test_modifiedon_and_id_for_a_table_without_change_tracking(start_sandbox: Callable[..., RunningSandbox],
                                                               connect: Callable[..., DynamicsClient]) -> None:
    sandbox = start_sandbox(seed_contacts=0)
    sandbox.admin("change-tracking", {"tables": {"lead": False}})
    client = connect(sandbox)
    assert client.catalog.table("lead").change_tracking is False
    sandbox.admin("clock", {"frozen": True})  # tied modification times across every page boundary
    ids = client.create_multiple("leads", "lead", [{"subject": f"Lead {i}", "lastname": f"L{i}"} for i in range(17)])
    sandbox.admin("clock", {"frozen": False})
    options = dict(page_size=4, full_window_every_seconds=3600)
    snapshot = read_all(client, "lead", None, **options)
    assert snapshot[-1].cursor["mode"] == "modifiedon" and snapshot[-1].snapshot_done
    assert {c.key["id"] for c in changes_of(snapshot)} == set(ids) and len(changes_of(snapshot)) == 17
    assert {c.op for c in changes_of(snapshot)} == {"r"} and len({c.position["ts"] for c in changes_of(snapshot)}) == 1
    assert_restartable(client, "lead", None, snapshot, **options)

    cursor = snapshot[-1].cursor
    time.sleep(1.1)  # the creates below are later than the cursor's second
    sandbox.admin("clock", {"frozen": True})
    client.update_multiple("leads", "lead", [{"leadid": i, "companyname": "Updated"} for i in ids[:6]])
    created = client.create_multiple("leads", "lead", [{"subject": "Later", "lastname": f"N{i}"} for i in range(5)])
    sandbox.admin("clock", {"frozen": False})
    source = CONNECTOR.change_source(client, "lead", **options)
    delta = list(source.read(cursor))
    changes = by_id(changes_of(delta))
    assert {(c.key["id"], c.op) for c in changes.values()} == {*((i, "u") for i in ids[:6]),
                                                              *((i, "c") for i in created)}
    assert_restartable(client, "lead", cursor, delta, **options)
    assert changes_of(list(source.read(delta[-1].cursor))) == []

    # a row committed late, with a modifiedon before the cursor: only a full-window pass (lookback) sees it
    sandbox.admin("clock", {"offset_seconds": -30})
    late = client.create("leads", {"subject": "Late", "lastname": "Late"})
    sandbox.admin("clock", {"offset_seconds": 0})
    assert changes_of(list(source.read(delta[-1].cursor))) == []
    full = read_all(client, "lead", delta[-1].cursor, page_size=4, full_window_every_seconds=0)
    assert [(c.key["id"], c.op) for c in changes_of(full)] == [(late, "c")]  # nothing else of the window again
    assert changes_of(read_all(client, "lead", full[-1].cursor, page_size=4, full_window_every_seconds=0)) == []


def test_fields_describe_kinds(dynamics: DynamicsClient) -> None:
    fields = CONNECTOR.change_source(dynamics, "contacts").fields()
    assert fields["birthdate"].kind == "date" and fields["birthdate"].pg_type == "date"
    assert fields["modifiedon"].kind == "datetime" and fields["modifiedon"].updateable is False
    assert fields["gendercode"].kind == "integer" and fields["gendercode"].enumeration == "contact_gendercode"
    assert fields["crmsync_interests"].pg_type == "text[]" and fields["crmsync_interests"].kind == "json"
    assert fields["parentcustomerid"].kind == "text" and fields["creditlimit"].kind == "number"
    assert fields["crmsync_campaignkey"].external_id and not fields["emailaddress1"].external_id
