"""A real pipeline for the dashboard tests (own broker, PostgreSQL, Salesforce sandbox, every service as a
process, the dashboard in this process) and a headless Chromium (Debian's, through chromedriver) to read it.

Built like tests/sync/test_drift.py: embedded infrastructure under its own state dir, the contacts mapping only.
One pipeline per module: starting it costs ~30 s, and the tests read different parts of the same page.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from crmsync import config, infra, pg, process
from crmsync.campaign.seed import seed
from crmsync.config import Settings
from crmsync.dashboard import app as dashboard_app
from crmsync.drift import DriftChecker, clients_for
from crmsync.run import Sandbox, Supervisor, effective_settings, only_mappings, plan, start_sandbox, write_effective_config
from tests.waiting import wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Pipeline:
    settings: Settings  # effective: sandbox account, contacts mapping
    found: infra.Endpoints
    sandbox: Sandbox
    supervisor: Supervisor
    dashboard: dashboard_app.Running
    client: Any  # SalesforceClient of the sandbox account
    state: Path

    @property
    def log_dir(self) -> Path:
        return self.state / "logs"

    def converged(self) -> bool:
        checker = DriftChecker(self.settings, self.found, clients_for(self.settings))
        return checker.compare(self.settings.mappings[0]).converged

    def child(self, prefix: str):
        return next(c for label, c in self.supervisor.children.items() if label.startswith(prefix))


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    state = Path(tempfile.mkdtemp(prefix="crmsync-dashboard-test-"))  # outside basetemp, see tests/conftest.py
    settings = config.load(environ={"CRMSYNC_STATE_DIR": str(state)})
    found = infra.up(settings)
    pg.migrate(found.campaign_dsn)
    sandbox = start_sandbox(state, seed_contacts=40, log_file=state / "sandbox.log")
    supervisor = board = None
    try:
        effective = only_mappings(effective_settings(settings, sandbox), ["contacts"])
        client = clients_for(effective)["salesforce"]
        seed(found.campaign_dsn, 40, shared_emails=[r["Email"] for page in client.query_all_pages(
            "SELECT Email FROM Contact ORDER BY Id LIMIT 12") for r in page])
        config_file = write_effective_config(effective, found, state / "run" / "crmsync.yaml")
        supervisor = Supervisor(plan(effective), found, config_file, state / "logs")
        supervisor.start()
        board = dashboard_app.start(dashboard_app.create(effective, found.bootstrap_servers, found.campaign_dsn,
                                                         supervisor.metrics_targets(), interval=1.0),
                                    "127.0.0.1", free_port())
        running = Pipeline(effective, found, sandbox, supervisor, board, client, state)
        wait_for(running.converged, 300, "the initial sync", every=0.5, supervisor=supervisor)
        yield running
    finally:
        if board:
            board.stop()
        if supervisor:
            supervisor.stop()
        process.stop(sandbox.process)
        infra.down(settings)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven through Debian's chromedriver (never a downloaded browser)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them with apt-get)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
