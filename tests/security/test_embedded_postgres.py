"""The embedded PostgreSQL takes no connection without its generated password, over TCP or its Unix socket,
and crmsync never prints that password."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from crmsync import config, infra


@pytest.fixture(scope="module")
def embedded() -> Iterator[tuple[config.Settings, infra.Endpoints]]:
    state = Path(tempfile.mkdtemp(prefix="crmsync-pg-auth-"))  # outside basetemp, see tests/conftest.py
    settings = config.load(environ={"CRMSYNC_STATE_DIR": str(state)})
    found = infra.up(settings)
    try:
        yield settings, found
    finally:
        infra.down(settings)
        shutil.rmtree(state, ignore_errors=True)


def _port(found: infra.Endpoints) -> int:
    return int(psycopg.conninfo.conninfo_to_dict(found.campaign_dsn)["port"])


def _refused(**params) -> str:
    """The server's answer to a connection attempt that must fail (no ~/.pgpass, no PGPASSWORD involved)."""
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(**params, dbname="campaign", user="postgres", passfile="/nonexistent/pgpass", connect_timeout=5)
    return str(refused.value)


def test_a_connection_without_the_password_is_refused(embedded) -> None:
    settings, found = embedded
    with psycopg.connect(found.campaign_dsn) as conn:  # every DSN crmsync builds carries the credential
        assert conn.execute("SELECT current_user").fetchone()[0] == "postgres"
    tcp = _refused(host="127.0.0.1", port=_port(found))
    assert "password" in tcp  # "no password supplied" / "password authentication failed"
    socket = _refused(host=str(settings.state_dir / "postgres" / "sockets"), port=_port(found))
    assert "password" in socket
    assert "password authentication failed" in _refused(host="127.0.0.1", port=_port(found), password="guess")


def test_the_password_lives_in_a_0600_file_and_is_never_printed(embedded) -> None:
    settings, found = embedded
    pgpass = infra.EmbeddedPostgres(settings.state_dir.resolve()).passfile
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    assert stat.S_IMODE(pgpass.parent.stat().st_mode) == 0o700
    password = pgpass.read_text().strip().rsplit(":", 1)[1]
    assert len(password) >= 32 and password not in found.campaign_dsn
    env = {**os.environ, "CRMSYNC_STATE_DIR": str(settings.state_dir)}
    shown = subprocess.run([sys.executable, "-m", "crmsync", "infra", "up"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert password not in shown.stdout + shown.stderr
    # the same with a DSN that spells the password out (an external server): masked
    explicit = f"postgresql://postgres:{password}@127.0.0.1:{_port(found)}/campaign"
    shown = subprocess.run([sys.executable, "-m", "crmsync", "infra", "up"], capture_output=True, text=True,
                           env={**env, "CAMPAIGN_DSN": explicit}, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert password not in shown.stdout + shown.stderr and "********" in shown.stdout


def test_another_local_user_cannot_read_the_accounts_table(embedded) -> None:
    """What `trust` allowed: any local user (`nobody` when the tests run as root) connected as superuser and
    read everything, or ran programs as the server's user with COPY … FROM PROGRAM."""
    _, found = embedded
    psql = [str(infra._postgres_bin_path() / "psql"), "-w", "-h", "127.0.0.1", "-p", str(_port(found)),
            "-U", "postgres", "-d", "campaign", "-c", "SELECT * FROM crmsync.external_accounts"]
    as_other_user = {"user": "nobody"} if os.geteuid() == 0 else {}
    result = subprocess.run(psql, capture_output=True, text=True, **as_other_user, cwd="/", timeout=60,
                            env={"PATH": os.environ["PATH"], "HOME": "/nonexistent", "PGPASSFILE": "/nonexistent"})
    assert result.returncode != 0
    assert "password" in result.stderr, result.stderr


def test_a_cluster_made_with_trust_is_switched_to_passwords() -> None:
    """A data directory from before this rule (initdb --auth=trust) gets the password on its next start."""
    state = Path(tempfile.mkdtemp(prefix="crmsync-pg-trust-"))
    settings = config.load(environ={"CRMSYNC_STATE_DIR": str(state)})
    embedded_pg = infra.EmbeddedPostgres(settings.state_dir.resolve())
    try:
        found = infra.up(settings)
        hba = embedded_pg.data / "pg_hba.conf"
        hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
        with psycopg.connect(found.campaign_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        infra.down(settings)
        assert "trust" in hba.read_text()
        found = infra.up(settings)
        assert "password" in _refused(host="127.0.0.1", port=_port(found))
        with psycopg.connect(found.campaign_dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        infra.down(settings)
        shutil.rmtree(state, ignore_errors=True)
