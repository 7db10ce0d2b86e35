"""The service entry points run as real processes, do their work, and stop cleanly on SIGTERM."""
from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import yaml

from crmsync import names
from crmsync.infra import Endpoints
from tests.sandbox_salesforce.conftest import REPO

from tests.waiting import wait_for

from .conftest import make_client, unique_name
from .test_writer import produce, upsert_command

SCRIPT = """
import sys
from crmsync import config, process
from crmsync.infra import Endpoints
from services.crm_poller.service import run as run_poller
from services.crm_writer.service import run as run_writer
settings = config.load(sys.argv[1])
found = Endpoints(bootstrap_servers=sys.argv[3], campaign_dsn=sys.argv[4])
if sys.argv[2] == "poller":
    run_poller(settings, found, sys.argv[5], ["Lead"], 0.5, stop=process.stop_on_signals())
else:
    run_writer(settings, found, sys.argv[5], stop=process.stop_on_signals(), objects=["Contact"])
"""


def start(kind: str, sandbox, endpoints: Endpoints, name: str, tmp_path: Path) -> subprocess.Popen:
    c = sandbox.credentials
    config_file = tmp_path / "crmsync.yaml"
    config_file.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "accounts": {name: {
        "type": "salesforce", "login_url": sandbox.base_url, "username": c.username, "password": c.password,
        "security_token": c.security_token, "client_id": c.client_id, "client_secret": c.client_secret,
        "ca_file": str(sandbox.ca_path)}}}))
    log = open(tmp_path / f"{kind}.log", "wb")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(config_file), kind, endpoints.bootstrap_servers,
                             endpoints.campaign_dsn, name], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def stop_gracefully(process: subprocess.Popen, log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()


def test_poller_service_checkpoints_then_stops_on_sigterm(module_sandbox, campaign_endpoints, tmp_path) -> None:
    name = unique_name("s1")
    process = start("poller", module_sandbox, campaign_endpoints, name, tmp_path)

    def checkpointed() -> bool:
        assert process.poll() is None, (tmp_path / "poller.log").read_text()
        with psycopg.connect(campaign_endpoints.campaign_dsn) as conn:
            row = conn.execute("SELECT position FROM crmsync.checkpoints WHERE name = %s",
                               (names.poller_checkpoint(name, "Lead"),)).fetchone()
        return bool(row and row[0]["snapshot_done"])

    wait_for(checkpointed, 60, "the poller's checkpoint")
    stop_gracefully(process, tmp_path / "poller.log")


def test_writer_service_applies_then_stops_on_sigterm(module_sandbox, campaign_endpoints, tmp_path) -> None:
    name, marker = unique_name("s2"), f"svc-{uuid.uuid4().hex[:8]}"
    produce(campaign_endpoints.bootstrap_servers, name, [upsert_command(name, f"{marker}-{i}", marker)
                                                         for i in range(10)])
    process = start("writer", module_sandbox, campaign_endpoints, name, tmp_path)
    client = make_client(module_sandbox)

    def landed() -> bool:
        assert process.poll() is None, (tmp_path / "writer.log").read_text()
        pages = client.query_all_pages(f"SELECT Id FROM Contact WHERE Description = '{marker}'")
        return sum(len(p) for p in pages) == 10

    wait_for(landed, 60, "the command to land in the sandbox")
    stop_gracefully(process, tmp_path / "writer.log")
