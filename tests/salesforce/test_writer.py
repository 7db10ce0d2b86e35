"""The Salesforce writer against the real sandbox, broker and PostgreSQL: call counts, faults, rejects, Bulk."""
from __future__ import annotations

import json
from dataclasses import replace
import time
import uuid
from typing import Any

import psycopg
import pytest

from crmsync import kafka, topics
from crmsync.envelope import ApplyCommand, record_key
from crmsync.infra import Endpoints
from connectors.salesforce import auth
from services.crm_writer import service as writer
from connectors.salesforce.client import SalesforceClient
from services.crm_writer.service import CrmWriter

from .conftest import FAST_RETRIES, account_for, consume_rejects, make_client, settings_for, unique_name

INVALID_DOMAIN = "@invalid.example"  # the sandbox's default validation rule refuses Contact emails here
COLLECTION_CALLS = ("POST collections_create", "PATCH collections_update", "PATCH collections_upsert",
                    "DELETE collections_delete")


def upsert_command(account: str, key: str, marker: str, email: str | None = None) -> ApplyCommand:
    """What the two-way sync sends for a new contact: values plus a minted Campaign_Key__c external id."""
    return ApplyCommand(
        id=f"cmd-{key}-{uuid.uuid4().hex[:6]}", side="crm", target=account, object="Contact", action="upsert",
        key=None, match={"Campaign_Key__c": key},
        values={"FirstName": "Writer", "LastName": f"Test {key}", "Email": email or f"{key.lower()}@example.com",
                "Description": marker},
        cause=f"campaign:test:{key}")


def command(account: str, action: str, key: dict | None, values: dict[str, Any]) -> ApplyCommand:
    return ApplyCommand(id=f"cmd-{uuid.uuid4().hex}", side="crm", target=account, object="Contact", action=action,
                        key=key, values=values, cause="test")


def produce(bootstrap: str, account: str, commands: list[ApplyCommand], raw: list[bytes] = ()) -> None:
    topic = topics.apply("crm", account, "Contact")
    kafka.ensure_topics(bootstrap, [topic])
    producer, tracker = kafka.producer(bootstrap), kafka.DeliveryTracker()
    for c in commands:
        producer.produce(topic, value=c.to_json(), key=record_key(c.key or c.match or {}), on_delivery=tracker)
    for value in raw:
        producer.produce(topic, value=value, key=b"garbage", on_delivery=tracker)
    kafka.flush_all(producer, tracker)


def drain(w: CrmWriter, expected: int, timeout: float = 120) -> tuple[int, int]:
    """Run batches until `expected` commands were handled (applied or rejected)."""
    applied = rejected = 0
    deadline = time.monotonic() + timeout
    while applied + rejected < expected:
        assert time.monotonic() < deadline, f"only {applied} applied + {rejected} rejected of {expected}"
        result = w.run_once()
        applied, rejected = applied + result.applied, rejected + result.rejected
    return applied, rejected


def marked(client: SalesforceClient, marker: str) -> list[dict[str, Any]]:
    soql = f"SELECT Id, Campaign_Key__c, Email, Description FROM Contact WHERE Description = '{marker}'"
    return [r for page in client.query_all_pages(soql) for r in page]


def make_writer(sandbox, endpoints: Endpoints, account_name: str, *, client: SalesforceClient | None = None,
                sink_options: dict | None = None, applied: list | None = None, tmp_path=None) -> CrmWriter:
    account = account_for(sandbox)
    client = client or SalesforceClient(account_name, account, policy=FAST_RETRIES)
    hook = (lambda cmd, crm_id, created: applied.append((cmd, crm_id, created))) if applied is not None else None
    return writer.build(settings_for(account_name, account, tmp_path), endpoints, account_name, client=client,
                        on_applied=hook, objects=["Contact"], **(sink_options or {}))


def test_thousand_records_cost_five_collection_calls(module_sandbox, campaign_endpoints, tmp_path) -> None:
    name, marker = unique_name("w1"), f"m-{uuid.uuid4().hex[:8]}"
    applied: list = []
    w = make_writer(module_sandbox, campaign_endpoints, name, applied=applied, tmp_path=tmp_path)
    commands = [upsert_command(name, f"{marker}-{i:05d}", marker) for i in range(1000)]
    produce(campaign_endpoints.bootstrap_servers, name, commands)
    module_sandbox.admin("reset-stats", {})
    try:
        assert drain(w, 1000) == (1000, 0)
    finally:
        w.close()
    stats = module_sandbox.admin("stats")
    calls = {k: v for k, v in stats["requests"].items() if k in COLLECTION_CALLS}
    assert calls == {"PATCH collections_upsert": 5}
    assert stats["auto_assign"]["counts"] == {"FALSE": 1000}  # Sforce-Auto-Assign: FALSE on every write
    rows = marked(make_client(module_sandbox), marker)
    assert len(rows) == 1000 and len({r["Campaign_Key__c"] for r in rows}) == 1000
    assert all(created for _, _, created in applied) and {crm_id for _, crm_id, _ in applied} == {r["Id"] for r in rows}

    # the offsets were committed: the same group finds nothing left to do
    again = make_writer(module_sandbox, campaign_endpoints, name, tmp_path=tmp_path)
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert again.run_once().applied == 0
    finally:
        again.close()


def test_injected_faults_every_record_lands_exactly_once(module_sandbox, campaign_endpoints, tmp_path) -> None:
    name, marker = unique_name("w2"), f"f-{uuid.uuid4().hex[:8]}"
    applied: list = []
    w = make_writer(module_sandbox, campaign_endpoints, name, applied=applied, tmp_path=tmp_path)
    produce(campaign_endpoints.bootstrap_servers, name,
            [upsert_command(name, f"{marker}-{i:05d}", marker) for i in range(1000)])
    module_sandbox.admin("reset-stats", {})
    module_sandbox.admin("faults", {"request_limit_exceeded": 0.04, "unavailable_503": 0.03,
                                    "session_expiry": 0.03, "seed": 67})  # seed 67: every kind within the first 10 requests
    try:
        assert drain(w, 1000) == (1000, 0)
        ids = [crm_id for _, crm_id, _ in applied]
        # updates by Id and deletes, under the same faults: idempotent on retry
        updates = [command(name, "upsert", {"id": i}, {"Title": "Updated under faults"}) for i in ids[:300]]
        deletes = [command(name, "delete", {"id": i}, {}) for i in ids[300:400]]
        produce(campaign_endpoints.bootstrap_servers, name, updates + deletes)
        assert drain(w, 400) == (400, 0)
        faults = module_sandbox.admin("stats")["faults_injected"]
    finally:
        module_sandbox.admin("faults", {})
        w.close()
    assert set(faults) == {"request_limit_exceeded", "unavailable_503", "session_expiry"}
    assert {"request_limit", "session_expired"} <= set(w.sink.client.retries) and w.sink.client.logins > 1
    rows = marked(make_client(module_sandbox), marker)
    assert len(rows) == 900 and len({r["Campaign_Key__c"] for r in rows}) == 900  # 1000 created, 100 deleted
    titles = make_client(module_sandbox).query_all_pages(
        f"SELECT Id FROM Contact WHERE Description = '{marker}' AND Title = 'Updated under faults'")
    assert sum(len(page) for page in titles) == 300


def test_lost_answers_are_retried_without_duplicates(module_sandbox, campaign_endpoints, tmp_path) -> None:
    """A slow answer times out on our side while the sandbox still applies the request afterwards: the retry
    must not create a second record (upsert by external id makes the create idempotent)."""
    name, marker = unique_name("w3"), f"t-{uuid.uuid4().hex[:8]}"
    account = account_for(module_sandbox)
    client = SalesforceClient(name, account, policy=FAST_RETRIES, http=auth.http_session(account, timeout=(5, 1.0)))
    w = make_writer(module_sandbox, campaign_endpoints, name, client=client, tmp_path=tmp_path)
    produce(campaign_endpoints.bootstrap_servers, name,
            [upsert_command(name, f"{marker}-{i:05d}", marker) for i in range(600)])
    module_sandbox.admin("faults", {"slow_probability": 0.5, "slow_seconds": 2.0, "seed": 5})
    try:
        assert drain(w, 600) == (600, 0)
    finally:
        module_sandbox.admin("faults", {})
        w.close()
    assert client.retries["timeout"] >= 1
    time.sleep(2.5)  # let every stalled original finish being applied
    rows = marked(make_client(module_sandbox), marker)
    assert len(rows) == 600 and len({r["Campaign_Key__c"] for r in rows}) == 600


def test_rejects_land_in_topic_and_table_while_the_rest_lands(module_sandbox, campaign_endpoints, tmp_path) -> None:
    name, marker = unique_name("w4"), f"r-{uuid.uuid4().hex[:8]}"
    bad = {7, 19, 23, 31, 42}
    commands = [upsert_command(name, f"{marker}-{i:03d}", marker,
                               email=f"person{i}{INVALID_DOMAIN}" if i in bad else None) for i in range(50)]
    w = make_writer(module_sandbox, campaign_endpoints, name, tmp_path=tmp_path)
    produce(campaign_endpoints.bootstrap_servers, name, commands, raw=[b"{not json"])
    try:
        assert drain(w, 51) == (45, 6)
    finally:
        w.close()
    assert len(marked(make_client(module_sandbox), marker)) == 45

    rejects = consume_rejects(campaign_endpoints.bootstrap_servers, topics.rejects("crm", name),
                              lambda seen: len(seen) >= 6)
    assert len(rejects) == 6
    refused = [r for r in rejects if r.error_code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"]
    assert {ApplyCommand.from_json(json.dumps(r.record)).match["Campaign_Key__c"] for r in refused} == \
        {f"{marker}-{i:03d}" for i in bad}
    assert all("invalid.example are rejected" in r.reason and r.stage == "writer-crm" for r in refused)
    assert [r.error_code for r in rejects if r not in refused] == ["CRMSYNC_BAD_MESSAGE"]

    with psycopg.connect(campaign_endpoints.campaign_dsn) as conn:
        rows = conn.execute("SELECT id, error_code, reason, record, status FROM crmsync.rejects "
                            "WHERE target = %s ORDER BY id", (name,)).fetchall()
    assert len(rows) == 6 and {r[0] for r in rows} == {r.id for r in rejects}
    assert sum(1 for r in rows if r[1] == "FIELD_CUSTOM_VALIDATION_EXCEPTION") == 5
    # refused records wait for their automatic retry; an unreadable message has nothing to retry
    assert sorted((r[1], r[4]) for r in rows) == [("CRMSYNC_BAD_MESSAGE", "abandoned")] + \
        [("FIELD_CUSTOM_VALIDATION_EXCEPTION", "pending")] * 5


def test_a_value_salesforce_can_never_take_is_abandoned_and_does_not_hold_the_record_back(
        module_sandbox, campaign_endpoints, tmp_path) -> None:
    """STRING_TOO_LONG cannot be fixed by retrying the same command: its reject is abandoned at once (a validation
    rule's refusal stays pending: it may pass later), and the record's next edit is applied, not parked behind it."""
    name, marker = unique_name("w9"), f"h-{uuid.uuid4().hex[:8]}"
    w = make_writer(module_sandbox, campaign_endpoints, name, tmp_path=tmp_path)
    try:
        produce(campaign_endpoints.bootstrap_servers, name, [upsert_command(name, f"{marker}-1", marker)])
        assert drain(w, 1) == (1, 0)
        [contact] = marked(make_client(module_sandbox), marker)
        too_long = command(name, "upsert", {"id": contact["Id"]}, {"Title": "x" * 300})
        fine = command(name, "upsert", {"id": contact["Id"]}, {"Title": "Head of Data"})
        produce(campaign_endpoints.bootstrap_servers, name, [too_long])
        assert drain(w, 1) == (0, 1)
        produce(campaign_endpoints.bootstrap_servers, name, [fine])
        assert drain(w, 1) == (1, 0)
    finally:
        w.close()
    with psycopg.connect(campaign_endpoints.campaign_dsn) as conn:
        rows = conn.execute("SELECT error_code, status FROM crmsync.rejects WHERE target = %s", (name,)).fetchall()
    assert rows == [("STRING_TOO_LONG", "abandoned")]
    soql = f"SELECT Title FROM Contact WHERE Id = '{contact['Id']}'"
    assert [r["Title"] for page in make_client(module_sandbox).query_all_pages(soql) for r in page] == ["Head of Data"]


def test_commands_for_one_record_keep_their_order(module_sandbox, campaign_endpoints, tmp_path) -> None:
    name = unique_name("w5")
    setup = make_client(module_sandbox)
    created = setup.collections_create("Contact", [{"LastName": f"Order {i}"} for i in range(2)])
    a, b = (r["id"] for r in created)
    commands = [command(name, "upsert", {"id": a}, {"Title": "first"}),
                command(name, "delete", {"id": b}, {}),
                command(name, "upsert", {"id": a}, {"Title": "second"}),
                command(name, "upsert", {"id": b}, {"Title": "too late"}),
                command(name, "delete", {"id": b}, {})]  # deleting twice is fine: the end state holds
    w = make_writer(module_sandbox, campaign_endpoints, name, tmp_path=tmp_path)
    produce(campaign_endpoints.bootstrap_servers, name, commands)
    try:
        applied, rejected = drain(w, 5)
    finally:
        w.close()
    assert (applied, rejected) == (4, 1)
    title = setup.query_all_pages(f"SELECT Title FROM Contact WHERE Id = '{a}'")
    assert next(title)[0]["Title"] == "second"


def test_large_groups_go_through_bulk_api_2(module_sandbox, campaign_endpoints, tmp_path) -> None:
    name, marker = unique_name("w6"), f"b-{uuid.uuid4().hex[:8]}"
    bad = {5, 1500, 2399}
    commands = [upsert_command(name, f"{marker}-{i:05d}", marker,
                               email=f"p{i}{INVALID_DOMAIN}" if i in bad else None) for i in range(2400)]
    w = make_writer(module_sandbox, campaign_endpoints, name, tmp_path=tmp_path,
                    sink_options={"bulk_threshold": 2000, "bulk_poll_interval": 0.1})
    produce(campaign_endpoints.bootstrap_servers, name, commands)
    module_sandbox.admin("reset-stats", {})
    try:
        assert drain(w, 2400) == (2397, 3)
    finally:
        w.close()
    stats = module_sandbox.admin("stats")["requests"]
    assert stats.get("POST create_ingest") == 1 and not any(k in stats for k in COLLECTION_CALLS)
    rows = marked(make_client(module_sandbox), marker)
    assert len(rows) == 2397 and len({r["Campaign_Key__c"] for r in rows}) == 2397
    rejects = consume_rejects(campaign_endpoints.bootstrap_servers, topics.rejects("crm", name),
                              lambda seen: len(seen) >= 3)
    assert {r.record["match"]["Campaign_Key__c"] for r in rejects} == {f"{marker}-{i:05d}" for i in bad}
    assert {r.error_code for r in rejects} == {"FIELD_CUSTOM_VALIDATION_EXCEPTION"}


@pytest.mark.parametrize("values", [{"NoSuchField__c": 1}])
def test_a_whole_chunk_refused_becomes_rejects_not_a_stuck_writer(module_sandbox, campaign_endpoints, tmp_path,
                                                                  values) -> None:
    name = unique_name("w7")
    w = make_writer(module_sandbox, campaign_endpoints, name, tmp_path=tmp_path)
    produce(campaign_endpoints.bootstrap_servers, name,
            [command(name, "upsert", None, {"LastName": "x", **values}) for _ in range(3)])
    try:
        assert drain(w, 3) == (0, 3)
    finally:
        w.close()


def test_a_field_edited_in_salesforce_after_the_decision_is_left_alone(module_sandbox, campaign_endpoints,
                                                                         tmp_path) -> None:
    """Compare-and-set on the CRM side: the streams decided from Title 'Buyer', a Salesforce user then set it to
    'CMO' before the writer got there. The writer keeps the user's Title (the poller brings that edit to the
    streams) and still writes the other fields; one SOQL read per batch is what it costs."""
    name = unique_name("w-cas")
    client = make_client(module_sandbox)
    record = client.sf.Contact.create({"LastName": "Cas", "Title": "Buyer", "Department": "Sales"})
    client.sf.Contact.update(record["id"], {"Title": "CMO"})  # the user's edit, after the decision
    w = make_writer(module_sandbox, campaign_endpoints, name, tmp_path=tmp_path)
    update = command(name, "upsert", {"id": record["id"]}, {"Title": "Sales Director", "Department": "Marketing"})
    update.expect = {"Title": "Buyer", "Department": "Sales"}
    untouched = command(name, "upsert", {"id": record["id"]}, {"Title": "CMO"})  # already what is there
    untouched.expect = {"Title": "Buyer"}
    module_sandbox.admin("reset-stats", {})
    try:
        assert w.process([update]).applied == 1
        assert w.process([untouched]).applied == 1
    finally:
        w.close()
    after = client.sf.Contact.get(record["id"])
    assert (after["Title"], after["Department"]) == ("CMO", "Marketing")
    requests = module_sandbox.admin("stats")["requests"]
    assert requests.get("PATCH collections_update") == 2 and requests.get("POST collections_retrieve") == 2


def test_a_flow_that_pauses_goes_out_without_waiting_out_the_busy_linger(module_sandbox, campaign_endpoints,
                                                                         tmp_path) -> None:
    """While commands keep coming the writer gathers up to 3 s (bulk jobs); once nothing new arrived for
    busy_pause (1.5 s) the flow has ended and what was gathered goes out: a Campaign → CRM backfill's parents
    (then children) come in bursts, and each burst's tail used to wait the whole 3 s."""
    name, marker = unique_name("w-pause"), f"p-{uuid.uuid4().hex[:8]}"
    w = make_writer(module_sandbox, campaign_endpoints, name, tmp_path=tmp_path)
    try:
        produce(campaign_endpoints.bootstrap_servers, name,
                [upsert_command(name, f"{marker}-a{i:04d}", marker) for i in range(400)])
        assert drain(w, 400) == (400, 0)  # a batch that filled a call: the writer now gathers as for a flow
        produce(campaign_endpoints.bootstrap_servers, name,
                [upsert_command(name, f"{marker}-b{i:04d}", marker) for i in range(300)])
        time.sleep(0.5)  # all of the burst is on the broker
        started = time.monotonic()
        batch = w._consume_batch()
        took = time.monotonic() - started
        assert len(batch) == 300
        assert took < 2.5, f"the burst's batch waited {took:.1f} s (busy_linger is {w.options.busy_linger} s)"
    finally:
        w.close()


@pytest.mark.parametrize("bulk", [False, True], ids=["collections", "bulk"])
def test_children_go_with_their_parents_external_id_parents_written_first(module_sandbox, bulk) -> None:
    """A contact whose account is created in the same batch references it by the account's Campaign key
    ({"$ref": …} → Salesforce's `"Account": {"Campaign_Key__c": …}`, a Bulk `Account.Campaign_Key__c` column):
    the sink writes the accounts first, whatever the order of the commands, and Salesforce resolves each
    reference to the account it created."""
    from connectors.salesforce.sink import SalesforceSink, SinkOptions

    marker, count = f"x-{uuid.uuid4().hex[:8]}", 2100 if bulk else 30
    client = make_client(module_sandbox)
    sink = SalesforceSink(client, SinkOptions(bulk_threshold=2000 if bulk else 10_000, bulk_poll_interval=0.1))
    children = [ApplyCommand(
        id=f"c-{i}", side="crm", target="sf", object="Contact", action="upsert", key=None,
        match={"Campaign_Key__c": f"{marker}-c{i}"}, cause="test",
        values={"LastName": f"Child {i}", "Description": marker,
                "AccountId": {"$ref": {"object": "Account", "external_id": {"Campaign_Key__c": f"{marker}-a{i % 7}"}}}})
        for i in range(count)]
    parents = [ApplyCommand(id=f"a-{i}", side="crm", target="sf", object="Account", action="upsert", key=None,
                            match={"Campaign_Key__c": f"{marker}-a{i}"}, values={"Name": f"Parent {i}"}, cause="test")
               for i in range(7)]
    outcomes = sink.apply([*children, *parents])
    assert [(o.ok, o.code) for o in outcomes] == [(True, None)] * (count + 7)
    accounts = {r["Campaign_Key__c"]: r["Id"] for page in client.query_all_pages(
        f"SELECT Id, Campaign_Key__c FROM Account WHERE Campaign_Key__c LIKE '{marker}-%'") for r in page}
    contacts = {r["Campaign_Key__c"]: r["AccountId"] for page in client.query_all_pages(
        f"SELECT Campaign_Key__c, AccountId FROM Contact WHERE Description = '{marker}'") for r in page}
    assert len(accounts) == 7 and len(contacts) == count
    assert all(contacts[f"{marker}-c{i}"] == accounts[f"{marker}-a{i % 7}"] for i in range(count))

    orphan = replace(children[0], id="orphan", match={"Campaign_Key__c": f"{marker}-orphan"},
                     values={**children[0].values, "AccountId": {"$ref": {
                         "object": "Account", "external_id": {"Campaign_Key__c": f"{marker}-nobody"}}}})
    [refused] = sink.apply([orphan])  # a parent that is not there: Salesforce's own error, a reject to retry
    assert (refused.ok, refused.code) == (False, "INVALID_FIELD")
    assert f"Foreign key external ID: {marker}-nobody not found" in refused.message


def test_a_childs_commands_wait_for_its_parents_commands_on_their_own_topic(module_sandbox, campaign_endpoints,
                                                                            tmp_path) -> None:
    """The streams send a contact with its account's external id once the account's create is decided; the two
    commands are on different topics, which the writer may take in any order. While the writer still has
    account commands to take, it holds the contacts' partitions (nothing committed), so every contact reaches
    Salesforce after its account — none is refused for a parent not there yet (the contacts below were published
    first, and point at the last accounts, beyond the writer's first batch; without the hold they were refused)."""
    from crmsync.defaults import default_mappings
    from crmsync.config import Settings

    name, marker = unique_name("w9"), f"h-{uuid.uuid4().hex[:8]}"
    accounts, contacts = 6000, 300
    account = account_for(module_sandbox)
    settings = Settings(state_dir=tmp_path, accounts={name: account}, mappings=default_mappings(name))
    w = writer.build(settings, campaign_endpoints, name, client=SalesforceClient(name, account, policy=FAST_RETRIES),
                     objects=["Account", "Contact"], bulk_poll_interval=0.1)
    children = [ApplyCommand(
        id=f"c-{i}", side="crm", target=name, object="Contact", action="upsert", key=None,
        match={"Campaign_Key__c": f"{marker}-c{i}"}, cause="test",
        values={"LastName": f"Child {i}", "Description": marker, "AccountId": {"$ref": {
            "object": "Account", "external_id": {"Campaign_Key__c": f"{marker}-a{accounts - 1 - i % 10}"}}}})
        for i in range(contacts)]
    parents = [ApplyCommand(id=f"a-{i}", side="crm", target=name, object="Account", action="upsert", key=None,
                            match={"Campaign_Key__c": f"{marker}-a{i}"}, values={"Name": f"Parent {i}"}, cause="t")
               for i in range(accounts)]
    producer, tracker = kafka.producer(campaign_endpoints.bootstrap_servers), kafka.DeliveryTracker()
    for commands, obj in ((children, "Contact"), (parents, "Account")):
        topic = topics.apply("crm", name, obj)
        kafka.ensure_topics(campaign_endpoints.bootstrap_servers, [topic])
        for c in commands:
            kafka.produce(producer, tracker, topic, c.to_json(), record_key(c.match))
    kafka.flush_all(producer, tracker)
    try:
        assert drain(w, accounts + contacts) == (accounts + contacts, 0)
    finally:
        w.close()
    client = make_client(module_sandbox)
    linked = [r["AccountId"] for page in client.query_all_pages(
        f"SELECT AccountId FROM Contact WHERE Description = '{marker}'") for r in page]
    assert len(linked) == contacts and all(linked)


def test_a_writer_of_every_object_is_assigned_its_mapped_topics_before_any_command(module_sandbox,
                                                                                   campaign_endpoints,
                                                                                   tmp_path) -> None:
    """A writer subscribed to every apply topic of its account (the pattern `crmsync run` uses) is assigned the
    topics of the objects its mappings write before the streams have sent anything: it creates them itself.
    (A topic created by another service shows only at the consumer's next metadata refresh: the first commands
    of every first backfill waited up to 10 s for it.)"""
    from crmsync.defaults import default_mappings
    from crmsync.config import Settings

    name = unique_name("w10")
    account = account_for(module_sandbox)
    settings = Settings(state_dir=tmp_path, accounts={name: account}, mappings=default_mappings(name))
    w = writer.build(settings, campaign_endpoints, name, client=SalesforceClient(name, account, policy=FAST_RETRIES))
    try:
        w.connect(timeout=8)
        assigned = {p.topic for p in w.consumer.assignment()}
    finally:
        w.close()
    assert assigned == {topics.apply("crm", name, m.crm_object) for m in settings.mappings}
