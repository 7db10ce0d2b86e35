"""One account store: accounts added with `crmsync account add` and accounts of crmsync.yaml are both visible to
every service and to `crmsync config` (crmsync.yaml wins a name clash, with a warning)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import yaml

from crmsync import infra
from tests.waiting import wait_for


def _add(cli, name: str, account, secrets: dict[str, str]) -> None:
    cli("account", "add", name, "--login-url", account.login_url, "--username", account.username,
        "--client-id", account.client_id, "--ca-file", str(account.ca_file),
        env={"CRMSYNC_ACCOUNT_PASSWORD": secrets["CRMSYNC_SF_PASSWORD"],
             "CRMSYNC_ACCOUNT_SECURITY_TOKEN": secrets["CRMSYNC_SF_SECURITY_TOKEN"],
             "CRMSYNC_ACCOUNT_CLIENT_SECRET": secrets["CRMSYNC_SF_CLIENT_SECRET"]})


def test_a_service_uses_an_account_from_the_store(cli, account, secrets, campaign_db, endpoints: infra.Endpoints,
                                                   tmp_path: Path) -> None:
    """No crmsync.yaml account at all: the poller logs in with the stored one and checkpoints its first read."""
    name = f"stored{uuid.uuid4().hex[:6]}"  # its own topics and checkpoints on the shared broker
    _add(cli, name, account, secrets)
    env = {**os.environ, **cli.env, "KAFKA_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers}
    log = tmp_path / "poller.log"
    with open(log, "wb") as output:
        poller = subprocess.Popen([sys.executable, "-m", "crmsync", "service", "poller-salesforce", "--account", name],
                                  env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        def checkpointed() -> bool:
            assert poller.poll() is None, log.read_text()[-3000:]
            with psycopg.connect(campaign_db[0]) as conn:
                row = conn.execute("SELECT position FROM crmsync.checkpoints WHERE name = %s",
                                   (f"poller:salesforce:{name}:Contact",)).fetchone()
            return bool(row and row[0].get("snapshot_done"))

        wait_for(checkpointed, 120, "the poller's first read with the stored account")
    finally:
        poller.terminate()
        poller.wait(30)
    for secret in secrets.values():
        assert secret not in log.read_text()


def test_config_shows_both_and_the_file_wins_a_clash(cli, account, secrets) -> None:
    _add(cli, "both", account, secrets)
    _add(cli, "storeonly", account, secrets)
    Path(cli.env["CRMSYNC_CONFIG"]).write_text(yaml.safe_dump({"accounts": {"both": {
        "type": "salesforce", "login_url": "https://file.example.com", "username": "file@example.com",
        "password": "file-password"}}}))
    result = cli("config")
    shown = json.loads(result.stdout[result.stdout.index("{"):])
    assert shown["accounts"]["both"]["username"] == "file@example.com"  # crmsync.yaml wins …
    assert "account 'both' is in crmsync.yaml and in the account store" in result.text  # … and says so
    assert shown["accounts"]["storeonly"]["username"] == account.username
    assert shown["accounts"]["storeonly"]["password"] == "**********"
    for secret in [*secrets.values(), "file-password"]:
        assert secret not in result.text


def test_a_mapping_may_name_a_stored_account(cli, account, secrets) -> None:
    Path(cli.env["CRMSYNC_CONFIG"]).write_text(yaml.safe_dump({"mappings": [{
        "name": "people", "account": "crmstore", "crm_object": "Contact", "campaign_table": "recipients",
        "fields": [{"crm": "Email", "campaign": "email"}]}]}))
    unknown = cli("config", ok=False)
    assert unknown.exit_code == 2
    assert "mapping 'people' uses account 'crmstore'" in unknown.text and "crmsync account list" in unknown.text
    _add(cli, "crmstore", account, secrets)
    shown = cli("config").stdout
    assert json.loads(shown[shown.index("{"):])["mappings"][0]["account"] == "crmstore"
