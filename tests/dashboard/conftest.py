"""A real pipeline for the dashboard tests (own broker, PostgreSQL, Salesforce sandbox, every service as a
process, the dashboard in this process) and a headless Chromium (Debian's, through chromedriver) to read it.

Built with tests/pipeline.py: embedded infrastructure under its own state dir, the contacts mapping only.
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

from crmsync.dashboard import app as dashboard_app
from tests.pipeline import World, contacts_pipeline
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
class Pipeline(World):
    dashboard: dashboard_app.Running

    @property
    def log_dir(self) -> Path:
        return self.state / "logs"

    @property
    def auth(self) -> dict[str, str]:
        """What an API client sends: the dashboard's access token as a bearer token."""
        return {"Authorization": f"Bearer {self.dashboard.token}"}

    def child(self, prefix: str):
        return next(c for label, c in self.supervisor.children.items() if label.startswith(prefix))


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    state = Path(tempfile.mkdtemp(prefix="crmsync-dashboard-test-"))  # outside basetemp, see tests/conftest.py
    try:
        with contacts_pipeline(state, contacts=40, recipients=40, shared=12) as world:
            world.supervisor.start()
            board = dashboard_app.start(dashboard_app.create(world.settings, world.found.bootstrap_servers,
                                                             world.found.campaign_dsn,
                                                             world.supervisor.metrics_targets(), interval=1.0),
                                        "127.0.0.1", free_port())
            try:
                running = Pipeline(**vars(world), dashboard=board)
                wait_for(running.converged, 300, "the initial sync", every=0.5, supervisor=world.supervisor)
                yield running
            finally:
                board.stop()
    finally:
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
