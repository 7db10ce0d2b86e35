"""Bulk API 1.0 with two unmodified public clients: simple-salesforce 1.12.10's `sf.bulk` (JSON jobs) and
salesforce-bulk 2.2.0 (XML jobs, CSV batches, PK chunking). salesforce-bulk sends plain `requests` calls, so the
test sets REQUESTS_CA_BUNDLE to the sandbox CA for it."""
from __future__ import annotations

import csv
import io
import uuid

import pytest
from salesforce_bulk import CsvDictsAdapter, SalesforceBulk
from simple_salesforce import Salesforce

from .conftest import RunningSandbox


def client(sb: RunningSandbox) -> Salesforce:
    c = sb.credentials
    return Salesforce(username=c.username, password=c.password, security_token=c.security_token,
                      domain=sb.login_domain, session=sb.session())


def test_simple_salesforce_bulk_insert_upsert_query(sandbox: RunningSandbox) -> None:
    sf = client(sandbox)
    tag = uuid.uuid4().hex[:8]
    inserted = sf.bulk.Contact.insert([{"LastName": f"B1-{tag}", "Email": f"{tag}@example.com"},
                                       {"LastName": f"B1-{tag}", "Email": f"{tag}@invalid.example"}])
    assert inserted[0]["success"] and inserted[0]["created"] and inserted[0]["id"].startswith("003")
    assert not inserted[1]["success"]
    assert inserted[1]["errors"][0]["statusCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    upserted = sf.bulk.Contact.upsert([{"Campaign_Key__c": f"K-{tag}", "LastName": f"B1-{tag}"}],
                                      "Campaign_Key__c")
    assert upserted[0]["created"] is True
    rows = sf.bulk.Contact.query(f"SELECT Id, LastName, Campaign_Key__c FROM Contact WHERE LastName = 'B1-{tag}'")
    assert sorted(r["Campaign_Key__c"] or "" for r in rows) == ["", f"K-{tag}"]
    assert rows[0]["attributes"]["type"] == "Contact"


def test_salesforce_bulk_xml_jobs_csv_batches_and_pk_chunking(sandbox: RunningSandbox,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_path))
    sf = client(sandbox)
    bulk = SalesforceBulk(sessionId=sf.session_id, host=sandbox.host_port)
    tag = uuid.uuid4().hex[:8]
    job = bulk.create_insert_job("Lead", contentType="CSV")
    batch = bulk.post_batch(job, CsvDictsAdapter(iter([{"LastName": f"L-{tag}", "Company": "Acme"},
                                                       {"LastName": f"L-{tag}", "Company": ""}])))
    bulk.wait_for_batch(job, batch)
    bulk.close_job(job)
    assert bulk.job_status(job)["state"] == "Closed"
    results = bulk.get_batch_results(batch)
    assert results[0].success == "true" and results[0].created == "true" and results[0].id.startswith("00Q")
    assert results[1].success == "false" and "REQUIRED_FIELD_MISSING" in results[1].error

    total = sf.query("SELECT COUNT() FROM Contact")["totalSize"]
    job = bulk.create_query_job("Contact", contentType="CSV", pk_chunking="chunkSize=1000")
    bulk.query(job, "SELECT Id, LastName FROM Contact ORDER BY LastName")
    bulk.close_job(job)
    batches = bulk.get_batch_list(job)
    assert batches[0]["state"] == "NotProcessed"  # the batch holding the query, as Salesforce does
    chunks = [b for b in batches[1:]]
    assert len(chunks) == -(-total // 1000) and all(b["state"] == "Completed" for b in chunks)
    ids: list[str] = []
    for chunk in chunks:
        for result in bulk.get_all_results_for_query_batch(chunk["id"], job):
            ids += [row["Id"] for row in csv.DictReader(io.TextIOWrapper(result, "utf-8"))]
    assert len(ids) == total == len(set(ids))


def test_bulk1_errors_and_content_types(sandbox: RunningSandbox) -> None:
    url, http = f"{sandbox.base_url}/services/async/59.0/job", sandbox.session()
    bad = http.post(url, data="<jobInfo xmlns='http://www.force.com/2009/06/asyncapi/dataload'/>",
                    headers={"X-SFDC-Session": "nope", "Content-Type": "application/xml; charset=UTF-8"})
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/xml"
    assert "<exceptionCode>InvalidSessionId</exceptionCode>" in bad.text
    session = client(sandbox).session_id
    missing = http.get(f"{url}/750000000000000AAA", headers={"X-SFDC-Session": session,
                                                             "Content-Type": "application/json"})
    assert missing.status_code == 400 and missing.json()["exceptionCode"] == "InvalidJob"
    created = http.post(url, json={"operation": "query", "object": "Contact", "contentType": "JSON"},
                        headers={"X-SFDC-Session": session})
    assert created.status_code == 201 and created.headers["Content-Type"] == "application/json"
    assert created.json()["state"] == "Open" and created.json()["concurrencyMode"] == "Parallel"
    batch = http.post(f"{url}/{created.json()['id']}/batch", data="SELECT Id FROM Contact LIMIT 3",
                      headers={"X-SFDC-Session": session, "Content-Type": "application/json"})
    assert batch.status_code == 201 and batch.json()["state"] == "Queued"
    info = http.get(f"{url}/{created.json()['id']}/batch/{batch.json()['id']}",
                    headers={"X-SFDC-Session": session}).json()
    assert info["state"] == "Completed" and info["numberRecordsProcessed"] == 3
