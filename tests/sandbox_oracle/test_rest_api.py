"""The sandbox's REST API over real HTTPS: sign-in, collections, the q grammar, paging, CRUD, child resources,
describe, picklist language modes, error bodies and the time-zone quirk."""
from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.sandbox_oracle.conftest import REST, RunningOracle

JSON = {"Content-Type": "application/vnd.oracle.adf.resource+json"}


def unique() -> str:
    return uuid.uuid4().hex[:10].upper()


def new_contact(client: httpx.Client, **values: Any) -> str:
    body = {"ContactFirstName": "Test", "ContactLastName": f"Person {unique()}", **values}
    response = client.post(f"{REST}/Contacts", json={"Contacts": [body]}, headers=JSON)
    assert response.status_code == 201, response.text
    return response.headers["location"].rsplit("/", 1)[-1]


def error_of(response: httpx.Response) -> dict[str, Any]:
    errors = response.json()["Error"]
    assert len(errors) == 1
    return errors[0]


# ---------------------------------------------------------------- sign-in


def test_sign_in_returns_session_and_connection_attributes(oracle: RunningOracle) -> None:
    with oracle.http() as client:
        response = client.get("/OnDemand/user/Rest/Connection", headers=oracle.basic())
    assert response.status_code == 200
    names = [name for name, _ in response.headers.raw]
    assert b"JSESSIONID" in names, "the JSESSIONID header is sent with Oracle's upper-case spelling"
    assert response.cookies["JSESSIONID"] == response.headers["JSESSIONID"]
    attributes = response.json()["Connection"]
    assert set(attributes) >= {"apiVersion", "apiVersionMinimum", "clientHelpURL", "dateFormatLocale",
                               "languageLocale", "maximumFileSize", "Version", "ServerDate", "LastLoggedIn",
                               "UserLoginId", "UserId", "TenantId", "CompanyName"}
    assert attributes["UserLoginId"] == oracle.credentials.username
    assert attributes["ServerDate"].endswith("Z") and len(attributes["ServerDate"]) == 20


def test_wrong_password_missing_session_and_logoff(oracle: RunningOracle) -> None:
    with oracle.http() as client:
        refused = client.get("/OnDemand/user/Rest/Connection", auth=(oracle.credentials.username, "wrong"))
        assert refused.status_code == 401
        assert error_of(refused)["errorCode"] == "SBL-ODU-01003"
        assert "wrong" not in refused.text
        anonymous = client.get(f"{REST}/Contacts")
        assert anonymous.status_code == 403
    with oracle.rest() as client:
        assert client.get(f"{REST}/Contacts", params={"limit": 1}).status_code == 200
        assert client.get("/OnDemand/user/Rest/Connection", params={"action": "logoff"}).status_code == 200
        gone = client.get(f"{REST}/Contacts", params={"limit": 1})
        assert gone.status_code == 401
        assert error_of(gone)["errorCode"] == "SBL-ODU-01002"


def test_basic_credentials_on_a_resource_open_a_session(oracle: RunningOracle) -> None:
    with oracle.http() as client:
        response = client.get(f"{REST}/Contacts", params={"limit": 1}, headers=oracle.basic())
        assert response.status_code == 200
        session = response.headers["JSESSIONID"]
        again = client.get(f"{REST}/Contacts", params={"limit": 1}, headers={"Cookie": f"JSESSIONID={session}"})
        assert again.status_code == 200 and "JSESSIONID" not in again.headers


# ---------------------------------------------------------------- collections and paging


def test_paging_with_context_info_and_links(oracle: RunningOracle) -> None:
    with oracle.rest() as client:
        first = client.get(f"{REST}/Accounts", params={"fields": "Id,AccountName", "limit": 100}).json()
        assert first["_contextInfo"] == {"limit": 100, "offset": 0, "lastpage": False}
        assert first["links"]["self"] == {"rel": "self", "href": f"{REST}/Accounts"}
        record = first["Accounts"][0]
        assert set(record) == {"Id", "AccountName", "links"}
        assert record["links"]["self"]["href"] == f"{REST}/Accounts/{record['Id']}"
        assert record["links"]["Contacts"] == {"rel": "child",
                                               "href": f"{REST}/Accounts/{record['Id']}/child/Contacts"}
        ids = [r["Id"] for r in first["Accounts"]]
        offset = 100
        while True:
            page = client.get(f"{REST}/Accounts", params={"fields": "Id", "limit": 100, "offset": offset,
                                                          "onlyData": "true"}).json()
            assert "links" not in page and all(set(r) == {"Id"} for r in page["Accounts"])
            ids += [r["Id"] for r in page["Accounts"]]
            offset += 100
            if page["_contextInfo"]["lastpage"]:
                break
        assert len(ids) == len(set(ids)) >= 200


@pytest.mark.parametrize("params, parameter", [({"limit": "101"}, "limit"), ({"limit": "0"}, "limit"),
                                               ({"offset": "-1"}, "offset")])
def test_paging_parameters_are_checked(oracle: RunningOracle, params: dict[str, str], parameter: str) -> None:
    with oracle.rest() as client:
        response = client.get(f"{REST}/Contacts", params=params)
    assert response.status_code == 400
    assert parameter in error_of(response)["detail"]


def test_unknown_field_and_resource(oracle: RunningOracle) -> None:
    with oracle.rest() as client:
        unknown_field = client.get(f"{REST}/Contacts", params={"fields": "Id,NoSuchField"})
        assert unknown_field.status_code == 400 and "NoSuchField" in error_of(unknown_field)["detail"]
        assert client.get(f"{REST}/Widgets").status_code == 404
        assert client.get("/OnDemand/user/Rest/999/Contacts").status_code == 404
        assert client.get("/OnDemand/user/Rest/028/Contacts", params={"limit": 1}).status_code == 200


# ---------------------------------------------------------------- the q grammar


def query_ids(client: httpx.Client, q: str, **params: Any) -> list[str]:
    response = client.get(f"{REST}/Contacts", params={"q": q, "fields": "Id", "limit": 100, **params})
    assert response.status_code == 200, response.text
    return [r["Id"] for r in response.json()["Contacts"]]


def test_query_grammar(oracle: RunningOracle) -> None:
    tag = unique()
    with oracle.rest() as client:
        ann = new_contact(client, ContactFirstName="Ann", ContactLastName=f"O'Brien {tag}", CustomNumber0=10,
                          NeverEmail=True, ExternalSystemId=f"A-{tag}")
        bob = new_contact(client, ContactFirstName="Bob", ContactLastName=f"Star*{tag}", CustomNumber0=20,
                          ExternalSystemId=f"B-{tag}")
        cid = new_contact(client, ContactFirstName="Cid", ContactLastName=f"plain {tag}", CustomNumber0=30,
                          ExternalSystemId=f"C-{tag}")
        assert query_ids(client, f"ExternalSystemId='A-{tag}' OR = 'B-{tag}'") == [ann, bob]
        assert query_ids(client, f"ExternalSystemId='A-{tag}' OR 'C-{tag}'") == [ann, cid], \
            "an ANDOR clause without operator repeats the previous one"
        assert query_ids(client, f"ExternalSystemId=\"B-{tag}\"; ContactFirstName = 'Bob'") == [bob]
        assert query_ids(client, f"ExternalSystemId LIKE '*-{tag}'; CustomNumber0 >= 15 AND <= 30") == [bob, cid]
        assert query_ids(client, f"ContactLastName = 'O\\'Brien {tag}'") == [ann]
        assert query_ids(client, f"ContactLastName LIKE 'Star\\*{tag}'") == [bob], "\\* is a literal star"
        assert query_ids(client, f"ContactLastName like 'star*{tag}'") == [], "values are case-sensitive"
        assert query_ids(client, f"CI_ContactLastName LIKE 'STAR*{tag}'") == [bob]
        assert query_ids(client, f"ExternalSystemId LIKE '*{tag}'; NeverEmail = true") == [ann]
        assert query_ids(client, f"ExternalSystemId LIKE '*{tag}'",
                         orderBy="CustomNumber0:desc") == [cid, bob, ann]


@pytest.mark.parametrize("q, fragment", [
    ("ContactLastName = 'open", "not closed"),
    ("ContactLastName = 'x';", "';' must not end"),
    ("Nope = 'x'", "Nope"),
    ("ContactLastName 'x'", "operator"),
    ("ContactLastName = null", "null"),
    ("CustomNumber0 = 'ten'", "ten"),
    ("ContactLastName <> 'x'", "value"),
])
def test_bad_queries_get_clear_errors(oracle: RunningOracle, q: str, fragment: str) -> None:
    with oracle.rest() as client:
        response = client.get(f"{REST}/Contacts", params={"q": q})
    assert response.status_code == 400
    assert fragment in error_of(response)["detail"]


def test_query_length_cap(oracle: RunningOracle) -> None:
    ok = "ExternalSystemId = '" + "x" * (4096 - len("ExternalSystemId = ''")) + "'"
    with oracle.rest() as client:
        assert client.get(f"{REST}/Contacts", params={"q": ok}).status_code == 200
        too_long = client.get(f"{REST}/Contacts", params={"q": ok[:-1] + "x'"})
    assert too_long.status_code == 400
    assert "4096" in error_of(too_long)["detail"]


def test_sort_or_filter_switch(oracle: RunningOracle, levers: Any) -> None:
    levers(sort_or_filter=True)
    with oracle.rest() as client:
        both = client.get(f"{REST}/Contacts", params={"q": "CustomNumber0 > 50", "orderBy": "Id:asc"})
        assert both.status_code == 400
        assert error_of(both)["errorCode"] == "SBL-ODS-00127"
        assert client.get(f"{REST}/Contacts", params={"q": "CustomNumber0 > 50"}).status_code == 200
        assert client.get(f"{REST}/Contacts", params={"orderBy": "Id:desc"}).status_code == 200


# ---------------------------------------------------------------- create, read, update, delete


def test_create_read_update_delete(oracle: RunningOracle) -> None:
    tag = unique()
    with oracle.rest() as client:
        created = client.post(f"{REST}/Accounts", json={"Accounts": [{
            "AccountName": f"Acme {tag}", "Location": "Hometown", "AccountType": "Customer", "PublicCompany": True,
            "Region": "West", "MarketShare": 3, "NumberEmployees": 1, "AnnualRevenues": 1250.5}]}, headers=JSON)
        assert created.status_code == 201
        location = created.headers["location"]
        assert location.startswith(f"{oracle.base_url}{REST}/Accounts/")
        account_id = location.rsplit("/", 1)[-1]
        assert created.json()["Accounts"][0]["AccountName"] == f"Acme {tag}"
        assert created.json()["Accounts"][0]["links"]["self"]["href"] == f"{REST}/Accounts/{account_id}"
        read = client.get(f"{REST}/Accounts/{account_id}").json()["Accounts"][0]
        assert read["Id"] == account_id and read["PublicCompany"] is True and read["AnnualRevenues"] == 1250.5
        assert read["CreatedDate"] == read["ModifiedDate"]
        updated = client.patch(f"{REST}/Accounts/{account_id}", json={"Accounts": [{"Location": "Capital City",
                                                                                   "PublicCompany": False}]})
        assert updated.status_code == 200
        assert updated.json()["Accounts"][0] | {"links": None} == {"Location": "Capital City",
                                                                   "PublicCompany": False, "links": None}
        assert client.delete(f"{REST}/Accounts/{account_id}").status_code == 204
        missing = client.get(f"{REST}/Accounts/{account_id}")
        assert missing.status_code == 404 and error_of(missing)["errorCode"] == "SBL-EAI-04378"


def test_error_body_is_oracles_format(oracle: RunningOracle) -> None:
    with oracle.rest() as client:
        response = client.post(f"{REST}/Accounts", json={"Accounts": [{"AccountName": "X", "AccountType": "Bogus"}]},
                               headers=JSON)
    assert response.status_code == 400
    assert response.json() == {"Error": [{
        "problemType": "https://support.oracle.com/epmos/faces/DocumentDisplay?id=1802485.1",
        "title": "The value entered in field %2 of buscomp %3 does not match any value in the bounded pick "
                 "list %1.",
        "httpStatus": 400,
        "detail": "The value entered in field AccountType of buscomp Account does not match any value in the "
                  "bounded pick list PickList Account Type.(SBL-DAT-00225)",
        "problemInstance": f"urn:ocrmod:{REST}/Accounts", "errorCode": "SBL-DAT-00225",
        "OCRMODErrorDetail": {"Parameters": ["PickList Account Type", "AccountType", "Account"]}}]}


@pytest.mark.parametrize("record, code", [
    ({"ContactFirstName": "No last name"}, "SBL-DAT-00498"),
    ({"ContactFirstName": "A", "ContactLastName": "B", "Id": "1SBX-XXXXXX"}, "SBL-DAT-00402"),
    ({"ContactFirstName": "A", "ContactLastName": "B", "ModifiedDate": "2024-01-01T00:00:00Z"}, "SBL-DAT-00402"),
    ({"ContactFirstName": "A", "ContactLastName": "B", "Bogus": 1}, "SBL-EAI-04127"),
    ({"ContactFirstName": "A", "ContactLastName": "B", "AccountId": "1SBX-ZZZZZZ"}, "SBL-DAT-00357"),
    ({"ContactFirstName": "A" * 51, "ContactLastName": "B"}, "SBL-DAT-00235"),
    ({"ContactFirstName": "A", "ContactLastName": "B", "DateofBirth": "01/02/2024"}, "SBL-DAT-00359"),
    ({"ContactFirstName": "A", "ContactLastName": "B", "NeverEmail": "maybe"}, "SBL-DAT-00359"),
])
def test_write_validation(oracle: RunningOracle, record: dict[str, Any], code: str) -> None:
    with oracle.rest() as client:
        response = client.post(f"{REST}/Contacts", json={"Contacts": [record]}, headers=JSON)
    assert response.status_code == 400
    assert error_of(response)["errorCode"] == code


def test_external_system_id_is_unique_and_body_shape_is_checked(oracle: RunningOracle) -> None:
    key = f"K-{unique()}"
    with oracle.rest() as client:
        new_contact(client, ExternalSystemId=key)
        duplicate = client.post(f"{REST}/Contacts", json={"Contacts": [{"ContactFirstName": "A", "ContactLastName":
                                                                        "B", "ExternalSystemId": key}]}, headers=JSON)
        assert duplicate.status_code == 400 and error_of(duplicate)["errorCode"] == "SBL-DAT-00381"
        assert client.post(f"{REST}/Contacts", content=b"{}", headers=JSON).status_code == 400
        assert client.post(f"{REST}/Contacts", content=b"x=1",
                           headers={"Content-Type": "text/plain"}).status_code == 415
        assert client.put(f"{REST}/Contacts").status_code == 405


def test_child_resources(oracle: RunningOracle) -> None:
    with oracle.rest() as client:
        account = client.post(f"{REST}/Accounts", json={"Accounts": [{"AccountName": f"Parent {unique()}"}]},
                              headers=JSON).headers["location"].rsplit("/", 1)[-1]
        child = client.post(f"{REST}/Accounts/{account}/child/Contacts",
                            json={"Contacts": [{"ContactFirstName": "Kid", "ContactLastName": "One"}]}, headers=JSON)
        assert child.status_code == 201
        contact = child.headers["location"].rsplit("/", 1)[-1]
        assert child.headers["location"].endswith(f"/Accounts/{account}/child/Contacts/{contact}")
        listed = client.get(f"{REST}/Accounts/{account}/child/Contacts", params={"fields": "Id,AccountId"}).json()
        assert [r["Id"] for r in listed["Contacts"]] == [contact]
        links = listed["Contacts"][0]["links"]
        assert links["canonical"]["href"] == f"{REST}/Contacts/{contact}"
        assert links["parent"]["href"] == f"{REST}/Accounts/{account}"
        assert client.get(f"{REST}/Contacts/{contact}", params={"fields": "AccountName"}).json()[
            "Contacts"][0]["AccountName"].startswith("Parent ")
        other = new_contact(client)
        assert client.get(f"{REST}/Accounts/{account}/child/Contacts/{other}").status_code == 404


def test_lov_language_mode(oracle: RunningOracle) -> None:
    with oracle.rest() as client:
        contact = new_contact(client, LeadSource="WEB")
        lic = client.get(f"{REST}/Contacts/{contact}", params={"fields": "LeadSource"})
        assert lic.json()["Contacts"][0]["LeadSource"] == "WEB"
        ldc_headers = {"LOVLanguageMode": "LDC"}
        ldc = client.get(f"{REST}/Contacts/{contact}", params={"fields": "LeadSource"}, headers=ldc_headers)
        assert ldc.json()["Contacts"][0]["LeadSource"] == "Web Site"
        assert client.patch(f"{REST}/Contacts/{contact}", json={"Contacts": [{"LeadSource": "Trade Show"}]},
                            headers=ldc_headers).status_code == 200
        assert client.get(f"{REST}/Contacts/{contact}", params={"fields": "LeadSource"}).json()[
            "Contacts"][0]["LeadSource"] == "EVENT"
        rejected = client.patch(f"{REST}/Contacts/{contact}", json={"Contacts": [{"LeadSource": "Trade Show"}]})
        assert error_of(rejected)["errorCode"] == "SBL-DAT-00225", "LIC mode wants the code, not the label"


# ---------------------------------------------------------------- describe


def test_describe(oracle: RunningOracle) -> None:
    with oracle.rest() as client:
        everything = client.get(f"{REST}/describe").json()
        assert list(everything["Resources"]) == ["Accounts", "Contacts"]
        assert everything["_contextInfo"] == {"limit": 2, "offset": 0, "lastpage": False}
        last = client.get(f"{REST}/describe", params={"offset": 4, "limit": 2, "fields": "collection.actions"})
        assert list(last.json()["Resources"]) == ["Users"] and last.json()["_contextInfo"]["lastpage"]
        assert last.json()["Resources"]["Users"]["collection"]["actions"] == [{"name": "get", "method": "GET"}]
        contacts = client.get(f"{REST}/Contacts/describe", params={"fields": "attributes"}).json()
    described = contacts["Resources"]["Contacts"]
    assert described["title"] == "Contact" and described["titlePlural"] == "Contacts"
    attributes = {a["name"]: a for a in described["attributes"]}
    assert attributes["ContactLastName"]["mandatory"] is True and attributes["ContactLastName"]["maxLength"] == 50
    assert attributes["ModifiedDate"]["updatable"] is False and attributes["ModifiedDate"]["type"] == "dateTime"
    assert attributes["CI_ContactLastName"]["updatable"] is False
    assert {"code": "WEB", "value": "Web Site"} in attributes["LeadSource"]["lov"]
    assert set(attributes["ContactEmail"]) >= {"name", "type", "updatable", "mandatory", "queryable", "title",
                                               "controlType", "maxLength", "markfortranslation", "copyenabled",
                                               "optimized", "postdefault", "casesensitivity", "htmlfieldtag",
                                               "customwsintegrationtag"}


# ---------------------------------------------------------------- the user's time zone


def test_datetimes_are_the_users_wall_clock_with_a_literal_z(oracle: RunningOracle) -> None:
    """A REST datetime is Los Angeles time despite its Z; Web Services v2.0 shows the same instant in UTC."""
    with oracle.rest() as client:
        contact = new_contact(client, CustomDateTime0="2024-07-01T09:00:00Z", ExternalSystemId=f"TZ-{unique()}")
        winter = new_contact(client, CustomDateTime0="2024-01-15T09:00:00")
        rest_values = {c: client.get(f"{REST}/Contacts/{c}", params={"fields": "CustomDateTime0,ModifiedDate"})
                       .json()["Contacts"][0] for c in (contact, winter)}
        assert rest_values[contact]["CustomDateTime0"] == "2024-07-01T09:00:00Z"
        assert rest_values[winter]["CustomDateTime0"] == "2024-01-15T09:00:00Z"
        summer_hit = query_ids(client, "CustomDateTime0 = '2024-07-01T09:00:00Z'")
        assert contact in summer_hit
    utc = {}
    for record_id in (contact, winter):
        response = oracle.soap('<ContactQueryPage_Input xmlns="urn:crmondemand/ws/ecbs/contact/"><ListOfContact>'
                               f"<Contact><Id>='{record_id}'</Id><CustomDateTime0/><ModifiedDate/></Contact>"
                               "</ListOfContact></ContactQueryPage_Input>")
        assert response.status_code == 200, response.text
        utc[record_id] = response.text
    assert "<CustomDateTime0>2024-07-01T16:00:00Z</CustomDateTime0>" in utc[contact], "PDT is UTC-7"
    assert "<CustomDateTime0>2024-01-15T17:00:00Z</CustomDateTime0>" in utc[winter], "PST is UTC-8"


def test_users_are_listed_and_read_only(oracle: RunningOracle) -> None:
    with oracle.rest() as client:
        users = client.get(f"{REST}/Users", params={"fields": "Id,UserLoginId,TimeZoneName,LastLoggedIn"}).json()
        me = next(u for u in users["Users"] if u["UserLoginId"] == oracle.credentials.username)
        assert me["TimeZoneName"].endswith("America/Los_Angeles")
        assert me["LastLoggedIn"].endswith("Z")
        refused = client.patch(f"{REST}/Users/{me['Id']}", json={"Users": [{"Alias": "x"}]})
        assert refused.status_code == 405
        assert client.post(f"{REST}/Users", json={"Users": [{"FirstName": "x"}]}).status_code == 405
