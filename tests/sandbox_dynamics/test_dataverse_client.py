"""Microsoft's PowerPlatform Dataverse Client (PyPI `PowerPlatform-Dataverse-Client`), unmodified, against the
sandbox: only the environment URL and the credential's authority change.

The client builds its own `requests.Session`, so the test points REQUESTS_CA_BUNDLE at the sandbox CA (and only
at it) for its duration.
"""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest
from azure.identity import CertificateCredential, ClientSecretCredential
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.core.errors import HttpError

from .conftest import RunningSandbox


@pytest.fixture
def client(sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[DataverseClient]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_path))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    c = sandbox.credentials
    credential = ClientSecretCredential(c.tenant_id, c.client_id, c.client_secret, authority=sandbox.base_url,
                                        disable_instance_discovery=True, connection_verify=str(sandbox.ca_path))
    with DataverseClient(sandbox.base_url, credential) as dataverse:
        yield dataverse


def test_crud_with_choice_labels_and_lookups(client: DataverseClient) -> None:
    key = f"DC-{uuid.uuid4().hex[:8]}"
    account = client.records.create("account", {"name": "Client Test Co", "industrycode": "Consulting"})
    contact = client.records.create("contact", {
        "firstname": "Ada", "lastname": "Lovelace", "gendercode": "Female", "crmsync_campaignkey": key,
        "birthdate": "1815-12-10", "creditlimit": 2500.5,
        "parentcustomerid_account@odata.bind": f"/accounts({account})"})
    record = client.records.retrieve("contact", contact, select=[
        "fullname", "gendercode", "birthdate", "creditlimit", "_parentcustomerid_value"])
    assert record["fullname"] == "Ada Lovelace" and record["gendercode"] == 2  # the label became its value
    assert record["birthdate"] == "1815-12-10" and record["creditlimit"] == 2500.5
    assert record["_parentcustomerid_value"] == account
    assert client.records.retrieve("account", account, select=["industrycode"])["industrycode"] == 7
    client.records.update("contact", contact, {"jobtitle": "Analyst"})
    assert client.records.retrieve("contact", contact, select=["jobtitle"])["jobtitle"] == "Analyst"
    client.records.delete("contact", contact)
    assert client.records.retrieve("contact", contact) is None  # the client maps Dataverse's 404 to None
    with pytest.raises(HttpError) as missing:
        client.records.update("contact", contact, {"jobtitle": "Ghost"})  # If-Match: * on a deleted record
    assert missing.value.status_code == 404 and "Does Not Exist" in str(missing.value)


def test_list_pages_follow_next_links(client: DataverseClient) -> None:
    pages = list(client.records.list_pages("contact", select=["fullname"], filter="statecode eq 0", page_size=500))
    assert len(pages) >= 3 and all(len(p) == 500 for p in pages[:-1])
    ids = [r["contactid"] for page in pages for r in page]
    assert len(ids) == len(set(ids)) >= 1200


def test_bulk_create_and_upsert_by_alternate_key(client: DataverseClient) -> None:
    prefix = uuid.uuid4().hex[:6]
    ids = client.records.create("contact", [{"lastname": f"Bulk {prefix} {i}"} for i in range(5)])
    assert len(ids) == 5 and len(set(ids)) == 5
    items = [{"alternate_key": {"crmsync_campaignkey": f"UP-{prefix}-{i}"}, "record": {"lastname": f"First {i}"}}
             for i in range(3)]
    client.records.upsert("contact", items)  # UpsertMultiple: creates
    client.records.upsert("contact", [{"alternate_key": {"crmsync_campaignkey": f"UP-{prefix}-1"},
                                       "record": {"lastname": "Second"}}])  # PATCH by key: updates
    rows = client.records.list("contact", filter=f"startswith(crmsync_campaignkey,'UP-{prefix}-')",
                               select=["lastname", "crmsync_campaignkey"], orderby=["crmsync_campaignkey"])
    assert [(r["crmsync_campaignkey"], r["lastname"]) for r in rows] == [
        (f"UP-{prefix}-0", "First 0"), (f"UP-{prefix}-1", "Second"), (f"UP-{prefix}-2", "First 2")]


def test_batch_with_change_set_and_continue_on_error(client: DataverseClient) -> None:
    account = client.records.create("account", {"name": "Batch Co"})
    batch = client.batch.new()
    batch.records.create("account", {"name": "Fabrikam"})
    with batch.changeset() as change_set:
        reference = change_set.records.create("contact", {"firstname": "Alice", "lastname": "Batch"})
        change_set.records.update("account", account, {"primarycontactid@odata.bind": reference})
    result = batch.execute()
    assert not result.has_errors and len(result.responses) == 3
    primary = client.records.retrieve("account", account, select=["_primarycontactid_value"])
    assert primary["_primarycontactid_value"] == result.responses[1].entity_id
    failing = client.batch.new()
    failing.records.update("contact", str(uuid.uuid4()), {"lastname": "x"})
    failing.records.create("account", {"name": "After failure"})
    outcome = failing.execute(continue_on_error=True)
    assert [r.status_code for r in outcome.responses] == [404, 204]


def test_table_metadata(client: DataverseClient) -> None:
    info = client.tables.get("contact")
    assert info is not None and info.entity_set_name == "contacts" and info.primary_id_attribute == "contactid"
    assert client.tables.get("nosuchtable") is None


def test_certificate_credential_drives_the_client(sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_path))
    c, cert = sandbox.credentials, sandbox.certificate
    assert cert is not None
    credential = CertificateCredential(c.tenant_id, c.client_id,
                                       certificate_data=(cert.key_pem + cert.cert_pem).encode(),
                                       authority=sandbox.base_url, disable_instance_discovery=True,
                                       connection_verify=str(sandbox.ca_path))
    with DataverseClient(sandbox.base_url, credential) as dataverse:
        rows = dataverse.records.list("account", select=["name"], top=3)
        assert len(rows) == 3 and all(r["name"] for r in rows)
