"""The Web API's wire details that clients depend on, checked with plain HTTP (requests): headers, paging,
$filter, change tracking, conditional writes, errors, metadata, $batch, service protection, faults, restarts."""
from __future__ import annotations

import concurrent.futures
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from .conftest import RunningSandbox

ANNOTATIONS = {"Prefer": 'odata.include-annotations="*"'}


def _create(session: requests.Session, sandbox: RunningSandbox, entity_set: str, body: dict) -> str:
    response = session.post(f"{sandbox.api}/{entity_set}", json=body, timeout=30)
    assert response.status_code == 204, response.text
    return response.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def test_headers_are_spelled_like_dataverse(sandbox: RunningSandbox) -> None:
    session = sandbox.api_session()
    response = session.post(f"{sandbox.api}/contacts", json={"lastname": "Headers"}, timeout=30)
    names = list(response.raw.headers.keys())  # as sent on the wire
    for name in ("OData-Version", "OData-EntityId", "REQ_ID", "x-ms-ratelimit-burst-remaining-xrm-requests",
                 "x-ms-ratelimit-time-remaining-xrm-requests"):
        assert name in names, names
    assert response.status_code == 204 and response.headers["OData-EntityId"].startswith(f"{sandbox.api}/contacts(")
    root = session.get(f"{sandbox.api}/", timeout=30).json()
    assert {"name": "contacts", "kind": "EntitySet", "url": "contacts"} in root["value"]
    assert session.get(f"{sandbox.base_url}/api/data/v9.0/WhoAmI", timeout=30).status_code == 200
    assert b"<EntitySet Name=\"contacts\"" in session.get(f"{sandbox.api}/$metadata", timeout=30).content


def test_paging_with_maxpagesize_and_opaque_absolute_next_links(sandbox: RunningSandbox) -> None:
    session = sandbox.api_session(Prefer="odata.maxpagesize=500")
    url, pages, ids = f"{sandbox.api}/contacts?$select=fullname&$filter=statecode eq 0", 0, []
    first = session.get(url, timeout=30)
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=500"
    body = first.json()
    while True:
        pages += 1
        ids += [r["contactid"] for r in body["value"]]
        link = body.get("@odata.nextLink")
        if not link:
            break
        assert link.startswith(f"{sandbox.api}/contacts?") and "$skiptoken=%3Ccookie%20pagenumber=%22" in link
        body = session.get(link, timeout=30).json()
    assert pages >= 3 and len(ids) == len(set(ids)) >= 1200
    # a client that re-sends only the nextLink's query string (no Prefer) keeps the page size
    link = first.json()["@odata.nextLink"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
    again = sandbox.api_session().get(f"{sandbox.api}/contacts", params=params, timeout=30).json()
    assert len(again["value"]) == 500 and again["value"][0]["contactid"] == ids[500]
    ordered = session.get(f"{sandbox.api}/contacts?$select=lastname&$orderby=lastname desc", timeout=30).json()
    names = [r["lastname"] for r in ordered["value"]]
    assert names == sorted(names, reverse=True) and "@odata.nextLink" in ordered


def test_top_count_and_skip(sandbox: RunningSandbox) -> None:
    session = sandbox.api_session()
    top = session.get(f"{sandbox.api}/accounts?$select=name&$top=3&$count=true", timeout=30).json()
    assert len(top["value"]) == 3 and top["@odata.count"] >= 240 and "@odata.nextLink" not in top
    ignored = sandbox.api_session(Prefer="odata.maxpagesize=10").get(f"{sandbox.api}/accounts?$top=3", timeout=30)
    assert len(ignored.json()["value"]) == 10  # $top is ignored when a page size is preferred
    skip = session.get(f"{sandbox.api}/accounts?$skip=10", timeout=30)
    assert skip.status_code == 400 and skip.json()["error"]["code"] == "0x80060888"
    count = session.get(f"{sandbox.api}/contacts/$count", timeout=30)
    assert count.headers["Content-Type"].startswith("text/plain") and int(count.text) >= 1200


def test_filter_grammar(sandbox: RunningSandbox) -> None:
    session = sandbox.api_session()
    account = _create(session, sandbox, "accounts", {"name": "Filter Inc", "industrycode": 3})
    tag = uuid.uuid4().hex[:8]
    for first, last, extra in (("Seán", "O'Brien", {"creditlimit": 100.0, "birthdate": "1980-05-01"}),
                               ("Ann", "Smith", {"creditlimit": 5000.0, "birthdate": "1990-01-01"}),
                               ("Bob", "Jones", {"gendercode": 1})):
        _create(session, sandbox, "contacts", {"firstname": first, "lastname": last, "jobtitle": tag,
                                               "parentcustomerid_account@odata.bind": f"/accounts({account})",
                                               **extra})

    def names(expression: str) -> list[str]:
        response = session.get(f"{sandbox.api}/contacts", params={
            "$select": "lastname", "$filter": f"jobtitle eq '{tag}' and ({expression})", "$orderby": "lastname"},
            timeout=30)
        assert response.status_code == 200, (expression, response.text)
        return [r["lastname"] for r in response.json()["value"]]

    assert names("lastname eq 'O''Brien'") == ["O'Brien"]
    assert names("contains(lastname,'brie') or startswith(lastname,'SM')") == ["O'Brien", "Smith"]
    assert names("not endswith(lastname,'s') and creditlimit ne null") == ["O'Brien", "Smith"]
    assert names("creditlimit gt 100 or gendercode eq 1") == ["Jones", "Smith"]
    assert names("birthdate lt 1985-01-01") == ["O'Brien"]
    assert names(f"_parentcustomerid_value eq {account}") == ["Jones", "O'Brien", "Smith"]
    assert names("Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues=['Jones','Smith'])") == \
        ["Jones", "Smith"]
    assert names("Microsoft.Dynamics.CRM.Between(PropertyName='creditlimit',PropertyValues=['50','200'])") == \
        ["O'Brien"]
    assert names("Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue=1)") == \
        ["Jones", "O'Brien", "Smith"]
    assert names("modifiedon gt 2020-01-01T00:00:00.000Z and gendercode eq null") == ["O'Brien", "Smith"]
    for bad, fragment in (("lastname eq", "Syntax error"), ("nosuchcolumn eq 1", "nosuchcolumn"),
                          ("creditlimit eq 'abc'", "incompatible")):
        response = session.get(f"{sandbox.api}/contacts", params={"$filter": bad}, timeout=30)
        assert response.status_code == 400 and fragment in response.json()["error"]["message"], response.text


def test_select_expand_and_annotations(sandbox: RunningSandbox) -> None:
    session = sandbox.api_session()
    account = _create(session, sandbox, "accounts", {"name": "Expand Ltd", "industrycode": 7})
    contact = _create(session, sandbox, "contacts", {
        "lastname": "Expanded", "gendercode": 2, "crmsync_interests": "3,1", "donotemail": True,
        "parentcustomerid_account@odata.bind": f"accounts({account})"})
    url = f"{sandbox.api}/contacts({contact})?$select=lastname,gendercode,crmsync_interests,_parentcustomerid_value" \
          "&$expand=parentcustomerid_account($select=name,industrycode)"
    plain = session.get(url, timeout=30).json()
    assert plain["parentcustomerid_account"]["name"] == "Expand Ltd" and plain["crmsync_interests"] == "1,3"
    assert not any("@" in k and not k.startswith("@odata") for k in plain)
    rich = session.get(url, headers=ANNOTATIONS, timeout=30).json()
    assert rich["gendercode@OData.Community.Display.V1.FormattedValue"] == "Female"
    assert rich["crmsync_interests@OData.Community.Display.V1.FormattedValue"] == "Events; Product updates"
    assert rich["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    assert rich["_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == \
        "parentcustomerid_account"
    assert rich["_parentcustomerid_value@OData.Community.Display.V1.FormattedValue"] == "Expand Ltd"
    assert rich["@odata.etag"].startswith('W/"')
    bad = session.get(f"{sandbox.api}/contacts({contact})?$select=nosuch", timeout=30)
    assert bad.status_code == 400 and "Could not find a property named 'nosuch'" in bad.json()["error"]["message"]
    value = session.get(f"{sandbox.api}/contacts({contact})/lastname", timeout=30).json()
    assert value["value"] == "Expanded"


def test_conditional_writes_and_upsert_by_alternate_key(sandbox: RunningSandbox) -> None:
    session, key = sandbox.api_session(), f"ALT-{uuid.uuid4().hex[:8]}"
    by_key = f"{sandbox.api}/contacts(crmsync_campaignkey='{key}')"
    assert session.patch(by_key, json={"lastname": "Nobody"}, headers={"If-Match": "*"},
                         timeout=30).status_code == 404
    created = session.patch(by_key, json={"lastname": "Created"}, headers={"Prefer": "return=representation"},
                            timeout=30)
    assert created.status_code == 201 and created.json()["crmsync_campaignkey"] == key
    etag = created.json()["@odata.etag"]
    duplicate = session.patch(by_key, json={"lastname": "Again"}, headers={"If-None-Match": "*"}, timeout=30)
    assert duplicate.status_code == 412 and duplicate.json()["error"]["code"] == "0x80040237"
    assert session.patch(by_key, json={"lastname": "Updated"}, headers={"If-Match": etag},
                         timeout=30).status_code == 204
    stale = session.patch(by_key, json={"lastname": "Stale"}, headers={"If-Match": etag}, timeout=30)
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "0x80060882"
    record = session.get(by_key, timeout=30)
    assert record.json()["lastname"] == "Updated"
    assert session.get(by_key, headers={"If-None-Match": record.json()["@odata.etag"]}, timeout=30).status_code == 304
    clash = session.post(f"{sandbox.api}/contacts", json={"lastname": "Clash", "crmsync_campaignkey": key.lower()},
                         timeout=30)
    assert clash.status_code == 412 and clash.json()["error"]["code"] == "0x80040237"
    record_id = record.json()["contactid"]
    new_id = str(uuid.uuid4())
    upsert_id = session.patch(f"{sandbox.api}/contacts({new_id})", json={"lastname": "By id"}, timeout=30)
    assert upsert_id.status_code == 204 and upsert_id.headers["OData-EntityId"].endswith(f"({new_id})")
    assert session.delete(f"{sandbox.api}/contacts({record_id})", timeout=30).status_code == 204
    gone = session.delete(f"{sandbox.api}/contacts({record_id})", timeout=30)
    assert gone.status_code == 404 and gone.json()["error"] == {
        "code": "0x80040217", "message": f"contact With Id = {record_id} Does Not Exist"}


def test_write_validation_errors(sandbox: RunningSandbox) -> None:
    session = sandbox.api_session()
    cases = [({"lastname": "x", "nosuch": 1}, "0x80060888"), ({"lastname": "x" * 51}, "0x80044331"),
             ({"lastname": "x", "gendercode": 99}, "0x8004431a"), ({"lastname": "x", "numberofchildren": "two"},
                                                                   "0x80048d19"),
             ({"lastname": "x", "_parentcustomerid_value": str(uuid.uuid4())}, "0x80060888"),
             ({"lastname": "x", "parentcustomerid_account@odata.bind": f"/accounts({uuid.uuid4()})"}, "0x80040217"),
             ({"lastname": "x", "birthdate": "0001-01-01T00:30:00+01:00"}, "0x80048d19")]  # before year 1 in UTC
    for body, code in cases:
        response = session.post(f"{sandbox.api}/contacts", json=body, timeout=30)
        assert response.status_code in (400, 404) and response.json()["error"]["code"] == code, (body, response.text)


@pytest.mark.parametrize("expression", ["birthdate eq 2024-02-30", "modifiedon lt 2024-13-01T00:00:00Z",
                                        "modifiedon lt 0001-01-01T00:30:00+01:00", "birthdate eq '2024-02-30'"])
def test_an_impossible_date_in_a_filter_is_a_query_error(sandbox: RunningSandbox, expression: str) -> None:
    """The OData layer refuses the literal (400, 0x80060888, the literal named), never a server error."""
    response = sandbox.api_session().get(f"{sandbox.api}/contacts", params={"$filter": expression}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "0x80060888"


def test_bulk_actions(sandbox: RunningSandbox) -> None:
    session, tag = sandbox.api_session(), uuid.uuid4().hex[:8]
    kind = "Microsoft.Dynamics.CRM.account"
    created = session.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", timeout=30, json={
        "Targets": [{"@odata.type": kind, "name": f"{tag} {i}"} for i in range(3)]})
    ids = created.json()["Ids"]
    assert created.status_code == 200 and len(ids) == 3
    updated = session.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.UpdateMultiple", timeout=30, json={
        "Targets": [{"@odata.type": kind, "accountid": i, "telephone1": "555"} for i in ids]})
    assert updated.status_code == 204
    upserted = session.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.UpsertMultiple", timeout=30, json={
        "Targets": [{"@odata.type": kind, "@odata.id": f"accounts(crmsync_campaignkey='{tag}')", "name": "New"},
                    {"@odata.type": kind, "accountid": ids[0], "name": "Renamed"}]})
    assert [r["RecordCreated"] for r in upserted.json()["Results"]] == [True, False]
    atomic = session.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", timeout=30, json={
        "Targets": [{"@odata.type": kind, "name": f"{tag} atomic"}, {"@odata.type": kind, "nosuch": 1}]})
    assert atomic.status_code == 400
    left = session.get(f"{sandbox.api}/accounts", params={"$filter": f"name eq '{tag} atomic'"}, timeout=30)
    assert left.json()["value"] == []
    untyped = session.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", timeout=30,
                           json={"Targets": [{"name": "x"}]})
    assert untyped.status_code == 400 and "@odata.type" in untyped.json()["error"]["message"]


def test_change_tracking(admin_reset: RunningSandbox) -> None:
    sandbox = admin_reset
    session = sandbox.api_session(Prefer="odata.track-changes,odata.maxpagesize=5000")
    first = session.get(f"{sandbox.api}/accounts?$select=name,modifiedon", timeout=30)
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=5000,odata.track-changes"
    delta_link = first.json()["@odata.deltaLink"]
    assert "$deltatoken=" in delta_link
    plain = sandbox.api_session()
    changed = _create(plain, sandbox, "accounts", {"name": "Tracked new"})
    victim = first.json()["value"][0]["accountid"]
    plain.patch(f"{sandbox.api}/accounts({victim})", json={"telephone1": "123"}, timeout=30)
    fleeting = _create(plain, sandbox, "accounts", {"name": "Fleeting"})
    deleted = first.json()["value"][1]["accountid"]
    for record in (fleeting, deleted):
        assert plain.delete(f"{sandbox.api}/accounts({record})", timeout=30).status_code == 204
    delta = plain.get(delta_link, timeout=30).json()
    assert delta["@odata.context"].endswith("$metadata#accounts(name,modifiedon)/$delta")
    rows = [r for r in delta["value"] if "reason" not in r]
    removed = [r for r in delta["value"] if r.get("reason") == "deleted"]
    assert {r["accountid"] for r in rows} == {changed, victim}
    assert {r["id"] for r in removed} == {fleeting, deleted}  # created-then-deleted shows up as deleted
    assert all(r["@odata.context"].endswith("/$metadata#accounts/$deletedEntity") for r in removed)
    assert delta["value"].index(removed[0]) > delta["value"].index(rows[-1])  # deletions come last
    quiet = plain.get(delta["@odata.deltaLink"], timeout=30).json()
    assert quiet["value"] == [] and "@odata.deltaLink" in quiet
    token = parse_qs(urlsplit(delta["@odata.deltaLink"]).query)["$deltatoken"][0]
    assert plain.get(f"{sandbox.api}/accounts/$count", params={"$deltatoken": token}, timeout=30).text == "0"
    refused = session.get(f"{sandbox.api}/accounts?$filter=name eq 'x'", timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["message"] == \
        'The "$filter" query parameter isn\'t supported when Change Tracking is enabled.'
    sandbox.admin("change-tracking", {"expire_days": 1})
    sandbox.admin("clock", {"offset_seconds": 2 * 86400})
    plain = sandbox.api_session()  # two days later the old access token has expired too
    expired = plain.get(f"{sandbox.api}/accounts", params={"$deltatoken": token}, timeout=30)
    assert expired.status_code == 400 and "expired" in expired.json()["error"]["message"]
    assert plain.get(f"{sandbox.api}/accounts", params={"$deltatoken": "None"}, timeout=30).status_code == 400


def test_change_tracking_pages_deliver_the_delta_link_last(sandbox: RunningSandbox) -> None:
    session = sandbox.api_session(Prefer="odata.track-changes,odata.maxpagesize=100")
    body, pages = session.get(f"{sandbox.api}/accounts?$select=name", timeout=30).json(), 1
    while "@odata.nextLink" in body:
        assert "@odata.deltaLink" not in body
        body, pages = session.get(body["@odata.nextLink"], timeout=30).json(), pages + 1
    assert pages >= 3 and "@odata.deltaLink" in body


def _batch_body(boundary: str, parts: list[str], newline: str = "\r\n") -> str:
    return "".join(f"--{boundary}{newline}{p}" for p in parts) + f"--{boundary}--{newline}"


def _http_part(method: str, url: str, body: str | None = None, content_id: str | None = None,
               newline: str = "\r\n") -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"{method} {url} HTTP/1.1"]
    if body is not None:
        lines += ["Content-Type: application/json; type=entry", "", body]
    else:
        lines += [""]
    return newline.join(lines) + newline


def test_batch_change_sets_references_and_order(sandbox: RunningSandbox) -> None:
    session, tag = sandbox.api_session(), uuid.uuid4().hex[:8]
    change_set = _batch_body("changeset_1", [
        _http_part("POST", f"{sandbox.api}/accounts", f'{{"name": "{tag} parent"}}', "1"),
        _http_part("POST", "/api/data/v9.2/contacts",
                   f'{{"lastname": "{tag}", "parentcustomerid_account@odata.bind": "$1"}}', "2"),
        _http_part("PATCH", "$1", '{"telephone1": "42"}', "3")])
    body = _batch_body("batch_A", [
        _http_part("GET", "accounts?$select=name&$top=1"),
        f"Content-Type: multipart/mixed; boundary=changeset_1\r\n\r\n{change_set}",
        _http_part("GET", f"contacts?$filter=lastname eq '{tag}'&$select=_parentcustomerid_value")])
    response = session.post(f"{sandbox.api}/$batch", data=body.encode(), timeout=30,
                            headers={"Content-Type": "multipart/mixed; boundary=batch_A"})
    assert response.status_code == 200
    text = response.text
    assert response.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    statuses = [line for line in text.split("\r\n") if line.startswith("HTTP/1.1 ")]
    assert statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 204 No Content", "HTTP/1.1 204 No Content",
                        "HTTP/1.1 204 No Content", "HTTP/1.1 200 OK"]
    assert "changesetresponse_" in text and "Content-ID: 2" in text
    last = text.rsplit("HTTP/1.1 200 OK", 1)[1]
    assert '"_parentcustomerid_value":"' in last  # the $1 reference was bound inside the change set


def test_batch_failures_roll_back_and_limits(sandbox: RunningSandbox) -> None:
    session, tag = sandbox.api_session(), uuid.uuid4().hex[:8]
    change_set = _batch_body("cs", [_http_part("POST", "accounts", f'{{"name": "{tag}"}}', "1", "\n"),
                                    _http_part("POST", "accounts", '{"nosuch": 1}', "2", "\n")], "\n")
    body = _batch_body("b", [f"Content-Type: multipart/mixed; boundary=cs\n\n{change_set}",
                             _http_part("POST", "accounts", f'{{"name": "{tag} later"}}', None, "\n")], "\n")
    stop = session.post(f"{sandbox.api}/$batch", data=body.encode(), timeout=30,
                        headers={"Content-Type": "multipart/mixed;boundary=b"})
    assert stop.status_code == 200 and stop.text.count("HTTP/1.1 ") == 1 and "HTTP/1.1 400 Bad Request" in stop.text
    go_on = session.post(f"{sandbox.api}/$batch", data=body.encode(), timeout=30, headers={
        "Content-Type": "multipart/mixed;boundary=b", "Prefer": "odata.continue-on-error"})
    assert go_on.text.count("HTTP/1.1 ") == 2 and "HTTP/1.1 204 No Content" in go_on.text
    names = session.get(f"{sandbox.api}/accounts", params={"$filter": f"startswith(name,'{tag}')",
                                                            "$select": "name"}, timeout=30).json()["value"]
    assert [n["name"] for n in names] == [f"{tag} later"]  # the failed change set left nothing behind
    too_many = _batch_body("big", [_http_part("GET", "WhoAmI")] * 1001)
    refused = session.post(f"{sandbox.api}/$batch", data=too_many.encode(), timeout=60,
                           headers={"Content-Type": "multipart/mixed; boundary=big"})
    assert refused.status_code == 400 and "1000" in refused.json()["error"]["message"]


def test_metadata(sandbox: RunningSandbox) -> None:
    session, api = sandbox.api_session(), sandbox.api
    found = session.get(f"{api}/EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute"
                        "&$filter=LogicalName eq 'account'", timeout=30).json()
    assert [(e["LogicalName"], e["EntitySetName"]) for e in found["value"]] == [("account", "accounts")]
    tracked = session.get(f"{api}/EntityDefinitions?$select=LogicalName&$filter=ChangeTrackingEnabled eq true and "
                          "CanChangeTrackingBeEnabled/Value eq true and OwnershipType eq "
                          "Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'", timeout=30).json()
    assert {"account", "contact", "lead", "opportunity"} == {e["LogicalName"] for e in tracked["value"]}
    single = session.get(f"{api}/EntityDefinitions(LogicalName='contact')?$select=EntitySetName"
                         "&$expand=Attributes($select=LogicalName,AttributeType;$filter=AttributeType eq "
                         "Microsoft.Dynamics.CRM.AttributeTypeCode'Customer')", timeout=30).json()
    assert single["EntitySetName"] == "contacts" and "value" not in single and single["MetadataId"]
    assert [a["LogicalName"] for a in single["Attributes"]] == ["parentcustomerid"]
    picklists = session.get(f"{api}/EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM."
                            "PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet($select=Options),"
                            "GlobalOptionSet($select=Name)", timeout=30).json()["value"]
    industry = next(p for p in picklists if p["LogicalName"] == "industrycode")
    assert industry["GlobalOptionSet"]["Name"] == "industrycode"
    assert industry["OptionSet"]["Options"][0]["Label"]["UserLocalizedLabel"]["Label"] == "Accounting"
    customer = next(p for p in picklists if p["LogicalName"] == "customertypecode")
    assert customer["GlobalOptionSet"] is None and customer["OptionSet"]["Options"]
    multi = session.get(f"{api}/EntityDefinitions(LogicalName='contact')/Attributes/Microsoft.Dynamics.CRM."
                        "MultiSelectPicklistAttributeMetadata?$expand=OptionSet", timeout=30).json()["value"]
    assert multi[0]["AttributeType"] == "Virtual" and multi[0]["AttributeTypeName"]["Value"] == \
        "MultiSelectPicklistType"
    dates = session.get(f"{api}/EntityDefinitions(LogicalName='contact')/Attributes/Microsoft.Dynamics.CRM."
                        "DateTimeAttributeMetadata?$select=LogicalName,DateTimeBehavior", timeout=30).json()["value"]
    behaviors = {d["LogicalName"]: d["DateTimeBehavior"]["Value"] for d in dates}
    assert behaviors["birthdate"] == "DateOnly" and behaviors["modifiedon"] == "UserLocal"
    lookup = session.get(f"{api}/EntityDefinitions(LogicalName='contact')/Attributes(LogicalName='parentcustomerid')"
                         "/Microsoft.Dynamics.CRM.LookupAttributeMetadata?$select=Targets", timeout=30).json()
    assert lookup["Targets"] == ["account", "contact"]
    money = session.get(f"{api}/EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM."
                        "MoneyAttributeMetadata?$select=LogicalName,Precision", timeout=30).json()["value"]
    assert {"revenue"} <= {m["LogicalName"] for m in money}
    status = session.get(f"{api}/EntityDefinitions(LogicalName='opportunity')/Attributes/Microsoft.Dynamics.CRM."
                         "StatusAttributeMetadata?$expand=OptionSet", timeout=30).json()["value"][0]
    assert {o["Value"]: o["State"] for o in status["OptionSet"]["Options"]}[3] == 1
    keys = session.get(f"{api}/EntityDefinitions(LogicalName='opportunity')/Keys", timeout=30).json()["value"]
    assert keys[0]["KeyAttributes"] == ["crmsync_campaignkey"]
    global_set = session.get(f"{api}/GlobalOptionSetDefinitions(Name='industrycode')", timeout=30).json()
    assert global_set["IsGlobal"] is True and len(global_set["Options"]) == 33
    uncast = session.get(f"{api}/EntityDefinitions(LogicalName='account')/Attributes?$expand=OptionSet", timeout=30)
    assert uncast.status_code == 400
    missing = session.get(f"{api}/EntityDefinitions(LogicalName='nosuch')", timeout=30)
    assert missing.status_code == 404


def test_service_protection_limits(admin_reset: RunningSandbox) -> None:
    sandbox = admin_reset
    session = sandbox.api_session()
    sandbox.admin("limits", {"requests_per_window": 3, "reset": True})
    remaining = [session.get(f"{sandbox.api}/WhoAmI", timeout=30).headers[
        "x-ms-ratelimit-burst-remaining-xrm-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    refused = session.get(f"{sandbox.api}/WhoAmI", timeout=30)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "0x80072322"
    sandbox.admin("clock", {"offset_seconds": 301})  # the window slides past those requests
    assert session.get(f"{sandbox.api}/WhoAmI", timeout=30).status_code == 200
    sandbox.admin("limits", {"requests_per_window": 6000, "execution_seconds_per_window": 0.5, "reset": True})
    sandbox.admin("faults", {"slow_probability": 1, "slow_seconds": 0.6})
    assert session.get(f"{sandbox.api}/WhoAmI", timeout=30).status_code == 200
    slow = session.get(f"{sandbox.api}/WhoAmI", timeout=30)
    assert slow.status_code == 429 and slow.json()["error"]["code"] == "0x80072321"
    sandbox.admin("limits", {"execution_seconds_per_window": 1200, "max_concurrent_requests": 2, "reset": True})
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: sandbox.api_session().get(f"{sandbox.api}/WhoAmI", timeout=30), range(6)))
    codes = [r.json()["error"]["code"] for r in statuses if r.status_code == 429]
    assert "0x80072326" in codes and any(r.status_code == 200 for r in statuses)


def test_faults_are_seeded_and_counted(admin_reset: RunningSandbox) -> None:
    sandbox = admin_reset
    session = sandbox.api_session()
    sandbox.admin("faults", {"unavailable_503": 0.5, "seed": 7})
    first = [session.get(f"{sandbox.api}/WhoAmI", timeout=30).status_code for _ in range(12)]
    sandbox.admin("faults", {"unavailable_503": 0.5, "seed": 7})
    second = [session.get(f"{sandbox.api}/WhoAmI", timeout=30).status_code for _ in range(12)]
    assert first == second and 503 in first and 200 in first
    sandbox.admin("faults", {"throttle_429": 1})
    throttled = session.get(f"{sandbox.api}/WhoAmI", timeout=30)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    sandbox.admin("faults", {"token_expiry": 1})
    assert session.get(f"{sandbox.api}/WhoAmI", timeout=30).status_code == 401
    sandbox.admin("faults", {})
    assert session.get(f"{sandbox.api}/WhoAmI", timeout=30).status_code == 401  # the token stays expired
    assert sandbox.api_session().get(f"{sandbox.api}/WhoAmI", timeout=30).status_code == 200
    stats = sandbox.admin("stats")
    assert stats["faults_injected"]["token_expiry"] == 1 and stats["requests"]["GET WhoAmI"] > 0
    assert stats["writes"]["contacts"]["create"] > 0
    assert sandbox.session().get(f"{sandbox.base_url}/__sandbox/stats", timeout=30).status_code == 403


def test_state_and_tokens_survive_a_restart(start_sandbox) -> None:
    sandbox = start_sandbox(seed_contacts=10)
    session = sandbox.api_session()
    record = _create(session, sandbox, "contacts", {"lastname": "Persistent"})
    sandbox.stop()
    again = start_sandbox(seed_contacts=10)
    assert again.state_dir == sandbox.state_dir and "seeding skipped" in again.log_path.read_text()
    session.headers["Authorization"] = session.headers["Authorization"]  # the token minted before the restart
    session.verify = str(again.ca_path)
    response = session.get(f"{again.api}/contacts({record})?$select=lastname", timeout=30)
    assert response.status_code == 200 and response.json()["lastname"] == "Persistent"
    assert int(session.get(f"{again.api}/contacts/$count", timeout=30).text) == 11


def test_seeding_100k_contacts_takes_under_a_minute(start_sandbox) -> None:
    started = time.monotonic()
    sandbox = start_sandbox("big", seed_contacts=100_000, timeout=180)
    elapsed = time.monotonic() - started
    note = next(line for line in sandbox.log_path.read_text().splitlines() if line.startswith("seeded"))
    assert note.startswith("seeded 100000 contacts and 20000 accounts") and elapsed < 60, (note, elapsed)
    session = sandbox.api_session()
    last = session.get(f"{sandbox.api}/contacts?$filter=crmsync_campaignkey eq 'CK-00100000'&$select=fullname",
                       timeout=30).json()["value"]
    assert len(last) == 1
    page = sandbox.api_session(Prefer="odata.maxpagesize=5000").get(f"{sandbox.api}/contacts?$select=fullname",
                                                                     timeout=60)
    assert len(page.json()["value"]) == 5000 and "@odata.nextLink" in page.json()


def test_wildcards_audit_log_tracking_switch_and_held_clock(sandbox: RunningSandbox,
                                                           admin_reset: RunningSandbox) -> None:
    session, api, tag = sandbox.api_session(), sandbox.api, uuid.uuid4().hex[:6]
    for name in (f"{tag} 50%_off", f"{tag} 5000ff", f"{tag} [x]"):
        _create(session, sandbox, "accounts", {"name": name})

    def names(condition: str) -> list[str]:
        rows = session.get(f"{api}/accounts", params={"$select": "name", "$filter": condition}, timeout=30)
        assert rows.status_code == 200, rows.text
        return sorted(r["name"][len(tag) + 1:] for r in rows.json()["value"])

    assert names(f"startswith(name,'{tag} 50%')") == ["50%_off", "5000ff"]  # % is a wildcard
    assert names(f"startswith(name,'{tag} 50[%]')") == ["50%_off"]  # [%] is a literal %
    assert names(f"contains(name,'{tag} 5_0')") == ["5000ff"]
    assert names(f"endswith(name,'[[]x]')") == ["[x]"]

    gone = _create(session, sandbox, "contacts", {"lastname": "Audited"})
    assert session.delete(f"{api}/contacts({gone})", timeout=30).status_code == 204
    audit = session.get(f"{api}/audits", params={"$filter": f"_objectid_value eq {gone} and operation eq 3",
                                                 "$select": "objecttypecode,createdon"}, timeout=30).json()
    assert [(a["objecttypecode"], a["createdon"][-1]) for a in audit["value"]] == [("contact", "Z")]
    refused = session.post(f"{api}/audits", json={"objecttypecode": "contact"}, timeout=30)
    assert refused.status_code == 405 and refused.json()["error"]["code"] == "0x80060374"

    sandbox.admin("change-tracking", {"tables": {"lead": False}})
    try:
        lead = session.get(f"{api}/EntityDefinitions(LogicalName='lead')?$select=ChangeTrackingEnabled",
                           timeout=30).json()
        tracked = session.get(f"{api}/leads", headers={"Prefer": "odata.track-changes"}, timeout=30)
        assert lead["ChangeTrackingEnabled"] is False and tracked.status_code == 400
    finally:
        sandbox.admin("change-tracking", {"tables": {"lead": True}})

    held = sandbox.admin("clock", {"frozen": True})
    try:
        first = _create(session, sandbox, "leads", {"subject": "Held", "lastname": "A"})
        time.sleep(1.1)
        second = _create(session, sandbox, "leads", {"subject": "Held", "lastname": "B"})
        stamps = {session.get(f"{api}/leads({i})?$select=modifiedon", timeout=30).json()["modifiedon"]
                  for i in (first, second)}
        assert held["frozen"] and len(stamps) == 1
    finally:
        sandbox.admin("clock", {"frozen": False})
