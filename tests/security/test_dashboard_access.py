"""The dashboard answers only a browser or client holding its token, only under a host name it knows (no DNS
rebinding), and shows no record values in reject reasons unless asked to."""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from crmsync import config, infra, pg, process, rejects
from crmsync.dashboard import app as dashboard_app
from crmsync.envelope import Reject
from tests.waiting import wait_for

EMAIL = "ada.lovelace@example.com"


@pytest.fixture
def board(endpoints: infra.Endpoints, campaign_db, tmp_path: Path) -> Iterator[dashboard_app.Running]:
    settings = config.Settings(state_dir=tmp_path / "state")
    running = dashboard_app.start(dashboard_app.create(settings, endpoints.bootstrap_servers, campaign_db[0]),
                                  "127.0.0.1", 0)
    try:
        yield running
    finally:
        running.stop()


def _reject_with_personal_data(dsn: str) -> None:
    reject = Reject(id=f"r-{uuid.uuid4().hex}", stage="writer", side="crm", target="sf", object="Contact",
                    reason=f"Email: invalid email address: {EMAIL}", error_code="INVALID_EMAIL_ADDRESS",
                    record={"id": "cmd-1", "match": {"Campaign_Key__c": "42"},
                            "values": {"Email": EMAIL, "LastName": "Lovelace"}})
    with pg.connect(dsn) as conn:
        rejects.record(conn, reject, command=None, record_key='{"Campaign_Key__c":"42"}')


def test_nothing_but_health_answers_without_the_token(board) -> None:
    for path in ("/", "/static/dashboard.js", "/api/status", "/api/lag", "/api/rejects", "/api/journey/42"):
        answer = httpx.get(board.url + path, timeout=30)
        assert answer.status_code == 401, path
        assert "token" in answer.text  # says how to get in
    wrong = httpx.get(board.url + "/api/status", headers={"Authorization": "Bearer not-the-token"}, timeout=30)
    assert wrong.status_code == 401
    assert httpx.get(board.url + "/healthz", timeout=30).status_code == 200  # orchestrators' probes stay open
    assert httpx.get(board.url + "/metrics", timeout=30).status_code == 200  # Prometheus: no record data there


def test_a_bearer_token_or_the_one_time_link_lets_in(board) -> None:
    bearer = httpx.get(board.url + "/api/status", headers={"Authorization": f"Bearer {board.token}"}, timeout=30)
    assert bearer.status_code == 200
    with httpx.Client(base_url=board.url, timeout=30) as browser:
        link = browser.get(f"/?token={board.token}")
        assert link.status_code == 303 and link.headers["location"] == "/"  # the token leaves the address bar
        cookie = link.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert board.token not in cookie  # the cookie is a session, not the token
        assert browser.get("/").status_code == 200
        assert browser.get("/api/rejects").status_code == 200
    assert board.login_url == f"{board.url}/?token={board.token}"


def test_other_host_names_are_refused(board) -> None:
    auth = {"Authorization": f"Bearer {board.token}"}
    for host in ("localhost", "127.0.0.1", "[::1]"):
        port = board.url.rsplit(":", 1)[1]
        assert httpx.get(board.url + "/api/status", headers={**auth, "Host": f"{host}:{port}"}, timeout=30).status_code == 200
    rebound = httpx.get(board.url + "/api/status", headers={**auth, "Host": "attacker.example"}, timeout=30)
    assert rebound.status_code == 400


def test_reject_reasons_show_no_record_values_unless_asked(endpoints, campaign_db, tmp_path: Path) -> None:
    _reject_with_personal_data(campaign_db[0])
    settings = config.Settings(state_dir=tmp_path / "state")
    for show_values in (False, True):
        running = dashboard_app.start(dashboard_app.create(settings, endpoints.bootstrap_servers, campaign_db[0],
                                                           show_values=show_values), "127.0.0.1", 0)
        try:
            body = httpx.get(running.url + "/api/rejects", headers={"Authorization": f"Bearer {running.token}"},
                             timeout=30).text
        finally:
            running.stop()
        assert (EMAIL in body) is show_values
        assert "invalid email address" in body and "INVALID_EMAIL_ADDRESS" in body


def test_crmsync_dashboard_prints_the_link_once_and_keeps_the_token_private(endpoints, campaign_db,
                                                                          tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "CRMSYNC_STATE_DIR": str(state), "CAMPAIGN_DSN": campaign_db[0],
           "KAFKA_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers}
    log = tmp_path / "dashboard.out"
    with open(log, "wb") as output:
        child = subprocess.Popen([sys.executable, "-m", "crmsync", "dashboard", "--port", "0"], env=env,
                                 stdout=output, stderr=subprocess.STDOUT)
    try:
        line = wait_for(lambda: re.search(r"dashboard: (http://127\.0\.0\.1:\d+/\?token=(\S+))", log.read_text()),
                        60, "the dashboard's link")
        token_file = state / "secrets" / "dashboard.token"
        assert token_file.read_text().strip() == line.group(2)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert httpx.get(line.group(1), timeout=30, follow_redirects=True).status_code == 200
        assert log.read_text().count(line.group(2)) == 1  # printed once, never logged
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(30)


def test_service_log_files_are_private(endpoints, tmp_path: Path) -> None:
    """Logs carry record ids and refusals: readable by their owner only."""
    log_file = tmp_path / "logs" / "capture.log"
    child = process.spawn_service("no-such-service", endpoints, log_file=log_file)
    child.wait(60)
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
