"""Fixtures for the Dataverse API client and the Dynamics connector tests: real HTTPS Dynamics sandbox
subprocesses (tests/sandbox_dynamics/conftest.py) — one for a module, or fresh ones for a test (`start_sandbox`) —
and accounts and connector clients that point at them. No mocks anywhere."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from connectors.dynamics import CONNECTOR
from connectors.dynamics.auth import DynamicsAccount
from connectors.dynamics.client import DataverseClient
from connectors.dynamics.connector import DynamicsClient
from tests.sandbox_process import tracked
from tests.sandbox_dynamics.conftest import (AppCertificate, RunningSandbox, launch, make_certificate,
                                             start_sandbox)  # noqa: F401 - a fixture for these tests too

ACCOUNT_NAME = "dyn"


def account_for(sandbox: RunningSandbox, method: str = "client_secret", **overrides: Any) -> DynamicsAccount:
    """An account that signs in to `sandbox` the way a user would configure it (authority = the sandbox)."""
    c = sandbox.credentials
    values: dict[str, Any] = dict(url=sandbox.base_url, tenant_id=c.tenant_id, client_id=c.client_id,
                                  authority=sandbox.base_url, ca_file=sandbox.ca_path)
    if method == "client_secret":
        values["client_secret"] = c.client_secret
    elif method == "certificate":
        assert sandbox.certificate is not None
        values.update(certificate_path=sandbox.certificate.cert_path, key_path=sandbox.certificate.key_path)
    else:
        values.update(username=c.username, password=c.password)
    values.update(overrides)
    return DynamicsAccount(**values)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> AppCertificate:
    return make_certificate(tmp_path_factory.mktemp("dyn-client-certs"))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, certificate: AppCertificate) -> Iterator[RunningSandbox]:
    running = launch(tmp_path_factory.mktemp("dyn-client") / "dynamics", seed_contacts=1200,
                     certificate=certificate)
    yield running
    running.stop()


@pytest.fixture
def client(sandbox: RunningSandbox) -> Iterator[DataverseClient]:
    with DataverseClient(account_for(sandbox), backoff_seconds=0.05) as dataverse:
        yield dataverse


@pytest.fixture
def admin_reset(sandbox: RunningSandbox) -> Iterator[RunningSandbox]:
    yield sandbox
    sandbox.admin("faults", {})
    sandbox.admin("limits", {"requests_per_window": 6000, "reset": True})
    sandbox.admin("clock", {"offset_seconds": 0, "frozen": False})
    sandbox.admin("change-tracking", {"expire_days": 7})


def connector_client(sandbox: RunningSandbox, **overrides: Any) -> DynamicsClient:
    """The connector's client for an account reaching `sandbox` (client secret), as crmsync builds it."""
    client = CONNECTOR.client(ACCOUNT_NAME, account_for(sandbox, **overrides))
    client.backoff = 0.05
    return client


@pytest.fixture
def connect() -> Iterator[Callable[..., DynamicsClient]]:
    """`connect(sandbox, **account overrides)`: connector clients, closed when the test ends (a sandbox stops at
    once when no connection is left open)."""
    yield from tracked(connector_client, lambda client: client.close())


@pytest.fixture(scope="module")
def dynamics(sandbox: RunningSandbox) -> Iterator[DynamicsClient]:
    """A connector client on the module's sandbox (shared by its tests: its table catalog is read once)."""
    client = connector_client(sandbox)
    yield client
    client.close()
