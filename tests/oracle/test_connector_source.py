"""The change source against a sandbox of its own: creates, updates and deletes exactly once, through ties larger
than a page, restarts from every cursor it handed out, late commits (the lookback), and the sort-or-filter
fallback; both APIs (REST and Web Services) give the same changes."""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest

from connectors.oracle import CONNECTOR
from connectors.oracle.connection import OracleConnection
from connectors.oracle.source import OracleChangeSource, content_digest
from crmsync.connectors import SourcePage
from crmsync.envelope import Change
from tests.sandbox_oracle.conftest import RunningOracle


def drain(source: OracleChangeSource, cursor: dict[str, Any] | None) -> tuple[list[Change], dict[str, Any]]:
    pages = list(source.read(cursor))
    return [c for page in pages for c in page.changes], pages[-1].cursor


def keyed(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.op, (c.after or {}).get("ContactLastName") or c.key["id"]) for c in changes]


def create(connection: OracleConnection, *names: str) -> list[str]:
    return [connection.api.create("Contacts", {"ContactFirstName": "Source", "ContactLastName": name,
                                               "ExternalSystemId": f"SRC-{name}"}) for name in names]


def at(sandbox: RunningOracle, moment: str) -> None:
    sandbox.admin("clock", {"at": moment})


@pytest.fixture
def fresh(own_oracle: RunningOracle, connect: Callable[..., OracleConnection]) -> Iterator[OracleConnection]:
    """A connection to the module's sandbox, every contact of earlier tests deleted and the clock real again."""
    own_oracle.admin("clock", {"offset_seconds": -60})  # the clean-up's deletes lie before any test's snapshot
    connection = connect(own_oracle)
    for page in CONNECTOR.query(connection).records("Contact", ["Id"]):
        connection.api.web_services.write("Contact", "Delete", [{"Id": r["id"]} for r in page])
    own_oracle.admin("clock", {"offset_seconds": 0})
    time.sleep(1.01 - time.time() % 1.0)  # the previous test's deletes lie in an earlier second than the snapshot
    yield connection
    own_oracle.admin("settings", {"sort_or_filter": False})


@pytest.mark.parametrize("api", ["webservices", "rest"])
def test_creates_updates_deletes_exactly_once(fresh: OracleConnection, api: str) -> None:
    ids = create(fresh, "Ann", "Bob", "Cid")
    source = CONNECTOR.change_source(fresh, "Contact", api=api)
    snapshot, cursor = drain(source, None)
    assert sorted(keyed(snapshot)) == [("r", "Ann"), ("r", "Bob"), ("r", "Cid")]
    first = snapshot[0]
    assert first.side == "crm" and first.source == "ood" and first.object == "Contact"
    assert first.key == {"id": first.after["Id"]}
    assert first.position == {"ts": first.source_ts, "id": first.after["Id"], "digest": content_digest(first.after)}
    assert first.id == f"crm:ood:Contact:{first.after['Id']}:{first.source_ts}/{content_digest(first.after)}"
    assert first.source_ts.endswith(".000Z") and first.after["ModifiedDate"] == first.source_ts
    assert first.after["NeverEmail"] is False and first.after["JobTitle"] is None, \
        "an unchecked check box is false, an empty text None (on both APIs)"

    fresh.api.update("Contacts", ids[0], {"JobTitle": "Chief"})
    fresh.api.delete("Contacts", ids[1])
    create(fresh, "Dee")
    changes, cursor = drain(source, cursor)
    assert sorted(keyed(changes)) == [("c", "Dee"), ("d", ids[1]), ("u", "Ann")]
    assert next(c for c in changes if c.op == "u").after["JobTitle"] == "Chief"
    deleted = next(c for c in changes if c.op == "d")
    assert deleted.after is None and deleted.key == {"id": ids[1]}
    assert drain(source, cursor)[0] == [], "nothing is published twice"


def test_both_apis_publish_the_same_changes(fresh: OracleConnection) -> None:
    create(fresh, "Eve", "Fay")
    by_rest, _ = drain(CONNECTOR.change_source(fresh, "Contact", api="rest"), None)
    by_ws, _ = drain(CONNECTOR.change_source(fresh, "Contact", api="webservices"), None)
    reads = [[(c.id, c.after) for c in changes if c.op == "r"] for changes in (by_rest, by_ws)]
    assert len(reads[0]) == 2 and reads[0] == reads[1]  # (a delete of the previous test's second may come too)


def test_a_tie_larger_than_a_page_and_a_restart_from_every_cursor(own_oracle: RunningOracle,
                                                                    fresh: OracleConnection) -> None:
    """250 contacts saved in one second (ModifiedDate ties across three pages): every cursor handed out, given to
    a new source as after a crash, yields exactly the contacts not yet published -- none lost, none twice."""
    stamp = "2024-06-01T12:00:00Z"
    for batch in range(0, 250, 20):
        at(own_oracle, stamp)  # every batch lands in the same second
        fresh.api.web_services.insert_or_update("Contact", [
            {"ContactFirstName": "Tie", "ContactLastName": f"T{n:03d}", "ExternalSystemId": f"TIE-{n:03d}"}
            for n in range(batch, min(batch + 20, 250))])
    own_oracle.admin("clock", {"offset_seconds": 0})
    pages: list[SourcePage] = list(CONNECTOR.change_source(fresh, "Contact").read(None))
    published = [c for p in pages for c in p.changes]
    assert len(published) == 250 and len({c.id for c in published}) == 250
    assert {c.source_ts for c in published} == {"2024-06-01T12:00:00.000Z"}
    for handed_out, page in enumerate(pages[:-1]):
        restarted = OracleChangeSource(fresh, "Contact")
        rest, _ = drain(restarted, page.cursor)
        before = [c.id for p in pages[:handed_out + 1] for c in p.changes]
        assert sorted(before + [c.id for c in rest]) == sorted(c.id for c in published), f"restart after page {handed_out}"

    # one more save in that second, after the snapshot: found by Id past the tie, without re-reading the tie
    at(own_oracle, stamp)
    create(fresh, "T250")
    own_oracle.admin("clock", {"offset_seconds": 0})
    queries = own_oracle.admin("stats")["requests"].get("WS ContactQueryPage", 0)
    changes, cursor = drain(OracleChangeSource(fresh, "Contact"), pages[-1].cursor)
    assert keyed(changes) == [("c", "T250")]
    assert own_oracle.admin("stats")["requests"]["WS ContactQueryPage"] - queries <= 3, \
        "first page, the rest of the tie by Id, what follows: not the 250 again"

    # the same tie in an incremental read: 60 more contacts in one second, read with a page of 25
    source = OracleChangeSource(fresh, "Contact", page_size=25)
    for batch in range(0, 60, 20):
        at(own_oracle, "2024-06-01T12:05:00Z")
        fresh.api.web_services.insert_or_update("Contact", [
            {"ContactFirstName": "Tie", "ContactLastName": f"U{n:03d}", "ExternalSystemId": f"TIE-U{n:03d}"}
            for n in range(batch, batch + 20)])
    changes, cursor = drain(source, cursor)
    assert Counter(c.op for c in changes) == {"c": 60}
    assert drain(source, cursor)[0] == []


def test_a_late_commit_inside_the_lookback_is_caught(own_oracle: RunningOracle, fresh: OracleConnection) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    source = OracleChangeSource(fresh, "Contact", lookback_seconds=300, full_window_every_seconds=3600)
    create(fresh, "Gus")
    _, cursor = drain(source, None)
    at(own_oracle, (now - timedelta(seconds=120)).isoformat())  # a save stamped two minutes before the cursor
    create(fresh, "Hal")
    own_oracle.admin("clock", {"offset_seconds": 0})
    changes, cursor = drain(source, cursor)
    assert changes == [], "an ordinary read starts at the cursor"
    full_window = OracleChangeSource(fresh, "Contact", lookback_seconds=300, full_window_every_seconds=0)
    changes, cursor = drain(full_window, cursor)
    assert keyed(changes) == [("c", "Hal")], "the lookback read finds it, and only it"
    assert drain(full_window, cursor)[0] == []


def test_sort_or_filter_fallback(own_oracle: RunningOracle, fresh: OracleConnection) -> None:
    """A server refusing to filter and sort at once: filtered there, sorted here, still exactly once in order."""
    create(fresh, "Ida", "Jon")
    source = CONNECTOR.change_source(fresh, "Contact", api="rest")
    _, cursor = drain(source, None)
    own_oracle.admin("settings", {"sort_or_filter": True})
    refusals = own_oracle.admin("stats")["errors"].get("SBL-ODS-00127", 0)
    create(fresh, "Kim", "Lou", "Max")
    changes, cursor = drain(source, cursor)
    assert keyed(changes) == [("c", "Kim"), ("c", "Lou"), ("c", "Max")]
    assert source.sort_refused and own_oracle.admin("stats")["errors"]["SBL-ODS-00127"] == refusals + 1
    assert drain(source, cursor)[0] == []
    fresh.api.update("Contacts", changes[0].key["id"], {"JobTitle": "Late"})
    assert keyed(drain(source, cursor)[0]) == [("u", "Kim")]


def test_fields_carry_kinds_and_types(fresh: OracleConnection) -> None:
    fields = CONNECTOR.change_source(fresh, "Contact").fields()
    assert (fields["ModifiedDate"].kind, fields["ModifiedDate"].pg_type) == ("datetime", "timestamp with time zone")
    assert (fields["DateofBirth"].kind, fields["CustomCurrency0"].crm_type) == ("date", "currency")
    assert fields["ContactType"].enumeration == "Contact_ContactType" and fields["NeverEmail"].kind == "boolean"
    assert fields["ExternalSystemId"].external_id and not fields["ModifiedDate"].updateable
    assert not any(name.startswith("CI_") for name in fields)
