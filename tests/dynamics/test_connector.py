"""The Dynamics connector as crmsync finds it: the registry entry, the account model (every sign-in method, clear
errors, secrets kept out of messages), the sandbox kit, the shipped mappings, and the pacer's arithmetic."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.dynamics import CONNECTOR
from connectors.dynamics.auth import DynamicsAccount, DynamicsAuthError, ServiceProtection
from connectors.dynamics.pacing import Pacer
from crmsync import process
from crmsync.config import Mapping
from crmsync.connectors import Client, connector, types
from tests.sandbox_dynamics.conftest import AppCertificate, RunningSandbox

from .conftest import ACCOUNT_NAME, account_for


def test_registered_under_its_account_type() -> None:
    assert "dynamics" in types() and connector("dynamics") is CONNECTOR
    assert CONNECTOR.account_model is DynamicsAccount and CONNECTOR.default_external_id == "crmsync_campaignkey"
    assert CONNECTOR.objects == {"contacts": "contact", "accounts": "account", "opportunities": "opportunity"}
    assert CONNECTOR.index_fields == ("modifiedon",) and "versionnumber" in CONNECTOR.system_fields


BASE = {"type": "dynamics", "url": "https://org.crm.dynamics.com", "tenant_id": "t", "client_id": "c"}


@pytest.mark.parametrize("settings, message", [
    ({"url": "http://org.crm.dynamics.com", "client_secret": "s"}, "must be an https:// URL"),
    ({"authority": "http://login.example", "client_secret": "s"}, "must be an https:// URL"),
    ({}, "give exactly one way to sign in"),
    ({"client_secret": "s", "username": "u", "password": "p"}, "give exactly one way to sign in"),
    ({"auth": "certificate", "client_secret": "s"}, "settings of client_secret are given too"),
    ({"auth": "password", "username": "u"}, "needs both username and password"),
    ({"auth": "certificate", "certificate": "PEM"}, "needs certificate_path, or certificate and private_key"),
    ({"certificate_path": "/x.pem", "private_key": "k"}, "not both"),
    ({"client_secret": "s", "api_version": "latest"}, "expected a Web API version"),
    ({"client_secret": "s", "tenant": "t"}, "Extra inputs are not permitted"),
])
def test_account_validation_says_what_to_fix(settings: dict[str, Any], message: str) -> None:
    secrets = {k: f"secret-{k}" if v == "s" else v for k, v in settings.items()}
    with pytest.raises(ValidationError) as refused:
        DynamicsAccount.model_validate({**BASE, **secrets})
    assert message in str(refused.value)
    assert "secret-" not in str(refused.value)  # the input (and a secret in it) is never echoed back


def test_account_infers_the_method_and_hides_secrets() -> None:
    account = DynamicsAccount.model_validate({**BASE, "client_secret": "top-secret", "api_version": "v9.1"})
    assert account.auth == "client_secret" and account.api_version == "9.1"
    assert "top-secret" not in repr(account) and "top-secret" not in account.model_dump_json()
    assert account.scope == "https://org.crm.dynamics.com/.default"


def test_certificate_as_inline_text_with_its_thumbprint(sandbox: RunningSandbox, certificate: AppCertificate) -> None:
    key_b64 = base64.b64encode(certificate.key_path.read_bytes()).decode()  # as `base64 -w0 private.key` prints
    thumbprint = certificate.sha1_thumbprint  # hex, as Entra shows it
    custom_key_identifier = base64.b64encode(bytes.fromhex(thumbprint)).decode()  # as the app manifest holds it
    for given in (thumbprint, ":".join(thumbprint[i:i + 2] for i in range(0, 40, 2)), custom_key_identifier):
        account = account_for(sandbox, "client_secret", client_secret=None, auth="certificate",
                              certificate=certificate.cert_pem, private_key=key_b64, thumbprint=given)
        with CONNECTOR.client(ACCOUNT_NAME, account) as client:
            assert client.who_am_i()["UserId"]
    wrong = account_for(sandbox, "client_secret", client_secret=None, auth="certificate",
                        certificate=certificate.cert_pem, private_key=certificate.key_pem, thumbprint="00" * 20)
    with pytest.raises(DynamicsAuthError) as refused:
        CONNECTOR.client(ACCOUNT_NAME, wrong)
    assert "does not match the certificate" in str(refused.value) and thumbprint in str(refused.value)
    assert "PRIVATE KEY" not in str(refused.value)


def test_a_wrong_secret_is_refused_at_sign_in_without_showing_it(sandbox: RunningSandbox) -> None:
    wrong = "wrong-secret-3f9a1c"
    with pytest.raises(DynamicsAuthError) as refused:
        CONNECTOR.client(ACCOUNT_NAME, account_for(sandbox, client_secret=wrong))
    assert refused.value.code == 7000215 and "AADSTS7000215" in str(refused.value)
    assert wrong not in str(refused.value) and wrong not in repr(refused.value)


def test_the_sandbox_kit_starts_a_sandbox_the_account_reaches(tmp_path: Path) -> None:
    running = CONNECTOR.sandbox().start(tmp_path / "kit", seed_contacts=10, log_file=tmp_path / "kit.log")
    try:
        assert running.url.startswith("https://127.0.0.1:") and running.ca_file.exists()
        account = CONNECTOR.account_model.model_validate(running.account)
        with CONNECTOR.client(ACCOUNT_NAME, account) as client:
            assert isinstance(client, Client) and client.account_name == ACCOUNT_NAME
            assert len(list(client.query("contacts", select=["contactid"]))) == 10
            client.create("accounts", {"name": "Kit"})
            usage = client.usage()
            assert usage.calls == 3 and usage.remaining == 5997 and usage.window == "5 minutes"  # WhoAmI first
        assert running.stats()["writes"]["accounts"] == {"create": 1} and running.writes() == 1
    finally:
        process.stop(running.process)
    assert running.process.poll() is not None


def test_default_mappings_fit_the_tables(dynamics: Any) -> None:
    mappings = [Mapping.model_validate(m) for m in CONNECTOR.default_mappings("my dynamics")]
    assert [m.name for m in mappings] == ["accounts", "contacts", "purchases"]
    assert {m.account for m in mappings} == {"my dynamics"}
    names = {m.name for m in mappings}
    for mapping in mappings:
        table = dynamics.catalog.table(mapping.crm_object)
        assert mapping.crm_external_id and table.is_key(mapping.crm_external_id)
        for field in mapping.fields:
            column = table.column(field.crm)  # raises for a name the table does not have
            assert column.creatable and column.updatable and field.crm not in CONNECTOR.system_fields
            assert field.reference is None or (field.reference in names and column.lookup)
        for match in mapping.match:
            table.column(match.crm)
    contacts = next(m for m in mappings if m.name == "contacts")
    assert contacts.delete == "mark" and [k.crm for k in contacts.match] == ["emailaddress1"]
    assert next(f for f in contacts.fields if f.crm == "donotemail").owner == "campaign"


def test_the_pacer_keeps_under_the_limits() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(ServiceProtection(requests_per_window=100, window_seconds=10, headroom=0.9),
                  clock=lambda: now[0], sleep=sleep)
    sent = []
    for _ in range(300):
        pacer.acquire()
        sent.append(now[0])
        pacer.record(0.01, None, None)
        now[0] += 0.001
    for start in sent:  # no sliding window of 10 s holds more than 90 requests
        assert sum(1 for t in sent if start <= t < start + 10) <= 90
    assert now[0] >= 20 and pacer.waited == pytest.approx(sum(slept))
    before = len(slept)
    pacer.record(0.01, remaining_requests=50, remaining_seconds=None)  # more left than the reserve (10)
    assert len(slept) == before  # no pause
    pacer.record(0.01, remaining_requests=5, remaining_seconds=None)  # half the reserve is gone
    assert slept[-1] == pytest.approx(0.1 / 0.5)
