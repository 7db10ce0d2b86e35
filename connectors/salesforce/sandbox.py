"""The local Salesforce sandbox as the connector's `sandbox()`: started as a child process for `crmsync run`,
the demo and the tests, with the account settings that reach it."""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

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
        from sandboxes.salesforce.settings import DEFAULT_CREDENTIALS as creds

        sandboxes = state_dir / "sandboxes"
        ca_file = ensure_ca(sandboxes).resolve()
        port = port or _free_port()
        command = [sys.executable, "-m", "crmsync", "sandbox", "salesforce", "--port", str(port),
                   "--state", str(sandboxes / "salesforce"), "--seed-contacts", str(seed_contacts),
                   "--pubsub-port", "0"]
        output = open(log_file, "ab") if log_file else subprocess.DEVNULL
        child = subprocess.Popen(command, stdout=output, stderr=output, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        url = f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(ca_file))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"the Salesforce sandbox exited with status {child.returncode} (log: {log_file})")
            try:
                if httpx.get(f"{url}/services/data/", verify=trust, timeout=1).status_code == 200:
                    account = {"type": "salesforce", "login_url": url, "username": creds.username,
                               "password": creds.password, "security_token": creds.security_token,
                               "client_id": creds.client_id, "client_secret": creds.client_secret,
                               "ca_file": str(ca_file), "auth": "oauth"}
                    return RunningSandbox(child, url, ca_file, account, DEFAULT_ADMIN_TOKEN)
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        process.stop(child)
        raise RuntimeError(f"the Salesforce sandbox did not answer on {url} within 180 s (log: {log_file})")
