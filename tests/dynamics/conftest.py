"""Fixtures for the Dataverse API client tests: one real HTTPS Dynamics sandbox subprocess for the module (from
tests/sandbox_dynamics/conftest.py) and accounts that point at it. No mocks anywhere."""
from __future__ import annotations

from typing import Any, Iterator

import pytest

from connectors.dynamics.auth import DynamicsAccount
from connectors.dynamics.client import DataverseClient
from tests.sandbox_dynamics.conftest import AppCertificate, RunningSandbox, launch, make_certificate


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
    sandbox.admin("clock", {"offset_seconds": 0})
    sandbox.admin("change-tracking", {"expire_days": 7})
