"""`crmsync run`: start every service for the configured mappings and keep them running.

With nothing configured, crmsync runs on its embedded defaults: broker and PostgreSQL (crmsync.infra), the
local Salesforce sandbox as the CRM account, and the shipped mappings. The effective configuration is written
to `<state>/run/crmsync.yaml` (mode 0600) and every service process reads it, exactly as a container would
read its own mounted crmsync.yaml. A service that dies is restarted with backoff; Ctrl-C, SIGTERM and SIGHUP
stop them all, and they die with this process if it is killed (crmsync/process.py).

The supervisor also tends what the services stand on (a thread, every WATCH_SECONDS): an embedded broker or
PostgreSQL that stopped is started again (same port, same data), and a broker that lost its memory
(crmsync/broker_loss.py) gets every service restarted and then one drift-repair pass, so what was lost with it
is re-published without a human.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import logging
from typing import Callable

import httpx
import yaml

from crmsync import broker_loss, connectors, infra, kafka, names, process
from crmsync.config import Settings
from crmsync.connectors import RunningSandbox
from crmsync.defaults import default_mappings
from crmsync.observability import WAITING_FOR_GROUP

DEFAULT_CRM = "salesforce"  # the CRM whose sandbox runs when nothing is configured
SANDBOX_ACCOUNT = DEFAULT_CRM  # the name of that sandbox's account
RESTART_DELAY = 0.2  # seconds before a dead service is started again (doubling while it keeps dying at once)
CHECK_SECONDS = 0.25  # how often `crmsync run` and the demo look for dead services (a restart is due 0.2 s after)
HEALTHY_SECONDS = 10.0  # a service that ran this long before dying is restarted at once again
WATCH_SECONDS = 2.0  # how often the embedded servers and the broker's memory are checked
READY_WAIT_SECONDS = 60.0  # after a broker loss, the repair waits this long at most for every service to be ready
REPAIR_SETTLE_SECONDS = 20.0  # a repair pass leaves out records decided this long before its reads (in flight)
REPAIR_PASSES = (0.0, 45.0)  # seconds after the services are ready: the second pass takes what the first left out
GROUP_STUCK_SECONDS = 20.0  # a consumer waiting this long for partitions from the embedded broker: its group is stuck
log = logging.getLogger("crmsync.run")


@dataclass
class ServiceSpec:
    name: str
    args: list[str] = field(default_factory=list)
    instance: int = 0  # 0: the one process of its service; 1…N: one of N workers sharing its consumer group

    @property
    def account(self) -> str | None:
        """The CRM account a per-account service (poller, CRM writer, mirror) works for."""
        return self.args[self.args.index("--account") + 1] if "--account" in self.args else None

    @property
    def label(self) -> str:
        base = " ".join([self.name, *self.args[1::2]]) if self.args else self.name
        return f"{base} {self.instance}" if self.instance else base


SCALED = ("streams", "writer-campaign", "writer-crm")  # consumer-group services: N processes split the partitions


def plan(settings: Settings, workers: int = 1) -> list[ServiceSpec]:
    """Which processes the configured mappings need (one poller and one writer per CRM account). With
    `workers` > 1 the streams and the writers run as that many processes each, splitting their topics'
    partitions (capture and the pollers stay single: one replication slot, one cursor per object)."""
    def scaled(name: str, args: list[str] | None = None) -> list[ServiceSpec]:
        if workers == 1 or name not in SCALED:
            return [ServiceSpec(name, args or [])]
        return [ServiceSpec(name, args or [], instance) for instance in range(1, workers + 1)]

    specs = [ServiceSpec("capture"), *scaled("streams"), *scaled("writer-campaign")]
    for account in sorted({m.account for m in settings.mappings}):
        specs.append(ServiceSpec("poller", ["--account", account]))
        specs += scaled("writer-crm", ["--account", account])
        specs.append(ServiceSpec("mirror", ["--account", account]))  # idles until the wizard mirrors a table
    return specs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


Sandbox = RunningSandbox  # a CRM sandbox this process started (or found running): crmsync/connectors.py


def start_sandbox(state_dir: Path, *, crm: str = DEFAULT_CRM, seed_contacts: int = 0,
                  log_file: Path | None = None) -> RunningSandbox:
    """The `crm` connector's local sandbox as a child process (it dies with this process), ready when this
    returns; recorded in the state dir so `crmsync reconcile` can find it."""
    kit = connectors.connector(crm).sandbox()
    if kit is None:
        raise RuntimeError(f"the {crm} connector ships no sandbox: configure an account in crmsync.yaml")
    sandbox = kit.start(state_dir, seed_contacts=seed_contacts, log_file=log_file)
    _sandbox_file(state_dir, crm).write_text(json.dumps({"pid": sandbox.process.pid, "url": sandbox.url,
                                                         "ca_file": str(sandbox.ca_file)}))
    return sandbox


def _sandbox_file(state_dir: Path, crm: str) -> Path:
    return state_dir / "sandboxes" / f"{crm}.running.json"


def running_sandbox(state_dir: Path, crm: str = DEFAULT_CRM) -> RunningSandbox | None:
    """The sandbox that `crmsync run` or the demo of this state directory started, if it still answers (over
    TLS, verified against the local CA): `crmsync reconcile` uses it as the CRM when no account is configured."""
    kit = connectors.connector(crm).sandbox()
    try:
        info = json.loads(_sandbox_file(state_dir, crm).read_text())
        found = kit.attach(info["url"], Path(info["ca_file"]))
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return found


def sandbox_account(sandbox: RunningSandbox) -> dict:
    return dict(sandbox.account)


def _plain(settings: Settings) -> dict:
    """Settings as plain data with secrets revealed: only for the 0600 file the services read."""
    data = settings.model_dump(mode="json")
    for name, account in settings.accounts.items():
        data["accounts"][name].update({k: v.get_secret_value() for k, v in account if hasattr(v, "get_secret_value")})
    data["kafka"].update({k: v.get_secret_value() for k, v in settings.kafka if hasattr(v, "get_secret_value")})
    return data


def effective_settings(settings: Settings, sandbox: RunningSandbox | None) -> Settings:
    """Fill in what is not configured: the sandbox account (named after its CRM type), the shipped mappings of
    the first account's connector."""
    data = _plain(settings)
    if sandbox is not None and not settings.accounts:
        data["accounts"] = {sandbox.account["type"]: sandbox_account(sandbox)}
    if not settings.mappings and data["accounts"]:
        account = next(iter(data["accounts"]))
        data["mappings"] = [m.model_dump(mode="json")
                            for m in default_mappings(account, data["accounts"][account]["type"])]
    return Settings.model_validate(data)


def only_mappings(settings: Settings, names: Iterable[str], drop_references: bool = True) -> Settings:
    """`settings` with only the mappings called `names` (in their configured order), e.g. contacts alone for a
    test or a benchmark. With `drop_references`, fields that reference a mapping left out are dropped too;
    without, such a reference fails validation, as it would in crmsync.yaml."""
    wanted = set(names)
    data = _plain(settings)
    unknown = wanted - {m["name"] for m in data["mappings"]}
    if unknown:
        raise KeyError(f"no mapping(s) called {', '.join(sorted(unknown))}")
    kept = [m for m in data["mappings"] if m["name"] in wanted]
    if drop_references:
        for mapping in kept:
            mapping["fields"] = [f for f in mapping["fields"] if not f.get("reference") or f["reference"] in wanted]
    data["mappings"] = kept
    return Settings.model_validate(data)


def write_effective_config(effective: Settings, found: infra.Endpoints, path: Path,
                           leave_out: Iterable[str] = ()) -> Path:
    """What every service process reads (`--config`), like a container's mounted crmsync.yaml. The accounts
    named in `leave_out` (those of the account store) are not written: each service reads them from the store,
    so their secrets never sit decrypted in a file."""
    data = _plain(effective)
    if effective.uses_embedded_broker:  # the services see a configured address: keep the embedded broker's tuning
        tuning = data["kafka"]
        tuning["session_timeout_ms"] = tuning.get("session_timeout_ms") or kafka.EMBEDDED_TUNING.session_timeout_ms
        if tuning.get("static_membership") is None:
            tuning["static_membership"] = False
        tuning["fetch_wait_ms"] = tuning.get("fetch_wait_ms") or kafka.EMBEDDED_TUNING.fetch_wait_ms
    for name in leave_out:
        data["accounts"].pop(name, None)
    data["kafka"]["bootstrap_servers"] = found.bootstrap_servers
    data["campaign"]["dsn"] = found.campaign_dsn
    data["state_dir"] = str(effective.state_dir.resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    return path


@dataclass
class Recovery:
    """One broker loss and what the supervisor did about it (monotonic times)."""

    noticed_at: float
    restarted_at: float | None = None
    ready_at: float | None = None
    passes: int = 0  # drift-repair passes done (REPAIR_PASSES)
    repaired_at: float | None = None  # the last pass done
    republished: int = 0


class Supervisor:
    """Keeps one child process per ServiceSpec alive; with `settings` (the effective settings) it also recovers
    from a broker that lost its memory, and with `embedded` (settings naming embedded servers) it starts those
    servers again when they stop."""

    def __init__(self, specs: list[ServiceSpec], found: infra.Endpoints, config_file: Path, log_dir: Path, *,
                 settings: Settings | None = None, embedded: Settings | None = None,
                 say: Callable[[str], None] = log.warning) -> None:
        self.specs = specs
        self.found = found
        self.config_file = config_file
        self.log_dir = log_dir
        self.children: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.failures: dict[str, int] = {}  # consecutive quick deaths: the restart delay doubles with each
        self.started_at: dict[str, float] = {}
        self.next_start: dict[str, float] = {}
        self.workflows_stop = threading.Event()
        self.metrics_ports = {spec.label: _free_port() for spec in specs}  # /metrics, /healthz, /readyz of each
        self.settings, self.embedded, self.say = settings, embedded, say
        self.recoveries: list[Recovery] = []
        self._lost = threading.Event()  # set by the watch thread, handled by check() (children start there)
        self._repair_due = threading.Event()
        self._watching = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self._waiting_since: dict[str, float] = {}  # service label → when it was first seen waiting for its group
        self.groups_reset: list[str] = []  # consumer groups deleted because the embedded broker left them stuck

    def metrics_targets(self) -> dict[str, str]:
        """Service label → its /metrics URL (what the dashboard scrapes)."""
        return {label: f"http://127.0.0.1:{port}/metrics" for label, port in self.metrics_ports.items()}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            self._spawn(spec)
        self._start_workflows()
        if self.settings is not None or self.embedded is not None:
            self._watching.set()
            self._watch_thread = threading.Thread(target=self._watch, daemon=True, name="supervisor-watch")
            self._watch_thread.start()

    def _start_workflows(self) -> None:
        """Scheduled workflows (crmsync.yaml `workflows:`) run in a thread of this process, at their cron times."""
        from crmsync import config
        from crmsync.workflow.scheduler import run_scheduled

        settings = config.load(self.config_file)
        if settings.workflows:
            threading.Thread(target=run_scheduled, args=(settings.workflows, self.workflows_stop), daemon=True,
                             kwargs={"settings": settings, "endpoints": self.found}, name="workflows").start()

    def _spawn(self, spec: ServiceSpec) -> None:
        self.started_at[spec.label] = time.monotonic()
        log_file = self.log_dir / f"{spec.label.replace(' ', '-')}.log"
        env = {"CRMSYNC_METRICS_PORT": str(self.metrics_ports[spec.label]), "CRMSYNC_METRICS_HOST": "127.0.0.1"}
        if spec.instance:  # each worker its own static group membership (a shared one would fence the other)
            env["CRMSYNC_INSTANCE_ID"] = f"{os.environ.get('CRMSYNC_INSTANCE_ID') or socket.gethostname()}-{spec.instance}"
        self.children[spec.label] = process.spawn_service(
            spec.name, self.found, config_file=self.config_file, log_file=log_file, args=spec.args, extra_env=env)

    def check(self) -> list[str]:
        """Restart services that exited (all of them after a broker loss); return the labels restarted now."""
        if self._lost.is_set():
            self._lost.clear()
            return self._restart_all()
        restarted = []
        for spec in self.specs:
            child = self.children.get(spec.label)
            if child is None or child.poll() is None:
                continue
            now = time.monotonic()
            if spec.label not in self.next_start:
                if now - self.started_at.get(spec.label, now) >= HEALTHY_SECONDS:
                    self.failures[spec.label] = 0  # it had been working: a new failure, not a crash loop
                count = self.failures.get(spec.label, 0)
                self.failures[spec.label] = count + 1
                self.next_start[spec.label] = now + min(30.0, RESTART_DELAY * 2 ** count)
            if now >= self.next_start[spec.label]:
                del self.next_start[spec.label]
                self.restarts[spec.label] = self.restarts.get(spec.label, 0) + 1
                self._spawn(spec)
                restarted.append(spec.label)
        return restarted

    def _restart_all(self) -> list[str]:
        """Every service killed and started again at once. SIGKILL, not SIGTERM: a consumer that leaves its group
        politely while it is joining the group again on the restarted embedded broker leaves that group stuck
        for good (Tansu 0.6 keeps the departed member as the group's leader: every later member waits for its
        SyncGroup forever); a killed member is dropped after its session timeout. Every service is built to be
        killed: what it was doing is done again after the restart."""
        for child in self.children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
        for spec in self.specs:
            self.failures[spec.label] = 0
            self.next_start.pop(spec.label, None)
            self.restarts[spec.label] = self.restarts.get(spec.label, 0) + 1
            self._spawn(spec)
        self.recoveries[-1].restarted_at = time.monotonic()
        self._repair_due.set()
        return [spec.label for spec in self.specs]

    def stop(self) -> None:
        """Stop every service at once (each has a few seconds to finish its batch, then it is killed)."""
        self.workflows_stop.set()
        self._watching.clear()
        if self._watch_thread is not None:
            self._watch_thread.join(30)
        process.stop_all(self.children.values())

    # -- what the services stand on (the watch thread) -----------------------------------------------------
    def _watch(self) -> None:
        while self._watching.is_set():
            started = time.monotonic()
            self._revive()
            self._check_broker_memory()
            self._unstick_groups()
            if self._repair_due.is_set():
                self._repair_when_ready()
            time.sleep(max(0.0, WATCH_SECONDS - (time.monotonic() - started)))

    def _revive(self) -> None:
        """Start again the embedded broker or PostgreSQL if it stopped (same port, same data directory)."""
        if self.embedded is None:
            return
        try:
            found = infra.up(self.embedded)
        except Exception as exc:  # noqa: BLE001 - tried again next round
            log.warning("could not start the embedded servers again: %s", exc)
            return
        if found.started:
            self.say(f"started the embedded {' and '.join(found.started)} again (it had stopped)")
        if (found.bootstrap_servers, found.campaign_dsn) != (self.found.bootstrap_servers, self.found.campaign_dsn):
            self.say("an embedded server came back on another port: restart crmsync run so the services follow it")

    def _check_broker_memory(self) -> None:
        if self.settings is None:
            return
        try:
            verdict = broker_loss.check_epoch(self.found.bootstrap_servers, self.found.campaign_dsn, timeout=2)
        except Exception as exc:  # noqa: BLE001 - the broker or the database is away: no verdict this round
            log.debug("broker epoch not checked: %s", exc)
            return
        if verdict == "lost":
            self.say("the broker lost its memory (topics, messages not consumed yet, consumer offsets): "
                     "restarting every service, then a drift-repair pass re-publishes what was lost")
            self.recoveries.append(Recovery(time.monotonic()))
            self._lost.set()

    def _unstick_groups(self) -> None:
        """The embedded broker (Tansu 0.6) can leave a consumer group stuck for good: when a member leaves it
        politely while the group is rebalancing (a service exiting on an error — PostgreSQL crashed — while a
        restarted one joins), every later member waits for its partitions forever and the sync stops, silently
        (found by bench/chaos.py --disasters). A service that has waited GROUP_STUCK_SECONDS for its partitions,
        with the broker and the database reachable, gets its group deleted: the members join a fresh group and
        read its topics again from the beginning — a replay, which the writers' compare-and-set and the
        streams' echo handling make harmless. Apache Kafka does not need this, so it is done on the embedded
        broker only."""
        if self.settings is None or self.embedded is None or not self.embedded.uses_embedded_broker:
            return
        now = time.monotonic()
        for spec in self.specs:
            group = names.service_group(spec.name, self.settings.campaign.name, spec.account)
            child = self.children.get(spec.label)
            if group is None or child is None or child.poll() is not None or not self._waits_for_group(spec.label):
                self._waiting_since.pop(spec.label, None)
                continue
            since = self._waiting_since.setdefault(spec.label, now)
            if now - since < GROUP_STUCK_SECONDS:
                continue
            try:
                kafka.delete_group(self.found.bootstrap_servers, group)
            except Exception as exc:  # noqa: BLE001 - tried again next round
                log.warning("could not delete the stuck consumer group %s: %s", group, exc)
                continue
            self.groups_reset.append(group)
            self._waiting_since.pop(spec.label, None)
            self.say(f"{spec.label} waited {now - since:.0f} s for its partitions: the embedded broker left consumer "
                     f"group {group} stuck; deleted it, so its members join afresh (they read its topics again)")

    def _waits_for_group(self, label: str) -> bool:
        """The service answers /readyz, and the one thing it waits for is its consumer group."""
        try:
            checks = httpx.get(f"http://127.0.0.1:{self.metrics_ports[label]}/readyz", timeout=1).json()["checks"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        problems = {name: reason for name, reason in checks.items() if reason != "ok"}
        return list(problems) == ["working"] and WAITING_FOR_GROUP in problems["working"]

    def _repair_when_ready(self) -> None:
        """Drift-repair passes once every service is ready (REPAIR_PASSES). Each leaves out the records the
        streams are deciding at that moment (REPAIR_SETTLE_SECONDS): re-publishing a record whose change is on
        its way would race it with a stamp of the whole record; the second pass takes what the first left."""
        recovery = self.recoveries[-1]
        now = time.monotonic()
        if recovery.ready_at is None:
            waited = now - (recovery.restarted_at or now)
            if not self._all_ready() and waited < READY_WAIT_SECONDS:
                return
            recovery.ready_at = now
        if now < recovery.ready_at + REPAIR_PASSES[recovery.passes]:
            return
        from crmsync.drift import repair_all

        assert self.settings is not None
        try:
            done = repair_all(self.settings, self.found, say=self.say, settle_seconds=REPAIR_SETTLE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - e.g. the CRM did not answer the login: next round
            self.say(f"drift repair after the broker loss failed ({exc}); trying again")
            return
        recovery.republished += done.published
        if not done.complete:  # e.g. PostgreSQL restarting: this pass counts only once every mapping was repaired
            self.say(f"drift repair after the broker loss did not reach {', '.join(done.failed)}; trying again")
            return
        recovery.passes += 1
        if recovery.passes == len(REPAIR_PASSES):
            recovery.repaired_at = time.monotonic()
            self._repair_due.clear()

    def _all_ready(self) -> bool:
        for port in self.metrics_ports.values():
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True
