"""The sandbox's Web Services v2.0 over real HTTPS: sign-in (stateful and stateless), QueryPage, batched writes
with status keys, all-or-nothing batches, Execute, InsertOrUpdate, Echo, DeletedItemQueryPage and SOAP faults."""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from typing import Any

import httpx

from tests.sandbox_oracle.conftest import REST, RunningOracle

SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"
CONTACT_NS = "urn:crmondemand/ws/ecbs/contact/"


def unique() -> str:
    return uuid.uuid4().hex[:10].upper()


def body_of(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    return ET.fromstring(response.content).find(f"{SOAP}Body")[0]  # type: ignore[index]


def fault_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 500, response.text
    fault = ET.fromstring(response.content).find(f"{SOAP}Body/{SOAP}Fault")
    assert fault is not None
    return {"faultstring": fault.findtext("faultstring") or "",
            "code": fault.findtext(".//{*}errorcode") or fault.findtext(".//ErrorCode") or "",
            "symbol": fault.findtext(".//{*}errorsymbol") or "", "log": fault.findtext(".//{*}logfilename") or ""}


def records(element: ET.Element, record_type: str = "Contact") -> list[dict[str, str]]:
    listing = next(c for c in element if c.tag.endswith(f"ListOf{record_type}"))
    return [{c.tag.split("}")[-1]: c.text or "" for c in r} for r in listing]


def contact_call(method: str, inner: str, extra: str = "") -> str:
    return (f'<Contact{method}_Input xmlns="{CONTACT_NS}"><ListOfContact>{inner}</ListOfContact>{extra}'
            f"</Contact{method}_Input>")


def contact(**fields: str) -> str:
    return "<Contact>" + "".join(f"<{k}>{v}</{k}>" for k, v in fields.items()) + "</Contact>"


def query(oracle: RunningOracle, template: str, listing_attrs: str = "", spec: str = "") -> httpx.Response:
    return oracle.soap(f'<ContactQueryPage_Input xmlns="{CONTACT_NS}"><ListOfContact {listing_attrs}>'
                       f"<Contact{spec}>{template}</Contact></ListOfContact></ContactQueryPage_Input>")


# ---------------------------------------------------------------- sessions


def test_stateful_login_and_logoff(oracle: RunningOracle) -> None:
    with oracle.http() as client:
        login = client.get("/Services/Integration", params={"command": "login"},
                           headers={"UserName": oracle.credentials.username, "Password": oracle.credentials.password})
        assert login.status_code == 200 and login.cookies["JSESSIONID"]
        session = login.cookies["JSESSIONID"]
        page = oracle.soap(contact_call("QueryPage", contact(Id="")), client=client)
        assert len(records(body_of(page))) == 10, "pagesize defaults to 10"
        with oracle.http() as cookieless:
            by_url = cookieless.post(f"/Services/Integration;jsessionid={session}", content=page.request.content)
            assert "cookie" not in by_url.request.headers
        assert by_url.status_code == 200, "the session id may also travel as a URL parameter"
        assert client.get("/Services/Integration", params={"command": "logoff"}).status_code == 200
        gone = oracle.soap(contact_call("QueryPage", contact(Id="")), client=client)
    assert fault_of(gone)["code"] == "SBL-ODU-01006"
    assert "Session is not available" in fault_of(gone)["faultstring"]


def test_login_with_encoded_headers_and_wrong_password(oracle: RunningOracle) -> None:
    with oracle.http() as client:
        encoded = client.get("/Services/Integration", params={"command": "login", "isEncoded": "Y"},
                             headers={"UserName": oracle.credentials.username.replace("/", "%2F"),
                                      "Password": oracle.credentials.password})
        assert encoded.status_code == 200
        refused = client.get("/Services/Integration", params={"command": "login"},
                             headers={"UserName": oracle.credentials.username, "Password": "nope"})
        assert refused.status_code == 401 and "SBL-ODU-01003" in refused.text
        assert client.get("/Services/Integration", params={"command": "Login"}).status_code == 404, \
            "the command value is case-sensitive"


def test_stateless_and_draft_namespace_security_headers(oracle: RunningOracle) -> None:
    assert body_of(oracle.soap(contact_call("QueryPage", contact(Id=""))))
    draft = ('<wsse:Security xmlns:wsse="http://schemas.xmlsoap.org/ws/2002/04/secext"><wsse:UsernameToken>'
             f"<wsse:Username>{oracle.credentials.username}</wsse:Username><wsse:Password>"
             f"{oracle.credentials.password}</wsse:Password></wsse:UsernameToken></wsse:Security>")
    stateful = oracle.soap(contact_call("QueryPage", contact(Id="")), header=draft)
    assert stateful.status_code == 200 and stateful.cookies.get("JSESSIONID"), "draft namespace signs in statefully"
    bad = oracle.soap(contact_call("QueryPage", contact(Id="")), header=draft.replace(
        oracle.credentials.password, "wrong"))
    assert fault_of(bad)["code"] == "SBL-ODU-01003"
    anonymous = oracle.soap(contact_call("QueryPage", contact(Id="")), header="<x/>")
    assert fault_of(anonymous)["code"] == "SBL-ODU-01006"


# ---------------------------------------------------------------- QueryPage


def test_query_page_paging_sorting_and_counting(oracle: RunningOracle) -> None:
    template = '<Id/><ExternalSystemId sortorder="ASC" sortsequence="1"/><ModifiedDate/>'
    first = body_of(query(oracle, template + "<ContactLastName>LIKE 'S*'</ContactLastName>",
                          'pagesize="100" startrownum="0" recordcountneeded="true"'))
    listing = first[0]
    total = int(listing.get("recordcount", "0"))
    assert listing.get("lastpage") == "false" and total > 100
    rows = records(first)
    keys = [r["ExternalSystemId"] for r in rows]
    assert keys == sorted(keys) and set(rows[0]) == {"Id", "ExternalSystemId", "ModifiedDate", "ContactLastName"}
    start, seen = 100, list(keys)
    while True:
        page = body_of(query(oracle, template + "<ContactLastName>LIKE 'S*'</ContactLastName>",
                             f'pagesize="100" startrownum="{start}"'))
        seen += [r["ExternalSystemId"] for r in records(page)]
        start += 100
        if page[0].get("lastpage") == "true":
            break
    assert len(seen) == len(set(seen)) == total
    newest = records(body_of(query(oracle, '<Id/><ModifiedDate sortorder="DESC"/>', 'pagesize="5"')))
    stamps = [r["ModifiedDate"] for r in newest]
    assert stamps == sorted(stamps, reverse=True) and all(s.endswith("Z") for s in stamps)


def test_query_page_expressions(oracle: RunningOracle) -> None:
    tag = unique()
    inserted = body_of(oracle.soap(contact_call("Insert", "".join([
        contact(ContactFirstName="Ann", ContactLastName=f"O'Neil {tag}", ExternalSystemId=f"A{tag}",
                CustomNumber0="5"),
        contact(ContactFirstName="bob", ContactLastName=f"Q?{tag}", ExternalSystemId=f"B{tag}",
                CustomNumber0="50", JobTitle="CTO"),
        contact(ContactFirstName="Cid", ContactLastName=f"Plain {tag}", ExternalSystemId=f"C{tag}")]))))
    ids = [r["Id"] for r in records(inserted)]

    def matching(field_query: str, spec: str = "") -> list[str]:
        return [r["Id"] for r in records(body_of(query(oracle, f"<Id/>{field_query}", spec=spec)))]

    assert matching(f"<ExternalSystemId>= 'A{tag}' OR = 'C{tag}'</ExternalSystemId>") == [ids[0], ids[2]]
    assert matching(f"<ContactLastName>= 'O''Neil {tag}'</ContactLastName>") == [ids[0]], "quotes are doubled"
    assert matching(f"<ContactLastName>LIKE 'Q\\?{tag}'</ContactLastName>") == [ids[1]], "\\? is a literal ?"
    assert matching(f"<ExternalSystemId>LIKE '?{tag}'</ExternalSystemId><ContactFirstName>~= 'BOB'"
                    "</ContactFirstName>") == [ids[1]], "? is one character, ~= ignores case"
    assert matching(f"<ExternalSystemId>LIKE '*{tag}'</ExternalSystemId><JobTitle>IS NULL</JobTitle>"
                    "<CustomNumber0>IS NOT NULL</CustomNumber0>") == [ids[0]]
    assert matching(f"<ExternalSystemId>~LIKE '*{tag.lower()}'</ExternalSystemId>"
                    "<CustomNumber0>(&gt;= 1 AND &lt; 10) OR &gt; 40</CustomNumber0>") == [ids[0], ids[1]]
    assert matching(f"<ExternalSystemId>B{tag}</ExternalSystemId>") == [ids[1]], "bare text means ="
    spec = f" searchspec=\"([ExternalSystemId] LIKE '*{tag}') AND ([ContactFirstName] = 'Cid' OR " \
           "[ContactFirstName] = 'Ann')\""
    assert matching("", spec=spec) == [ids[0], ids[2]]


def test_query_page_datetime_forms(oracle: RunningOracle) -> None:
    tag = unique()
    body_of(oracle.soap(contact_call("Insert", contact(ContactFirstName="T", ContactLastName=tag,
                                                       CustomDateTime0="2024-07-01T16:00:00Z"))))

    def hits(expression: str) -> int:
        return len(records(body_of(query(oracle, f"<Id/><ContactLastName>= '{tag}'</ContactLastName>"
                                                 f"<CustomDateTime0>{expression}</CustomDateTime0>"))))

    assert hits("= '2024-07-01T16:00:00Z'") == 1
    assert hits("= '2024-07-01T09:00:00-07:00'") == 1
    assert hits("= '07/01/2024 09:00:00'") == 1, "the locale form is the user's local time"
    assert hits("&gt; '2024-07-01T16:00:00Z'") == 0


def test_a_datetime_before_year_1_in_utc_is_refused_as_a_bad_value(oracle: RunningOracle) -> None:
    """0001-01-01T00:30:00+01:00 is a valid-looking XSD dateTime that lies before year 1 once in UTC: the
    field's value error (SBL-DAT-00359), like any other value that is no datetime — never a server error."""
    fault = fault_of(oracle.soap(contact_call("Insert", contact(ContactFirstName="T", ContactLastName=unique(),
                                                                CustomDateTime0="0001-01-01T00:30:00+01:00"))))
    assert fault["code"] == "SBL-DAT-00359", fault


def test_query_page_errors(oracle: RunningOracle, levers: Any) -> None:
    assert fault_of(query(oracle, "<Nope/>"))["code"] == "SBL-EAI-04127"
    assert fault_of(query(oracle, "<ContactLastName>= 'open</ContactLastName>"))["code"] == "SBL-ODS-00125"
    assert fault_of(oracle.soap("<Nonsense_Input/>"))["code"] == "SBL-EAI-04113"
    levers(sort_or_filter=True)
    both = query(oracle, "<Id sortorder=\"ASC\"/><ContactLastName>LIKE 'S*'</ContactLastName>")
    assert fault_of(both)["code"] == "SBL-ODS-00127"


# ---------------------------------------------------------------- writes


def test_insert_update_delete_with_status_keys(oracle: RunningOracle) -> None:
    tag = unique()
    inserted = records(body_of(oracle.soap(contact_call("Insert", contact(
        ContactFirstName="Wes", ContactLastName=tag, ExternalSystemId=f"W{tag}")))))
    assert list(inserted[0]) == ["Id", "ExternalSystemId", "IntegrationId", "CreatedDate", "ModifiedDate"]
    record_id = inserted[0]["Id"]
    updated = records(body_of(oracle.soap(contact_call("Update", contact(ExternalSystemId=f"W{tag}",
                                                                         JobTitle="Boss")))))
    assert updated[0]["Id"] == record_id
    with oracle.rest() as client:
        assert client.get(f"{REST}/Contacts/{record_id}", params={"fields": "JobTitle"}).json()[
            "Contacts"][0]["JobTitle"] == "Boss"
    deleted = records(body_of(oracle.soap(contact_call("Delete", contact(Id=record_id)))))
    assert deleted[0]["Id"] == record_id
    missing = oracle.soap(contact_call("Delete", contact(Id=record_id)))
    assert fault_of(missing)["code"] == "SBL-EAI-04378"


def test_a_batch_is_all_or_nothing(oracle: RunningOracle) -> None:
    tag = unique()
    batch = contact(ContactFirstName="Ok", ContactLastName=tag, ExternalSystemId=f"OK{tag}") + \
        contact(ContactFirstName="Bad", ContactLastName=tag, LeadSource="NOT-A-SOURCE")
    fault = fault_of(oracle.soap(contact_call("Insert", batch)))
    assert fault["code"] == "SBL-DAT-00225" and fault["symbol"] == "IDS_ERR_FS_BOUNDED_PICKLIST"
    assert fault["log"].startswith("OnDemandServicesObjMgr_") and fault["log"].endswith(".log")
    assert records(body_of(query(oracle, f"<Id/><ContactLastName>= '{tag}'</ContactLastName>"))) == []


def test_first_record_decides_the_user_key(oracle: RunningOracle) -> None:
    batch = contact(ExternalSystemId="CK-00000001", JobTitle="X") + contact(Id="1SBX-100005", JobTitle="Y")
    assert fault_of(oracle.soap(contact_call("Update", batch)))["code"] == "SBL-EAI-04390"
    assert fault_of(oracle.soap(contact_call("Update", contact(JobTitle="no key"))))["code"] == "SBL-EAI-04397"


def test_execute_operations(oracle: RunningOracle) -> None:
    tag = unique()
    seeded = records(body_of(oracle.soap(contact_call("Insert", contact(
        ContactFirstName="Ex", ContactLastName=tag, ExternalSystemId=f"E{tag}")))))[0]["Id"]
    batch = (f'<Contact operation="update"><Id>{seeded}</Id><JobTitle>Exec</JobTitle></Contact>'
             f'<Contact operation="insert"><ContactFirstName>New</ContactFirstName><ContactLastName>{tag}'
             "</ContactLastName></Contact>"
             f'<Contact operation="skipnode"><Id>{seeded}</Id></Contact>')
    out = body_of(oracle.soap(contact_call("Execute", batch)))
    operations = [r.get("operation") for r in out[0]]
    assert operations == ["update", "insert", "skipnode"]
    invalid = oracle.soap(contact_call("Execute", f'<Contact operation="DELETES"><Id>{seeded}</Id></Contact>'))
    assert fault_of(invalid)["code"] == "SBL-EAI-04009"


def test_insert_or_update_and_its_switch(oracle: RunningOracle, levers: Any) -> None:
    tag = unique()
    batch = contact(ExternalSystemId="CK-00000002", JobTitle=f"Upserted {tag}") + \
        contact(ExternalSystemId=f"U{tag}", ContactFirstName="New", ContactLastName=tag)
    out = body_of(oracle.soap(contact_call("InsertOrUpdate", batch)))
    assert [r.get("operation") for r in out[0]] == ["update", "insert"]
    levers(ws_v2_insert_or_update=False)
    refused = oracle.soap(contact_call("InsertOrUpdate", batch))
    assert fault_of(refused)["code"] == "SBL-EAI-04113"


def test_echo_off_records_no_integration_event(oracle: RunningOracle) -> None:
    before = oracle.admin("stats")["integration_events"].get("Contact insert", 0)
    oracle.soap(contact_call("Insert", contact(ContactFirstName="E", ContactLastName="Off"), "<Echo>Off</Echo>"))
    assert oracle.admin("stats")["integration_events"].get("Contact insert", 0) == before
    oracle.soap(contact_call("Insert", contact(ContactFirstName="E", ContactLastName="On"), "<Echo>On</Echo>"))
    assert oracle.admin("stats")["integration_events"]["Contact insert"] == before + 1
    assert oracle.admin("stats")["echo_off_writes"] >= 1


def test_users_are_read_only(oracle: RunningOracle) -> None:
    users = oracle.soap('<UserQueryPage_Input xmlns="urn:crmondemand/ws/ecbs/user/"><ListOfUser><User><Id/>'
                        "<UserLoginId/><TimeZoneName/></User></ListOfUser></UserQueryPage_Input>")
    row = records(body_of(users), "User")[0]
    assert row["UserLoginId"] == oracle.credentials.username
    assert row["TimeZoneName"].endswith("America/Los_Angeles")
    insert = oracle.soap('<UserInsert_Input xmlns="urn:crmondemand/ws/ecbs/user/"><ListOfUser><User>'
                         "<FirstName>A</FirstName></User></ListOfUser></UserInsert_Input>")
    assert fault_of(insert)["code"] == "SBL-EAI-04113"


# ---------------------------------------------------------------- DeletedItemQueryPage


def deleted_items(oracle: RunningOracle, filters: str = "", page_size: int = 100, start: int = 0) \
        -> tuple[list[dict[str, str]], bool]:
    template = "".join(f"<{f}/>" for f in ("DeletedItemId", "DeletedDate", "Name", "ObjectId", "ExternalSystemId"))
    response = oracle.soap('<DeletedItemWS_DeletedItemQueryPage_Input xmlns="urn:crmondemand/ws/deleteditem/">'
                           f"<ListOfDeletedItem><DeletedItem>{template}{filters}</DeletedItem></ListOfDeletedItem>"
                           f"<PageSize>{page_size}</PageSize><StartRowNum>{start}</StartRowNum>"
                           "</DeletedItemWS_DeletedItemQueryPage_Input>")
    body = body_of(response)
    listing = next(c for c in body if c.tag.endswith("ListOfDeletedItem"))
    rows = [{c.tag.split("}")[-1]: c.text or "" for c in r} for r in listing]
    return rows, (body.findtext("{*}LastPage") or "") == "true"


def test_deleted_item_query_page(oracle: RunningOracle) -> None:
    tag = unique()
    before = oracle.admin("stats")["offset_seconds"]
    ids = []
    try:
        for hour, name in ((8, "first"), (9, "second"), (10, "third")):
            oracle.admin("clock", {"at": f"2030-01-15T{hour:02d}:00:00Z"})
            with oracle.rest() as client:
                location = client.post(f"{REST}/Contacts", json={"Contacts": [{
                    "ContactFirstName": name, "ContactLastName": tag, "ExternalSystemId": f"D{hour}{tag}"}]}
                ).headers["location"]
                ids.append(location.rsplit("/", 1)[-1])
                assert client.delete(location).status_code == 204
        oracle.admin("clock", {"at": "2030-01-15T11:00:00Z"})
        rows, last = deleted_items(oracle, "<Type>='Contact'</Type><DeletedDate>&gt;= '01/15/2030 00:00:00'"
                                           "</DeletedDate>")
        mine = [r for r in rows if r["ExternalSystemId"].endswith(tag)]
        assert [r["ObjectId"] for r in mine] == ids, "sorted by DeletedDate"
        assert [r["DeletedDate"][:16] for r in mine] == ["01/15/2030 00:00", "01/15/2030 01:00",
                                                         "01/15/2030 02:00"], "v1.0 form, user's time (PST)"
        assert mine[0]["Name"] == f"first {tag}" and last
        page, more = deleted_items(oracle, "<DeletedDate>&gt;= '2030-01-15T09:00:00Z'</DeletedDate>", page_size=1)
        assert [r["ObjectId"] for r in page] == [ids[1]] and not more
        oracle.admin("undelete", {"ids": [ids[0]]})
        with oracle.rest() as client:
            assert client.get(f"{REST}/Contacts/{ids[0]}").status_code == 200
    finally:
        oracle.admin("clock", {"offset_seconds": before})


def test_deleted_items_are_purged_after_the_retention_period(oracle: RunningOracle) -> None:
    before = oracle.admin("stats")["offset_seconds"]
    tag = unique()
    try:
        oracle.admin("clock", {"at": "2031-03-01T12:00:00Z"})
        with oracle.rest() as client:
            location = client.post(f"{REST}/Contacts", json={"Contacts": [{
                "ContactFirstName": "Old", "ContactLastName": tag, "ExternalSystemId": f"P{tag}"}]}).headers["location"]
            client.delete(location)
        assert any(r["ExternalSystemId"] == f"P{tag}" for r in deleted_items(oracle)[0])
        oracle.admin("clock", {"at": "2031-04-01T12:00:00Z"})
        assert not any(r["ExternalSystemId"] == f"P{tag}" for r in deleted_items(oracle)[0])
    finally:
        oracle.admin("clock", {"offset_seconds": before})


def test_lov_language_mode_argument(oracle: RunningOracle) -> None:
    tag = unique()
    ldc_mode = "<LOVLanguageMode>LDC</LOVLanguageMode>"
    body_of(oracle.soap(contact_call("Insert", contact(ContactFirstName="L", ContactLastName=tag,
                                                       LeadSource="Trade Show"), ldc_mode)))
    lic = records(body_of(query(oracle, f"<ContactLastName>= '{tag}'</ContactLastName><LeadSource/>")))
    assert lic[0]["LeadSource"] == "EVENT"
    ldc = records(body_of(oracle.soap(f'<ContactQueryPage_Input xmlns="{CONTACT_NS}"><ListOfContact><Contact>'
                                      f"<ContactLastName>= '{tag}'</ContactLastName><LeadSource>= 'Trade Show'"
                                      "</LeadSource></Contact></ListOfContact><LOVLanguageMode>LDC</LOVLanguageMode>"
                                      "</ContactQueryPage_Input>")))
    assert ldc[0]["LeadSource"] == "Trade Show"
