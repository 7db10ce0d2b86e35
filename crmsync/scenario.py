"""`crmsync demo --scenario basic --exit`: scripted edits on both sides, then a convergence check.

Steps (after the initial sync converged): a Campaign edit, a CRM edit, a conflict (the same field edited on
both sides, the CRM last), a CRM delete, a duplicate (a new Campaign recipient whose email, in another case and
with spaces, belongs to an already linked contact) and a record the CRM refuses (validation rule). Converged
means: every mapped record exists on both sides with equal values (drift check), the conflict went to the later
edit and is recorded, the deleted contact's recipient is marked deleted, the duplicate created no second CRM
contact, the refused record is in the rejects ledger with the CRM's error code, and once converged the CRM
receives no more writes for a while (no ping-pong). It runs against any connector's sandbox: the CRM-side edits
go through the connector's sink, as a CRM user's edits would arrive, and the checks read through its RecordQuery.
"""
from __future__ import annotations

import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from rich.console import Console

from crmsync import connectors, filters, pg
from crmsync.envelope import ApplyCommand
from crmsync.demo import DemoRun
from crmsync.drift import DriftChecker


@dataclass
class Verdict:
    ok: bool
    problems: list[str] = field(default_factory=list)


def wait_converged(run: DemoRun, checker: DriftChecker, timeout: float, console: Console) -> list:
    deadline = time.monotonic() + timeout
    while True:
        run.supervisor.check()
        reports = [checker.compare(m) for m in run.settings.mappings]
        if all(r.converged for r in reports) or time.monotonic() > deadline:
            return reports
        console.print("  not yet: " + "; ".join(f"{r.mapping} {r.summary()}" for r in reports if not r.converged),
                      highlight=False)
        time.sleep(3)


class CrmSide:
    """What the scenario does in the CRM, through the account's connector, in the contacts mapping's names."""

    def __init__(self, run: DemoRun) -> None:
        self.account = next(iter(run.settings.accounts))
        self.connector = connectors.for_account(run.settings.accounts[self.account])
        self.client = run.clients[self.account]
        self.mapping = run.settings.mapping("contacts")
        self.sink = self.connector.sink(self.client)

    def field(self, column: str) -> str:
        return next(f.crm for f in self.mapping.fields if f.campaign == column)

    def edit(self, crm_id: str, column: str, value: Any) -> None:
        self._apply(ApplyCommand(id=f"scenario:{uuid.uuid4().hex}", side="crm", target=self.account,
                                 object=self.mapping.crm_object, action="upsert", key={"id": crm_id},
                                 values={self.field(column): value}, cause="scenario"))

    def delete(self, crm_id: str) -> None:
        self._apply(ApplyCommand(id=f"scenario:{uuid.uuid4().hex}", side="crm", target=self.account,
                                 object=self.mapping.crm_object, action="delete", key={"id": crm_id}, values={},
                                 cause="scenario"))

    def value(self, crm_id: str, column: str) -> Any:
        rows = [r for page in self.connector.query(self.client).records(self.mapping.crm_object, [self.field(column)],
                                                                        ids=[crm_id]) for r in page]
        return rows[0].get(self.field(column)) if rows else None

    def with_email(self, email: str) -> list[dict]:
        where = filters.Condition(self.field("email"), "=", email)
        return [r for page in self.connector.query(self.client).records(self.mapping.crm_object, [], where=where)
                for r in page]

    def _apply(self, command: ApplyCommand) -> None:
        [outcome] = self.sink.apply([command])
        if not outcome.ok:
            raise RuntimeError(f"the scenario's CRM edit was refused: {outcome.code} {outcome.message}")


def basic(run: DemoRun, console: Console, timeout: float = 300) -> Verdict:
    clients = run.clients
    crm = CrmSide(run)
    checker = DriftChecker(run.settings, run.found, clients)
    console.print("waiting for the initial sync to converge …")
    reports = wait_converged(run, checker, timeout, console)
    if not all(r.converged for r in reports):
        return Verdict(False, [f"initial sync did not converge: {r.summary()}" for r in reports if not r.converged])
    with pg.connect(run.found.campaign_dsn) as conn:
        linked = conn.execute(
            """SELECT s.crm_id, s.campaign_key, r.email FROM crmsync.sync_state s JOIN recipients r ON r.id = s.campaign_key
               WHERE s.mapping = 'contacts' AND s.crm_id IS NOT NULL AND NOT s.deleted ORDER BY s.id LIMIT 5""").fetchall()
    (campaign_edit_crm, campaign_edit_key, _), (crm_edit_crm, crm_edit_key, _), (conflict_crm, conflict_key, _), \
        (deleted_crm, deleted_key, _), (_, _, dup_email) = linked
    console.print("scenario: edits on both sides, a conflict, a delete, a duplicate …")
    # A conflict needs both edits made before either reached the other side: hold the CRM writer (as an API
    # outage would) while the same field is edited in Campaign, then, later, in the CRM.
    crm_writer = next(child for label, child in run.supervisor.children.items() if label.startswith("writer-crm"))
    crm_writer.send_signal(signal.SIGSTOP)
    try:
        with pg.connect(run.found.campaign_dsn, autocommit=True) as conn:
            conn.execute("UPDATE recipients SET job_title = 'Chief Demo Officer' WHERE id = %s", (campaign_edit_key,))
            conn.execute("UPDATE recipients SET first_name = 'FromCampaign' WHERE id = %s", (conflict_key,))
        crm.edit(crm_edit_crm, "job_title", "Head of Demos")
        time.sleep(1.0)  # the CRM edit of the same field is later: last-modified-wins gives it to the CRM
        crm.edit(conflict_crm, "first_name", "FromCRM")
        time.sleep(6.0)  # the poller sees the CRM edit, the streams decide the conflict
    finally:
        crm_writer.send_signal(signal.SIGCONT)
    crm.delete(deleted_crm)
    refused_values = run.sandbox_kit.refused_contact_values()
    with pg.connect(run.found.campaign_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO recipients (email, first_name, last_name) VALUES (%s, 'Dup', 'Licate')",
                     (f"  {dup_email.upper()} ",))
        # a value the sandbox's rules refuse: the record must land in rejects, the rest flows
        columns = {"email": "refused@refused.example", "first_name": "Val", "last_name": "Idation", **refused_values}
        refused_key = conn.execute(
            sql.SQL("INSERT INTO recipients ({}) VALUES ({}) RETURNING id").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns))),
            list(columns.values())).fetchone()[0]
    reports = wait_converged(run, checker, timeout, console)
    problems = [f"not converged: {r.summary()}" for r in reports if not r.converged]
    problems += _check_quiet(run)
    problems += _check_rejected(run, crm, refused_key)
    problems += _check_outcomes(run, crm, campaign_edit_crm, crm_edit_key, conflict_crm, conflict_key, deleted_key,
                                dup_email)
    return Verdict(not problems, problems)


def _check_quiet(run: DemoRun, seconds: float = 8.0) -> list[str]:
    """No ping-pong: once converged, nothing is written to the CRM any more (echoes are dropped)."""
    before = run.sandbox.writes()
    time.sleep(seconds)
    after = run.sandbox.writes()
    return [] if after == before else [f"ping-pong: {after - before} CRM writes in {seconds:.0f}s after convergence"]


def _check_rejected(run: DemoRun, crm: CrmSide, key: int) -> list[str]:
    with pg.connect(run.found.campaign_dsn) as conn:
        row = conn.execute("""SELECT error_code, reason FROM crmsync.rejects
                              WHERE record->'match'->>%s = %s AND status <> 'resolved'""",
                           (crm.mapping.crm_external_id, str(key))).fetchone()
    if row is None:
        return [f"recipient {key} (refused by the CRM's rules) has no reject"]
    return [] if row[0] else [f"the reject of {key} carries no error code: {row}"]


def _check_outcomes(run: DemoRun, crm: CrmSide, campaign_edit_crm, crm_edit_key, conflict_crm, conflict_key,
                    deleted_key, dup_email) -> list[str]:
    with pg.connect(run.found.campaign_dsn) as conn:
        title = conn.execute("SELECT job_title FROM recipients WHERE id = %s", (crm_edit_key,)).fetchone()[0]
        first = conn.execute("SELECT first_name FROM recipients WHERE id = %s", (conflict_key,)).fetchone()[0]
        deleted = conn.execute("SELECT deleted FROM recipients WHERE id = %s", (deleted_key,)).fetchone()[0]
        conflicts = conn.execute("SELECT count(*) FROM crmsync.conflicts WHERE campaign_key = %s AND field = 'first_name'",
                                 (conflict_key,)).fetchone()[0]
    crm_title = crm.value(campaign_edit_crm, "job_title")
    crm_first = crm.value(conflict_crm, "first_name")
    same_email = crm.with_email(dup_email)
    checks = [
        (crm_title == "Chief Demo Officer", f"Campaign edit did not reach the CRM: the job title there is {crm_title!r}"),
        (title == "Head of Demos", f"CRM edit did not reach Campaign: job_title is {title!r}"),
        (first == "FromCRM" and crm_first == "FromCRM", f"conflict: campaign {first!r}, crm {crm_first!r}"),
        (conflicts >= 1, "conflict not recorded"),
        (deleted is True, "deleted contact's recipient is not marked deleted"),
        (len(same_email) <= 1, f"duplicate created {len(same_email)} CRM contacts with {dup_email}"),
    ]
    return [message for ok, message in checks if not ok]
