"""The local Salesforce sandbox as the connector's `sandbox()`: started as a child process for `crmsync run`,
the demo and the tests, with the account settings that reach it."""
from __future__ import annotations

import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from crmsync import process
from crmsync.connectors import RunningSandbox
from crmsync.tls import ensure_ca
from sandboxes.control import DEFAULT_ADMIN_TOKEN


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SalesforceSandboxKit:
    def start(self, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None,
              port: int | None = None) -> RunningSandbox:
        """`crmsync sandbox salesforce` on a free port (state under `state_dir`/sandboxes), ready when this returns."""
        sandboxes = state_dir / "sandboxes"
        ca_file = ensure_ca(sandboxes).resolve()
        port = port or _free_port()
        command = [sys.executable, "-m", "crmsync", "sandbox", "salesforce", "--port", str(port),
                   "--state", str(sandboxes / "salesforce"), "--seed-contacts", str(seed_contacts),
                   "--pubsub-port", "0"]
        child = process.spawn(command, log_file=log_file)
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"the Salesforce sandbox exited with status {child.returncode} (log: {log_file})")
            if _answers(url, ca_file, timeout=1):
                return RunningSandbox(child, url, ca_file, self.account(url, ca_file), DEFAULT_ADMIN_TOKEN)
            time.sleep(0.2)
        process.stop(child)
        raise RuntimeError(f"the Salesforce sandbox did not answer on {url} within 180 s (log: {log_file})")

    def attach(self, url: str, ca_file: Path) -> RunningSandbox:
        if not _answers(url, ca_file, timeout=2):
            raise ValueError(f"no Salesforce sandbox answers at {url}")
        return RunningSandbox(None, url, ca_file, self.account(url, ca_file), DEFAULT_ADMIN_TOKEN)

    def refused_contact_values(self) -> dict[str, Any]:
        return {"email": "refused@invalid.example"}  # the sandbox's validation rule on Contact.Email

    @staticmethod
    def account(url: str, ca_file: Path) -> dict[str, Any]:
        """The account settings that reach the sandbox (its default credentials)."""
        from sandboxes.salesforce.settings import DEFAULT_CREDENTIALS as creds

        return {"type": "salesforce", "login_url": url, "username": creds.username, "password": creds.password,
                "security_token": creds.security_token, "client_id": creds.client_id,
                "client_secret": creds.client_secret, "ca_file": str(ca_file), "auth": "oauth"}


def _answers(url: str, ca_file: Path, timeout: float) -> bool:
    """The sandbox answers its API over TLS verified against the local CA."""
    try:
        trust = ssl.create_default_context(cafile=str(ca_file))
        return httpx.get(f"{url}/services/data/", verify=trust, timeout=timeout).status_code == 200
    except (httpx.HTTPError, ssl.SSLError, OSError):
        return False
