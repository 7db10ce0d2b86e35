"""A whole contacts pipeline for end-to-end tests: its own embedded broker and PostgreSQL (own state dir), CRM
sandboxes seeded with contacts (Salesforce by default; `crm_pipeline` takes any CRMs, several at once), Campaign
seeded with recipients of which `shared` have a contact's email, and every service of `crmsync run` ready to
start under a Supervisor."""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from crmsync import config, connectors, infra, pg, process
from crmsync.campaign.seed import seed
from crmsync.config import Mapping, Settings
from crmsync.defaults import default_mappings
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


@dataclass
class CrmWorld:
    """Several CRMs on one Campaign: one account per CRM (named after its type), one contacts mapping each
    (`contacts_<crm>`, all on recipients)."""
    settings: Settings
    found: infra.Endpoints
    sandboxes: dict[str, Sandbox]
    supervisor: Supervisor
    clients: dict[str, Any]
    config_file: Path

    def mapping(self, crm: str) -> Mapping:
        return self.settings.mapping(f"contacts_{crm}")

    def converged(self) -> bool:
        checker = DriftChecker(self.settings, self.found, self.clients)
        return all(checker.compare(m).converged for m in self.settings.mappings)

    def summaries(self) -> list[str]:
        """Each mapping's drift report, for an assertion message."""
        checker = DriftChecker(self.settings, self.found, self.clients)
        return [checker.compare(m).summary() for m in self.settings.mappings]


def contacts_mapping(crm: str, name: str) -> Mapping:
    """`crm`'s shipped contacts mapping, called `name`, without references to the mappings left out."""
    shipped = next(m for m in default_mappings(crm, crm) if m.name == "contacts")
    return shipped.model_copy(update={"name": name, "fields": [f for f in shipped.fields if not f.reference]})


@contextmanager
def crm_pipeline(state: Path, *, crms: dict[str, int], recipients: int, shared: int = 0) -> Iterator[CrmWorld]:
    """`crms`: CRM type → contacts its sandbox is seeded with. The first `shared` recipients take emails of the
    first CRM's contacts. Seeded and configured; the caller starts `world.supervisor`; all stopped on the way out."""
    base = config.load(environ={"CRMSYNC_STATE_DIR": str(state)})
    found = infra.up(base)
    pg.migrate(found.campaign_dsn)
    sandboxes: dict[str, Sandbox] = {}
    supervisor = None
    try:
        for crm, contacts in crms.items():
            sandboxes[crm] = start_sandbox(state, crm=crm, seed_contacts=contacts, log_file=state / f"sandbox-{crm}.log")
        data = base.model_dump(mode="json")
        data["accounts"] = {crm: dict(sandbox.account) for crm, sandbox in sandboxes.items()}
        data["mappings"] = [contacts_mapping(crm, f"contacts_{crm}").model_dump(mode="json") for crm in crms]
        settings = Settings.model_validate(data)
        clients = clients_for(settings)
        first = next(iter(crms))
        email = next(f.crm for f in settings.mapping(f"contacts_{first}").fields if f.campaign == "email")
        query = connectors.for_account(settings.accounts[first]).query(clients[first])
        emails = [r[email] for page in query.records(settings.mapping(f"contacts_{first}").crm_object, [email])
                  for r in page if r.get(email)][:shared]
        seed(found.campaign_dsn, recipients, shared_emails=emails)
        config_file = write_effective_config(settings, found, state / "run" / "crmsync.yaml")
        supervisor = Supervisor(plan(settings), found, config_file, state / "logs")
        yield CrmWorld(settings, found, sandboxes, supervisor, clients, config_file)
    finally:
        if supervisor:
            supervisor.stop()
        for sandbox in sandboxes.values():
            process.stop(sandbox.process)
        infra.down(base)


def kill_each_in_turn(supervisor: Supervisor, every: float = 4.0) -> list[str]:
    """SIGKILL every service once, in plan order, `every` seconds apart, the supervisor restarting them meanwhile;
    returns the labels killed."""
    killed = []
    for spec in supervisor.specs:  # capture, streams, writer-campaign, then poller, writer-crm, mirror per account
        deadline = time.monotonic() + every
        while time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.2)
        victim = supervisor.children[spec.label]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed.append(spec.label)
    return killed


def wait_restarted(supervisor: Supervisor, count: int, timeout: float = 60) -> int:
    """Let the supervisor restart what is due until `count` restarts happened (the last one killed may still be
    waiting for its restart delay); returns the restarts counted."""
    deadline = time.monotonic() + timeout
    while sum(supervisor.restarts.values()) < count and time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.2)
    return sum(supervisor.restarts.values())
