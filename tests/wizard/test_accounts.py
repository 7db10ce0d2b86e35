"""External accounts: https only, encrypted secrets, masked output, real login test, clear login errors."""
from __future__ import annotations

import logging
import stat
from pathlib import Path

import psycopg



def test_http_login_url_is_refused(cli) -> None:
    result = cli("account", "add", "plain", "--login-url", "http://login.salesforce.com", "--username", "u",
                 env={"CRMSYNC_ACCOUNT_PASSWORD": "whatever"}, ok=False)
    assert result.exit_code == 2
    assert "login_url: must be an https:// URL" in result.text
    assert "plain" not in cli("account", "list").text


def test_secrets_are_encrypted_masked_and_never_printed_or_logged(added, campaign_db, caplog, secrets) -> None:
    caplog.set_level(logging.DEBUG)
    listed = added("account", "list").text
    assert "sf" in listed and "database" in listed and "not configured" in listed
    shown = added("account", "show", "sf").text
    assert "********" in shown and "integration@crmsync.example" in shown
    tested = added("account", "test", "sf").text  # login works: `secrets` are the ones in use
    assert "login OK" in tested and "crmsync Sandbox Org" in tested and "API version: 59.0" in tested
    added("wizard", "sf", "--tables", "Account", "--yes")
    assert "configured" in added("account", "list").text.replace("not configured", "")
    with psycopg.connect(campaign_db[0]) as conn:
        stored = conn.execute("SELECT settings::text || secrets FROM crmsync.external_accounts").fetchone()[0]
    key_file = Path(added.env["XDG_CONFIG_HOME"]) / "crmsync" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    everything = "\n".join(added.outputs) + caplog.text + stored
    for secret in secrets.values():
        assert secret not in everything


def test_wrong_password_gives_a_clear_error_without_the_secret(cli, account, caplog, secrets) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-" + secrets["CRMSYNC_SF_PASSWORD"][::-1]
    cli("account", "add", "bad", "--login-url", account.login_url, "--username", account.username,
        "--client-id", account.client_id, "--ca-file", str(account.ca_file),
        env={"CRMSYNC_ACCOUNT_PASSWORD": wrong, "CRMSYNC_ACCOUNT_SECURITY_TOKEN": secrets["CRMSYNC_SF_SECURITY_TOKEN"],
             "CRMSYNC_ACCOUNT_CLIENT_SECRET": secrets["CRMSYNC_SF_CLIENT_SECRET"]})
    result = cli("account", "test", "bad", ok=False)
    assert result.exit_code == 1
    assert "login to account 'bad' failed" in result.text
    assert "authentication failure" in result.text.lower()
    for secret in (wrong, *secrets.values()):
        assert secret not in result.text + caplog.text
