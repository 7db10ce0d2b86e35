"""Run the Salesforce sandbox as a real subprocess (`python -m sandboxes.cli salesforce`) for tests.

`sandbox` is one server for the whole session (seeded with 2,500 contacts, enough to page query results);
`start_sandbox` starts more (for restarts, clock changes, the 100k seed) and stops them at teardown. Each server
listens on a port the OS picks (`--port 0`) and gets its own temporary state directory and CA.

Note for clients: this machine (and CI) may export REQUESTS_CA_BUNDLE, which `requests` lets override a
session's `verify`; sessions made here therefore set `trust_env = False` so `verify=<sandbox CA>` wins.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from sandboxes.salesforce.settings import DEFAULT_ADMIN_TOKEN, DEFAULT_CREDENTIALS, Credentials
from tests.sandbox_process import SandboxHandle, spawn, started_sandboxes

REPO = Path(__file__).resolve().parents[2]
_BANNER = re.compile(r"Salesforce sandbox: (https://\S+)\s+\(CA: (.+)\)")
_PUBSUB_BANNER = re.compile(r"Salesforce Pub/Sub API: (\S+)")
_BANNERS = re.compile(f"{_BANNER.pattern}(?:.*\n)*?.*?{_PUBSUB_BANNER.pattern}")  # both lines, in order


@dataclass
class RunningSandbox(SandboxHandle):
    base_url: str  # https://127.0.0.1:PORT
    ca_path: Path
    credentials: Credentials
    admin_token: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    pubsub_target: str  # host:port of the Pub/Sub API (gRPC over TLS)

    @property
    def host_port(self) -> str:
        return self.base_url.removeprefix("https://")

    @property
    def login_domain(self) -> str:
        """simple-salesforce `domain` that lands on this sandbox: https://{domain}.salesforce.com/..."""
        return f"{self.host_port}/sf"

    def access_token(self) -> str:
        """A fresh session id from the OAuth password grant."""
        c = self.credentials
        response = self.session().post(f"{self.base_url}/services/oauth2/token", timeout=30, data={
            "grant_type": "password", "client_id": c.client_id, "client_secret": c.client_secret,
            "username": c.username, "password": c.password + c.security_token})
        response.raise_for_status()
        return str(response.json()["access_token"])


def launch(state_dir: Path, *, seed_contacts: int = 0, timeout: float = 120, extra_args: tuple[str, ...] = ()) \
        -> RunningSandbox:
    """Start a sandbox process and wait until it answers HTTPS; output goes to <state_dir>.log. `extra_args` are
    more `crmsync sandbox salesforce` options (e.g. ("--cdc-retention", "5"))."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir.with_suffix(".log")  # a restart appends to the same log
    command = [sys.executable, "-m", "sandboxes.cli", "salesforce", "--port", "0", "--state",
               str(state_dir), "--seed-contacts", str(seed_contacts), "--log-level", "warning", "--pubsub-port", "0",
               *extra_args]
    process, match = spawn(command, cwd=REPO, log_path=log_path, banner=_BANNERS, env=dict(os.environ),
                           timeout=timeout)
    deadline = time.monotonic() + timeout
    sandbox = RunningSandbox(match.group(1), Path(match.group(2)), DEFAULT_CREDENTIALS, DEFAULT_ADMIN_TOKEN,
                             state_dir, process, log_path, match.group(3))
    _wait_until_answering(sandbox, deadline)
    return sandbox


def _wait_until_answering(sandbox: RunningSandbox, deadline: float) -> None:
    while True:
        try:
            if sandbox.session().get(f"{sandbox.base_url}/services/data/", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                sandbox.stop()
                raise
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    running = launch(tmp_path_factory.mktemp("sf-sandbox") / "salesforce", seed_contacts=2500)
    yield running
    running.stop()


@pytest.fixture
def start_sandbox(tmp_path: Path) -> Iterator[Callable[..., RunningSandbox]]:
    yield from started_sandboxes(tmp_path, launch, "salesforce")


@pytest.fixture
def admin_reset(sandbox: RunningSandbox) -> Iterator[RunningSandbox]:
    """The shared sandbox, with faults and limits put back after the test whatever it changed."""
    yield sandbox
    sandbox.admin("faults", {})
    sandbox.admin("limits", {"daily_api_max": 5_000_000})
