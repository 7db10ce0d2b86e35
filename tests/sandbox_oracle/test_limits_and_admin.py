"""The sandbox's limiters (REST rate windows, Web Services request rate, session quota, batch and page sizes,
request size), its fault injection and admin surface, restarts, HTTPS-only serving and the 100k seed."""
from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable

import httpx
import pytest

from tests.sandbox_oracle.conftest import REST, WIDE_OPEN, RunningOracle

RATE_TEXT = "The maximum rate of requests was exceeded. A maximum of 5 requests per minute is allowed."
QUERY_ONE = ('<ContactQueryPage_Input xmlns="urn:crmondemand/ws/ecbs/contact/"><ListOfContact pagesize="1">'
             "<Contact><Id/></Contact></ListOfContact></ContactQueryPage_Input>")


def test_rest_rate_limit_fixed_windows_per_session(oracle: RunningOracle, levers: Any) -> None:
    levers(rest_requests_per_window=5, rest_window_seconds=3)
    with oracle.rest() as client, oracle.rest() as other:
        statuses = [client.get(f"{REST}/Contacts", params={"limit": 1}).status_code for _ in range(5)]
        refused = client.get(f"{REST}/Contacts", params={"limit": 1})
        assert other.get(f"{REST}/Contacts", params={"limit": 1}).status_code == 200, "the count is per session"
        time.sleep(3.1)
        after_window = client.get(f"{REST}/Contacts", params={"limit": 1})
    assert statuses == [200] * 5
    assert refused.status_code == 400
    error = refused.json()["Error"][0]
    assert error["detail"].startswith(RATE_TEXT)
    assert after_window.status_code == 200, "the count returns to zero at the end of the window"
    assert oracle.admin("stats")["rate_limited"] >= 1


def test_rest_rate_limit_status_is_switchable(oracle: RunningOracle, levers: Any) -> None:
    levers(rest_requests_per_window=1, rest_window_seconds=60, rest_rate_limit_status=429)
    with oracle.rest() as client:
        assert client.get(f"{REST}/Contacts", params={"limit": 1}).status_code == 200
        refused = client.get(f"{REST}/Contacts", params={"limit": 1})
    assert refused.status_code == 429
    assert refused.json()["Error"][0]["httpStatus"] == 429


def test_a_new_session_starts_counting_from_zero(oracle: RunningOracle, levers: Any) -> None:
    levers(rest_requests_per_window=2, rest_window_seconds=60)
    with oracle.rest() as client:
        assert [client.get(f"{REST}/Contacts", params={"limit": 1}).status_code for _ in range(3)] == [200, 200, 400]
    with oracle.rest() as fresh:
        assert fresh.get(f"{REST}/Contacts", params={"limit": 1}).status_code == 200


def test_ws_requests_closer_than_50_ms_are_refused(oracle: RunningOracle, levers: Any) -> None:
    levers(ws_min_interval_ms=1000)
    first = oracle.soap(QUERY_ONE)
    second = oracle.soap(QUERY_ONE)
    assert first.status_code == 200, first.text
    assert second.status_code == 500
    assert "The maximum rate of requests was exceeded. Please try again in" in second.text
    assert "<ErrorCode>SBL-ODU-01007</ErrorCode>" in second.text


def test_session_quota(oracle: RunningOracle, levers: Any) -> None:
    oracle.admin("expire-sessions", {})
    levers(max_sessions=2)
    with oracle.rest(), oracle.rest(), oracle.http() as third:
        refused = third.get("/OnDemand/user/Rest/Connection", headers=oracle.basic())
    assert refused.status_code == 403
    assert refused.json()["Error"][0]["errorCode"] == "SBL-ODU-01004"


def test_idle_sessions_time_out_on_the_sandbox_clock(oracle: RunningOracle, levers: Any) -> None:
    with oracle.rest() as client:
        assert client.get(f"{REST}/Contacts", params={"limit": 1}).status_code == 200
        before = oracle.admin("stats")["offset_seconds"]
        oracle.admin("clock", {"offset_seconds": before + 601})
        try:
            assert client.get(f"{REST}/Contacts", params={"limit": 1}).status_code == 401
        finally:
            oracle.admin("clock", {"offset_seconds": before})


def test_batch_page_and_request_size_limits(oracle: RunningOracle, levers: Any) -> None:
    records = "".join(f"<Contact><ContactFirstName>A</ContactFirstName><ContactLastName>{i}</ContactLastName>"
                      "</Contact>" for i in range(21))
    too_many = oracle.soap(f'<ContactInsert_Input xmlns="urn:crmondemand/ws/ecbs/contact/"><ListOfContact>{records}'
                           "</ListOfContact></ContactInsert_Input>")
    assert too_many.status_code == 500 and "at most 20" in too_many.text
    big_page = oracle.soap(QUERY_ONE.replace('pagesize="1"', 'pagesize="101"'))
    assert big_page.status_code == 500 and "PageSize 101" in big_page.text
    levers(request_size_kb=1)
    oversized = oracle.soap(QUERY_ONE + " " * 2048)
    assert oversized.status_code == 500 and "Request exceeded the size limit of 1 KB." in oversized.text


@pytest.mark.parametrize("kind, rest_status, ws_code", [("session_expiry", 401, "SBL-ODU-01006"),
                                                        ("server_error", 500, "SBL-ODS-00500"),
                                                        ("rate_limited", 400, "SBL-ODU-01007")])
def test_fault_injection(oracle: RunningOracle, levers: Any, kind: str, rest_status: int, ws_code: str) -> None:
    with oracle.rest() as client:
        oracle.admin("faults", {kind: 1.0, "seed": 7})
        assert client.get(f"{REST}/Contacts", params={"limit": 1}).status_code == rest_status
        assert ws_code in oracle.soap(QUERY_ONE).text
        oracle.admin("faults", {})
    assert oracle.admin("stats")["faults_injected"][kind] >= 2


def test_faults_are_reproducible_with_a_seed(oracle: RunningOracle, levers: Any) -> None:
    def run() -> list[int]:
        oracle.admin("faults", {"server_error": 0.5, "seed": 42})
        with oracle.rest() as client:
            return [client.get(f"{REST}/Contacts", params={"limit": 1}).status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second and 500 in first and 200 in first


def test_admin_needs_its_header_and_checks_input(oracle: RunningOracle) -> None:
    with oracle.http() as client:
        assert client.get("/__sandbox/stats").status_code == 403
        headers = {"X-Sandbox-Admin": oracle.admin_token}
        bad = client.post("/__sandbox/settings", json={"no_such_lever": 1}, headers=headers)
        assert bad.status_code == 400 and "no_such_lever" in bad.json()["error"]
        bad_clock = client.post("/__sandbox/clock", json={"at": "2024-11-03T08:30:00"}, headers=headers)
        assert bad_clock.status_code == 400 and "time zone" in bad_clock.json()["error"]
        assert client.get("/__sandbox/stats", headers={"Cookie": "JSESSIONID=x"}).status_code == 403


def test_sandbox_clock_sets_audit_stamps_and_server_date(oracle: RunningOracle) -> None:
    before = oracle.admin("stats")["offset_seconds"]
    try:
        clock = oracle.admin("clock", {"at": "2024-11-03T08:30:00Z"})
        assert clock["user_now"].startswith("2024-11-03T01:30:0") and clock["user_now"].endswith("-07:00")
        with oracle.rest() as client:
            server_date = client.get("/OnDemand/user/Rest/Connection").json()["Connection"]["ServerDate"]
            created = client.post(f"{REST}/Contacts", json={"Contacts": [{"ContactFirstName": "Clock",
                                                                          "ContactLastName": "Test"}]})
            record = client.get(created.headers["location"], params={"fields": "CreatedDate"}).json()
        assert server_date.startswith("2024-11-03T01:30:0")
        assert record["Contacts"][0]["CreatedDate"].startswith("2024-11-03T01:30:0")
    finally:
        oracle.admin("clock", {"offset_seconds": before})


def test_state_survives_a_restart(start_oracle: Callable[..., RunningOracle]) -> None:
    first = start_oracle("restart")
    first.admin("settings", {"sort_or_filter": True})
    first.admin("clock", {"offset_seconds": 86400})
    with first.rest() as client:
        location = client.post(f"{REST}/Contacts", json={"Contacts": [{"ContactFirstName": "Keep",
                                                                        "ContactLastName": "Me"}]}).headers["location"]
        session = client.headers["Cookie"]
    first.stop()
    second = start_oracle("restart")
    assert second.admin("settings")["sort_or_filter"] is True
    assert second.admin("stats")["offset_seconds"] == 86400
    with second.http() as stale:
        assert stale.get(f"{REST}/Contacts", headers={"Cookie": session}).status_code == 401
    with second.rest() as client:
        path = location.split(first.base_url, 1)[1]
        assert client.get(path, params={"fields": "ContactFirstName"}).json()["Contacts"][0][
            "ContactFirstName"] == "Keep"


def test_https_only_and_logs_without_secrets(start_oracle: Callable[..., RunningOracle]) -> None:
    running = start_oracle("logs", log_level="info")
    host, port = running.base_url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"GET /OnDemand/user/Rest/Connection HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = raw.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), "plain HTTP is not served"
    with running.rest() as client:
        session = client.headers["Cookie"].split("=", 1)[1]
        client.get(f"{REST}/Contacts", params={"limit": 1, "q": "ContactLastName = 'secret-query-value'"})
    with running.http() as client:
        client.get("/Services/Integration", params={"command": "login"},
                   headers={"UserName": running.credentials.username, "Password": running.credentials.password})
        client.post(f"/Services/Integration;jsessionid={session}", content=b"<x/>")
    running.stop()
    log = running.log_path.read_text()
    assert "GET /OnDemand/user/Rest/latest/Contacts 200" in log
    for secret in (running.credentials.password, session, "secret-query-value"):
        assert secret not in log


def test_seeding_100k_contacts(start_oracle: Callable[..., RunningOracle]) -> None:
    started = time.monotonic()
    running = start_oracle("big", seed_contacts=100_000)
    elapsed = time.monotonic() - started
    note = next(line for line in running.log_path.read_text().splitlines() if line.startswith("seeded"))
    assert note.startswith("seeded 100000 contacts and 20000 accounts in")
    assert elapsed < 60, f"seeding 100k contacts and starting took {elapsed:.1f} s"
    running.admin("settings", WIDE_OPEN)
    page = running.soap('<ContactQueryPage_Input xmlns="urn:crmondemand/ws/ecbs/contact/"><ListOfContact '
                        'pagesize="1" recordcountneeded="true"><Contact><Id/><ExternalSystemId>= \'CK-00100000\''
                        "</ExternalSystemId></Contact></ListOfContact></ContactQueryPage_Input>")
    assert 'recordcount="1"' in page.text
    everything = running.soap('<AccountQueryPage_Input xmlns="urn:crmondemand/ws/ecbs/account/"><ListOfAccount '
                              'pagesize="1" recordcountneeded="true"><Account><Id/></Account></ListOfAccount>'
                              "</AccountQueryPage_Input>")
    assert 'recordcount="20000"' in everything.text
    print(f"\n{note}; process up and answering after {elapsed:.1f} s")


def test_tls_certificate_is_from_the_sandbox_ca(oracle: RunningOracle) -> None:
    host, port = oracle.base_url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(oracle.ca_path))
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{oracle.base_url}{REST}/Contacts", verify=ssl.create_default_context(), trust_env=False)


def test_setting_the_clock_back_does_not_trip_the_limiters(oracle: RunningOracle, levers: Any) -> None:
    levers(ws_min_interval_ms=50, rest_requests_per_window=5)
    before = oracle.admin("stats")["offset_seconds"]
    try:
        oracle.admin("clock", {"offset_seconds": before + 86400})
        with oracle.rest() as client:
            assert oracle.soap(QUERY_ONE).status_code == 200
            assert client.get(f"{REST}/Contacts", params={"limit": 1}).status_code == 200
            oracle.admin("clock", {"offset_seconds": before})
            time.sleep(0.06)
            assert oracle.soap(QUERY_ONE).status_code == 200
            assert client.get(f"{REST}/Contacts", params={"limit": 1}).status_code == 200
    finally:
        oracle.admin("clock", {"offset_seconds": before})
