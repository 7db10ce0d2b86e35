"""Logging in: both methods against the real sandbox, HTTPS only, and clear errors that never leak a secret."""
from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from connectors.salesforce.account import SalesforceAccount
from connectors.salesforce import auth
from connectors.salesforce.auth import SalesforceLoginError
from connectors.salesforce.client import SalesforceClient

from .conftest import FAST_RETRIES, account_for


@pytest.mark.parametrize("method", ["oauth", "soap"])
def test_login_then_call_the_api(module_sandbox, method: str) -> None:
    account = account_for(module_sandbox, auth=method)
    session = auth.login(account)
    assert session.instance_url == module_sandbox.base_url
    assert session.session_id not in repr(session)
    client = SalesforceClient("login-test", account, policy=FAST_RETRIES)
    assert client.describe("Contact")["name"] == "Contact"
    used, limit = client.api_usage()
    assert 0 < used <= limit


def test_plain_http_login_url_is_refused_even_without_config_validation() -> None:
    with pytest.raises(ValidationError, match="https://"):
        SalesforceAccount(login_url="http://login.salesforce.com", username="u", password="p")
    # model_construct skips validation, as a hand-built or migrated config object might
    account = SalesforceAccount.model_construct(
        type="salesforce", login_url="http://127.0.0.1:9", username="u@example.com", password=SecretStr("hunter2"),
        security_token=SecretStr("TOKEN"), client_id="c", client_secret=SecretStr("s"), sandbox=False,
        api_version="59.0", ca_file=None, auth="oauth")
    with pytest.raises(SalesforceLoginError, match=r"https://") as caught:
        auth.login(account)
    assert "http://127.0.0.1:9" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_sandbox_flag_means_test_salesforce_com_unless_a_url_is_given() -> None:
    base = dict(username="u@example.com", password="p")
    assert auth.effective_login_url(SalesforceAccount(**base)) == "https://login.salesforce.com"
    assert auth.effective_login_url(SalesforceAccount(**base, sandbox=True)) == "https://test.salesforce.com"
    my_domain = "https://acme--uat.sandbox.my.salesforce.com"
    assert auth.effective_login_url(SalesforceAccount(**base, sandbox=True, login_url=my_domain)) == my_domain


@pytest.mark.parametrize("method", ["oauth", "soap"])
def test_wrong_password_gives_a_clear_error_without_secrets(module_sandbox, method: str) -> None:
    wrong = "Wr0ng-Passw0rd!"
    account = account_for(module_sandbox, auth=method, password=wrong)
    with pytest.raises(SalesforceLoginError) as caught:
        auth.login(account)
    message = str(caught.value)
    assert module_sandbox.base_url in message and account.username in message
    expected = "authentication failure" if method == "oauth" else "INVALID_LOGIN"
    assert expected in message
    for secret in (wrong, module_sandbox.credentials.security_token, module_sandbox.credentials.client_secret):
        assert secret not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_wrong_client_secret_is_named_but_not_shown(module_sandbox) -> None:
    account = account_for(module_sandbox, client_secret="not-the-secret-123")
    with pytest.raises(SalesforceLoginError, match="invalid_client") as caught:
        auth.login(account)
    assert "not-the-secret-123" not in str(caught.value)


def test_tls_verification_stays_on_without_the_sandbox_ca(module_sandbox) -> None:
    account = account_for(module_sandbox, ca_file=None)
    with pytest.raises(SalesforceLoginError, match="TLS verification failed.*ca_file"):
        auth.login(account)


def test_expired_session_logs_in_again_once_and_retries(module_sandbox) -> None:
    client = SalesforceClient("relogin-test", account_for(module_sandbox), policy=FAST_RETRIES)
    client.describe("Contact")
    module_sandbox.admin("expire-sessions", {})
    assert client.describe("Account")["name"] == "Account"
    assert client.logins == 2 and client.retries["session_expired"] == 1
