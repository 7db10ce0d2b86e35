"""Bad input, entry point: crmsync.yaml. Every corpus value (tests/faults/corpus.py) in every kind of place —
names that become SQL identifiers and topic names, CRM object and field names, credentials, numbers, paths,
the mapping filter — is either taken or refused by `config.load` with a ConfigError that names the key and
says what to fix. Never a traceback, never a secret echoed."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmsync import config
from tests.faults.corpus import TEXTS

BASE: dict[str, Any] = {
    "accounts": {"sf": {"type": "salesforce", "login_url": "https://login.salesforce.com", "username": "u@example.com",
                        "password": "p4ss"}},
    "campaign": {"name": "campaign"},
    "mappings": [{"name": "contacts", "account": "sf", "crm_object": "Contact", "campaign_table": "recipients",
                  "fields": [{"crm": "FirstName", "campaign": "first_name"}],
                  "match": [{"crm": "Email", "campaign": "email"}]}],
}
# key path -> which corpus values it must refuse (the rest it takes). Campaign names may be any PostgreSQL
# identifier (crmsync quotes them) but not hold a NUL or be cut short past 63 bytes; CRM names go into the CRM's
# query language, so they must be API names; slot names follow PostgreSQL's own rule; labels take printable text
# of a sane size; credentials are the CRM's to judge, but a control character cannot travel in a login; filter
# values are compared, never spliced into a statement, so they take anything
SQL, STRICT, LABEL, CREDENTIAL, VALUE = (lambda v: "\x00" in v or len(v.encode()) > 63), (lambda v: True), \
    (lambda v: "\x00" in v or len(v) > 100), (lambda v: "\x00" in v), (lambda v: False)
PLACES = {
    "campaign.name": LABEL, "mappings.0.name": LABEL,
    "campaign.publication": SQL, "campaign.capture_tables": SQL, "mappings.0.campaign_table": SQL,
    "mappings.0.fields.0.campaign": SQL, "mappings.0.match.0.campaign": SQL,
    "campaign.slot_name": STRICT, "mappings.0.fields.0.crm": STRICT, "mappings.0.crm_object": STRICT,
    "accounts.sf.username": CREDENTIAL, "accounts.sf.password": CREDENTIAL,
    "mappings.0.filter.crm": VALUE,
}


def _with(path: str, value: Any) -> dict:
    data = copy.deepcopy(BASE)
    if path == "mappings.0.filter.crm":
        data["mappings"][0]["filter"] = {"crm": {"LeadSource": [value]}}
        return data
    if path == "campaign.capture_tables":
        data["campaign"]["capture_tables"] = ["recipients", value]
        return data
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[last] = value
    return data


def _write(tmp_path: Path, data: dict) -> Path:
    file = tmp_path / "crmsync.yaml"
    file.write_text(yaml.safe_dump(data, allow_unicode=True))
    return file


@pytest.mark.parametrize("kind", sorted(TEXTS))
@pytest.mark.parametrize("place", sorted(PLACES))
def test_each_bad_value_in_each_place_is_taken_or_refused_with_its_key(tmp_path: Path, place: str, kind: str) -> None:
    value = TEXTS[kind]
    file = _write(tmp_path, _with(place, value))
    try:
        settings = config.load(file, environ={})
    except config.ConfigError as exc:
        message = str(exc)
        assert place.rsplit(".", 1)[-1] in message, message  # the key is named
        assert len(message) < 2000, "the message must not carry the whole value"
        assert "p4ss" not in message and "\x00" not in message
        refused = True
    else:
        refused = False
        assert settings.mappings[0].name  # it loaded as a whole
    assert refused == PLACES[place](value), f"{place} = {kind}: {'refused' if refused else 'taken'}"


def test_the_cli_says_what_is_wrong_without_a_traceback(tmp_path: Path) -> None:
    file = _write(tmp_path, _with("mappings.0.campaign_table", TEXTS["NUL"]))
    result = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(file), "config"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "mappings.0.campaign_table" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
