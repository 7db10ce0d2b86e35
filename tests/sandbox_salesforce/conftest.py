"""Run the Salesforce sandbox as a real subprocess (`python -m sandboxes.cli salesforce`) for tests.

`sandbox` is one server for the whole session (seeded with 2,500 contacts, enough to page query results);
`start_sandbox` starts more (for restarts, clock changes, the 100k seed) and stops them at teardown. Each server
listens on a port the OS picks (`--port 0`) and gets its own temporary state directory and CA.

Note for clients: this machine (and CI) may export REQUESTS_CA_BUNDLE, which `requests` lets override a
session's `verify`; sessions made here therefore set `trust_env = False` so `verify=<sandbox CA>` wins.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from sandboxes.salesforce.settings import DEFAULT_ADMIN_TOKEN, DEFAULT_CREDENTIALS
from tests.sandbox_processes import REPO, SandboxProcess, spawn, tracked  # noqa: F401  (REPO: other conftests import it)

_BANNER = re.compile(r"Salesforce sandbox: (https://\S+)\s+\(CA: (.+)\)")


class RunningSandbox(SandboxProcess):
    @property
    def host_port(self) -> str:
        return self.base_url.removeprefix("https://")

    @property
    def login_domain(self) -> str:
        """simple-salesforce `domain` that lands on this sandbox: https://{domain}.salesforce.com/..."""
        return f"{self.host_port}/sf"

    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify = str(self.ca_path)
        session.trust_env = False  # else an exported REQUESTS_CA_BUNDLE silently replaces `verify`
        return session

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call a /__sandbox/ endpoint (POST when a body is given) and return its JSON."""
        url, headers = f"{self.base_url}/__sandbox/{path}", {"X-Sandbox-Admin": self.admin_token}
        response = (self.session().post(url, json=body, headers=headers, timeout=30) if body is not None
                    else self.session().get(url, headers=headers, timeout=30))
        response.raise_for_status()
        return response.json()


def launch(state_dir: Path, *, seed_contacts: int = 0, timeout: float = 120) -> RunningSandbox:
    """Start a sandbox process and wait until it answers HTTPS; output goes to <state_dir>.log."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir.with_suffix(".log")
    deadline = time.monotonic() + timeout
    process, match = spawn(["salesforce", "--port", "0", "--state", str(state_dir), "--seed-contacts",
                            str(seed_contacts), "--log-level", "warning"], log_path, _BANNER, timeout)
    sandbox = RunningSandbox(match.group(1), Path(match.group(2)), DEFAULT_CREDENTIALS, DEFAULT_ADMIN_TOKEN,
                             state_dir, process, log_path)
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
    def start(name: str = "salesforce", **kwargs: Any) -> RunningSandbox:
        return launch(tmp_path / name, **kwargs)

    yield from tracked(start, RunningSandbox.stop)


@pytest.fixture
def admin_reset(sandbox: RunningSandbox) -> Iterator[RunningSandbox]:
    """The shared sandbox, with faults and limits put back after the test whatever it changed."""
    yield sandbox
    sandbox.admin("faults", {})
    sandbox.admin("limits", {"daily_api_max": 5_000_000})
