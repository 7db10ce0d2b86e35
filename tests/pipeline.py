"""A whole contacts pipeline for end-to-end tests: its own embedded broker and PostgreSQL (own state dir), the
Salesforce sandbox seeded with contacts, Campaign seeded with recipients of which `shared` have a contact's
email, and every service of `crmsync run` ready to start under a Supervisor."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from crmsync import config, infra, pg, process
from crmsync.campaign.seed import seed
from crmsync.config import Settings
from crmsync.drift import DriftChecker, clients_for
from crmsync.run import Sandbox, Supervisor, effective_settings, only_mappings, plan, start_sandbox, write_effective_config


@dataclass
class World:
    settings: Settings  # effective: the sandbox account, the contacts mapping alone
    found: infra.Endpoints
    sandbox: Sandbox
    supervisor: Supervisor
    client: Any  # SalesforceClient of the sandbox account
    config_file: Path
    state: Path

    def checker(self) -> DriftChecker:
        return DriftChecker(self.settings, self.found, clients_for(self.settings))

    def converged(self) -> bool:
        return self.checker().compare(self.settings.mappings[0]).converged


@contextmanager
def contacts_pipeline(state: Path, *, contacts: int, recipients: int, shared: int, account: dict | None = None,
                      **mapping: Any) -> Iterator[World]:
    """Seeded and configured; the caller starts `world.supervisor`. Everything is stopped on the way out.
    `mapping` overrides settings of the contacts mapping (e.g. crm_external_id=None), `account` settings of the
    sandbox account (e.g. request_timeout=3)."""
    base = config.load(environ={"CRMSYNC_STATE_DIR": str(state)})
    found = infra.up(base)
    pg.migrate(found.campaign_dsn)
    sandbox = start_sandbox(state, seed_contacts=contacts, log_file=state / "sandbox.log")
    supervisor = None
    try:
        effective = only_mappings(effective_settings(base, sandbox), ["contacts"])
        if mapping:
            effective = effective.model_copy(update={"mappings": [effective.mappings[0].model_copy(update=mapping)]})
        if account:
            name = effective.mappings[0].account
            effective = effective.model_copy(update={"accounts": {
                name: effective.accounts[name].model_copy(update=account)}})
        client = clients_for(effective)["salesforce"]
        seed(found.campaign_dsn, recipients, shared_emails=[r["Email"] for page in client.query_all_pages(
            f"SELECT Email FROM Contact ORDER BY Id LIMIT {shared}") for r in page])
        config_file = write_effective_config(effective, found, state / "run" / "crmsync.yaml")
        supervisor = Supervisor(plan(effective), found, config_file, state / "logs", settings=effective,
                                embedded=base, say=lambda line: print(f"supervisor: {line}"))
        yield World(effective, found, sandbox, supervisor, client, config_file, state)
    finally:
        if supervisor:
            supervisor.stop()
        process.stop(sandbox.process)
        infra.down(base)
