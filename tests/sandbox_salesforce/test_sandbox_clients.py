"""Unmodified simple-salesforce 1.12.10 (and plain HTTPS where it has no helper) against the running sandbox."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import (SalesforceAuthenticationFailed, SalesforceExpiredSession,
                                          SalesforceGeneralError, SalesforceMalformedRequest,
                                          SalesforceMoreThanOneRecord, SalesforceRefusedRequest,
                                          SalesforceResourceNotFound)

from sandboxes.salesforce.objects import ALLOWED_DESCRIBE_TYPES

from .conftest import RunningSandbox

UTC = dt.timezone.utc


def soap_client(sb: RunningSandbox, **kwargs) -> Salesforce:
    c = sb.credentials
    return Salesforce(username=c.username, password=c.password, security_token=c.security_token,
                      domain=sb.login_domain, session=sb.session(), **kwargs)


def oauth_client(sb: RunningSandbox) -> Salesforce:
    c = sb.credentials
    return Salesforce(username=c.username, password=c.password + c.security_token, consumer_key=c.client_id,
                      consumer_secret=c.client_secret, domain=sb.login_domain, session=sb.session())


def error_code(exc: Exception) -> str:
    return exc.content[0]["errorCode"]  # type: ignore[attr-defined]


def user_id(sf: Salesforce, username: str) -> str:
    return sf.query(f"SELECT Id FROM User WHERE Username = '{username}'")["records"][0]["Id"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------- login


def test_soap_login_through_domain_suffix_and_scratch_url(sandbox: RunningSandbox) -> None:
    c = sandbox.credentials
    session_id, instance = SalesforceLogin(username=c.username, password=c.password,
                                           security_token=c.security_token, domain=sandbox.login_domain,
                                           session=sandbox.session())
    assert instance == sandbox.host_port and session_id.startswith("00D")
    _, instance = SalesforceLogin(username=c.username, password=c.password, security_token=c.security_token,
                                  scratch_url=sandbox.base_url, session=sandbox.session())
    assert instance == sandbox.host_port
    with pytest.raises(SalesforceAuthenticationFailed) as failed:
        SalesforceLogin(username=c.username, password="wrong", security_token=c.security_token,
                        domain=sandbox.login_domain, session=sandbox.session())
    assert failed.value.code == "INVALID_LOGIN"
    sf = Salesforce(session_id=session_id, instance_url=sandbox.base_url, session=sandbox.session())
    assert sf.is_sandbox() is True


def test_oauth_password_grant_and_wrong_secret(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    assert sf.sf_instance == sandbox.host_port
    assert sf.query("SELECT Name, IsSandbox FROM Organization")["records"][0]["IsSandbox"] is True
    c = sandbox.credentials
    with pytest.raises(SalesforceAuthenticationFailed) as failed:
        Salesforce(username=c.username, password=c.password + c.security_token, consumer_key=c.client_id,
                   consumer_secret="nope", domain=sandbox.login_domain, session=sandbox.session())
    assert failed.value.code == "invalid_client"


def test_refresh_token_client_credentials_and_jwt_grants(sandbox: RunningSandbox) -> None:
    c, http = sandbox.credentials, sandbox.session()
    token_url = f"{sandbox.base_url}/services/oauth2/token"
    first = http.post(token_url, data={"grant_type": "password", "client_id": c.client_id, "client_secret":
                                       c.client_secret, "username": c.username,
                                       "password": c.password + c.security_token}).json()
    assert first["instance_url"] == sandbox.base_url and first["token_type"] == "Bearer"
    refreshed = http.post(token_url, data={"grant_type": "refresh_token", "client_id": c.client_id,
                                           "refresh_token": first["refresh_token"]})
    assert refreshed.status_code == 200
    sf = Salesforce(session_id=refreshed.json()["access_token"], instance_url=sandbox.base_url, session=http)
    assert sf.query("SELECT COUNT() FROM Organization")["totalSize"] == 1
    assert http.post(f"{sandbox.base_url}/services/oauth2/revoke", data={"token": first["refresh_token"]}).ok
    expired = http.post(token_url, data={"grant_type": "refresh_token", "client_id": c.client_id,
                                         "refresh_token": first["refresh_token"]})
    assert expired.status_code == 400
    assert expired.json() == {"error": "invalid_grant", "error_description": "expired access/refresh token"}
    with pytest.raises(SalesforceExpiredSession):  # revoking the refresh token ended its sessions too
        sf.query("SELECT COUNT() FROM Organization")

    client_credentials = Salesforce(consumer_key=c.client_id, consumer_secret=c.client_secret,
                                    domain=sandbox.login_domain, session=sandbox.session())
    assert client_credentials.auth_type == "client-credentials"
    assert client_credentials.query("SELECT COUNT() FROM User")["totalSize"] >= 1

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    jwt_client = Salesforce(username=c.username, consumer_key=c.client_id, privatekey=pem,
                            domain=sandbox.login_domain, session=sandbox.session())
    assert jwt_client.auth_type == "jwt-bearer" and jwt_client.is_sandbox() is True
    with pytest.raises(SalesforceAuthenticationFailed) as failed, pytest.warns(UserWarning, match="authorize"):
        Salesforce(username="someone@else.example", consumer_key=c.client_id, privatekey=pem,
                   domain=sandbox.login_domain, session=sandbox.session())
    assert failed.value.code == "invalid_grant"


def test_invalid_session_makes_simple_salesforce_log_in_again(sandbox: RunningSandbox) -> None:
    sf = soap_client(sandbox)
    old_session = sf.session_id
    direct = Salesforce(session_id=old_session, instance_url=sandbox.base_url, session=sandbox.session())
    sandbox.admin("expire-sessions", {})
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] > 0  # 401 INVALID_SESSION_ID -> re-login
    assert sf.session_id != old_session
    with pytest.raises(SalesforceExpiredSession) as expired:
        direct.query("SELECT COUNT() FROM Contact")  # no credentials: nothing to re-login with
    assert expired.value.content == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID",
                                      "fields": []}]


# ---------------------------------------------------------------- describe, limits, versions


def test_versions_describe_and_limits(sandbox: RunningSandbox) -> None:
    versions = {v["version"] for v in sandbox.session().get(f"{sandbox.base_url}/services/data/").json()}
    assert {"59.0", "61.0", "62.0"} <= versions
    sf = oauth_client(sandbox)
    names = {o["name"]: o for o in sf.describe()["sobjects"]}
    assert {"Account", "Contact", "Lead", "Opportunity", "Campaign", "CampaignMember", "User",
            "Organization"} <= set(names)
    assert names["Lead"]["keyPrefix"] == "00Q" and names["Contact"]["queryable"] is True

    fields = {f["name"]: f for f in sf.Contact.describe()["fields"]}
    assert {f["type"] for f in fields.values()} <= ALLOWED_DESCRIBE_TYPES
    assert fields["Interests__c"]["type"] == "multipicklist" and fields["Interests__c"]["picklistValues"]
    assert fields["Preferred_Channel__c"]["restrictedPicklist"] is True
    assert fields["Email_Domain__c"]["calculated"] is True and fields["Email_Domain__c"]["calculatedFormula"]
    assert fields["MailingAddress"]["type"] == "address"
    assert fields["MailingCity"]["compoundFieldName"] == "MailingAddress"
    assert fields["AccountId"]["referenceTo"] == ["Account"] and fields["AccountId"]["relationshipName"] == "Account"
    assert fields["Campaign_Key__c"]["externalId"] and fields["Campaign_Key__c"]["unique"]
    assert fields["SystemModstamp"]["createable"] is False and fields["SystemModstamp"]["updateable"] is False
    lead = {f["name"]: f for f in sf.Lead.describe()["fields"]}
    assert {"Open - Not Contacted", "Closed - Converted"} <= {p["value"] for p in lead["Status"]["picklistValues"]}
    opportunity = {f["name"]: f for f in sf.Opportunity.describe()["fields"]}
    assert (opportunity["Amount"]["precision"], opportunity["Amount"]["scale"]) == (18, 2)
    assert "recentItems" in sf.Contact.metadata()

    limits = sf.limits()
    assert limits["DailyApiRequests"]["Max"] >= limits["DailyApiRequests"]["Remaining"] > 0
    assert "DailyBulkApiBatches" in limits and "DailyBulkApiRequests" in limits
    raw = sf.session.get(f"{sf.base_url}limits/", headers=sf.headers)
    assert re.fullmatch(r"api-usage=\d+/\d+", raw.headers["Sforce-Limit-Info"])
    assert sf.api_usage["api-usage"].total == 5_000_000


# ---------------------------------------------------------------- query


def test_query_pages_with_next_records_url_and_batch_size(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    first = sf.query("SELECT Id, Name, Email FROM Contact")
    assert first["totalSize"] >= 2500 and first["done"] is False and len(first["records"]) == 2000
    assert re.fullmatch(r"/services/data/v59\.0/query/01g\w{15}-2000", first["nextRecordsUrl"])
    everything = sf.query_all("SELECT Id, Name, Email FROM Contact")
    ids = [r["Id"] for r in everything["records"]]
    assert len(ids) == first["totalSize"] == len(set(ids))
    small = sf.query("SELECT Id FROM Contact", headers={"Sforce-Query-Options": "batchSize=500"})
    assert len(small["records"]) == 500 and small["nextRecordsUrl"].endswith("-500")
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.query("SELECT Nope__c FROM Contact")
    assert error_code(bad.value) == "INVALID_FIELD"


# ---------------------------------------------------------------- records


def test_record_crud_and_errors(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    created = sf.Contact.create({"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com",
                                 "Interests__c": "Golf;Travel"})
    assert created["success"] is True and created["id"].startswith("003") and len(created["id"]) == 18
    record = sf.Contact.get(created["id"])
    assert record["Name"] == "Ada Lovelace" and record["Email_Domain__c"] == "example.com"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", record["SystemModstamp"])
    assert sf.Contact.get(created["id"], params={"fields": "Id,LastName"}).keys() == {"attributes", "Id",
                                                                                      "LastName"}
    assert sf.Contact.update(created["id"], {"Title": "Analyst"}) == 204
    assert sf.Contact.get(created["id"])["Title"] == "Analyst"
    assert sf.Contact.delete(created["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound) as again:
        sf.Contact.delete(created["id"])
    assert error_code(again.value) == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceResourceNotFound) as missing:
        sf.Contact.get("0035g00000ZZZZZAAA")
    assert error_code(missing.value) == "NOT_FOUND"
    refused = {
        "REQUIRED_FIELD_MISSING": {"FirstName": "No last name"},
        "INVALID_FIELD": {"LastName": "x", "Shoe_Size__c": 42},
        "INVALID_FIELD_FOR_INSERT_UPDATE": {"LastName": "x", "CreatedDate": "2020-01-01T00:00:00Z"},
        "STRING_TOO_LONG": {"LastName": "x" * 81},
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST": {"LastName": "x", "Preferred_Channel__c": "Pigeon"},
        "MALFORMED_ID": {"LastName": "x", "AccountId": "not-an-id"},
    }
    for code, body in refused.items():
        with pytest.raises(SalesforceMalformedRequest) as bad:
            sf.Contact.create(body)
        assert error_code(bad.value) == code, body


def test_upsert_by_external_id_inserts_then_updates(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    key = unique("CK")
    assert sf.Contact.upsert(f"Campaign_Key__c/{key}", {"LastName": "First"}) == 201
    assert sf.Contact.upsert(f"Campaign_Key__c/{key}", {"LastName": "Second"}) == 200  # v59: 200 created:false
    record = sf.Contact.get_by_custom_id("Campaign_Key__c", key)
    assert record["LastName"] == "Second" and record["Campaign_Key__c"] == key
    old_api = Salesforce(session_id=sf.session_id, instance_url=sandbox.base_url, version="45.0",
                         session=sandbox.session())
    assert old_api.Contact.upsert(f"Campaign_Key__c/{key}", {"LastName": "Third"}) == 204
    spaced = unique("key with spaces")
    assert sf.Contact.upsert(f"Campaign_Key__c/{spaced}", {"LastName": "Spaced"}) == 201
    assert sf.Contact.get_by_custom_id("Campaign_Key__c", spaced)["Campaign_Key__c"] == spaced
    with pytest.raises(SalesforceMalformedRequest):
        sf.Contact.upsert(f"Campaign_Key__c/{key}", {"LastName": "x", "Campaign_Key__c": key})
    with pytest.raises(SalesforceMalformedRequest) as duplicate:
        sf.Contact.create({"LastName": "Dup", "Campaign_Key__c": key.lower()})  # external ids ignore case
    assert error_code(duplicate.value) == "DUPLICATE_VALUE"
    legacy = unique("L")  # Legacy_Id__c is an external id without a unique constraint
    first = sf.Contact.create({"LastName": "Twin 1", "Legacy_Id__c": legacy})["id"]
    second = sf.Contact.create({"LastName": "Twin 2", "Legacy_Id__c": legacy})["id"]
    with pytest.raises(SalesforceMoreThanOneRecord) as ambiguous:
        sf.Contact.upsert(f"Legacy_Id__c/{legacy}", {"LastName": "Which one?"})
    assert sorted(ambiguous.value.content) == sorted(f"/services/data/v59.0/sobjects/Contact/{i}"
                                                     for i in (first, second))
    with pytest.raises(SalesforceMoreThanOneRecord):
        sf.Contact.get_by_custom_id("Legacy_Id__c", legacy)


def test_updated_and_deleted_windows(start_sandbox) -> None:
    sandbox = start_sandbox("replication")
    sf = oauth_client(sandbox)
    kept = sf.Contact.create({"LastName": "Kept"})["id"]
    gone = sf.Contact.create({"LastName": "Gone"})["id"]
    sf.Contact.delete(gone)
    sandbox.admin("clock", {"offset_seconds": 61})  # the minute of these writes is now complete
    now = dt.datetime.now(UTC)
    window = (now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    changed = sf.Contact.updated(*window)
    assert kept in changed["ids"] and gone not in changed["ids"]
    assert changed["latestDateCovered"].endswith(":00.000+0000")
    removed = sf.Contact.deleted(*window)
    assert [r["id"] for r in removed["deletedRecords"]] == [gone]
    assert {"earliestDateAvailable", "latestDateCovered"} <= removed.keys()
    with pytest.raises(SalesforceMalformedRequest) as too_old:
        sf.Contact.updated(now - dt.timedelta(days=31), now)
    assert error_code(too_old.value) == "INVALID_REPLICATION_DATE"
    with pytest.raises(SalesforceMalformedRequest) as deleted_too_old:
        sf.Contact.deleted(now - dt.timedelta(days=16), now)
    assert error_code(deleted_too_old.value) == "INVALID_REPLICATION_DATE"
    with pytest.raises(SalesforceMalformedRequest):  # naive datetimes make simple-salesforce send '...:00:'
        sf.Contact.updated(dt.datetime.now() - dt.timedelta(hours=1), dt.datetime.now())

    in_bin = sf.query_all(f"SELECT Id FROM Contact WHERE Id = '{gone}'", include_deleted=True)
    assert in_bin["totalSize"] == 1
    sandbox.admin("clock", {"offset_seconds": 16 * 86400})  # 16 days later the recycle bin has been emptied
    assert sf.query_all(f"SELECT Id FROM Contact WHERE Id = '{gone}'", include_deleted=True)["totalSize"] == 0
    assert sf.Contact.get(kept)["LastName"] == "Kept"  # (after an automatic re-login: sessions expired too)


# ---------------------------------------------------------------- sObject Collections and composite/batch


def test_collections_report_per_record_errors_and_roll_back_all_or_none(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    tag = unique("coll")
    records = [{"attributes": {"type": "Contact"}, "LastName": f"{tag}-1"},
               {"attributes": {"type": "Contact"}, "FirstName": "missing last name"},
               {"attributes": {"type": "Contact"}, "LastName": f"{tag}-3"}]
    results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": records})
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    ids = [results[0]["id"], results[2]["id"]]
    updates = [{"attributes": {"type": "Contact"}, "id": ids[0], "Title": "Updated"},
               {"attributes": {"type": "Contact"}, "id": ids[1], "Preferred_Channel__c": "Pigeon"}]
    results = sf.restful("composite/sobjects", method="PATCH", json={"records": updates})
    assert [r["success"] for r in results] == [True, False]
    assert results[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    results = sf.restful("composite/sobjects", method="DELETE", params={"ids": f"{ids[0]},bogus"})
    assert [r["success"] for r in results] == [True, False]
    assert results[1]["errors"][0]["statusCode"] == "MALFORMED_ID"

    results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
    assert [r["success"] for r in results] == [False, False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert sf.query(f"SELECT COUNT() FROM Contact WHERE LastName = '{tag}-3'")["totalSize"] == 1  # rolled back
    too_many = [{"attributes": {"type": "Contact"}, "LastName": "x"}] * 201
    with pytest.raises(SalesforceMalformedRequest) as big:
        sf.restful("composite/sobjects", method="POST", json={"records": too_many})
    assert error_code(big.value) == "EXCEEDED_ID_LIMIT"
    upserted = sf.restful("composite/sobjects/Contact/Campaign_Key__c", method="PATCH", json={"records": [
        {"attributes": {"type": "Contact"}, "Campaign_Key__c": tag, "LastName": "Upserted"}]})
    assert upserted[0]["created"] is True


def test_sobject_collections_retrieve_by_post(sandbox: RunningSandbox) -> None:
    """POST composite/sobjects/Contact {"ids", "fields"}: one entry per id in order, null for a malformed id or
    one that is no live Contact; an unknown field refuses the call; at most 2,000 ids."""
    sf = oauth_client(sandbox)
    tag = unique("retrieve")
    made = [sf.Contact.create({"LastName": f"{tag}-{i}", "Title": f"T{i}"})["id"] for i in range(3)]
    sf.Contact.delete(made[2])
    answer = sf.restful("composite/sobjects/Contact", method="POST",
                        json={"ids": [made[1], "bogus", made[0][:15], made[2]], "fields": ["LastName", "Title"]})
    assert [r and (r["attributes"]["type"], r["Id"], r["LastName"], r["Title"]) for r in answer] == [
        ("Contact", made[1], f"{tag}-1", "T1"), None, ("Contact", made[0], f"{tag}-0", "T0"), None]
    unknown_ids = [f"003{i:012d}" for i in range(1, 1999)]  # a full call: 2,000 ids (the writer's chunk)
    full = sf.restful("composite/sobjects/Contact", method="POST", json={"ids": [*made[:2], *unknown_ids],
                                                                        "fields": ["Title"]})
    assert len(full) == 2000 and [r["Title"] for r in full[:2]] == ["T0", "T1"] and not any(full[2:])
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf.restful("composite/sobjects/Contact", method="POST", json={"ids": made[:1], "fields": ["Nope__c"]})
    assert error_code(unknown.value) == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as big:
        sf.restful("composite/sobjects/Contact", method="POST", json={"ids": made[:1] * 2001, "fields": ["Title"]})
    assert error_code(big.value) == "EXCEEDED_ID_LIMIT"


def test_composite_batch_accepts_both_url_forms(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    answer = sf.restful("composite/batch", method="POST", json={"haltOnError": True, "batchRequests": [
        {"method": "GET", "url": "/services/data/v61.0/sobjects/Lead/describe"},
        {"method": "GET", "url": "v59.0/query?q=SELECT+COUNT()+FROM+Account"},
        {"method": "GET", "url": "v59.0/sobjects/Nope__c/describe"},
        {"method": "GET", "url": "v59.0/limits"}]})
    assert answer["hasErrors"] is True
    assert [r["statusCode"] for r in answer["results"]] == [200, 200, 404, 412]
    assert answer["results"][0]["result"]["name"] == "Lead" and answer["results"][1]["result"]["totalSize"] > 0


# ---------------------------------------------------------------- Bulk API 2.0


def test_bulk2_ingest_and_query(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    tag = unique("bulk")
    rows = [{"LastName": f"{tag}-{i}", "Email": f"p{i}@example.com", "Campaign_Key__c": f"{tag}-{i}"}
            for i in range(300)]
    rows.append({"LastName": f"{tag}-bad", "Email": "rejected@invalid.example", "Campaign_Key__c": f"{tag}-x"})
    [job] = sf.bulk2.Contact.insert(records=rows, wait=0.1)
    assert (job["numberRecordsProcessed"], job["numberRecordsFailed"]) == (301, 1)
    failed = list(csv.DictReader(io.StringIO(sf.bulk2.Contact.get_failed_records(job["job_id"]))))
    assert failed[0]["sf__Error"].startswith("FIELD_CUSTOM_VALIDATION_EXCEPTION")
    successful = list(csv.DictReader(io.StringIO(sf.bulk2.Contact.get_successful_records(job["job_id"]))))
    assert len(successful) == 300 and successful[0]["sf__Created"] == "true"
    unprocessed = list(csv.reader(io.StringIO(sf.bulk2.Contact.get_unprocessed_records(job["job_id"]))))
    assert len(unprocessed) == 1  # the header only: every row was processed
    [upsert] = sf.bulk2.Contact.upsert(records=[{"Campaign_Key__c": f"{tag}-0", "Title": "Upserted"}],
                                       external_id_field="Campaign_Key__c", wait=0.1)
    assert upsert["numberRecordsFailed"] == 0

    pages = list(sf.bulk2.Contact.query(f"SELECT Id, LastName, Title, CreatedDate FROM Contact WHERE LastName "
                                        f"LIKE '{tag}-%'", max_records=120, wait=0.1))
    assert len(pages) == 3  # 300 rows, 120 per page: the locator chain ends with 'null'
    parsed = [row for page in pages for row in csv.DictReader(io.StringIO(page))]
    assert len(parsed) == 300 and {r["Title"] for r in parsed} == {"", "Upserted"}
    assert parsed[0]["CreatedDate"].endswith("Z")
    with pytest.raises(SalesforceMalformedRequest) as compound:
        list(sf.bulk2.Contact.query("SELECT Id, MailingAddress FROM Contact", wait=0.1))
    assert compound.value.content[0]["message"] == "Selecting compound data not supported in Bulk Query"
    [deleted] = sf.bulk2.Contact.delete(records=[{"Id": r["sf__Id"]} for r in successful[:10]], wait=0.1)
    assert deleted["numberRecordsProcessed"] == 10 and deleted["numberRecordsFailed"] == 0


# ---------------------------------------------------------------- org rules


def test_assignment_rule_follows_sforce_auto_assign(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    emea, api_user = user_id(sf, "emea.sales@crmsync.example"), user_id(sf, sandbox.credentials.username)
    sandbox.admin("reset-stats", {})
    lead = {"LastName": "Routed", "Company": "Rue SA", "Country": "France"}
    absent = sf.Lead.create(lead)["id"]
    explicit = sf.Lead.create(lead, headers={"Sforce-Auto-Assign": "TRUE"})["id"]
    off = sf.Lead.create(lead, headers={"Sforce-Auto-Assign": "FALSE"})["id"]
    assert [sf.Lead.get(i)["OwnerId"] for i in (absent, explicit, off)] == [emea, emea, api_user]
    account = sf.Account.create({"Name": "Berlin GmbH", "BillingCountry": "Germany"},
                                headers={"Sforce-Auto-Assign": "false"})["id"]
    assert sf.Account.get(account)["OwnerId"] == api_user
    sf.Account.update(account, {"Phone": "+49 30 1234"})  # header absent on update: the rule runs
    assert sf.Account.get(account)["OwnerId"] == emea
    stats = sandbox.admin("stats")
    assert [e["header"] for e in stats["auto_assign"]["last"][:3]] == [None, "TRUE", "FALSE"]
    assert stats["auto_assign"]["counts"] == {"absent": 2, "TRUE": 1, "FALSE": 2}


def test_validation_rule_rejects_invalid_example_emails(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Contact.create({"LastName": "Nope", "Email": "someone@invalid.example"})
    assert refused.value.content[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert refused.value.content[0]["fields"] == ["Email"]
    contact = sf.Contact.create({"LastName": "Fine", "Email": "someone@example.com"})["id"]
    with pytest.raises(SalesforceMalformedRequest):
        sf.Contact.update(contact, {"Email": "SOMEONE@INVALID.EXAMPLE"})
    assert sf.Contact.get(contact)["Email"] == "someone@example.com"


# ---------------------------------------------------------------- limits, faults, admin surface


def test_request_limit_exceeded_fault_and_daily_limit(admin_reset: RunningSandbox) -> None:
    sandbox = admin_reset
    sf = oauth_client(sandbox)
    tag = unique("fault")
    sandbox.admin("faults", {"request_limit_exceeded": 1.0, "seed": 7})
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.Contact.create({"LastName": tag})
    assert error_code(refused.value) == "REQUEST_LIMIT_EXCEEDED"
    sandbox.admin("faults", {})
    assert sf.query(f"SELECT COUNT() FROM Contact WHERE LastName = '{tag}'")["totalSize"] == 0  # no side effect
    assert sandbox.admin("stats")["faults_injected"]["request_limit_exceeded"] >= 1

    usage = sandbox.admin("limits", {})["api_usage_today"]
    sandbox.admin("limits", {"daily_api_max": usage + 1})
    sf.query("SELECT COUNT() FROM Account")
    with pytest.raises(SalesforceRefusedRequest) as over:
        sf.query("SELECT COUNT() FROM Account")
    assert error_code(over.value) == "REQUEST_LIMIT_EXCEEDED"

    sandbox.admin("limits", {"daily_api_max": 5_000_000})
    sandbox.admin("faults", {"unavailable_503": 1.0})
    with pytest.raises(SalesforceGeneralError) as unavailable:
        sf.query("SELECT COUNT() FROM Account")
    assert unavailable.value.status == 503
    sandbox.admin("faults", {"slow_seconds": 0.5, "slow_probability": 1.0})
    started = time.monotonic()
    sf.query("SELECT COUNT() FROM Account")
    assert time.monotonic() - started >= 0.5


def test_admin_endpoints_need_the_admin_token_not_a_session(sandbox: RunningSandbox) -> None:
    sf = oauth_client(sandbox)
    http = sandbox.session()
    with_session = http.get(f"{sandbox.base_url}/__sandbox/stats", headers={"Authorization": f"Bearer "
                                                                                              f"{sf.session_id}"})
    assert with_session.status_code == 403
    as_admin = http.get(f"{sandbox.base_url}/__sandbox/stats", headers={"X-Sandbox-Admin": sandbox.admin_token})
    assert as_admin.status_code == 200 and "requests" in as_admin.json()
    api_with_admin_token = http.get(f"{sandbox.base_url}/services/data/v59.0/limits",
                                    headers={"Authorization": f"Bearer {sandbox.admin_token}"})
    assert api_with_admin_token.status_code == 401


def test_plain_http_is_not_served(sandbox: RunningSandbox) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{sandbox.host_port}/services/data/", timeout=10)


# ---------------------------------------------------------------- seeding and persistence


def test_seeds_100k_contacts_quickly_and_keeps_state_across_restarts(start_sandbox) -> None:
    started = time.monotonic()
    sandbox = start_sandbox("big", seed_contacts=100_000)
    assert time.monotonic() - started < 60  # a sanity bound; seeding takes a few seconds
    sf = soap_client(sandbox)
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 100_000
    sample = sf.query("SELECT Email, MailingCountry, Birthdate FROM Contact WHERE Campaign_Key__c = 'CK-00000042'")
    assert re.fullmatch(r"[a-z]+\.[a-z]+\.42@[a-z.]+", sample["records"][0]["Email"])
    survivor = sf.Contact.create({"LastName": "Survivor"})["id"]
    session_id = sf.session_id
    sandbox.stop()

    restarted = start_sandbox("big", seed_contacts=100_000)  # same state dir, same seed request
    assert "seeding skipped" in restarted.log_path.read_text()
    again = Salesforce(session_id=session_id, instance_url=restarted.base_url, session=restarted.session())
    assert again.query("SELECT COUNT() FROM Contact")["totalSize"] == 100_001  # sessions persist too
    assert again.Contact.get(survivor)["LastName"] == "Survivor"


def test_sandbox_ca_command_and_certificates(tmp_path) -> None:
    from cryptography import x509
    from typer.testing import CliRunner

    from crmsync.tls import issue_server_cert
    from sandboxes.cli import sandbox_app

    printed = CliRunner().invoke(sandbox_app, ["ca", "--state", str(tmp_path)])
    assert printed.exit_code == 0 and printed.output.strip() == str((tmp_path / "ca.pem").resolve())
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    cert_path, key_path = issue_server_cert(tmp_path, ["login.salesforce.com", "10.1.2.3"], out_dir=tmp_path / "sf")
    assert key_path.stat().st_mode & 0o777 == 0o600
    sans = x509.load_pem_x509_certificate(cert_path.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert {"localhost", "login.salesforce.com"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}


def test_ids_carry_salesforce_case_safe_suffix() -> None:
    from sandboxes.salesforce.encoding import make_id, normalize_id

    assert normalize_id("001A0000006Vm9r") == "001A0000006Vm9rIAC"  # a documented 15 -> 18 character pair
    assert make_id("003", 1) == "0035g0000000001AAA" and normalize_id("not an id") is None
