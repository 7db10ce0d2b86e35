"""Workflow tests: a real HTTPS Salesforce sandbox per module, the session's real broker and PostgreSQL, a fresh
Campaign database per test. `Env` holds what a workflow run needs, in-process (engine.run) or as a real
`crmsync workflow run` subprocess (its crmsync.yaml names the sandbox as the default account, `salesforce`)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
import yaml

from crmsync.config import Settings
from crmsync.infra import Endpoints
from crmsync.workflow import engine, model
from connectors.salesforce.client import SalesforceClient
from tests.salesforce.conftest import FAST_RETRIES, account_for
from tests.sandbox_salesforce.conftest import REPO, RunningSandbox, launch

EXAMPLES = REPO / "examples" / "workflows"
ACCOUNT = "salesforce"  # the default configuration's account name (crmsync.run.SANDBOX_ACCOUNT)


@pytest.fixture(scope="module")
def sf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    running = launch(tmp_path_factory.mktemp("workflow-sf") / "salesforce", seed_contacts=0)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(sf: RunningSandbox) -> SalesforceClient:
    """A client of our own to prepare and inspect the sandbox."""
    return SalesforceClient("inspect", account_for(sf), policy=FAST_RETRIES)


@dataclass
class Env:
    settings: Settings
    endpoints: Endpoints
    config_file: Path
    sandbox: RunningSandbox

    @property
    def dsn(self) -> str:
        return self.endpoints.campaign_dsn

    def run(self, workflow: str | Path | model.Workflow, file: Path | None = None) -> engine.RunResult:
        """Run a workflow in-process (an example by file name, a path, or a model)."""
        if not isinstance(workflow, model.Workflow):
            file = workflow if isinstance(workflow, Path) else EXAMPLES / workflow
            workflow = model.load(file)
        return engine.run(workflow, self.settings, self.endpoints, file=file)

    def cli(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        """`crmsync --config <ours> workflow …` as a real process."""
        return subprocess.Popen([sys.executable, "-m", "crmsync", "--config", str(self.config_file), "workflow",
                                 *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "COLUMNS": "200"}, **kwargs)

    def rows(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def execute(self, query: str, params: Any = ()) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query, params)


@pytest.fixture
def env(sf: RunningSandbox, endpoints: Endpoints, campaign_db: tuple[str, str], tmp_path: Path) -> Env:
    dsn, name = campaign_db
    account = account_for(sf)
    plain_account = {"type": "salesforce", "login_url": account.login_url, "username": account.username,
                     "password": account.password.get_secret_value(),
                     "security_token": account.security_token.get_secret_value(), "client_id": account.client_id,
                     "client_secret": account.client_secret.get_secret_value(), "ca_file": str(account.ca_file)}
    data = {"state_dir": str(tmp_path / "state"), "kafka": {"bootstrap_servers": endpoints.bootstrap_servers},
            "campaign": {"dsn": dsn, "name": name}, "accounts": {ACCOUNT: plain_account}}
    config_file = tmp_path / "crmsync.yaml"
    config_file.write_text(yaml.safe_dump(data))
    with psycopg.connect(dsn, autocommit=True) as conn:  # Campaign keys are Campaign_Key__c values in the shared
        base = random.randrange(10 ** 6, 10 ** 12)       # sandbox: every test database starts at its own number
        for sequence in ("recipients_id_seq", "leads_id_seq", "operators_id_seq"):
            conn.execute(f"ALTER SEQUENCE {sequence} RESTART WITH {base}")
    return Env(Settings.model_validate(data), Endpoints(endpoints.bootstrap_servers, dsn), config_file, sf)
