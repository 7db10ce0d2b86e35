"""Stored accounts are bound to their secrets: whoever can write crmsync.external_accounts cannot redirect a
login (login_url, CA) to collect the password, nor swap one account's secrets into another; the key that
protects them lives outside the state directory."""
from __future__ import annotations

import json
import socket
import stat
import threading
from pathlib import Path

import psycopg
import pytest


def _listener() -> tuple[socket.socket, list[bytes]]:
    """A TCP port that records whether anybody connected (where a tampered login_url points)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    contacts: list[bytes] = []

    def accept() -> None:
        while server.fileno() != -1:
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    contacts.append(conn.recv(4096) or b"(connected)")
                except OSError:
                    contacts.append(b"(connected)")

    threading.Thread(target=accept, daemon=True).start()
    return server, contacts


def _tamper(dsn: str, name: str, **changes: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        settings = conn.execute("SELECT settings FROM crmsync.external_accounts WHERE name = %s", (name,)).fetchone()[0]
        settings.update(changes)
        conn.execute("UPDATE crmsync.external_accounts SET settings = %s WHERE name = %s", (json.dumps(settings), name))


def test_a_redirected_login_url_is_refused_before_any_byte_is_sent(added, campaign_db) -> None:
    server, contacts = _listener()
    try:
        _tamper(campaign_db[0], "sf", login_url=f"https://127.0.0.1:{server.getsockname()[1]}")
        result = added("account", "test", "sf", ok=False)
        assert result.exit_code == 2
        assert "account 'sf'" in result.text and "altered outside crmsync" in result.text
        assert "crmsync account add sf" in result.text  # what to do about it
        assert contacts == []  # the password never travelled to the new address
        assert added("account", "list", ok=False).exit_code == 2  # every reader refuses it, not just `test`
    finally:
        server.close()


def test_the_ca_is_stored_inside_the_record_never_as_a_path(added, campaign_db, account, tmp_path: Path) -> None:
    with psycopg.connect(campaign_db[0]) as conn:
        settings = conn.execute("SELECT settings FROM crmsync.external_accounts WHERE name = 'sf'").fetchone()[0]
    assert "ca_file" not in settings and "BEGIN CERTIFICATE" in settings["ca_pem"]
    assert "login OK" in added("account", "test", "sf").text  # the sandbox's certificate verifies with it
    rogue_ca = tmp_path / "rogue.pem"
    rogue_ca.write_text(Path(account.ca_file).read_text())
    _tamper(campaign_db[0], "sf", ca_file=str(rogue_ca))
    result = added("account", "test", "sf", ok=False)
    assert result.exit_code == 2 and "altered outside crmsync" in result.text


def test_secrets_cannot_be_moved_to_another_account(added, campaign_db, account, secrets) -> None:
    added("account", "add", "other", "--login-url", "https://127.0.0.1:9", "--username", "other@example.com",
          "--client-id", "x", env={"CRMSYNC_ACCOUNT_PASSWORD": "other-password"})
    with psycopg.connect(campaign_db[0], autocommit=True) as conn:
        conn.execute("UPDATE crmsync.external_accounts SET secrets = (SELECT secrets FROM crmsync.external_accounts "
                     "WHERE name = 'sf') WHERE name = 'other'")
    result = added("account", "show", "other", ok=False)
    assert result.exit_code == 2 and "account 'other'" in result.text and "altered outside crmsync" in result.text


def test_the_key_lives_outside_the_state_directory(added, tmp_path: Path) -> None:
    state = Path(added.env["CRMSYNC_STATE_DIR"])
    key_file = Path(added.env["XDG_CONFIG_HOME"]) / "crmsync" / "secret.key"
    assert not list(state.rglob("secret.key"))  # a backup of the state directory holds no key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    moved = tmp_path / "elsewhere" / "crmsync.key"  # CRMSYNC_SECRET_KEY_FILE names it explicitly
    moved.parent.mkdir(mode=0o700)
    moved.write_bytes(key_file.read_bytes())
    moved.chmod(0o600)
    key_file.unlink()
    assert "sf" in added("account", "list", env={"CRMSYNC_SECRET_KEY_FILE": str(moved)}).text
    moved.chmod(0o644)
    refused = added("account", "list", env={"CRMSYNC_SECRET_KEY_FILE": str(moved)}, ok=False)
    assert refused.exit_code == 2 and "chmod 600" in refused.text


def test_a_key_from_the_state_directory_is_moved_out(cli, account, secrets) -> None:
    """Before this rule the key was <state>/secret.key: it moves to the key file on first use."""
    from cryptography.fernet import Fernet

    state = Path(cli.env["CRMSYNC_STATE_DIR"])
    old_key = Fernet.generate_key()
    (state / "secret.key").write_bytes(old_key)
    cli("account", "add", "sf", "--login-url", account.login_url, "--username", account.username,
        "--client-id", account.client_id, "--ca-file", str(account.ca_file),
        env={"CRMSYNC_ACCOUNT_PASSWORD": secrets["CRMSYNC_SF_PASSWORD"],
             "CRMSYNC_ACCOUNT_SECURITY_TOKEN": secrets["CRMSYNC_SF_SECURITY_TOKEN"],
             "CRMSYNC_ACCOUNT_CLIENT_SECRET": secrets["CRMSYNC_SF_CLIENT_SECRET"]})
    assert not (state / "secret.key").exists()
    assert (Path(cli.env["XDG_CONFIG_HOME"]) / "crmsync" / "secret.key").read_bytes().strip() == old_key
    assert "login OK" in cli("account", "test", "sf").text


@pytest.mark.parametrize("bad", ["not a certificate", ""])
def test_a_ca_file_that_is_not_a_certificate_is_refused(cli, tmp_path: Path, bad: str) -> None:
    path = tmp_path / "ca.pem"
    path.write_text(bad)
    result = cli("account", "add", "x", "--login-url", "https://127.0.0.1:9", "--username", "u", "--client-id", "c",
                 "--ca-file", str(path), env={"CRMSYNC_ACCOUNT_PASSWORD": "p"}, ok=False)
    assert result.exit_code == 2 and "ca_file" in result.text and "PEM" in result.text
