"""`crmsync demo`: two-way sync Salesforce (the local sandbox) ⇄ Campaign, live, on the embedded defaults.

The Salesforce sandbox is seeded with 1,000 contacts, the Campaign database with 1,000 recipients of which 300
share an email with a contact; then every service runs and a status table shows records each way, lag,
conflicts and rejects until Ctrl-C. `--scenario basic --exit` plays scripted edits (crmsync/scenario.py) and
exits 0 only when both sides converged.

What the demo starts, it stops — on exit, Ctrl-C, SIGTERM or SIGHUP: the services, the sandbox, the
dashboard, and the embedded broker and PostgreSQL when it started them itself (when they were running
already, they are left running and the demo says so).
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from crmsync import connectors, filters, infra, lag, names, pg, process, topics
from crmsync.campaign.seed import seed
from crmsync.config import Settings
from crmsync.drift import open_clients
from crmsync.infra import Endpoints
from crmsync.run import (CHECK_SECONDS, DEFAULT_CRM, Sandbox, Supervisor, effective_settings, plan, start_sandbox,
                         write_effective_config)

STREAMS_GROUP = names.STREAMS_GROUP


@dataclass
class DemoRun:
    settings: Settings  # effective: the sandbox account and the shipped mappings filled in
    found: Endpoints
    sandbox: Sandbox
    supervisor: Supervisor
    clients: dict[str, Any]  # account → its logged-in client, closed when the demo ends
    sandbox_kit: Any = None  # the CRM's SandboxKit (what its rules refuse, for the scenario)


def _shared_emails(settings: Settings, client: Any, count: int) -> list[str]:
    """Emails of `count` contacts of the CRM (through its connector's RecordQuery), for Campaign's seed."""
    account = next(iter(settings.accounts))
    connector = connectors.for_account(settings.accounts[account])
    email = next(f.crm for f in settings.mapping("contacts").fields if f.campaign == "email")
    query = connector.query(client)
    found: list[str] = []
    for page in query.records(settings.mapping("contacts").crm_object, [email],
                              where=filters.Condition(email, "is not empty"), order_by=[(email, False)]):
        found += [row[email] for row in page]
        if len(found) >= count:
            break
    return found[:count]


def keep_or_stop_infrastructure(settings: Settings, found: Endpoints, running: ExitStack, console: Console) -> None:
    """The embedded servers this demo started are stopped when it ends; those it found running are left."""
    embedded = [name for name, external in (("broker", settings.kafka.bootstrap_servers),
                                            ("postgres", settings.campaign.dsn)) if not external]
    found_running = [name for name in embedded if name not in found.started]
    if found_running:
        console.print(f"using the embedded {' and '.join(found_running)} already running: left running when the demo "
                      "ends (`crmsync infra down` stops them)", highlight=False)
    if found.started:
        def stop() -> None:
            stopped = [name for name, was in infra.down(settings, only=found.started).items() if was]
            console.print(f"stopped the embedded {' and '.join(stopped) or 'servers'} this demo started", highlight=False)

        running.callback(stop)


SEEDED_WORDS = ("organisations.industry", "purchases.stage")  # picklist-like columns the Campaign seed fills


def _vocabularies(settings: Settings, client: Any) -> dict[str, list[str]]:
    """The values the CRM's picklists allow for the seeded picklist-like columns, as its API writes them, so the
    seeded Campaign holds values the CRM accepts (its sandbox seeds the same people with the same rule)."""
    account = next(iter(settings.accounts))
    discovery = connectors.for_account(settings.accounts[account]).discovery(client)
    found: dict[str, list[str]] = {}
    for mapping in settings.mappings:
        wanted = {fm.crm: f"{mapping.campaign_table}.{fm.campaign}" for fm in mapping.fields
                  if f"{mapping.campaign_table}.{fm.campaign}" in SEEDED_WORDS}
        if not wanted:
            continue
        spec = discovery.describe_table(mapping.crm_object)
        enumerations = {e.name: e for e in spec.enumerations}
        for field_spec in spec.fields:
            enumeration = enumerations.get(field_spec.enumeration or "")
            if field_spec.name in wanted and enumeration and enumeration.values:
                found[wanted[field_spec.name]] = [str(v["value"]) for v in enumeration.values]
    return found


def start(settings: Settings, found: Endpoints, running: ExitStack, *, contacts: int, recipients: int, shared: int,
          console: Console, crm: str = DEFAULT_CRM) -> DemoRun:
    """Sandbox (seeded), Campaign (seeded, with shared emails), then every service under a supervisor; each
    is stopped by `running` when the demo ends."""
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    connector = connectors.connector(crm)
    console.print(f"starting the {connector.label} sandbox ({contacts:,} contacts) …")
    sandbox = start_sandbox(settings.state_dir, crm=crm, seed_contacts=contacts, log_file=log_dir / f"sandbox-{crm}.log")
    running.callback(process.stop, sandbox.process)
    effective = effective_settings(settings, sandbox)
    clients = running.enter_context(open_clients(effective))  # the demo's own, logged off when it ends
    client = clients[next(iter(effective.accounts))]
    with pg.connect(found.campaign_dsn) as conn:
        empty = conn.execute("SELECT count(*) FROM recipients").fetchone()[0] == 0
    if empty:
        emails = _shared_emails(effective, client, shared)
        console.print(f"seeding Campaign: {recipients:,} recipients, {len(emails)} sharing an email with a contact …")
        seed(found.campaign_dsn, recipients, shared_emails=emails, vocabularies=_vocabularies(effective, client))
    config_file = write_effective_config(effective, found, settings.state_dir / "run" / "crmsync.yaml")
    supervisor = Supervisor(plan(effective), found, config_file, log_dir, settings=effective, embedded=settings,
                            say=lambda line: console.print(f"[yellow]{line}[/yellow]"))
    running.callback(supervisor.stop)
    supervisor.start()
    console.print(f"services started: {', '.join(s.label for s in supervisor.specs)} (logs: {log_dir})")
    return DemoRun(effective, found, sandbox, supervisor, clients, connector.sandbox())


def status(run: DemoRun) -> dict:
    """Numbers for the status table: commands each way and how many are still to apply, conflicts, rejects."""
    s, found = run.settings, run.found
    to_campaign = [topics.apply("campaign", s.campaign.name, m.campaign_table) for m in s.mappings]
    to_crm = [topics.apply("crm", m.account, m.crm_object) for m in s.mappings]
    crm_changes = [topics.changes("crm", m.account, m.crm_object) for m in s.mappings]
    campaign_changes = [topics.changes("campaign", s.campaign.name, m.campaign_table) for m in s.mappings]
    account = next(iter(s.accounts))
    produced_in, lag_in = lag.total(lag.group_lag(found.bootstrap_servers, names.campaign_writer_group(s.campaign.name), sorted(set(to_campaign))))
    produced_out, lag_out = lag.total(lag.group_lag(found.bootstrap_servers, names.crm_writer_group(account), sorted(set(to_crm))))
    _, lag_streams = lag.total(lag.group_lag(found.bootstrap_servers, STREAMS_GROUP, sorted(set(crm_changes + campaign_changes))))
    with pg.connect(found.campaign_dsn) as conn:
        conflicts = conn.execute("SELECT count(*) FROM crmsync.conflicts").fetchone()[0]
        rejects = conn.execute("SELECT count(*) FROM crmsync.rejects WHERE status <> 'resolved'").fetchone()[0]
        links = dict(conn.execute("SELECT mapping, count(*) FROM crmsync.sync_state WHERE crm_id IS NOT NULL "
                                  "AND campaign_key IS NOT NULL AND NOT deleted GROUP BY mapping").fetchall())
    return {"crm_to_campaign": produced_in - lag_in, "campaign_to_crm": produced_out - lag_out,
            "lag_writer_campaign": lag_in, "lag_writer_crm": lag_out, "lag_streams": lag_streams,
            "conflicts": conflicts, "rejects": rejects, "links": links}


def status_table(numbers: dict, started: float, dashboard_url: str | None = None) -> Table:
    table = Table(title=f"crmsync demo — Salesforce sandbox ⇄ Campaign ({time.monotonic() - started:,.0f}s; Ctrl-C stops)",
                  caption=f"lag dashboard: {dashboard_url} (open the link with its token printed above)"
                  if dashboard_url else None)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("records applied CRM → Campaign", f"{numbers['crm_to_campaign']:,}")
    table.add_row("records applied Campaign → CRM", f"{numbers['campaign_to_crm']:,}")
    table.add_row("lag: changes not yet decided (streams)", f"{numbers['lag_streams']:,}")
    table.add_row("lag: commands not yet applied to Campaign / CRM",
                  f"{numbers['lag_writer_campaign']:,} / {numbers['lag_writer_crm']:,}")
    table.add_row("conflicts recorded", f"{numbers['conflicts']:,}")
    table.add_row("rejects open", f"{numbers['rejects']:,}")
    for mapping, count in sorted(numbers["links"].items()):
        table.add_row(f"linked pairs: {mapping}", f"{count:,}")
    return table


def watch(run: DemoRun, console: Console, until: float | None = None, dashboard_url: str | None = None) -> None:
    started = time.monotonic()
    with Live(status_table(status(run), started, dashboard_url), console=console, refresh_per_second=2) as live:
        shown = 0.0
        while until is None or time.monotonic() < until:
            time.sleep(CHECK_SECONDS)
            run.supervisor.check()
            if time.monotonic() - shown >= 1.0:  # the table reads the database: once a second is enough
                live.update(status_table(status(run), started, dashboard_url))
                shown = time.monotonic()
