"""Fixtures for the Salesforce connector tests: a real HTTPS sandbox subprocess per test module, accounts that
point at it, and a Campaign database + broker endpoints from tests/conftest.py. No mocks anywhere."""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from crmsync import kafka
from connectors.salesforce.account import SalesforceAccount
from crmsync.config import Settings
from crmsync.envelope import Reject
from crmsync.infra import Endpoints
from connectors.salesforce.client import RetryPolicy, SalesforceClient
from tests.sandbox_salesforce.conftest import RunningSandbox, launch

FAST_RETRIES = RetryPolicy(max_attempts=10, initial_wait=0.05, max_wait=0.5, jitter=0.05)


def account_for(sandbox: RunningSandbox, **overrides) -> SalesforceAccount:
    """A crmsync account that logs in to `sandbox` the way a user would configure it."""
    c = sandbox.credentials
    values = dict(login_url=sandbox.base_url, username=c.username, password=c.password,
                  security_token=c.security_token, client_id=c.client_id, client_secret=c.client_secret,
                  ca_file=sandbox.ca_path, auth="oauth")
    values.update(overrides)
    return SalesforceAccount(**values)


def unique_name(prefix: str) -> str:
    """A fresh account name per test, so topics, consumer groups and checkpoints never collide."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def settings_for(account_name: str, account: SalesforceAccount, state_dir: Path) -> Settings:
    return Settings(state_dir=state_dir, accounts={account_name: account})


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    """An empty sandbox (no seed) shared by one test module."""
    running = launch(tmp_path_factory.mktemp("sf-connector") / "salesforce", seed_contacts=0)
    yield running
    running.stop()


@pytest.fixture
def campaign_endpoints(endpoints: Endpoints, campaign_db: tuple[str, str]) -> Endpoints:
    """The session's broker with a fresh, migrated Campaign database (checkpoints, rejects)."""
    return Endpoints(bootstrap_servers=endpoints.bootstrap_servers, campaign_dsn=campaign_db[0])


def make_client(sandbox: RunningSandbox, name: str = "setup", **overrides) -> SalesforceClient:
    return SalesforceClient(name, account_for(sandbox, **overrides), policy=FAST_RETRIES)


def consume_rejects(bootstrap: str, topic: str, until: Callable[[list[Reject]], bool],
                    timeout: float = 60) -> list[Reject]:
    consumer = kafka.consumer(bootstrap, f"test-{uuid.uuid4().hex}")
    consumer.subscribe([topic])
    seen: list[Reject] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(seen):
            for message in consumer.consume(5000, 0.2):
                if message.error() is None:
                    seen.append(Reject.from_json(message.value()))
    finally:
        consumer.close()
    return seen

