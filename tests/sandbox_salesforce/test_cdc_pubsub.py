"""Change Data Capture over the Pub/Sub API, read with the unmodified public client `pysfpubsub` 0.1.2 (and its
generated stubs for the raw flow-control and error checks).

pysfpubsub (like Salesforce's own quick-start it is derived from) reads the trust store from certifi and sends the
SOAP login with a bare `requests.post`: the fixture points `certifi.where()` at the sandbox CA and sets
REQUESTS_CA_BUNDLE to it (the configuration a user of that client would do), nothing else is changed.
"""
from __future__ import annotations

import json
from datetime import date
import threading
import time
from typing import Any, Callable, Iterator

import certifi
import grpc
import pytest
import requests

from .conftest import RunningSandbox

API = "/services/data/v59.0"


@pytest.fixture
def pubsub_client(sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    import pysfpubsub.pubsub as module

    def make(target: RunningSandbox = sandbox) -> Any:
        """A logged-in pysfpubsub client for `target`, trusting only that sandbox's CA."""
        monkeypatch.setattr(certifi, "where", lambda: str(target.ca_path))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(target.ca_path))
        with open(target.ca_path, "rb") as ca:  # the module read certifi when it was imported
            monkeypatch.setattr(module, "secure_channel_credentials", grpc.ssl_channel_credentials(ca.read()))
        host, port = target.pubsub_target.rsplit(":", 1)
        client = module.Client(url=target.base_url, username=target.credentials.username,
                               password=target.credentials.password + target.credentials.security_token,
                               grpc_host=host, grpc_port=int(port))
        client.json_schema_dict = {}
        client.auth()
        return client
    return make


def rest(sb: RunningSandbox, client: Any) -> requests.Session:
    session = sb.session()
    session.headers.update({"Authorization": f"Bearer {client.session_id}",
                            "Sforce-Call-Options": "client=crmsync-tests"})
    return session


def collect(client: Any, topic: str, preset: str, replay_id: bytes | None, count: int, *, batch: int = 10,
            timeout: float = 20) -> list[dict[str, Any]]:
    """Subscribe with the client's own loop (semaphore flow control) until `count` events arrived."""
    received: list[dict[str, Any]] = []
    done = threading.Event()

    def callback(response: Any, c: Any) -> None:
        for consumer in response.events:
            decoded = c.decode(c.get_schema_json(consumer.event.schema_id), consumer.event.payload)
            received.append({"replay": consumer.replay_id, "event": decoded})
        if response.pending_num_requested == 0:
            c.release_subscription_semaphore()
        if len(received) >= count:
            done.set()
            raise StopIteration  # ends the client's for-loop over the stream

    thread = threading.Thread(target=_swallow, args=(client.subscribe, topic, preset, replay_id, batch, callback),
                              daemon=True)
    thread.start()
    assert done.wait(timeout), f"only {len(received)} of {count} events arrived"
    return received[:count]


def _swallow(subscribe: Callable[..., None], *args: Any) -> None:
    try:
        subscribe(*args)
    except (StopIteration, RuntimeError, grpc.RpcError):
        pass


def fields_of(schema_json: str, bitmap: list[str]) -> list[str]:
    """Decode a Pub/Sub bitmap field the way Salesforce's ChangeEventHeaderUtility does."""
    schema = json.loads(schema_json)
    names = []
    for element in bitmap:
        if element.startswith("0x"):
            bits = int(element, 16)
            names += [f["name"] for i, f in enumerate(schema["fields"]) if bits >> i & 1]
        else:
            parent, hex_bits = element.split("-")
            field = schema["fields"][int(parent)]
            record = next(t for t in field["type"] if isinstance(t, dict))
            names += [f"{field['name']}.{f['name']}" for i, f in enumerate(record["fields"])
                      if int(hex_bits, 16) >> i & 1]
    return names


def test_crud_produces_documented_change_events(sandbox: RunningSandbox, pubsub_client: Callable[..., Any]) -> None:
    client = pubsub_client()
    start = client.get_topic("/data/ContactChangeEvent")
    assert start.can_subscribe and not start.can_publish and start.tenant_guid.startswith("00D")
    tip = tip_of(sandbox)
    http = rest(sandbox, client)
    created = http.post(f"{sandbox.base_url}{API}/sobjects/Contact", json={
        "FirstName": "Ada", "LastName": "Cdc", "Email": "ada.cdc@example.com", "MailingCity": "Paris",
        "Birthdate": "1990-02-03"}).json()["id"]
    assert http.patch(f"{sandbox.base_url}{API}/sobjects/Contact/{created}",
                      json={"LastName": "Cdc-Lovelace", "Email": None, "MailingCity": "Lyon"}).status_code == 204
    assert http.delete(f"{sandbox.base_url}{API}/sobjects/Contact/{created}").status_code == 204
    sandbox.admin("undelete", {"object": "Contact", "ids": [created]})

    mine = collect(client, "/data/ContactChangeEvent", "CUSTOM", tip, 4)
    create, update, delete, undelete = (m["event"] for m in mine)
    schema = client.get_schema_json(start.schema_id)

    header = create["ChangeEventHeader"]
    assert header["changeType"] == "CREATE" and header["entityName"] == "Contact"
    assert header["changeOrigin"] == "com/salesforce/api/rest/59.0;client=crmsync-tests"
    assert header["changedFields"] == [] and header["sequenceNumber"] == 1
    assert header["commitUser"].startswith("005") and header["commitTimestamp"] > 1_600_000_000_000
    assert create["Name"]["FirstName"] == "Ada" and create["Name"]["LastName"] == "Cdc"
    assert create["MailingAddress"]["City"] == "Paris" and create["Email"] == "ada.cdc@example.com"
    assert create["Birthdate"] == (date(1990, 2, 3) - date(1970, 1, 1)).days  # dates are epoch days
    assert "Id" not in create and "SystemModstamp" not in create and "Email_Domain__c" not in create

    header = update["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE" and header["transactionKey"] != create["ChangeEventHeader"][
        "transactionKey"]
    assert sorted(fields_of(schema, header["changedFields"])) == sorted(
        ["Email", "LastModifiedDate", "Name.LastName", "MailingAddress.City"])
    assert fields_of(schema, header["nulledFields"]) == ["Email"]
    assert update["Name"]["LastName"] == "Cdc-Lovelace" and update["Name"]["FirstName"] is None
    assert update["Phone"] is None and update["CreatedDate"] is None  # unchanged fields are null
    assert delete["ChangeEventHeader"]["changeType"] == "DELETE" and delete["Email"] is None
    assert undelete["ChangeEventHeader"]["changeType"] == "UNDELETE"
    assert undelete["ChangeEventHeader"]["changeOrigin"] == ""  # admin undelete: not an API call
    assert undelete["Name"]["LastName"] == "Cdc-Lovelace"
    replays = [int.from_bytes(m["replay"], "big") for m in mine]
    assert replays == sorted(replays) and all(len(m["replay"]) == 8 for m in mine)


def tip_of(sb: RunningSandbox) -> bytes:
    """The newest replay id now (from the admin API), as the 8 bytes a CUSTOM subscription starts after."""
    return int(sb.admin("cdc")["last_replay_id"]).to_bytes(8, "big")


def test_collections_transaction_and_merged_deletes(sandbox: RunningSandbox,
                                                    pubsub_client: Callable[..., Any]) -> None:
    client = pubsub_client()
    http = rest(sandbox, client)
    latest = tip_of(sandbox)
    records = [{"attributes": {"type": "Lead"}, "LastName": f"Batch{i}", "Company": "Acme"} for i in range(3)]
    results = http.post(f"{sandbox.base_url}{API}/composite/sobjects", json={"records": records}).json()
    ids = [r["id"] for r in results]
    deleted = http.delete(f"{sandbox.base_url}{API}/composite/sobjects", params={"ids": ",".join(ids)}).json()
    assert all(r["success"] for r in deleted)
    events = collect(client, "/data/LeadChangeEvent", "CUSTOM", latest, 4)
    creates = [e["event"]["ChangeEventHeader"] for e in events[:3]]
    assert [h["changeType"] for h in creates] == ["CREATE"] * 3
    assert len({h["transactionKey"] for h in creates}) == 1 and [h["sequenceNumber"] for h in creates] == [1, 2, 3]
    assert len({h["commitNumber"] for h in creates}) == 1
    merged = events[3]["event"]["ChangeEventHeader"]
    assert merged["changeType"] == "DELETE" and merged["recordIds"] == ids  # one event, several records


def test_flow_control_keepalive_and_errors(start_sandbox: Callable[..., RunningSandbox],
                                           pubsub_client: Callable[..., Any]) -> None:
    sb = start_sandbox("keepalive", extra_args=("--pubsub-keepalive", "1"))
    client = pubsub_client(sb)
    from pysfpubsub import pubsub_api_pb2 as pb

    http = rest(sb, client)
    for i in range(3):
        http.post(f"{sb.base_url}{API}/sobjects/Contact", json={"LastName": f"Flow{i}"}).raise_for_status()
    requests_sent: list[Any] = [pb.FetchRequest(topic_name="/data/ContactChangeEvent",
                                                replay_preset=pb.ReplayPreset.EARLIEST, num_requested=2)]
    gate = threading.Event()

    def requests_iter() -> Iterator[Any]:
        yield requests_sent[0]
        gate.wait(20)
        yield pb.FetchRequest(num_requested=5)
        time.sleep(30)

    stream = client.stub.Subscribe(requests_iter(), metadata=client.metadata, timeout=25)
    first = next(stream)
    assert len(first.events) == 2 and first.pending_num_requested == 0
    gate.set()
    second = next(stream)
    assert len(second.events) == 1 and second.pending_num_requested == 4
    keepalive = next(stream)  # nothing more to send: an empty batch with the position, within ~1 s
    assert not keepalive.events and keepalive.latest_replay_id == second.latest_replay_id
    assert keepalive.pending_num_requested == 4
    stream.cancel()

    def error_of(call: Callable[[], Any]) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        return raised.value

    bad_auth = (("accesstoken", "00Dbogus!token"), ("instanceurl", sb.base_url), ("tenantid", client.tenant_id))
    error = error_of(lambda: client.stub.GetTopic(pb.TopicRequest(topic_name="/data/ContactChangeEvent"),
                                                  metadata=bad_auth))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "rpcId: " in error.details()
    assert dict(error.trailing_metadata())["error-code"] == "sfdc.platform.eventbus.grpc.service.auth.error"
    error = error_of(lambda: client.stub.GetTopic(pb.TopicRequest(topic_name="/data/NopeChangeEvent"),
                                                  metadata=client.metadata))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    future = (10**9).to_bytes(8, "big")
    error = error_of(lambda: next(client.stub.Subscribe(iter([pb.FetchRequest(
        topic_name="/data/ContactChangeEvent", replay_preset=pb.ReplayPreset.CUSTOM, replay_id=future,
        num_requested=1)]), metadata=client.metadata, timeout=10)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata())["error-code"].endswith("fetch.replayid.validation.failed")
    error = error_of(lambda: next(client.stub.Subscribe(iter([pb.FetchRequest(
        topic_name="/data/ContactChangeEvent", replay_preset=pb.ReplayPreset.CUSTOM, replay_id=b"xyz",
        num_requested=1)]), metadata=client.metadata, timeout=10)))
    assert dict(error.trailing_metadata())["error-code"].endswith("fetch.replayid.corrupted")
    published = client.stub.Publish(pb.PublishRequest(topic_name="/data/ContactChangeEvent", events=[
        pb.ProducerEvent(id="e1", schema_id="x", payload=b"")]), metadata=client.metadata)
    assert published.results[0].error.code == pb.ErrorCode.PUBLISH


def test_gaps_overflow_selection_and_retention(start_sandbox: Callable[..., RunningSandbox],
                                               pubsub_client: Callable[..., Any]) -> None:
    sb = start_sandbox("gaps", extra_args=("--cdc-objects", "Contact,Campaign", "--cdc-retention", "3"))
    client = pubsub_client(sb)
    http = rest(sb, client)
    assert sb.admin("cdc")["objects"] == ["Campaign", "Contact"]
    http.post(f"{sb.base_url}{API}/sobjects/Lead", json={"LastName": "NotSelected", "Company": "X"})
    assert sb.admin("cdc")["last_replay_id"] == 0  # Lead is not selected: no event
    gap = sb.admin("cdc/gap", {"object": "Contact", "change_type": "GAP_UPDATE", "ids": ["0035g0000000001AAA"]})
    sb.admin("cdc", {"overflow_limit": 2})
    records = [{"attributes": {"type": "Contact"}, "LastName": f"Over{i}"} for i in range(4)]
    http.post(f"{sb.base_url}{API}/composite/sobjects", json={"records": records}).raise_for_status()
    events = [e["event"]["ChangeEventHeader"] for e in collect(client, "/data/ChangeEvents", "EARLIEST", None, 4)]
    assert events[0]["changeType"] == "GAP_UPDATE" and events[0]["recordIds"] == ["0035g0000000001AAA"]
    assert [e["changeType"] for e in events[1:]] == ["CREATE", "CREATE", "GAP_OVERFLOW"]
    assert events[3]["recordIds"] == [] and events[3]["entityName"] == "Contact"
    assert gap["replay_id"] == 1

    time.sleep(3.5)
    sb.admin("cdc", {"retention_seconds": 3})  # purges what is older than 3 s now
    from pysfpubsub import pubsub_api_pb2 as pb
    with pytest.raises(grpc.RpcError) as raised:
        next(client.stub.Subscribe(iter([pb.FetchRequest(topic_name="/data/ChangeEvents",
                                                         replay_preset=pb.ReplayPreset.CUSTOM,
                                                         replay_id=(1).to_bytes(8, "big"), num_requested=1)]),
                                   metadata=client.metadata, timeout=10))
    assert dict(raised.value.trailing_metadata())["error-code"].endswith("fetch.replayid.corrupted")


def test_the_selection_is_read_through_the_tooling_api(start_sandbox: Callable[..., RunningSandbox]) -> None:
    """PlatformEventChannelMember of the standard ChangeEvents channel, queried with simple-salesforce's own
    Tooling API call, follows Setup's selection (here the --cdc-objects flag and the admin lever)."""
    from urllib.parse import quote

    from simple_salesforce import Salesforce
    from simple_salesforce.exceptions import SalesforceMalformedRequest

    sb = start_sandbox("tooling", extra_args=("--cdc-objects", "Contact,Lead"))
    c = sb.credentials
    sf = Salesforce(username=c.username, password=c.password, security_token=c.security_token,
                    domain=sb.login_domain, session=sb.session())

    def members(soql: str) -> dict[str, Any]:
        return sf.toolingexecute(f"query/?q={quote(soql)}")

    found = members("SELECT Id, DeveloperName, EventChannel, SelectedEntity FROM PlatformEventChannelMember "
                    "WHERE EventChannel = 'ChangeEvents' ORDER BY SelectedEntity")
    assert found["done"] and found["entityTypeName"] == "PlatformEventChannelMember" and found["size"] == 2
    assert [r["SelectedEntity"] for r in found["records"]] == ["ContactChangeEvent", "LeadChangeEvent"]
    first = found["records"][0]
    assert first["DeveloperName"] == "ChangeEvents_ContactChangeEvent" and first["EventChannel"] == "ChangeEvents"
    assert first["Id"].startswith("0v8") and len(first["Id"]) == 18
    assert first["attributes"]["url"].endswith(f"/tooling/sobjects/PlatformEventChannelMember/{first['Id']}")
    sb.admin("cdc", {"objects": ["Account"]})
    assert [r["SelectedEntity"] for r in members("SELECT SelectedEntity FROM PlatformEventChannelMember")["records"]] \
        == ["AccountChangeEvent"]
    assert members("SELECT SelectedEntity FROM PlatformEventChannelMember WHERE SelectedEntity LIKE 'Lead%'")[
        "size"] == 0
    with pytest.raises(SalesforceMalformedRequest) as refused:
        members("SELECT Id FROM ApexClass")
    assert refused.value.content[0]["errorCode"] == "INVALID_TYPE"
