"""Wizard tests: a sandbox of their own (they add fields to it) with unique secrets, a fresh Campaign database per
test, and a `cli` helper that runs `crmsync …` in-process and keeps every output for the secret scan."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.config import SalesforceAccount
from tests.sandbox_salesforce.conftest import RunningSandbox, launch

SECRETS = {"CRMSYNC_SF_PASSWORD": f"Pw-{uuid.uuid4().hex[:12]}", "CRMSYNC_SF_SECURITY_TOKEN": f"Tk{uuid.uuid4().hex[:14]}",
           "CRMSYNC_SF_CLIENT_SECRET": f"Cs-{uuid.uuid4().hex[:12]}"}


@pytest.fixture(scope="session")
def secrets() -> dict[str, str]:
    """Through a fixture, not an import: pytest may load this conftest under another module name than tests do."""
    return SECRETS


@pytest.fixture(scope="module")
def sf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    saved = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)  # launch() passes the environment to the sandbox: these become its credentials
    try:
        running = launch(tmp_path_factory.mktemp("wizard-sf") / "salesforce", seed_contacts=40)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    yield running
    running.stop()


@pytest.fixture
def account(sf: RunningSandbox) -> SalesforceAccount:
    return SalesforceAccount(login_url=sf.base_url, username=sf.credentials.username,
                             password=SECRETS["CRMSYNC_SF_PASSWORD"],
                             security_token=SECRETS["CRMSYNC_SF_SECURITY_TOKEN"], client_id=sf.credentials.client_id,
                             client_secret=SECRETS["CRMSYNC_SF_CLIENT_SECRET"], ca_file=sf.ca_path)


@dataclass
class Cli:
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    def __call__(self, *args: str, ok: bool = True, env: dict[str, str] | None = None, input: str | None = None):
        result = CliRunner().invoke(app, list(args), env={**self.env, **(env or {})}, input=input)
        text = result.output  # Click ≥ 8.2: stdout and stderr, interleaved
        if result.stderr_bytes and result.stderr not in text:
            text += result.stderr
        self.outputs.append(text)
        if ok:
            assert result.exit_code == 0, f"crmsync {' '.join(args)} failed ({result.exit_code}):\n{text}\n" \
                                          f"{result.exception!r}"
        result.text = text
        return result


@pytest.fixture
def cli(campaign_db: tuple[str, str], tmp_path: Path) -> Cli:
    config_file = tmp_path / "crmsync.yaml"
    config_file.write_text("{}\n")
    state = tmp_path / "state"
    state.mkdir()
    return Cli({"CAMPAIGN_DSN": campaign_db[0], "CRMSYNC_STATE_DIR": str(state), "CRMSYNC_CONFIG": str(config_file),
                "CRMSYNC_SECRET_KEY": "", "CRMSYNC_SECRET_KEY_FILE": "",
                "XDG_CONFIG_HOME": str(tmp_path / "config"),  # where the accounts' key is made: this test's own
                "COLUMNS": "200"})


@pytest.fixture
def added(cli: Cli, account: SalesforceAccount) -> Cli:
    """`crmsync account add sf …` done, secrets given through the environment."""
    cli("account", "add", "sf", "--login-url", account.login_url, "--username", account.username,
        "--client-id", account.client_id, "--ca-file", str(account.ca_file),
        env={"CRMSYNC_ACCOUNT_PASSWORD": SECRETS["CRMSYNC_SF_PASSWORD"],
             "CRMSYNC_ACCOUNT_SECURITY_TOKEN": SECRETS["CRMSYNC_SF_SECURITY_TOKEN"],
             "CRMSYNC_ACCOUNT_CLIENT_SECRET": SECRETS["CRMSYNC_SF_CLIENT_SECRET"]})
    return cli
