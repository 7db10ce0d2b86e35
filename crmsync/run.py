"""`crmsync run`: start every service for the configured mappings and keep them running.

With nothing configured, crmsync runs on its embedded defaults: broker and PostgreSQL (crmsync.infra), the
local Salesforce sandbox as the CRM account, and the shipped mappings. The effective configuration is written
to `<state>/run/crmsync.yaml` (mode 0600) and every service process reads it, exactly as a container would
read its own mounted crmsync.yaml. A service that dies is restarted with backoff; Ctrl-C, SIGTERM and SIGHUP
stop them all, and they die with this process if it is killed (crmsync/process.py).
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

import httpx
import yaml

from crmsync import connectors, infra, kafka, process
from crmsync.config import Settings
from crmsync.connectors import RunningSandbox
from crmsync.defaults import default_mappings

DEFAULT_CRM = "salesforce"  # the CRM whose sandbox runs when nothing is configured
SANDBOX_ACCOUNT = DEFAULT_CRM  # the name of that sandbox's account
RESTART_DELAY = 0.2  # seconds before a dead service is started again (doubling while it keeps dying at once)
HEALTHY_SECONDS = 10.0  # a service that ran this long before dying is restarted at once again


@dataclass
class ServiceSpec:
    name: str
    args: list[str] = field(default_factory=list)
    instance: int = 0  # 0: the one process of its service; 1…N: one of N workers sharing its consumer group

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


class Supervisor:
    """Keeps one child process per ServiceSpec alive."""

    def __init__(self, specs: list[ServiceSpec], found: infra.Endpoints, config_file: Path, log_dir: Path) -> None:
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

    def metrics_targets(self) -> dict[str, str]:
        """Service label → its /metrics URL (what the dashboard scrapes)."""
        return {label: f"http://127.0.0.1:{port}/metrics" for label, port in self.metrics_ports.items()}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            self._spawn(spec)
        self._start_workflows()

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
        """Restart services that exited; return the labels restarted now."""
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

    def stop(self) -> None:
        """Stop every service at once (each has a few seconds to finish its batch, then it is killed)."""
        self.workflows_stop.set()
        process.stop_all(self.children.values())
