"""Run the Dynamics sandbox as a real subprocess (`python -m sandboxes.cli dynamics`) for tests.

`sandbox` is one server for the whole session (1,200 seeded contacts, enough to page; a certificate registered
on the app; `login.microsoftonline.com` and the environment host in its certificate); `start_sandbox` starts more
(restarts, the 100k seed) and stops them at teardown. Each server listens on a port the OS picks (`--port 0`)
and has its own temporary state directory and CA.

Clients get the sandbox CA explicitly. This machine may export REQUESTS_CA_BUNDLE, which `requests` lets
override a session's `verify`; sessions made here set `trust_env = False`, and tests of clients that build their
own sessions set REQUESTS_CA_BUNDLE to the sandbox CA with monkeypatch.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sandboxes.dynamics.settings import DEFAULT_ADMIN_TOKEN, DEFAULT_CREDENTIALS, Credentials
from tests.sandbox_process import SandboxHandle, spawn, started_sandboxes

REPO = Path(__file__).resolve().parents[2]
_BANNER = re.compile(r"Dynamics sandbox: (https://\S+)\s+\(CA: (.+)\)")
LOGIN_HOST = "login.microsoftonline.com"
ORG_HOST = "crmsync.crm.dynamics.com"


@dataclass(frozen=True)
class AppCertificate:
    """A certificate registered on the app registration, and its private key (PEM files)."""
    cert_path: Path
    key_path: Path

    @property
    def key_pem(self) -> str:
        return self.key_path.read_text()

    @property
    def cert_pem(self) -> str:
        return self.cert_path.read_text()

    @property
    def sha1_thumbprint(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        return cert.fingerprint(hashes.SHA1()).hex().upper()  # nosec: x5t is SHA-1 by spec


def make_certificate(directory: Path, name: str = "app") -> AppCertificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"crmsync test {name}")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return AppCertificate(cert_path, key_path)


@dataclass
class RunningSandbox(SandboxHandle):
    base_url: str  # https://127.0.0.1:PORT
    ca_path: Path
    credentials: Credentials
    certificate: AppCertificate | None
    admin_token: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def api(self) -> str:
        return f"{self.base_url}/api/data/v9.2"

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.credentials.tenant_id}"

    def token(self, resource: str | None = None) -> str:
        """An app-only token from the sandbox's token endpoint (client secret)."""
        c = self.credentials
        response = self.session().post(f"{self.authority}/oauth2/v2.0/token", timeout=30, data={
            "grant_type": "client_credentials", "client_id": c.client_id, "client_secret": c.client_secret,
            "scope": f"{resource or self.base_url}/.default"})
        response.raise_for_status()
        return response.json()["access_token"]

    def api_session(self, **headers: str) -> requests.Session:
        """A session with a bearer token and the headers Dataverse documents as recommended."""
        session = self.session()
        session.headers.update({"Authorization": f"Bearer {self.token()}", "Accept": "application/json",
                                "OData-MaxVersion": "4.0", "OData-Version": "4.0", **headers})
        return session


def launch(state_dir: Path, *, seed_contacts: int = 0, certificate: AppCertificate | None = None,
           timeout: float = 120) -> RunningSandbox:
    """Start a sandbox process and wait until it answers HTTPS; output goes to <state_dir>.log."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir.with_suffix(".log")  # a restart appends to the same log
    command = [sys.executable, "-m", "sandboxes.cli", "dynamics", "--port", "0", "--state", str(state_dir),
               "--seed-contacts", str(seed_contacts), "--tls-name", LOGIN_HOST, "--tls-name", ORG_HOST,
               "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_DYN_")}
    if certificate is not None:
        env["CRMSYNC_DYN_CERTIFICATE"] = str(certificate.cert_path)
    process, match = spawn(command, cwd=REPO, log_path=log_path, banner=_BANNER, env=env, timeout=timeout)
    return RunningSandbox(match.group(1), Path(match.group(2)), DEFAULT_CREDENTIALS, certificate,
                          DEFAULT_ADMIN_TOKEN, state_dir, process, log_path)


@pytest.fixture(scope="session")
def app_certificate(tmp_path_factory: pytest.TempPathFactory) -> AppCertificate:
    return make_certificate(tmp_path_factory.mktemp("dyn-certs"))


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, app_certificate: AppCertificate) -> Iterator[RunningSandbox]:
    running = launch(tmp_path_factory.mktemp("dyn-sandbox") / "dynamics", seed_contacts=1200,
                     certificate=app_certificate)
    yield running
    running.stop()


@pytest.fixture
def start_sandbox(tmp_path: Path) -> Iterator[Callable[..., RunningSandbox]]:
    yield from started_sandboxes(tmp_path, launch, "dynamics")


@pytest.fixture
def admin_reset(sandbox: RunningSandbox) -> Iterator[RunningSandbox]:
    """The shared sandbox, with faults, limits, clock and change-tracking expiry put back after the test."""
    yield sandbox
    sandbox.admin("faults", {})
    sandbox.admin("limits", {"requests_per_window": 6000, "execution_seconds_per_window": 1200,
                             "window_seconds": 300, "max_concurrent_requests": 52, "reset": True})
    sandbox.admin("clock", {"offset_seconds": 0, "frozen": False})
    sandbox.admin("change-tracking", {"expire_days": 7})
