"""What the sandbox puts on the wire: header-name spelling (read with a raw TLS socket and h11, because `requests`
would hide the case), the SOAP login at `/services/Soap/u/<v>/` with its elements in the WSDL's order, SOQL
limits with Salesforce's error codes, the 16 KB URI limit, and an event loop that keeps answering while a big
query runs."""
from __future__ import annotations

import csv
import io
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable
from urllib.parse import urlsplit

import h11

from .conftest import RunningSandbox

API = "/services/data/v59.0"


def raw_get(sb: RunningSandbox, target: str, headers: list[tuple[str, str]]) -> tuple[int, list[bytes], bytes]:
    """One GET over a raw TLS socket; returns (status, header names exactly as sent, body)."""
    parts = urlsplit(sb.base_url)
    context = ssl.create_default_context(cafile=str(sb.ca_path))
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as tcp, \
            context.wrap_socket(tcp, server_hostname=parts.hostname) as tls:
        conn = h11.Connection(h11.CLIENT)
        tls.sendall(conn.send(h11.Request(method="GET", target=target,
                                          headers=[("Host", parts.netloc), *headers])))
        tls.sendall(conn.send(h11.EndOfMessage()))
        status, names, body = 0, [], b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(tls.recv(65536))
            elif isinstance(event, h11.Response):
                status, names = event.status_code, [raw for raw, _ in event.headers.raw_items()]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, names, body


def test_header_names_are_spelled_like_salesforce(sandbox: RunningSandbox) -> None:
    auth = [("Authorization", f"Bearer {sandbox.access_token()}")]
    status, names, _ = raw_get(sandbox, f"{API}/limits", auth)
    assert status == 200 and b"Sforce-Limit-Info" in names and b"Content-Type" in names
    assert b"Date" in names and not any(n.lower() == b"server" for n in names)
    assert all(n[:1].isupper() for n in names), names
    http = sandbox.session()
    http.headers["Authorization"] = auth[0][1]
    job = http.post(f"{sandbox.base_url}{API}/jobs/query", json={"operation": "query",
                                                                "query": "SELECT Id FROM Contact"}).json()
    status, names, body = raw_get(sandbox, f"{API}/jobs/query/{job['id']}/results?maxRecords=10", auth)
    assert status == 200 and b"Sforce-NumberOfRecords" in names and b"Sforce-Locator" in names
    assert body.count(b"\n") == 11


def test_bulk_query_pages_cut_between_records_and_refuse_a_bad_locator(sandbox: RunningSandbox) -> None:
    """Bulk 2.0 result pages are slices of the job's CSV: each page holds whole records, even ones whose
    values hold line breaks and quotes, and the pages together are the REST query's records."""
    http = sandbox.session()
    http.headers["Authorization"] = f"Bearer {sandbox.access_token()}"
    streets = ['1 Main St\nFloor 2', 'The "Old" Mill, Unit 3', '5 Quay\r\nDock "B"\n']
    for i, street in enumerate(streets):
        assert http.post(f"{sandbox.base_url}{API}/sobjects/Contact",
                         json={"LastName": f"Paging{i}", "MailingStreet": street}).status_code == 201
    soql = "SELECT Id, LastName, MailingStreet FROM Contact WHERE LastName LIKE 'Paging%' ORDER BY LastName"
    job = http.post(f"{sandbox.base_url}{API}/jobs/query", json={"operation": "query", "query": soql}).json()
    rows, locator, pages = [], None, 0
    while locator != "null":
        page = http.get(f"{sandbox.base_url}{API}/jobs/query/{job['id']}/results",
                        params={"maxRecords": 1, **({"locator": locator} if locator else {})})
        header, *records = list(csv.reader(io.StringIO(page.text, newline="")))
        assert header == ["Id", "LastName", "MailingStreet"] and len(records) == 1
        assert page.headers["Sforce-NumberOfRecords"] == "1"
        rows += records
        locator, pages = page.headers["Sforce-Locator"], pages + 1
    rest = http.get(f"{sandbox.base_url}{API}/query", params={"q": soql}).json()["records"]
    assert pages == 3 and rows == [[r["Id"], r["LastName"], r["MailingStreet"]] for r in rest]
    for bad in ("LTU", "bm90LWEtbnVtYmVy"):  # base64 of "-5" and of "not-a-number"
        refused = http.get(f"{sandbox.base_url}{API}/jobs/query/{job['id']}/results", params={"locator": bad})
        assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "INVALIDLOCATOR"


def test_soap_login_at_trailing_slash_in_wsdl_order(sandbox: RunningSandbox) -> None:
    c = sandbox.credentials
    envelope = ("<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/' "
                "xmlns:urn='urn:partner.soap.sforce.com'><soapenv:Body><urn:login>"
                f"<urn:username>{c.username}</urn:username><urn:password>{c.password}{c.security_token}"
                "</urn:password></urn:login></soapenv:Body></soapenv:Envelope>")
    response = sandbox.session().post(f"{sandbox.base_url}/services/Soap/u/57.0/", data=envelope,
                                      headers={"content-type": "text/xml", "SOAPAction": "Login"},
                                      allow_redirects=False)
    assert response.status_code == 200
    result = ET.fromstring(response.content)[0][0][0]  # Envelope/Body/loginResponse/result, by position
    local = [child.tag.rsplit("}", 1)[-1] for child in result]
    assert local == ["metadataServerUrl", "passwordExpired", "sandbox", "serverUrl", "sessionId", "userId",
                     "userInfo"]
    user_info = [child.tag.rsplit("}", 1)[-1] for child in result[6]]
    assert user_info[8] == "organizationId" and result[6][8].text.startswith("00D")
    assert user_info.index("userName") > user_info.index("userId") > user_info.index("userEmail")


def test_soql_limits_and_uri_limit(sandbox: RunningSandbox) -> None:
    http = sandbox.session()
    http.headers["Authorization"] = f"Bearer {sandbox.access_token()}"

    def bulk_query_error(soql: str) -> dict[str, Any]:
        response = http.post(f"{sandbox.base_url}{API}/jobs/query", json={"operation": "query", "query": soql})
        assert response.status_code == 400
        return response.json()[0]

    too_long = "SELECT Id FROM Contact WHERE Email IN (" + ",".join(["'someone@example.com'"] * 5000) + ")"
    error = bulk_query_error(too_long)
    assert error["errorCode"] == "MALFORMED_QUERY" and "Query is too long" in error["message"]
    error = bulk_query_error("SELECT Id FROM Contact WHERE LastName = '" + "x" * 4001 + "'")
    assert error["errorCode"] == "MALFORMED_QUERY" and "4000" in error["message"]
    error = bulk_query_error("SELECT Id FROM Contact WHERE " + "(" * 101 + "LastName = 'a'" + ")" * 101)
    assert error["errorCode"] == "MALFORMED_QUERY"
    error = bulk_query_error("SELECT Account.Parent.Parent.Parent.Parent.Parent.Name FROM Contact")
    assert error["errorCode"] == "MALFORMED_QUERY" and "at most 5" in error["message"]
    ids = [r["Id"] for r in http.get(f"{sandbox.base_url}{API}/query",
                                     params={"q": "SELECT Id FROM Contact LIMIT 2000"}).json()["records"]]
    many = "SELECT Id FROM Contact WHERE Id IN (" + ",".join(f"'{i}'" for i in ids * 2) + ")"
    job = http.post(f"{sandbox.base_url}{API}/jobs/query", json={"operation": "query", "query": many})
    assert job.status_code == 200 and len(many) < 100_000  # 4,000 bound values: one JSON parameter
    results = http.get(f"{sandbox.base_url}{API}/jobs/query/{job.json()['id']}/results")
    assert int(results.headers["Sforce-NumberOfRecords"]) == len(ids)
    long_get = http.get(f"{sandbox.base_url}{API}/query", params={"q": many})
    assert long_get.status_code == 414 and long_get.json()[0]["errorCode"] == "URI_TOO_LONG"


def test_event_loop_answers_while_a_big_query_runs(start_sandbox: Callable[..., RunningSandbox]) -> None:
    sb = start_sandbox("big", seed_contacts=60_000)
    http = sb.session()
    http.headers["Authorization"] = f"Bearer {sb.access_token()}"
    finished: dict[str, float] = {}

    def big_query() -> None:
        http.post(f"{sb.base_url}{API}/jobs/query", timeout=300, json={
            "operation": "query", "query": "SELECT Id, Name, Email, Title, MailingCity, Account.Name, "
                                           "Account.Owner.Name, CreatedDate FROM Contact ORDER BY Name, Email"}
                  ).raise_for_status()
        finished["at"] = time.monotonic()

    worker = threading.Thread(target=big_query)
    worker.start()
    time.sleep(0.3)
    probes = []
    while worker.is_alive() and len(probes) < 20:  # fresh TLS handshakes, answered while the store thread is busy
        started = time.monotonic()
        status, _, _ = raw_get(sb, "/services/data/", [])
        probes.append((status, time.monotonic() - started, time.monotonic()))
    worker.join(300)
    assert "at" in finished
    during = [probe for probe in probes if probe[2] < finished["at"]]  # (the query takes ~1 s: no fixed count)
    assert during, "the big query ended before the probes: nothing was measured"
    assert all(status == 200 for status, _, _ in probes)
    assert all(seconds < 1.0 for _, seconds, _ in during), probes
