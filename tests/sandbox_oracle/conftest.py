"""Run the Oracle CRM On Demand sandbox as a real subprocess (`python -m sandboxes.cli oracle`) for tests.

`oracle` is one server for the whole session, seeded with 1,000 contacts, with the request-rate levers opened
wide so tests do not wait on Oracle's 30-requests-a-minute limit (tests of the limiters set their own levers
through `levers`, which puts everything back afterwards). `start_oracle` starts more servers (restarts, the
100k seed) and stops them at teardown. Each server listens on a port the OS picks and has its own state
directory and CA. HTTP clients made here ignore the environment (`trust_env=False`), so an exported
REQUESTS_CA_BUNDLE / SSL_CERT_FILE cannot replace the sandbox CA.
"""
from __future__ import annotations

import base64
import re
import ssl
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from sandboxes.control import DEFAULT_ADMIN_TOKEN
from sandboxes.oracle.settings import DEFAULT_CREDENTIALS
from tests.sandbox_process import SandboxProcess, spawn, tracked

REPO = Path(__file__).resolve().parents[2]
BANNER = re.compile(r"Oracle CRM On Demand sandbox: (https://\S+)\s+\(CA: (.+)\)")
WIDE_OPEN = {"rest_requests_per_window": 1_000_000, "ws_min_interval_ms": 0, "max_sessions": 100_000}
REST = "/OnDemand/user/Rest/latest"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"


class RunningOracle(SandboxProcess):
    def http(self) -> httpx.Client:
        """A bare HTTPS client trusting only the sandbox CA (no session, no credentials)."""
        return httpx.Client(base_url=self.base_url, verify=ssl.create_default_context(cafile=str(self.ca_path)),
                            trust_env=False, timeout=60)

    def basic(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def rest(self) -> httpx.Client:
        """An HTTPS client with a REST session (signed in through /OnDemand/user/Rest/Connection)."""
        with self.http() as signing_in:
            response = signing_in.get("/OnDemand/user/Rest/Connection", headers=self.basic())
        assert response.status_code == 200, response.text
        client = self.http()
        client.headers["Cookie"] = f"JSESSIONID={response.headers['JSESSIONID']}"
        return client

    def soap(self, body: str, *, client: httpx.Client | None = None, header: str | None = None) -> httpx.Response:
        """POST a SOAP request; without `client`, a stateless one carrying a WS-Security UsernameToken."""
        if header is None and client is None:
            header = (f'<wsse:Security xmlns:wsse="{WSSE}"><wsse:UsernameToken><wsse:Username>'
                      f"{self.credentials.username}</wsse:Username><wsse:Password>{self.credentials.password}"
                      "</wsse:Password></wsse:UsernameToken></wsse:Security>")
        envelope = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
                    f"<soap:Header>{header or ''}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>")
        with self.http() as fresh:
            return (client or fresh).post("/Services/Integration", content=envelope.encode(),
                                          headers={"Content-Type": "text/xml; charset=utf-8"})

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call a /__sandbox/ endpoint (POST when a body is given) and return its JSON."""
        with self.http() as client:
            headers = {"X-Sandbox-Admin": self.admin_token}
            response = client.post(f"/__sandbox/{path}", json=body, headers=headers) if body is not None else \
                client.get(f"/__sandbox/{path}", headers=headers)
        assert response.status_code == 200, response.text
        return response.json()


def launch(state_dir: Path, *, seed_contacts: int = 0, timezone: str = "America/Los_Angeles",
           log_level: str = "warning", timeout: float = 120) -> RunningOracle:
    """Start a sandbox process and wait until it answers HTTPS; output goes to <state_dir>.log."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir.with_suffix(".log")
    process, match = spawn([sys.executable, "-m", "sandboxes.cli", "oracle", "--port", "0", "--state", str(state_dir),
                            "--seed-contacts", str(seed_contacts), "--user-timezone", timezone, "--log-level",
                            log_level], cwd=REPO, log_path=log_path, banner=BANNER, timeout=timeout)
    return RunningOracle(match.group(1), Path(match.group(2)), DEFAULT_CREDENTIALS, DEFAULT_ADMIN_TOKEN, state_dir,
                         process, log_path)


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOracle]:
    running = launch(tmp_path_factory.mktemp("ood") / "oracle", seed_contacts=1000)
    running.admin("settings", WIDE_OPEN)
    yield running
    running.stop()


@pytest.fixture
def levers(oracle: RunningOracle) -> Iterator[Callable[..., Any]]:
    """Change the shared sandbox's settings for one test; settings, faults and sessions are reset afterwards."""
    before = oracle.admin("settings")

    def set_levers(**values: Any) -> Any:
        return oracle.admin("settings", values)

    yield set_levers
    oracle.admin("faults", {})
    oracle.admin("settings", before)
    oracle.admin("expire-sessions", {})


@pytest.fixture
def start_oracle(tmp_path: Path) -> Iterator[Callable[..., RunningOracle]]:
    def start(name: str = "oracle", **kwargs: Any) -> RunningOracle:
        return launch(tmp_path / name, **kwargs)

    yield from tracked(start, RunningOracle.stop)
