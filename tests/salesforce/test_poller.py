"""The Salesforce poller against a real sandbox (10,000 contacts), broker and PostgreSQL.

20 % of the contacts share one SystemModstamp. The sandbox stamps writes with a clock that never goes backwards
(`Store._stamp`), so setting its clock an hour back (`POST /__sandbox/clock`) makes every following write reuse
the last stamp - the same thing that happens to a bulk job in a real org, where a whole batch of records gets one
SystemModstamp.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from crmsync import topics
from crmsync.envelope import Change
from crmsync.values import iso_utc
from crmsync.infra import Endpoints
from connectors.salesforce.client import SalesforceClient
from connectors.salesforce.soql import soql_datetime
from connectors.salesforce.source import CursorState, parse_modstamp
from crmsync import names
from services.crm_poller import service as poller
from services.crm_poller.service import ObjectPoller
from tests.conftest import consume_changes
from tests.sandbox_salesforce.conftest import RunningSandbox, launch

from .conftest import FAST_RETRIES, account_for, make_client, settings_for, unique_name

CONTACTS = 10_000
SHARED = 2_000


@pytest.fixture(scope="module")
def seeded_sandbox(tmp_path_factory: pytest.TempPathFactory):
    running = launch(tmp_path_factory.mktemp("sf-poller") / "salesforce", seed_contacts=CONTACTS)
    yield running
    running.stop()


def all_ids(client: SalesforceClient, obj: str = "Contact") -> list[str]:
    return [r["Id"] for page in client.query_all_pages(f"SELECT Id FROM {obj} ORDER BY Id") for r in page]


def update(client: SalesforceClient, ids: list[str], **values) -> None:
    results = client.collections_update("Contact", [{"id": i, **values} for i in ids])
    assert all(r["success"] for r in results), results[:3]


def stamp_of(client: SalesforceClient, record_id: str) -> str:
    return next(client.query_all_pages(f"SELECT SystemModstamp FROM Contact WHERE Id = '{record_id}'"))[0][
        "SystemModstamp"]


def make_poller(client: SalesforceClient, endpoints: Endpoints, account_name: str, tmp_path, **options) -> poller.Poller:
    """REST queries throughout: these tests page through shared stamps (the first full read of 10,000+ records
    would otherwise go through one Bulk 2.0 job: tests/throughput/test_bulk_snapshot.py)."""
    settings = settings_for(account_name, client.account, tmp_path)
    return poller.build(settings, endpoints, account_name, ["Contact"], client=client, bulk_threshold=0, **options)


def read_topic(endpoints: Endpoints, account_name: str, expected: int, obj: str = "Contact") -> list[Change]:
    """Everything on the topic: wait for `expected` messages, then a little longer to catch any extra."""
    topic = topics.changes("crm", account_name, obj)
    seen = consume_changes(endpoints.bootstrap_servers, [topic], lambda s: len(s) >= expected, timeout=90)
    extra = consume_changes(endpoints.bootstrap_servers, [topic], lambda s: len(s) > expected, timeout=3)
    return extra if len(extra) > len(seen) else seen


def test_every_change_is_published_exactly_once(seeded_sandbox: RunningSandbox, campaign_endpoints, tmp_path) -> None:
    name = unique_name("p1")
    setup = make_client(seeded_sandbox)
    ids = all_ids(setup)
    assert len(ids) == CONTACTS
    rng = random.Random(7)
    shared = rng.sample(ids, SHARED)

    # -- 2,000 contacts get one SystemModstamp (frozen sandbox clock, see the module docstring)
    update(setup, shared[:1], Department="Shared stamp")
    frozen = stamp_of(setup, shared[0])
    seeded_sandbox.admin("clock", {"offset_seconds": -3600})
    try:
        update(setup, shared[1:], Department="Shared stamp")
        same = setup.query_all_pages(f"SELECT Id FROM Contact WHERE SystemModstamp = "
                                     f"{soql_datetime(parse_modstamp(frozen))}")
        assert sum(len(p) for p in same) == SHARED

        # -- the initial snapshot: pages of 1,500, so the shared stamp straddles a page (and a checkpoint)
        client = SalesforceClient(name, account_for(seeded_sandbox), policy=FAST_RETRIES)
        p = make_poller(client, campaign_endpoints, name, tmp_path, batch_size=1500)
        first = p.objects["Contact"].poll_once()
        assert first.published == Counter({"r": CONTACTS}) and first.pages == 7
        assert p.objects["Contact"].poll_once().total == 0  # nothing changed: nothing published
        p.close()

        # -- a restart from the checkpoint publishes nothing again
        p = make_poller(client, campaign_endpoints, name, tmp_path, batch_size=1500)
        assert p.objects["Contact"].poll_once().total == 0

        # -- 300 more contacts move onto the very same (already published) timestamp
        others = [i for i in ids if i not in set(shared)]
        joined = rng.sample(others, 300)
        update(setup, joined, Title="Joined the shared stamp")
        assert stamp_of(setup, joined[0]) == frozen
        second = p.objects["Contact"].poll_once()
        assert second.published == Counter({"u": 300})
    finally:
        seeded_sandbox.admin("clock", {"offset_seconds": 0})

    # -- 500 updates and 100 deletes, after the clock is back
    rest = [i for i in ids if i not in set(joined)]
    updated = rng.sample(rest, 500)
    deleted = rng.sample([i for i in rest if i not in set(updated)], 100)
    update(setup, updated, Title="Updated later")
    assert all(r["success"] for r in setup.collections_delete(deleted))
    time.sleep(0.01)
    third = p.objects["Contact"].poll_once()
    assert third.published == Counter({"u": 500, "d": 100})
    assert p.objects["Contact"].poll_once().total == 0
    p.close()
    p = make_poller(client, campaign_endpoints, name, tmp_path)
    assert p.objects["Contact"].poll_once().total == 0
    p.close()

    # -- what the topic holds: each record once per change, with the right op
    total = CONTACTS + 300 + 500 + 100
    changes = read_topic(campaign_endpoints, name, total)
    assert len(changes) == total
    assert len({c.id for c in changes}) == total
    per_record = Counter(c.key["id"] for c in changes)
    assert len(per_record) == CONTACTS
    expected = Counter({i: 1 for i in ids}) + Counter(joined) + Counter(updated) + Counter(deleted)
    assert per_record == expected
    ops = Counter(c.op for c in changes)
    assert ops == Counter({"r": CONTACTS, "u": 800, "d": 100})
    assert {c.key["id"] for c in changes if c.op == "d"} == set(deleted)

    snapshot = next(c for c in changes if c.op == "r")
    assert snapshot.side == "crm" and snapshot.source == name and snapshot.object == "Contact"
    assert "attributes" not in snapshot.after and "MailingAddress" not in snapshot.after
    assert {"MailingCity", "MailingCountry", "Email", "Campaign_Key__c", "SystemModstamp"} <= set(snapshot.after)
    stamp = snapshot.after["SystemModstamp"]
    assert snapshot.position == {"ts": iso_utc(parse_modstamp(stamp)), "id": snapshot.key["id"], "modstamp": stamp}
    assert snapshot.id == f"crm:{name}:Contact:{snapshot.key['id']}:{stamp}"
    gone = next(c for c in changes if c.op == "d")
    assert gone.after is None and gone.before["IsDeleted"] is True

    # -- the checkpoint row
    with psycopg.connect(campaign_endpoints.campaign_dsn) as conn:
        position = conn.execute("SELECT position FROM crmsync.checkpoints WHERE name = %s",
                                (names.poller_checkpoint(name, "Contact"),)).fetchone()[0]
    state = CursorState.from_json(position["source"])
    assert position["snapshot_done"] and parse_modstamp(state.cursor_ts) == max(parse_modstamp(c.source_ts)
                                                                                for c in changes)
    assert set(deleted) <= state.deleted


def test_created_updated_and_hard_deleted(seeded_sandbox: RunningSandbox, campaign_endpoints, tmp_path) -> None:
    """Leads this time: creates after the snapshot are 'c', hard deletes (which queryAll cannot see) come from
    the `deleted` resource once, and soft deletes are not reported twice."""
    name = unique_name("p2")
    setup = make_client(seeded_sandbox)
    first = setup.collections_create("Lead", [{"LastName": f"Lead {i}", "Company": "Acme"} for i in range(20)])
    leads = [r["id"] for r in first]
    client = SalesforceClient(name, account_for(seeded_sandbox), policy=FAST_RETRIES)
    p = poller.build(settings_for(name, client.account, tmp_path), campaign_endpoints, name, ["Lead"],
                     client=client, full_window_every_seconds=0)  # every cycle asks for hard deletes
    lead_poller: ObjectPoller = p.objects["Lead"]
    assert lead_poller.poll_once().published == Counter({"r": 20})

    # the deleted resource answers whole minutes only: start this step early in a minute, so that the minute
    # of the hard deletes is still open at the next poll (a boundary between them would report them at once)
    if datetime.now(timezone.utc).second > 40:
        time.sleep(61 - datetime.now(timezone.utc).second)
    created = [r["id"] for r in setup.collections_create("Lead", [{"LastName": f"New {i}", "Company": "Acme"}
                                                                  for i in range(5)])]
    assert all(r["success"] for r in setup.collections_delete(leads[:5]))  # soft: the recycle bin
    hard = setup.bulk2_ingest("Lead", "hardDelete", [{"Id": i} for i in leads[5:10]], poll_interval=0.1)
    assert len(hard.successes) == 5
    assert lead_poller.poll_once().published == Counter({"c": 5, "d": 5})

    # the deleted resource works in whole minutes: wait until the minute of the hard deletes is covered
    time.sleep(61 - datetime.now(timezone.utc).second + 1)
    assert lead_poller.poll_once().published == Counter({"d": 5})
    assert lead_poller.poll_once().total == 0
    p.close()

    changes = read_topic(campaign_endpoints, name, 35, "Lead")
    assert Counter(c.op for c in changes) == Counter({"r": 20, "c": 5, "d": 10})
    assert {c.key["id"] for c in changes if c.op == "c"} == set(created)
    assert {c.key["id"] for c in changes if c.op == "d"} == set(leads[:10])


def _stamp(seconds: float) -> str:
    """A SystemModstamp as Salesforce writes it, `seconds` after 2026-01-01."""
    when = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"


def test_the_cursor_forgets_exactly_what_left_the_window_and_skips_the_work_when_nothing_did() -> None:
    """`CursorState.prune` keeps the records delivered within the lookback window (a re-read of the same version
    is not delivered again) and forgets the older ones; it knows a lower bound of what it holds, so a page whose
    records are all newer than the window (a freshly loaded org: every one of a million) costs nothing, and a
    cursor read back from its checkpoint (the bound unknown) is pruned in full the first time."""
    window = timedelta(seconds=300)
    state = CursorState()
    for second in range(1000):
        state.delivered(f"003{second:015d}", _stamp(second))
        state.advance(_stamp(second), f"003{second:015d}")
    state.delivered("003000000000000000", _stamp(999))  # delivered again, newer: it stays
    state.prune(window)
    assert set(state.seen) == {f"003{s:015d}" for s in range(699, 1000)} | {"003000000000000000"}
    assert state.oldest == parse_modstamp(_stamp(699))

    back = CursorState.from_json(state.to_json(300))  # a restarted poller: what it holds is unknown, pruned in full
    assert not back.oldest_known
    back.delivered("003new", _stamp(1200))
    back.advance(_stamp(1200), "003new")
    back.prune(window)
    assert set(back.seen) == {f"003{s:015d}" for s in range(900, 1000)} | {"003000000000000000", "003new"}

    fresh = CursorState()  # every record newer than the window: nothing to forget, nothing re-parsed
    for i in range(200_000):
        fresh.delivered(f"003{i:015d}", _stamp(i / 10_000))
    fresh.advance(_stamp(20), "003x")
    held = fresh.seen
    fresh.prune(window)
    assert fresh.seen is held and len(held) == 200_000  # not rebuilt: no stamp was parsed again
