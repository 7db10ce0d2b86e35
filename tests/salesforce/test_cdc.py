"""The Salesforce change source in `cdc` mode against a real sandbox subprocess: its Change Data Capture events
through the Pub/Sub API (gRPC over TLS), Avro decoded by schema id; gaps, overflow and an expired replay id filled
by query; flow control; no API call while idle; the mode chosen from the Setup selection (Tooling API)."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from connectors.salesforce.cdc import CdcSource, choose_mode, pubsub_for
from connectors.salesforce.client import SalesforceClient
from crmsync.connectors import SourcePage
from crmsync.envelope import Change
from crmsync.values import parse_timestamp
from tests.sandbox_salesforce.conftest import RunningSandbox

from .conftest import FAST_RETRIES, account_for, make_client

API = "/services/data/v59.0"


def cdc_client(sandbox: RunningSandbox, name: str = "cdc", **overrides: Any) -> SalesforceClient:
    return SalesforceClient(name, account_for(sandbox, pubsub_endpoint=sandbox.pubsub_target, **overrides),
                            policy=FAST_RETRIES)


def source(client: SalesforceClient, **options: Any) -> CdcSource:
    return CdcSource(client, "Contact", settle_seconds=1.0, **options)


def read(src: CdcSource, cursor: dict | None) -> tuple[list[Change], list[SourcePage]]:
    pages = list(src.read(cursor))
    return [c for p in pages for c in p.changes], pages


def fills(reason: str, account: str) -> float:
    return REGISTRY.get_sample_value("crmsync_cdc_gap_fills_total",
                                     {"account": account, "obj": "Contact", "reason": reason}) or 0.0


def contacts(client: SalesforceClient, n: int, **values: Any) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    results = client.collections_create("Contact", [{"LastName": f"Cdc{tag}{i}", "Email": f"cdc{tag}{i}@example.com",
                                                     **values} for i in range(n)])
    assert all(r["success"] for r in results), results
    return [r["id"] for r in results]


@pytest.fixture
def started(module_sandbox: RunningSandbox) -> tuple[SalesforceClient, CdcSource, dict]:
    """A client, a cdc source that took its snapshot, and the cursor after it."""
    client = cdc_client(module_sandbox, f"cdc{uuid.uuid4().hex[:6]}")
    src = source(client)
    _, pages = read(src, None)
    assert pages[-1].snapshot_done
    yield client, src, pages[-1].cursor
    src.close()
    client.close()


def test_the_mode_follows_the_setup_selection(module_sandbox: RunningSandbox) -> None:
    assert choose_mode(cdc_client(module_sandbox), "Contact") == "cdc"
    assert choose_mode(cdc_client(module_sandbox), "Campaign") == "poll"  # not selected in the sandbox
    assert choose_mode(cdc_client(module_sandbox, cdc=False), "Contact") == "poll"
    assert choose_mode(make_client(module_sandbox), "Contact") == "poll"  # no Pub/Sub endpoint known for it
    module_sandbox.admin("cdc", {"objects": ["Account"]})
    try:
        assert choose_mode(cdc_client(module_sandbox), "Contact") == "poll"
    finally:
        module_sandbox.admin("cdc", {"objects": ["Contact", "Account", "Opportunity", "Lead"]})


def test_events_become_neutral_changes(module_sandbox: RunningSandbox, started) -> None:
    client, src, cursor = started
    [rid] = contacts(client, 1, MailingCity="Oslo", Title="Buyer")
    assert client.collections_update("Contact", [{"id": rid, "Title": "CMO", "MailingCity": None}])[0]["success"]
    # someone else's write (another API client): not ours
    foreign = module_sandbox.session()
    foreign.headers.update({"Authorization": f"Bearer {client.session.session_id}",
                            "Sforce-Call-Options": "client=someone-else"})
    assert foreign.patch(f"{module_sandbox.base_url}{API}/sobjects/Contact/{rid}",
                         json={"Department": "Sales"}).status_code == 204
    gone = contacts(client, 3)
    deleted = client.collections_delete(gone)  # one mass delete: one event with three record ids
    assert all(r["success"] for r in deleted)
    module_sandbox.admin("undelete", {"object": "Contact", "ids": [gone[0]]})

    changes, pages = read(src, cursor)
    mine = [c for c in changes if c.key["id"] == rid]
    create, update, other = mine
    assert (create.op, create.partial, create.origin) == ("c", False, "crmsync")
    assert create.after["MailingCity"] == "Oslo" and create.after["Title"] == "Buyer" and create.after["Id"] == rid
    assert "Phone" in create.after and create.after["Phone"] is None  # carried by the event, null
    assert (update.op, update.partial, update.origin) == ("u", True, "crmsync")
    assert set(update.after) == {"Id", "Title", "MailingCity", "LastModifiedDate"}  # changed fields only
    assert update.after["Title"] == "CMO" and update.after["MailingCity"] is None  # nulledFields: None
    # commitTimestamp is the transaction's LastModifiedDate, as in Salesforce's examples
    assert parse_timestamp(update.position["ts"]) == parse_timestamp(update.after["LastModifiedDate"])
    assert (other.op, other.origin, set(other.after)) == ("u", None, {"Id", "Department", "LastModifiedDate"})
    for change in (create, update, other):
        replay = change.position["replay"]
        assert change.id.startswith(f"crm:{client.account_name}:Contact:{rid}:") and change.id.endswith(replay)
        assert change.position["ts"].endswith("Z") and change.position["id"] == rid
    assert [c.position["ts"] for c in mine] == sorted(c.position["ts"] for c in mine)
    removed = [c for c in changes if c.op == "d"]
    assert {c.key["id"] for c in removed} == set(gone) and len({c.position["replay"] for c in removed}) == 1
    assert [c.op for c in changes if c.key["id"] == gone[0]] == ["c", "d", "c"]  # created, deleted, undeleted
    back = [c for c in changes if c.key["id"] == gone[0]][-1]
    assert back.after["LastName"].startswith("Cdc") and not back.partial
    assert pages[-1].cursor["replay_id"] == max(c.position["replay"] for c in changes)


def test_gap_events_are_filled_by_reading_the_records(module_sandbox: RunningSandbox, started) -> None:
    client, src, cursor = started
    ids = contacts(client, 2, Title="Before")
    _, pages = read(src, cursor)
    cursor = pages[-1].cursor
    assert client.collections_update("Contact", [{"id": ids[0], "Title": "After"}])[0]["success"]
    before = fills("gap_update", client.account_name)
    module_sandbox.admin("cdc/gap", {"object": "Contact", "change_type": "GAP_UPDATE", "ids": ids})
    changes, _ = read(src, cursor)
    filled = [c for c in changes if not c.partial and c.op == "u"]
    assert {c.key["id"] for c in filled} == set(ids)
    assert {c.key["id"]: c.after["Title"] for c in filled} == {ids[0]: "After", ids[1]: "Before"}  # as they are
    assert all("SystemModstamp" in c.after and c.position["modstamp"] for c in filled)  # whole records, read
    assert fills("gap_update", client.account_name) == before + 1


def test_an_overflowing_transaction_is_filled_by_a_window_query(module_sandbox: RunningSandbox, started) -> None:
    client, src, cursor = started
    ids = contacts(client, 8)
    _, pages = read(src, cursor)
    cursor = pages[-1].cursor
    before = fills("overflow", client.account_name)
    module_sandbox.admin("cdc", {"overflow_limit": 3})
    try:  # one call, eight updates of two fields (Department, LastModifiedDate): past three field changes, one
        # GAP_OVERFLOW stands for the rest
        assert all(r["success"] for r in client.collections_update(
            "Contact", [{"id": i, "Department": "Overflowed"} for i in ids]))
    finally:
        module_sandbox.admin("cdc", {"overflow_limit": 100_000})
    changes, _ = read(src, cursor)
    events = [c for c in changes if c.partial]
    assert 0 < len(events) < len(ids)  # what the events carried
    newest = {}
    for change in changes:
        newest[change.key["id"]] = change
    assert set(ids) <= set(newest)  # every record reached, the five without an event by the fill
    assert all(newest[i].after["Department"] == "Overflowed" for i in ids)
    assert fills("overflow", client.account_name) == before + 1


def test_a_replay_id_outside_the_retention_is_filled_from_the_cursor(module_sandbox: RunningSandbox,
                                                                      started) -> None:
    client, src, cursor = started
    [rid] = contacts(client, 1, Title="Kept")
    _, pages = read(src, cursor)
    cursor = pages[-1].cursor
    assert cursor["replay_id"]
    src.close()  # the poller stops …
    assert client.collections_update("Contact", [{"id": rid, "Title": "Changed while stopped"}])[0]["success"]
    made_later = contacts(client, 1)
    module_sandbox.admin("cdc", {"retention_seconds": 0})  # … for longer than the events are kept
    module_sandbox.admin("cdc", {"retention_seconds": 72 * 3600})
    before = fills("replay_expired", client.account_name)
    restarted = source(client)
    changes, pages = read(restarted, cursor)
    by_id = {c.key["id"]: c for c in changes}
    assert by_id[rid].after["Title"] == "Changed while stopped" and not by_id[rid].partial
    assert by_id[made_later[0]].op == "c"
    assert fills("replay_expired", client.account_name) == before + 1
    # it goes on from the tip: later events arrive, and nothing is read twice from the new cursor
    assert client.collections_update("Contact", [{"id": rid, "Title": "After the restart"}])[0]["success"]
    changes, pages = read(restarted, pages[-1].cursor)
    assert [(c.key["id"], c.after["Title"]) for c in changes] == [(rid, "After the restart")]
    restarted.close()


def test_flow_control_and_no_api_call_while_idle(module_sandbox: RunningSandbox) -> None:
    client = cdc_client(module_sandbox, f"flow{uuid.uuid4().hex[:6]}")
    src = source(client, fetch_size=2)
    _, pages = read(src, None)
    cursor = pages[-1].cursor
    [rid] = contacts(client, 1)
    for n in range(5):
        assert client.collections_update("Contact", [{"id": rid, "Title": f"T{n}"}])[0]["success"]
    changes, pages = read(src, cursor)
    assert [c.after.get("Title") for c in changes if c.op == "u"] == [f"T{n}" for n in range(5)]
    assert max(len(p.changes) for p in pages) <= 2  # never more than was asked for
    cursor = pages[-1].cursor
    calls = sum(client.calls.values())
    for _ in range(3):  # nothing happens: reading costs nothing
        changes, pages = read(src, cursor)
        assert changes == []
        cursor = pages[-1].cursor if pages else cursor
    assert sum(client.calls.values()) == calls
    src.close()


def test_closing_the_client_closes_its_pubsub_channel(module_sandbox: RunningSandbox) -> None:
    """Services close their clients when they stop (CRM sessions logged off): the gRPC channel the client's change
    sources shared goes with it, and a client made afterwards for the same account gets a channel of its own."""
    client = cdc_client(module_sandbox, f"close{uuid.uuid4().hex[:6]}")
    src = source(client)
    read(src, None)  # subscribed
    pubsub = pubsub_for(client)
    assert pubsub.topic("/data/ContactChangeEvent").can_subscribe
    src.close()
    client.close()
    with pytest.raises(ValueError, match="closed channel"):
        pubsub.topic("/data/ContactChangeEvent")
    again = cdc_client(module_sandbox, client.account_name)
    assert pubsub_for(again) is not pubsub and pubsub_for(again).topic("/data/ContactChangeEvent").can_subscribe
    again.close()


def test_crmsync_run_reads_the_selected_objects_through_cdc_unless_turned_off(tmp_path) -> None:
    """What `crmsync run` starts with nothing configured: the local sandbox's account (its kit names the Pub/Sub
    listener) and the shipped mappings; the poller's change source for each mapped object is the cdc one, and
    `cdc: false` on the account makes it poll."""
    from connectors.salesforce.source import SalesforceSource
    from crmsync import config, connectors, process
    from crmsync.run import effective_settings, start_sandbox

    sandbox = start_sandbox(tmp_path, log_file=tmp_path / "sandbox.log")
    try:
        settings = effective_settings(config.load(environ={"CRMSYNC_STATE_DIR": str(tmp_path)}), sandbox)
        [(name, account)] = settings.accounts.items()
        connector = connectors.for_account(account)
        objects = sorted({m.crm_object for m in settings.mappings})
        assert objects == ["Account", "Contact", "Opportunity"]
        client = connector.client(name, account)
        assert all(isinstance(connector.change_source(client, obj), CdcSource) for obj in objects)
        off = account.model_copy(update={"cdc": False})
        polled = connector.client(name, off)
        assert all(type(connector.change_source(polled, obj)) is SalesforceSource for obj in objects)
    finally:
        process.stop(sandbox.process)


def test_the_memory_of_reads_is_pruned_once_per_tenth_of_the_lookback_not_per_event():
    """A burst of 20,000 creates within the lookback: each event used to rebuild the memory of 20,000 reads
    (quadratic: most of the poller's CPU in an export backfill). Now at most one pass per tenth of the lookback,
    and what is older than the lookback (plus that tenth) is still forgotten: memory stays flat."""
    source = object.__new__(CdcSource)  # only the memory, no subscription
    source.lookback_millis, source._forget_at = 300_000, 0
    start = 1_800_000_000_000
    source._seen = {f"003{i:015d}": start + i for i in range(20_000)}
    passes = 0
    for i in range(20_000):  # one event per 10 ms: 200 s, inside the lookback
        before = source._seen
        source._forget_before(start + 20_000 + i * 10)
        passes += source._seen is not before
    assert passes == 7 and len(source._seen) == 20_000  # one per 30 s of commits (was one per event: 20,000)
    source._forget_before(start + 20_000 + 400_000)  # 400 s on: everything is older than the lookback
    assert source._seen == {}
