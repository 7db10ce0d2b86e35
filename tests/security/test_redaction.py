"""Secrets stay out of logs, printed configuration and configuration errors, whatever form they come in."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from crmsync import config, logs, pg

SECRET = "S3cr3t-Value_42"


@pytest.mark.parametrize("text", [
    f"Authorization: Bearer {SECRET}",
    f"authorization: OAuth {SECRET}",
    f'{{"password": "{SECRET} with spaces"}}',
    f'{{"client_secret" : "{SECRET}"}}',
    f"{{'password': '{SECRET}'}}",  # a Python dict's repr
    f"POST /services/oauth2/token grant_type=password&client_id=abc&client_secret={SECRET}&username=u",
    f"https://login.example.com/services/oauth2/token?client_secret={SECRET}&client_id=x",
    f"<soapenv:Body><loginResponse><result><sessionId>{SECRET}</sessionId></result></loginResponse>",
    f"<urn:password>{SECRET}</urn:password>",
    f"postgresql://crmsync:{SECRET}@db.example.com:5432/campaign",
    f"host=db user=crmsync password={SECRET} dbname=campaign",
    f"sasl.password={SECRET}",
])
def test_the_log_redactor_removes_every_form_of_secret(text: str) -> None:
    redacted = logs.redact(text)
    assert SECRET not in redacted and "with spaces" not in redacted, redacted
    assert "[redacted]" in redacted


def test_text_without_secrets_is_left_alone() -> None:
    text = "applied 200 commands to Contact (token bucket 3/5, password policy ok)"
    assert logs.redact(text) == text


@pytest.mark.parametrize("json_output", [True, False])
def test_both_log_formats_redact(json_output: bool, capsys) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level, saved_factory = root.handlers[:], root.level, logging.getLogRecordFactory()
    try:
        logs.setup("test", json_output=json_output)
        logging.getLogger("crmsync.test").error("login answered: Authorization: Bearer %s", SECRET)
        assert SECRET not in capsys.readouterr().err
    finally:
        root.handlers[:], _ = saved_handlers, root.setLevel(saved_level)
        logging.setLogRecordFactory(saved_factory)


def test_masked_dsn_hides_the_password_in_every_dsn_form() -> None:
    for dsn in (f"postgresql://crmsync:{SECRET}@db:5432/campaign", f"host=db user=crmsync password={SECRET} dbname=c",
                f"postgresql://crmsync@db/campaign?password={SECRET}"):
        masked = pg.masked_dsn(dsn)
        assert SECRET not in masked and "********" in masked and "db" in masked
    assert pg.masked_dsn("postgresql://crmsync@db/campaign") == "postgresql://crmsync@db/campaign"


def test_a_numeric_secret_is_not_echoed_by_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "crmsync.yaml"
    path.write_text("accounts:\n  sf:\n    type: salesforce\n    username: u\n    password: 98765432123\n"
                    "    security_token: 55511122233\n")
    with pytest.raises(config.ConfigError) as error:
        config.load(path, environ={})
    assert "accounts.sf.password" in str(error.value)  # it still says where the problem is
    assert "98765432123" not in str(error.value) and "55511122233" not in str(error.value)


def test_crmsync_config_prints_no_dsn_password(tmp_path: Path) -> None:
    path = tmp_path / "crmsync.yaml"
    path.write_text(f"campaign:\n  dsn: postgresql://crmsync:{SECRET}@db.example.com/campaign\n")
    shown = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(path), "config", "--offline"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert SECRET not in shown.stdout + shown.stderr and "db.example.com" in shown.stdout
