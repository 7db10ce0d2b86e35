"""Processes never outlive what started them: `crmsync run` stops its services and sandbox on SIGTERM and they
die with it when it is killed; every service exits within seconds of SIGTERM with the broker or the database
gone; the demo stops what it started (and only that), and serves its lag dashboard."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

from crmsync import config, infra
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for

GRACE = 5.0  # crmsync service's default --stop-grace
DEMO_SIZE = ["--contacts", "40", "--recipients", "40", "--shared", "10"]


@pytest.fixture
def state() -> Iterator[Path]:
    """A state dir of its own (own embedded broker and PostgreSQL), outside basetemp (see tests/conftest.py);
    whatever embedded server is left at the end is stopped."""
    path = Path(tempfile.mkdtemp(prefix="crmsync-lifecycle-"))
    try:
        yield path
    finally:
        infra.down(_settings(path))
        shutil.rmtree(path, ignore_errors=True)


def _settings(state: Path) -> config.Settings:
    return config.load(environ={"CRMSYNC_STATE_DIR": str(state)})


def _crmsync(state: Path, *args: str, log: Path) -> subprocess.Popen:
    """`crmsync ARGS` with the zero configuration (no crmsync.yaml, no account), output to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMSYNC_", "KAFKA_", "CAMPAIGN_"))}
    env.update(CRMSYNC_STATE_DIR=str(state), XDG_CONFIG_HOME=str(state / "config"), COLUMNS="200")
    workdir = state / "workdir"  # not the state dir itself: its sandboxes/ would shadow the package of that name
    workdir.mkdir(exist_ok=True)
    with open(log, "wb") as output:
        return subprocess.Popen([sys.executable, "-m", "crmsync", *args], env=env, cwd=workdir, stdout=output,
                                stderr=subprocess.STDOUT)


def _children(parent: subprocess.Popen) -> list[psutil.Process]:
    """The services and the sandbox a crmsync process started (not the shared embedded servers)."""
    found = []
    for child in psutil.Process(parent.pid).children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "crmsync" in command and (" service " in command or " sandbox " in command):
            found.append(child)
    return found


def _gone(processes: list[psutil.Process]) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _kill(processes: list[psutil.Process]) -> None:
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _running_crmsync_run(state: Path, tmp_path: Path) -> tuple[subprocess.Popen, list[psutil.Process], Path]:
    log = tmp_path / "run.log"
    run = _crmsync(state, "run", "--dashboard-port", "0", "--repair-minutes", "0", log=log)
    wait_for(lambda: run.poll() is None and "running:" in log.read_text() or (run.poll() is not None and
             pytest.fail(log.read_text()[-3000:])), 300, "crmsync run to start everything", every=0.5)
    children = _children(run)
    assert sum(" service " in " ".join(c.cmdline()) for c in children) == 6 and len(children) == 7  # + sandbox
    return run, children, log


def test_crmsync_run_stops_everything_on_sigterm(state: Path, tmp_path: Path) -> None:
    run, children, log = _running_crmsync_run(state, tmp_path)
    try:
        run.send_signal(signal.SIGTERM)  # what systemd and docker stop send
        assert run.wait(30) == 0, log.read_text()[-3000:]
        wait_for(lambda: _gone(children), 10, "the services and the sandbox to be gone with crmsync run")
    finally:
        run.kill()
        _kill(children)


def test_children_die_with_a_killed_crmsync_run(state: Path, tmp_path: Path) -> None:
    run, children, _ = _running_crmsync_run(state, tmp_path)
    try:
        run.kill()  # kill -9: no chance to stop anything itself
        run.wait(10)
        wait_for(lambda: _gone(children), GRACE + 10, "the orphans to end (parent-death signal)")
    finally:
        _kill(children)


@pytest.mark.parametrize("gone", ["broker", "postgres"])
def test_every_service_exits_within_seconds_of_sigterm_when_a_server_is_gone(gone: str) -> None:
    state = Path(tempfile.mkdtemp(prefix="crmsync-stop-"))
    try:
        with contacts_pipeline(state, contacts=30, recipients=30, shared=10) as world:
            world.supervisor.start()
            wait_for(world.converged, 300, "the initial sync", every=1, supervisor=world.supervisor)
            server = infra.EmbeddedBroker(state.resolve()) if gone == "broker" else infra.EmbeddedPostgres(state.resolve())
            assert server.stop()
            time.sleep(8 if gone == "broker" else 2)  # retrying against the missing server (or crashed: fine)
            children = {label: c for label, c in world.supervisor.children.items() if c.poll() is None}
            assert len(children) >= 2, f"services should be retrying, not only {sorted(children)}"
            asked = time.monotonic()
            for child in children.values():
                child.send_signal(signal.SIGTERM)
            exited: dict[str, float] = {}
            while len(exited) < len(children) and time.monotonic() - asked < 30:
                for label, child in children.items():
                    if label not in exited and child.poll() is not None:
                        exited[label] = time.monotonic() - asked
                time.sleep(0.05)
            slow = {label: round(exited.get(label, 99.0), 1) for label in children
                    if exited.get(label, 99.0) > GRACE + 2}
            assert not slow, f"services still running {GRACE + 2:.0f} s after SIGTERM with the {gone} gone: {slow}"
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_the_demo_stops_the_servers_it_started(state: Path, tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    demo = _crmsync(state, "demo", "--scenario", "basic", "--exit", "--dashboard-port", "0", *DEMO_SIZE, log=log)
    try:
        assert demo.wait(600) == 0, log.read_text()[-4000:]
    finally:
        demo.kill()
    text = log.read_text()
    assert "stopped the embedded broker and postgres this demo started" in text
    assert infra.status(_settings(state)) == {"broker": None, "postgres": None}
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], leftovers


def test_ctrl_c_stops_the_demo_leaves_running_servers_and_it_serves_its_dashboard(state: Path,
                                                                                   tmp_path: Path) -> None:
    before = infra.up(_settings(state))  # already running: the demo must leave them alone
    log = tmp_path / "demo.log"
    demo = _crmsync(state, "demo", "--dashboard-port", "0", *DEMO_SIZE, log=log)
    children: list[psutil.Process] = []
    try:
        link = wait_for(lambda: demo.poll() is None and re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/\?token=(\S+)",
                                                                  log.read_text()), 300, "the demo's dashboard link")
        assert "already running: left running when the demo ends" in log.read_text()
        children = _children(demo)
        assert len(children) == 7
        with httpx.Client(base_url=link.group(1), timeout=30, follow_redirects=True) as browser:
            assert "crmsync" in browser.get(f"/?token={link.group(2)}").text  # the page, through the link
            assert browser.get("/api/status").status_code == 200
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        assert demo.wait(60) == 0, log.read_text()[-3000:]
        wait_for(lambda: _gone(children), 10, "the demo's services and sandbox to be gone")
    finally:
        demo.kill()
        _kill(children)
    status = infra.status(_settings(state))
    assert status["broker"]["pid"] and status["postgres"]["port"]  # still running, as found
    assert status["broker"]["bootstrap_servers"] == before.bootstrap_servers
