"""Bad input, entry point: URLs and addresses — every connector's account URLs, the Campaign DSN, the Kafka
bootstrap servers. Each corpus value (tests/faults/corpus.py) and each way a URL goes wrong is either taken or
refused when the settings are read, with the key and a reason that says what to fix; the reason never repeats a
long value whole, nor credentials."""
from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from crmsync import config
from tests.faults.corpus import TEXTS

ACCOUNTS = {  # connector type -> (a valid account, its URL settings)
    "salesforce": ({"type": "salesforce", "username": "u@example.com", "password": "p"}, ["login_url"]),
    "dynamics": ({"type": "dynamics", "url": "https://org.crm.dynamics.com", "tenant_id": "t", "client_id": "c",
                  "client_secret": "s"}, ["url", "authority"]),
    "oracle": ({"type": "oracle", "url": "https://secure.crmondemand.com", "username": "CO/U", "password": "p"},
               ["url"]),
}
TAKEN = ["https://login.example", "https://bücher.example/sf", "https://127.0.0.1:8443/sf", "https://[::1]:8443",
         "https://login.example:443/"]
REFUSED = {**TEXTS, "http": "http://login.example", "no host": "https://", "port 99999": "https://login.example:99999",
           "space": "https://exa mple.com", "3,000 characters": "https://login.example/" + "a" * 3000,
           "credentials": "https://user:s3cret@login.example", "line break": "https://login.example\n/x"}
URL_PLACES = [(kind, key) for kind, (_, keys) in ACCOUNTS.items() for key in keys]


def _account(kind: str, key: str, value: str) -> Any:
    base, _ = ACCOUNTS[kind]
    return config.validate_account({**base, key: value})


@pytest.mark.parametrize("kind,key", URL_PLACES)
@pytest.mark.parametrize("url", TAKEN)
def test_usable_urls_are_taken(kind: str, key: str, url: str) -> None:
    assert getattr(_account(kind, key, url), key) == url.rstrip("/")


@pytest.mark.parametrize("kind,key", URL_PLACES)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_urls_are_refused_with_the_key_and_a_reason(kind: str, key: str, case: str) -> None:
    with pytest.raises(ValidationError) as refused:
        _account(kind, key, REFUSED[case])
    message = config.explain_validation_error("crmsync.yaml", refused.value, union="accounts", tags=(),
                                              kind="account", docs="docs/configuration.md")
    assert key in message and len(message) < 600, message
    assert "s3cret" not in message and "\x00" not in message


DSNS_TAKEN = ["postgresql://crmsync@db.example:5432/campaign", "host=db.example dbname=campaign user=crmsync"]
# a date is a valid host name as far as syntax goes: taken (the connection then says no such host)
BOOTSTRAP_TAKEN = ["localhost:9092", "broker-1.example:9092,broker-2.example:9093", "[::1]:9092", "kafka", "2024-02-30"]


@pytest.mark.parametrize("case", sorted({**TEXTS, "port 99999": "postgresql://db.example:99999/campaign",
                                         "not a DSN": "db.example/campaign"}))
def test_a_bad_campaign_dsn_is_refused(case: str) -> None:
    value = {**TEXTS, "port 99999": "postgresql://db.example:99999/campaign", "not a DSN": "db.example/campaign"}[case]
    with pytest.raises(ValidationError) as refused:
        config.Settings.model_validate({"campaign": {"dsn": value}})
    assert "campaign.dsn" in config._format_validation_error("crmsync.yaml", refused.value)


@pytest.mark.parametrize("dsn", DSNS_TAKEN)
def test_usable_dsns_are_taken(dsn: str) -> None:
    assert config.Settings.model_validate({"campaign": {"dsn": dsn}}).campaign.dsn == dsn


BAD_BOOTSTRAP = {"NUL": TEXTS["NUL"], "2 MB": TEXTS["2 MB"], "emoji": TEXTS["emoji"], "port 99999": "broker.example:99999",
                 "a timestamp": TEXTS["before year 1 in UTC"], "space": "bro ker:9092", "empty item": "broker.example:9092,,"}


@pytest.mark.parametrize("case", sorted(BAD_BOOTSTRAP))
def test_bad_bootstrap_servers_are_refused(case: str) -> None:
    with pytest.raises(ValidationError) as refused:
        config.Settings.model_validate({"kafka": {"bootstrap_servers": BAD_BOOTSTRAP[case]}})
    message = config._format_validation_error("crmsync.yaml", refused.value)
    assert "kafka.bootstrap_servers" in message and len(message) < 600 and "\x00" not in message


@pytest.mark.parametrize("servers", BOOTSTRAP_TAKEN)
def test_usable_bootstrap_servers_are_taken(servers: str) -> None:
    assert config.Settings.model_validate({"kafka": {"bootstrap_servers": servers}}).kafka.bootstrap_servers == servers
