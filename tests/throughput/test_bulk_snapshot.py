"""The Salesforce change source's first full read through a Bulk API 2.0 query job (above `bulk_threshold`):
the same changes as the REST read, record for record and value for value; a restart in the middle goes on from
the job's locator (or starts again when the job is gone); the reads after it neither repeat nor miss anything.
Real HTTPS to the sandbox, simple-salesforce's Bulk 2.0 client."""
from __future__ import annotations

import time

import pytest

from connectors.salesforce.source import SalesforceSource
from tests.salesforce.conftest import make_client
from tests.sandbox_salesforce.conftest import launch

CONTACTS = 3000


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    running = launch(tmp_path_factory.mktemp("bulk-snapshot") / "salesforce", seed_contacts=CONTACTS)
    yield running
    running.stop()


def _read(source: SalesforceSource, cursor=None, pages: int | None = None):
    changes, last = [], cursor
    for index, page in enumerate(source.read(cursor)):
        changes += page.changes
        last = page.cursor
        if pages is not None and index + 1 >= pages:
            break
    return changes, last


def test_bulk_snapshot_reads_what_rest_reads(sandbox):
    client = make_client(sandbox)
    rest, _ = _read(SalesforceSource(client, "Contact", bulk_threshold=0))
    calls = sum(client.calls.values())
    bulk, cursor = _read(SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000))
    bulk_calls = sum(client.calls.values()) - calls
    assert len(rest) == CONTACTS and {c.op for c in bulk} == {"r"}
    assert sorted((c.id, c.key["id"], tuple(sorted(c.after.items()))) for c in bulk) == \
        sorted((c.id, c.key["id"], tuple(sorted(c.after.items()))) for c in rest)
    assert client.calls["bulk2"] >= 4 and bulk_calls < 10  # create, poll, 3 result pages (+ the count, describe)
    assert cursor["snapshot_done"] and "bulk" not in cursor


def test_a_restart_goes_on_from_the_locator_and_nothing_is_repeated_or_missed(sandbox):
    client = make_client(sandbox)
    first, cursor = _read(SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000), pages=1)
    assert len(first) == 1000 and cursor["bulk"]["locator"] and not cursor["snapshot_done"]
    assert cursor["seen"] == {}  # a snapshot's checkpoints carry no memory: the job tells it again on a restart
    source = SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000)  # a new process
    rest, cursor = _read(source, cursor)
    assert len({c.key["id"] for c in first + rest}) == len(first + rest) == CONTACTS
    assert cursor["snapshot_done"]
    assert _read(source, cursor)[0] == []  # the first read after it: nothing again
    some = rest[0].key["id"]
    time.sleep(0.01)
    assert client.collections_update("Contact", [{"id": some, "Title": "after the snapshot"}])[0]["success"]
    [change], _ = _read(source, cursor)
    assert (change.op, change.key["id"], change.after["Title"]) == ("u", some, "after the snapshot")


def test_a_job_that_is_gone_means_reading_again_from_the_start(sandbox):
    client = make_client(sandbox)
    _, cursor = _read(SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000), pages=1)
    cursor["bulk"]["job"] = "750000000000000AAA"  # e.g. past the 7 days Salesforce keeps results
    again, cursor = _read(SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000), cursor)
    assert len({c.key["id"] for c in again}) == CONTACTS and cursor["snapshot_done"]


def test_a_restart_in_the_middle_of_a_page_skips_the_rows_already_handed_out(sandbox):
    def source() -> SalesforceSource:
        return SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000, bulk_slice_records=300)

    client = make_client(sandbox)
    first, cursor = _read(source(), pages=2)  # two slices of the first page: 600 of its 1,000 rows
    assert len(first) == 600 and cursor["bulk"]["done"] == 600 and not cursor["snapshot_done"]
    rest, cursor = _read(source(), cursor)  # a new process
    assert len({c.key["id"] for c in first + rest}) == len(first + rest) == CONTACTS
    assert cursor["snapshot_done"] and "bulk" not in cursor
    _, whole = _read(source())  # read without a restart: the same memory (what the job's pages handed out)
    assert cursor["seen"] == whole["seen"] and cursor["cursor"] == whole["cursor"]
    assert _read(source(), cursor)[0] == []  # the first read after it: nothing again


def test_a_restart_on_a_later_page_remembers_the_pages_before_it(sandbox):
    client = make_client(sandbox)
    first, cursor = _read(SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000), pages=2)
    assert len(first) == 2000 and cursor["bulk"]["locator"] and cursor["seen"] == {}
    source = SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000)  # a new process
    rest, cursor = _read(source, cursor)
    assert len({c.key["id"] for c in first + rest}) == len(first + rest) == CONTACTS
    _, whole = _read(SalesforceSource(client, "Contact", bulk_threshold=1000, bulk_page_records=1000))
    assert cursor["seen"] == whole["seen"] and cursor["cursor"] == whole["cursor"] and cursor["seen"]
    assert _read(source, cursor)[0] == []
