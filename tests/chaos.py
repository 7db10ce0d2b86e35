"""Concurrent edits on both sides while services are killed: the run that found silent divergence, as a harness.

A contacts pipeline (tests/pipeline.py: every service of `crmsync run` as a process, the HTTPS Salesforce
sandbox, the embedded broker and PostgreSQL, drift repair off) first converges on its seeded records. Then, for
`seconds`:

- a CRM editor and a Campaign editor each make `rate` edits per second through the real interfaces (the
  sandbox's REST API with simple-salesforce, SQL on the Campaign database): updates of linked records (~86 %),
  creates (~10 %) and deletes (~4 %), with hostile values among them (emoji and other 4-byte UTF-8, quotes,
  text that looks like a timestamp, a number or a boolean, values too long for the CRM field);
- `pairs` times, one field of one record is edited on both sides less than a second apart, in random order;
- every `kill_every` seconds one service is killed with SIGKILL, cycling through all of them (or picked at
  random: `kill_order="random"`); the supervisor restarts it as `crmsync run` does;
- with `crm_faults`, the CRM sandbox answers that share of API requests with its faults (fault levers of its
  /__sandbox/faults: rate limits, 5xx, expired sessions, stalls past the client's timeout) — the editors' own
  requests included, which retry like any client;
- with `disasters`, at those fractions of the run the embedded broker is killed (it comes back empty: memory
  lost) or PostgreSQL is stopped as by a crash (`pg_ctl -m immediate`); the supervisor starts both again, and
  recovers from the broker's loss (crmsync/broker_loss.py).

Then quiet: every consumer group catches up and the two sides are compared. `Report.problems` lists what did
not hold (a test asserts it is empty):

1. agreement: every linked pair holds equal values in every mapped field (compared as the streams compare),
   unless an open reject of that record explains the difference;
2. the last edit wins (`last_modified_wins`): each edited field holds the value of its last edit — or, when the
   two sides' last edits are less than AMBIGUITY apart, one of those two: polling sees a CRM edit with the
   record's modification stamp, which a later write to any field of the record moves (CDC would tell exactly);
3. every create reached the other side, or the rejects ledger with a reason;
4. a CRM delete marks the Campaign row deleted (`mark`); a recipient deleted in Campaign does not come back (the
   CRM record stays: `mark` has no flag to set in the CRM);
5. no email twice on either side;
6. no CRM write once quiet (no ping-pong);
7. every killed service was restarted, and `restart_seconds` says how long it took to work again;
8. every server struck by a disaster came back (and a lost broker memory was repaired).

An edit whose outcome the editor could not know (its connection died with PostgreSQL, or the CRM never answered
after every retry) may or may not have happened: its field is left out of check 2.
"""
from __future__ import annotations

import os
import random
import signal
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import httpx
import psycopg

from crmsync import infra, lag, pg
from crmsync.field_types import FieldTypes
from crmsync.values import canonical
from tests.connectors.harnesses import sandbox_admin
from tests.pipeline import World

AMBIGUITY = 3.0  # seconds: poll interval (2 s) + a poll's duration
# Campaign column -> CRM field, for the fields the editors change (contacts mapping)
EDITABLE = {"first_name": "FirstName", "last_name": "LastName", "job_title": "Title", "phone": "Phone",
            "city": "MailingCity", "zip_code": "MailingPostalCode"}
HOSTILE = ["Zoë 😀 Ünïcødé", "O'Brien \"the\" \\ quoted", "2021-06-01T00:30:00+01:00", "0001-01-01T00:30:00+01:00",
           "007", "1e3", "true", "  spaced  ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓", "NULL"]
TOO_LONG = "x" * 300  # longer than any of these CRM fields (Title 128, names 40/80, city 40, postal code 20)


@dataclass
class Edit:
    side: str  # "crm" | "campaign"
    crm_id: str
    key: int
    column: str
    value: Any
    at: float  # epoch seconds when the side had committed it


@dataclass
class Kill:
    label: str
    at: float
    restarted_at: float | None = None
    ready_at: float | None = None


@dataclass
class Disaster:
    what: str  # "broker" (killed, comes back empty) | "postgres" (stopped as by a crash)
    at: float
    back_at: float | None = None  # it answered again
    wall: float = field(default_factory=time.time)  # epoch seconds of the strike (Edit.at's clock)


@dataclass
class Report:
    edits: int = 0
    creates: int = 0
    deletes: int = 0
    pairs: int = 0
    kills: list[Kill] = field(default_factory=list)
    disasters: list[Disaster] = field(default_factory=list)
    faults_injected: dict[str, int] = field(default_factory=dict)  # by kind, as the CRM sandbox counted them
    uncertain: int = 0  # edits whose outcome the editor could not know
    linked_pairs: int = 0
    explained: int = 0  # records whose difference an open reject explains
    divergent: int = 0  # records that differ or miss their other side, no open reject saying why (goal 0)
    duplicates: int = 0  # emails held twice, both sides together (goal 0)
    conflicts: int = 0  # recorded during the run (the initial sync's are not counted)
    quiet_writes: int = 0
    catch_up_seconds: float = 0.0
    caught_up: bool = False  # every consumer group's lag stayed 0 for 5 s before the quiet timeout
    problems: list[str] = field(default_factory=list)

    @property
    def restart_seconds(self) -> list[float]:
        return [k.ready_at - k.at for k in self.kills if k.ready_at is not None]


class Chaos:
    """One run of the scenario on a started `World` (see the module docstring)."""

    def __init__(self, world: World, *, seconds: float, rate: float, pairs: int, kill_every: float | None,
                 seed: int, log: Callable[[str], None] = lambda line: None, kill_order: str = "cycle",
                 crm_faults: dict[str, float] | None = None, disasters: Sequence[tuple[float, str]] = ()) -> None:
        self.w, self.seconds, self.rate, self.pairs_wanted = world, seconds, rate, pairs
        self.kill_every, self.rng, self.log = kill_every, random.Random(seed), log
        self.kill_order, self.crm_faults, self.disasters = kill_order, crm_faults, sorted(disasters)
        self.uncertain: set[tuple[int, str]] = set()  # (key, column) of edits that may or may not have happened
        self.edits: list[Edit] = []
        self.created_crm: list[str] = []  # emails of contacts created in the CRM
        self.created_campaign: list[str] = []  # emails of recipients created in Campaign
        self.deleted_crm: set[str] = set()
        self.deleted_keys: set[int] = set()
        self.unsure_deletes: set[int] = set()  # Campaign deletes whose outcome the editor could not know
        self.report = Report()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> Report:
        self.pool = self._linked_pairs()
        self.busy: set[int] = set()  # records a same-field pair is working on
        threads = [threading.Thread(target=self._guard(self._crm_editor), name="crm-editor"),
                   threading.Thread(target=self._guard(self._campaign_editor), name="campaign-editor"),
                   threading.Thread(target=self._guard(self._pair_maker), name="pairs")]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        next_kill = started + (self.kill_every or 1e9)
        labels = [spec.label for spec in self.w.supervisor.specs]
        disasters = [(started + fraction * self.seconds, what) for fraction, what in self.disasters]
        with pg.connect(self.w.found.campaign_dsn) as conn:  # the initial sync's, not this run's
            conflicts_before = conn.execute("SELECT count(*) FROM crmsync.conflicts").fetchone()[0]
        if self.crm_faults:
            sandbox_admin(self.w.sandbox, "reset-stats", {})
            sandbox_admin(self.w.sandbox, "faults", self.crm_faults)
        try:
            while time.monotonic() - started < self.seconds:
                self._supervise()
                if time.monotonic() >= next_kill:
                    self._kill(self.rng.choice(labels) if self.kill_order == "random"
                               else labels[len(self.report.kills) % len(labels)])
                    next_kill += self.kill_every
                if disasters and time.monotonic() >= disasters[0][0]:
                    self._strike(disasters.pop(0)[1])
                time.sleep(0.05)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(60)
        self.report.edits, self.report.pairs = len(self.edits), self.report.pairs
        self.report.uncertain = len(self.uncertain)
        try:
            self._quiet()
        finally:
            if self.crm_faults:
                self.report.faults_injected = self.w.sandbox.stats()["faults_injected"]
                sandbox_admin(self.w.sandbox, "faults", {})
        self._check()
        self.report.conflicts -= conflicts_before
        return self.report

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # noqa: BLE001 - an editor that dies is a problem of the harness, reported
                self.report.problems.append(f"{threading.current_thread().name} stopped: {exc!r}")
        return run

    def _linked_pairs(self) -> list[tuple[str, int]]:
        with pg.connect(self.w.found.campaign_dsn) as conn:
            return [tuple(r) for r in conn.execute(
                "SELECT crm_id, campaign_key FROM crmsync.sync_state WHERE mapping = 'contacts' "
                "AND crm_id IS NOT NULL AND campaign_key IS NOT NULL AND NOT deleted ORDER BY id")]

    def _pick(self) -> tuple[str, int] | None:
        with self.lock:
            free = [p for p in self.pool if p[1] not in self.busy and p[1] not in self.deleted_keys
                    and p[0] not in self.deleted_crm]
            return self.rng.choice(free) if free else None

    def _value(self, column: str) -> str:
        roll = self.rng.random()
        if roll < 0.15:
            return self.rng.choice(HOSTILE)
        if roll < 0.18:
            return TOO_LONG
        suffix = "".join(self.rng.choices(string.ascii_lowercase, k=6))
        return {"zip_code": f"Z-{suffix[:5]}", "phone": f"+1 555 {self.rng.randrange(10**6):06d}"}.get(
            column, f"{column[:4]}-{suffix}")

    def _paced(self, step: Callable[[], None]) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            step()
            next_at += period
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    # -- the editors --------------------------------------------------------------------------------------------
    def _crm_editor(self) -> None:
        def step() -> None:
            roll = self.rng.random()
            if roll < 0.10:
                email = f"crm-new-{len(self.created_crm)}-{self.rng.randrange(10**9)}@chaos.example"
                if self._crm_create({"LastName": "Created", "FirstName": "In CRM", "Email": email}):
                    self.created_crm.append(email)
                    self.report.creates += 1
            elif roll < 0.14:
                pair = self._pick()
                if pair:
                    with self.lock:
                        self.deleted_crm.add(pair[0])  # even if the outcome stays unknown: left out of the checks
                    self._crm_delete(pair[0])
                    self.report.deletes += 1
            else:
                pair = self._pick()
                if pair:
                    column = self.rng.choice(list(EDITABLE))
                    self._crm_edit(pair, column, self._value(column))
        self._paced(step)

    def _crm_create(self, record: dict[str, str]) -> bool:
        """One contact, made once: the client's own retries would make a second one when an answer is lost
        (a stall past the timeout), so a failed create is looked up by email before it is tried again."""
        from simple_salesforce.exceptions import SalesforceExpiredSession

        client = self.w.client
        for _ in range(10):
            try:
                client.sf.Contact.create(record)
                return True
            except SalesforceExpiredSession:
                client.relogin()
            except Exception:  # noqa: BLE001 - a fault or a lost answer: did it land? A stalled request is carried
                time.sleep(float((self.crm_faults or {}).get("slow_seconds", 0)))  # out when its stall ends
            found = client.call("query", lambda sf: sf.query(f"SELECT Id FROM Contact WHERE Email = '{record['Email']}'"))
            if found["totalSize"]:
                return True
            time.sleep(0.3)
        return False

    def _crm_delete(self, crm_id: str) -> None:
        from simple_salesforce.exceptions import SalesforceError

        try:
            self.w.client.call("delete", lambda sf: sf.Contact.delete(crm_id))
        except SalesforceError:
            pass  # already deleted by an attempt whose answer was lost

    def _crm_edit(self, pair: tuple[str, int], column: str, value: str) -> None:
        from simple_salesforce.exceptions import SalesforceError

        from connectors.salesforce.client import retry_reason

        try:
            self.w.client.call("update", lambda sf: sf.Contact.update(pair[0], {EDITABLE[column]: value}))
        except SalesforceError as exc:
            if retry_reason(exc) is not None:  # out of retries: an earlier attempt may have landed
                self._uncertain(pair[1], column)
            return  # refused by the CRM itself (e.g. too long): not an edit that happened
        except Exception:  # noqa: BLE001 - timeouts and connection errors after every retry
            self._uncertain(pair[1], column)
            return
        self._record(Edit("crm", pair[0], pair[1], column, value, time.time()))

    def _campaign_editor(self) -> None:
        db = CampaignSession(self.w.found.campaign_dsn, self.stop)

        def step() -> None:
            roll = self.rng.random()
            if roll < 0.10:
                email = f"campaign-new-{len(self.created_campaign)}-{self.rng.randrange(10**9)}@chaos.example"
                if db.execute("INSERT INTO recipients (email, first_name, last_name) VALUES (%s, 'In', 'Campaign')",
                              (email,)):
                    self.created_campaign.append(email)
                    self.report.creates += 1
            elif roll < 0.14:
                pair = self._pick()
                if pair:
                    with self.lock:
                        self.deleted_keys.add(pair[1])  # even if the outcome stays unknown: left out of the checks
                    delete = ("DELETE FROM recipients WHERE id = %s", (pair[1],))
                    # a connection lost with the server (a PostgreSQL crash) leaves the outcome unknown: deleting is
                    # idempotent, so it is done again once the server is back; only if the run ends first is the
                    # row left out of the "came back" check (it may never have been deleted)
                    if not (db.execute(*delete) or db.execute(*delete)):
                        with self.lock:
                            self.unsure_deletes.add(pair[1])
                    self.report.deletes += 1
            else:
                pair = self._pick()
                if pair:
                    column = self.rng.choice(list(EDITABLE))
                    self._campaign_edit(db, pair, column, self._value(column))
        try:
            self._paced(step)
        finally:
            db.close()

    def _campaign_edit(self, db: "CampaignSession", pair: tuple[str, int], column: str, value: str) -> None:
        if db.execute(f"UPDATE recipients SET {column} = %s WHERE id = %s", (value, pair[1])):
            self._record(Edit("campaign", pair[0], pair[1], column, value, time.time()))
        else:
            self._uncertain(pair[1], column)

    def _uncertain(self, key: int, column: str) -> None:
        with self.lock:
            self.uncertain.add((key, column))

    def _pair_maker(self) -> None:
        """Same field, both sides, less than a second apart, in random order."""
        period = self.seconds / max(self.pairs_wanted, 1)
        db = CampaignSession(self.w.found.campaign_dsn, self.stop)
        try:
            while not self.stop.wait(period * self.rng.uniform(0.6, 1.0)):
                pair = self._pick()
                if pair is None:
                    continue
                with self.lock:
                    self.busy.add(pair[1])
                column = self.rng.choice(list(EDITABLE))
                first, second = ("crm", "campaign") if self.rng.random() < 0.5 else ("campaign", "crm")
                for side in (first, second):
                    value = f"pair-{side}-{self.rng.randrange(10**6)}"
                    if side == "crm":
                        self._crm_edit(pair, column, value)
                    else:
                        self._campaign_edit(db, pair, column, value)
                    if side == first:
                        time.sleep(self.rng.uniform(0.0, 0.9))
                self.report.pairs += 1
                with self.lock:
                    self.busy.discard(pair[1])
        finally:
            db.close()

    def _record(self, edit: Edit) -> None:
        with self.lock:
            self.edits.append(edit)

    # -- killing --------------------------------------------------------------------------------------------------
    def _kill(self, label: str) -> None:
        child = self.w.supervisor.children[label]
        child.kill()  # SIGKILL; nothing when it has died already (e.g. restarted with all after a broker loss)
        child.wait()
        self.report.kills.append(Kill(label, time.monotonic()))
        self.log(f"killed {label} at {time.time():.1f}")

    def _strike(self, what: str) -> None:
        """Kill the embedded broker (it comes back empty) or stop PostgreSQL as a crash would; the supervisor
        starts them again."""
        state = self.w.state.resolve()
        if what == "broker":
            running = infra.EmbeddedBroker(state).status()
            assert running, "the embedded broker is not running"
            os.kill(running["pid"], signal.SIGKILL)
        elif what == "postgres":
            # no waiting: the supervisor's watch thread may start the server again before pg_ctl saw it gone
            assert infra.EmbeddedPostgres(state).stop(mode="immediate", wait=False), "PostgreSQL did not take the stop"
        else:
            raise ValueError(f"unknown disaster {what!r}")
        self.report.disasters.append(Disaster(what, time.monotonic()))
        self.log(f"struck the {what} at {time.time():.1f}")

    def _supervise(self) -> None:
        for disaster in self.report.disasters:
            if disaster.back_at is None:
                server = (infra.EmbeddedBroker if disaster.what == "broker" else infra.EmbeddedPostgres)(
                    self.w.state.resolve())
                if server.status():
                    disaster.back_at = time.monotonic()
        for label in self.w.supervisor.check():
            for kill in reversed(self.report.kills):
                if kill.label == label and kill.restarted_at is None:
                    kill.restarted_at = time.monotonic()
        for kill in self.report.kills:
            if kill.restarted_at is not None and kill.ready_at is None and self._ready(kill.label):
                kill.ready_at = time.monotonic()

    def _ready(self, label: str) -> bool:
        port = self.w.supervisor.metrics_ports[label]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    # -- quiet, then the checks -------------------------------------------------------------------------------
    def _quiet(self, timeout: float = 240) -> None:
        """Until every consumer group has caught up and the comparison stops changing (or time runs out)."""
        started = time.monotonic()
        groups = lag.consumer_groups(self.w.settings)
        settled = 0
        while time.monotonic() - started < timeout:
            self._supervise()
            behind = sum(lag.total(lag.group_lag(self.w.found.bootstrap_servers, g.group, list(g.topics)))[1]
                         for g in groups)
            repairing = any(r.repaired_at is None for r in self.w.supervisor.recoveries)  # passes still to come
            settled = settled + 1 if behind == 0 and not repairing else 0
            if settled >= 10:  # 10 consecutive probes with nothing left: pollers and writers are idle too
                self.report.caught_up = True
                break
            time.sleep(0.5)
        self.report.catch_up_seconds = time.monotonic() - started
        time.sleep(3)  # one more poll interval: the last CRM echoes are read and found to be echoes
        before = self.w.sandbox.writes()
        time.sleep(8)
        self.report.quiet_writes = self.w.sandbox.writes() - before

    def _check(self) -> None:
        problems, report = self.report.problems, self.report
        checker = self.w.checker()
        mapping = self.w.settings.mappings[0]
        compared = checker.compare(mapping)
        explained = self._records_with_rejects()
        report.linked_pairs = len(self._linked_pairs())
        for crm_id, key, fields in compared.differing:
            if crm_id in explained or key in explained:
                report.explained += 1
                continue
            crm_row, row = compared.crm_rows[crm_id], compared.campaign_rows_by_key[key]
            shown = {f: (crm_row.get(_crm_name(mapping, f)), row.get(f)) for f in fields}
            report.divergent += 1
            problems.append(f"contact {crm_id} / recipient {key} differ (CRM, Campaign): {shown}")
        for what, items in (("missing in Campaign", compared.missing_in_campaign),
                            ("missing in the CRM", compared.missing_in_crm),
                            ("gone from the CRM but linked", compared.gone_from_crm),
                            ("gone from Campaign but linked", compared.gone_from_campaign)):
            unexplained = [i for i in items if i not in explained]
            report.divergent += len(unexplained)
            if unexplained:
                problems.append(f"{len(unexplained)} {what}: {unexplained[:10]}")
        self._check_last_edit_wins(compared, explained)
        self._check_creates_and_deletes()
        self._check_duplicates()
        with pg.connect(self.w.found.campaign_dsn) as conn:
            report.conflicts = conn.execute("SELECT count(*) FROM crmsync.conflicts").fetchone()[0]
        if report.quiet_writes:
            problems.append(f"{report.quiet_writes} CRM writes once quiet (ping-pong)")
        for kill in report.kills:
            if kill.restarted_at is None:
                problems.append(f"{kill.label} was killed and never restarted")
        for disaster in report.disasters:
            if disaster.back_at is None:
                problems.append(f"the {disaster.what} never came back")
        if any(d.what == "broker" for d in report.disasters):
            recoveries = self.w.supervisor.recoveries
            if not recoveries or recoveries[-1].repaired_at is None:
                problems.append(f"the broker's loss was not repaired (recoveries: {recoveries})")

    def _records_with_rejects(self) -> set:
        """CRM ids and Campaign keys of records with a reject that is not resolved (their difference is known)."""
        found: set = set()
        with pg.connect(self.w.found.campaign_dsn) as conn:
            for (record,) in conn.execute("SELECT record FROM crmsync.rejects WHERE status <> 'resolved'"):
                record = record.get("change", record) or {}
                for part in (record.get("key") or {}, record.get("match") or {}, record.get("after") or {}):
                    for name in ("Id", "crm_id"):
                        if part.get(name):
                            found.add(part[name])
                    for name in ("id", "Campaign_Key__c"):
                        if str(part.get(name) or "").isdigit():
                            found.add(int(part[name]))
        return found

    def _check_last_edit_wins(self, compared: Any, explained: set) -> None:
        mapping = self.w.settings.mappings[0]
        with pg.connect(self.w.found.campaign_dsn) as conn:
            types = FieldTypes(conn)
            kinds = {c: types.field_kind(mapping.account, mapping.crm_object, f, mapping.campaign_table, c)
                     for c, f in EDITABLE.items()}
        by_field: dict[tuple[int, str], list[Edit]] = {}
        for edit in self.edits:
            by_field.setdefault((edit.key, edit.column), []).append(edit)
        wrong = []
        for (key, column), edits in by_field.items():
            crm_id = edits[0].crm_id
            if key in explained or crm_id in explained or key in self.deleted_keys or crm_id in self.deleted_crm \
                    or (key, column) in self.uncertain:
                continue
            row = compared.campaign_rows_by_key.get(key)
            if row is None:
                continue
            edits.sort(key=lambda e: e.at)
            last = edits[-1]
            other = next((e for e in reversed(edits) if e.side != last.side), None)
            allowed = [last.value] + ([other.value] if other and last.at - other.at < AMBIGUITY else [])
            final = canonical(row.get(column), kinds[column])
            if final not in [canonical(v, kinds[column]) for v in allowed]:
                wrong.append(f"recipient {key} {column} = {row.get(column)!r}, last edits "
                             f"{[(e.side, e.value, round(e.at - last.at, 2)) for e in edits[-3:]]}, disasters "
                             f"{[(d.what, round(d.wall - last.at, 2)) for d in self.report.disasters]}")
        if wrong:
            self.report.problems.append(f"{len(wrong)} fields do not hold their last edit: {wrong[:10]}")

    def _check_creates_and_deletes(self) -> None:
        sf = self.w.client
        crm_emails = {r["Email"] for page in sf.query_all_pages(
            "SELECT Email FROM Contact WHERE Email LIKE '%chaos.example'") for r in page}
        with pg.connect(self.w.found.campaign_dsn) as conn:
            campaign_emails = {e for (e,) in conn.execute(
                "SELECT email FROM recipients WHERE email LIKE '%%chaos.example'")}
            present = {k for (k,) in conn.execute("SELECT id FROM recipients WHERE id = ANY(%s)",
                                                  (sorted(self.deleted_keys - self.unsure_deletes),))}
            marked = {crm_id for (crm_id,) in conn.execute(
                "SELECT crm_id FROM recipients WHERE deleted AND crm_id = ANY(%s)", (sorted(self.deleted_crm),))}
        lost_to_campaign = [e for e in self.created_crm if e not in campaign_emails]
        lost_to_crm = [e for e in self.created_campaign if e not in crm_emails]
        rejected = self._rejected_emails()
        lost_to_crm = [e for e in lost_to_crm if e not in rejected]
        if lost_to_campaign or lost_to_crm:
            self.report.problems.append(f"creates that never arrived: CRM→Campaign {lost_to_campaign[:5]}, "
                                        f"Campaign→CRM {lost_to_crm[:5]}")
        unmarked = sorted(self.deleted_crm - marked)
        if unmarked:
            self.report.problems.append(f"{len(unmarked)} CRM deletes did not mark their recipient deleted: "
                                        f"{unmarked[:10]}")
        if present:
            self.report.problems.append(f"{len(present)} deleted recipients came back: {sorted(present)[:10]}")

    def _rejected_emails(self) -> set[str]:
        with pg.connect(self.w.found.campaign_dsn) as conn:
            return {str(email).lower() for (email,) in conn.execute(
                "SELECT coalesce(record->'values'->>'Email', record->'change'->'after'->>'email') FROM crmsync.rejects")
                if email}

    def _check_duplicates(self) -> None:
        crm = Counter(str(r["Email"]).strip().lower() for page in self.w.client.query_all_pages(
            "SELECT Email FROM Contact WHERE Email != null") for r in page)
        with pg.connect(self.w.found.campaign_dsn) as conn:
            campaign = Counter(str(e).strip().lower() for (e,) in conn.execute(
                "SELECT email FROM recipients WHERE email IS NOT NULL AND NOT deleted"))
        for side, counts in (("CRM", crm), ("Campaign", campaign)):
            twice = [e for e, n in counts.items() if n > 1]
            self.report.duplicates += len(twice)
            if twice:
                self.report.problems.append(f"{len(twice)} emails twice in the {side}: {twice[:5]}")


class CampaignSession:
    """An editor's connection to Campaign that outlives a PostgreSQL restart: `execute` answers True when the
    statement committed, False when the connection died under it (the outcome is unknown) — then it connects
    again, waiting for the server as long as the run goes on."""

    def __init__(self, dsn: str, stop: threading.Event) -> None:
        self.dsn, self.stop = dsn, stop
        self.conn: Any = None

    def execute(self, statement: str, params: tuple) -> bool:
        while self.conn is None and not self.stop.is_set():
            try:
                self.conn = pg.connect(self.dsn, autocommit=True, application="chaos-editor")
            except psycopg.OperationalError:
                self.stop.wait(0.5)
        if self.conn is None:
            return False
        try:
            self.conn.execute(statement, params)
            return True
        except psycopg.OperationalError:
            self.close()
            return False

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


def _crm_name(mapping: Any, column: str) -> str:
    return next((f.crm for f in mapping.fields if f.campaign == column), column)
