"""`crmsync demo --scenario basic --exit`: scripted edits on both sides, then a convergence check.

Steps (after the initial sync converged): a Campaign edit, a CRM edit, a conflict (the same field edited on
both sides, the CRM last), a CRM delete, a duplicate (a new Campaign recipient whose email, in another case and
with spaces, belongs to an already linked contact) and a record the CRM refuses (validation rule). Converged
means: every mapped record exists on both sides with equal values (drift check), the conflict went to the later
edit and is recorded, the deleted contact's recipient is marked deleted, the duplicate created no second CRM
contact, the refused record is in the rejects ledger with Salesforce's error code, and once converged the CRM
receives no more writes for a while (no ping-pong).
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

from rich.console import Console

from crmsync import pg
from crmsync.demo import DemoRun
from crmsync.drift import DriftChecker, clients_for


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


def basic(run: DemoRun, console: Console, timeout: float = 300) -> Verdict:
    clients = clients_for(run.settings)
    account = next(iter(run.settings.accounts))
    sf = clients[account]
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
    crm_writer = next(child for label, child in run.supervisor.children.items() if label.startswith("writer-salesforce"))
    crm_writer.send_signal(signal.SIGSTOP)
    try:
        with pg.connect(run.found.campaign_dsn, autocommit=True) as conn:
            conn.execute("UPDATE recipients SET job_title = 'Chief Demo Officer' WHERE id = %s", (campaign_edit_key,))
            conn.execute("UPDATE recipients SET first_name = 'FromCampaign' WHERE id = %s", (conflict_key,))
        sf.call("update", lambda s: s.Contact.update(crm_edit_crm, {"Title": "Head of Demos"}))
        time.sleep(1.0)  # the CRM edit of the same field is later: last-modified-wins gives it to the CRM
        sf.call("update", lambda s: s.Contact.update(conflict_crm, {"FirstName": "FromCRM"}))
        time.sleep(6.0)  # the poller sees the CRM edit, the streams decide the conflict
    finally:
        crm_writer.send_signal(signal.SIGCONT)
    sf.call("delete", lambda s: s.Contact.delete(deleted_crm))
    with pg.connect(run.found.campaign_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO recipients (email, first_name, last_name) VALUES (%s, 'Dup', 'Licate')",
                     (f"  {dup_email.upper()} ",))
        # the sandbox's validation rule refuses this email: the record must land in rejects, the rest flows
        refused_key = conn.execute("INSERT INTO recipients (email, first_name, last_name) VALUES "
                                   "('refused@invalid.example', 'Val', 'Idation') RETURNING id").fetchone()[0]
    reports = wait_converged(run, checker, timeout, console)
    problems = [f"not converged: {r.summary()}" for r in reports if not r.converged]
    problems += _check_quiet(run)
    problems += _check_rejected(run, refused_key)
    problems += _check_outcomes(run, sf, campaign_edit_crm, crm_edit_key, conflict_crm, conflict_key, deleted_key,
                                dup_email)
    return Verdict(not problems, problems)


def _check_quiet(run: DemoRun, seconds: float = 8.0) -> list[str]:
    """No ping-pong: once converged, nothing is written to the CRM any more (echoes are dropped)."""
    before = run.sandbox.writes()
    time.sleep(seconds)
    after = run.sandbox.writes()
    return [] if after == before else [f"ping-pong: {after - before} CRM writes in {seconds:.0f}s after convergence"]


def _check_rejected(run: DemoRun, key: int) -> list[str]:
    with pg.connect(run.found.campaign_dsn) as conn:
        row = conn.execute("""SELECT error_code, reason FROM crmsync.rejects
                              WHERE record->'match'->>'Campaign_Key__c' = %s AND status <> 'resolved'""",
                           (str(key),)).fetchone()
    if row is None:
        return [f"recipient {key} (refused by the CRM's validation rule) has no reject"]
    return [] if row[0] == "FIELD_CUSTOM_VALIDATION_EXCEPTION" else [f"unexpected reject for {key}: {row}"]


def _soql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_outcomes(run: DemoRun, sf, campaign_edit_crm, crm_edit_key, conflict_crm, conflict_key, deleted_key,
                    dup_email) -> list[str]:
    with pg.connect(run.found.campaign_dsn) as conn:
        title = conn.execute("SELECT job_title FROM recipients WHERE id = %s", (crm_edit_key,)).fetchone()[0]
        first = conn.execute("SELECT first_name FROM recipients WHERE id = %s", (conflict_key,)).fetchone()[0]
        deleted = conn.execute("SELECT deleted FROM recipients WHERE id = %s", (deleted_key,)).fetchone()[0]
        conflicts = conn.execute("SELECT count(*) FROM crmsync.conflicts WHERE campaign_key = %s AND field = 'first_name'",
                                 (conflict_key,)).fetchone()[0]
    crm_title = sf.call("get", lambda s: s.Contact.get(campaign_edit_crm))["Title"]
    crm_first = sf.call("get", lambda s: s.Contact.get(conflict_crm))["FirstName"]
    same_email = [r for page in sf.query_all_pages(f"SELECT Id FROM Contact WHERE Email = {_soql_string(dup_email)}")
                  for r in page]
    checks = [
        (crm_title == "Chief Demo Officer", f"Campaign edit did not reach the CRM: Title is {crm_title!r}"),
        (title == "Head of Demos", f"CRM edit did not reach Campaign: job_title is {title!r}"),
        (first == "FromCRM" and crm_first == "FromCRM", f"conflict: campaign {first!r}, crm {crm_first!r}"),
        (conflicts >= 1, "conflict not recorded"),
        (deleted is True, "deleted contact's recipient is not marked deleted"),
        (len(same_email) <= 1, f"duplicate created {len(same_email)} CRM contacts with {dup_email}"),
    ]
    return [message for ok, message in checks if not ok]
